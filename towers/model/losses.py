"""Training losses for the two-tower model, kept beside the model rather than inside it.

All functions take embeddings or logits and return a scalar mean over the batch:

- :func:`pointwise_bce` — the paper's loss: binary cross-entropy of ``sigmoid(<u, i>)`` against the
  rating scaled to [0, 1], on observed pairs only.
- :func:`in_batch_softmax` — sampled softmax over the batch's own items, with the logQ popularity
  correction and removal of accidental hits (after tensorflow/recommenders' ``Retrieval`` task).
- :func:`full_softmax` — softmax over the whole catalog (exact, no sampling bias, so no logQ); fits
  small catalogs such as ML-100K's 1,682 items. Optionally masks the user's other known positives.
- :func:`rating_mse` — the rating head's regression loss; ``hybrid`` = softmax + weight x MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Masked logits get this instead of -inf so that a fully masked row never yields NaN.
MASKED = -1e9


def pointwise_bce(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(scores)`` against soft targets.

    Args:
        scores: ``(B,)`` logits ``<u, i>`` of observed pairs.
        target: ``(B,)`` ratings scaled to [0, 1].

    Returns:
        Scalar ``mean(-t log s - (1 - t) log(1 - s))`` with ``s = sigmoid(scores)``.
    """
    return F.binary_cross_entropy_with_logits(scores.float(), target.float())


def in_batch_softmax(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_idx: torch.Tensor,
    item_log_q: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """Sampled softmax where each row's negatives are the other rows' items.

    Args:
        user_emb: ``(B, D)`` user embeddings (already divided by the temperature, if any).
        item_emb: ``(B, D)`` embeddings of each row's positive item.
        item_idx: ``(B,)`` item indices of the positives (for accidental-hit removal).
        item_log_q: ``(B,)`` log sampling probability of each row's item, or None. In-batch
            negatives are drawn in proportion to popularity, which biases the softmax towards
            unpopular items' scores being too low; subtracting ``log q`` from every logit in
            column ``j`` corrects it (Yi et al., 2019).
        remove_accidental_hits: mask column ``j`` of row ``r`` when ``item_idx[j] == item_idx[r]``
            and ``j != r``: the same item appearing twice in a batch is not a negative.

    Returns:
        Scalar cross-entropy with the diagonal as the target class.
    """
    logits = user_emb.float() @ item_emb.float().T  # (B, B)
    if item_log_q is not None:
        logits = logits - item_log_q.float()[None, :]  # (B, B), column-wise shift
    if remove_accidental_hits:
        same_item = item_idx[None, :] == item_idx[:, None]  # (B, B)
        same_item.fill_diagonal_(False)
        logits = logits.masked_fill(same_item, MASKED)
    labels = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, labels)


def full_softmax(
    user_emb: torch.Tensor,
    all_item_emb: torch.Tensor,
    item_idx: torch.Tensor,
    exclude_rows: torch.Tensor | None = None,
    exclude_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the whole catalog: each row's positive against every other item.

    Args:
        user_emb: ``(B, D)`` user embeddings (already divided by the temperature, if any).
        all_item_emb: ``(N, D)`` embeddings of every item.
        item_idx: ``(B,)`` the positive item of each row.
        exclude_rows: ``(M,)`` row indices of (row, item) pairs not to use as negatives (for
            instance the user's other training items), with ``exclude_cols`` ``(M,)`` the items.
            A pair equal to the row's own positive is ignored.
        exclude_cols: see ``exclude_rows``.

    Returns:
        Scalar cross-entropy of the positive among all ``N`` items.
    """
    logits = user_emb.float() @ all_item_emb.float().T  # (B, N)
    if exclude_rows is not None and exclude_cols is not None and exclude_rows.numel():
        not_target = exclude_cols != item_idx[exclude_rows]  # (M,)
        logits = logits.index_put(
            (exclude_rows[not_target], exclude_cols[not_target]),
            torch.tensor(MASKED, dtype=logits.dtype, device=logits.device),
        )
    return F.cross_entropy(logits, item_idx)


def rating_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``(B,)`` predicted vs target ratings (both scaled to [0, 1])."""
    return F.mse_loss(predicted.float(), target.float())
