"""Adam for dense gradients, and its lazy form for the sparse ones of large embedding tables.

With ``TwoTowerConfig.sparse_embeddings`` the catalog- and user-sized tables (item ids, history
bags, per-user and per-item biases) produce sparse gradients: only the rows a batch used. Dense
Adam would still update every row of every table each step, which costs O(catalog) however few
items a batch touches. :class:`LazyAdam` moves only the rows in the gradient (the rule of
``torch.optim.SparseAdam``: their moments and the shared step count advance, the other rows keep
theirs) and treats dense gradients exactly as ``torch.optim.Adam`` does. One optimizer for both,
so the learning-rate schedule and the checkpoints see one ``Optimizer``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam (dense gradients) + lazy Adam (sparse gradients) in one optimizer.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (the schedule changes ``param_groups[i]["lr"]``).
        betas: decay rates of the first and second moments.
        eps: added to the denominator.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"LazyAdam: need lr > 0, eps > 0 and betas in [0, 1), got {lr}, {eps}, {betas}"
            )
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = param.grad
                if grad.is_sparse:
                    grad = grad.coalesce()  # one entry per row
                    rows, values = grad.indices()[0], grad.values()  # (R,), (R, ...)
                    # index_select / index_copy_: the same rows as exp_avg[rows] and its
                    # assignment, without advanced indexing's generic path (~10% of this step).
                    m = exp_avg.index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
                    v = exp_avg_sq.index_select(0, rows).mul_(beta2)
                    v.addcmul_(values, values, value=1 - beta2)
                    exp_avg.index_copy_(0, rows, m)
                    exp_avg_sq.index_copy_(0, rows, v)
                    denom = v.sqrt_().div_(correction2**0.5).add_(eps)  # v is stored already
                    param.index_add_(0, rows, m.div_(denom), alpha=-lr / correction1)
                else:  # torch.optim.Adam's update
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / correction2**0.5).add_(eps)
                    param.addcdiv_(exp_avg, denom, value=-lr / correction1)
        return loss
