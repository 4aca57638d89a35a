"""The training rate of a config on prepared data, as ``bench/bench_scale.py``'s train step
measures it: steps of the bare training loop over the config's own batches, an epoch and the
config's epochs extrapolated from them; and the default it is compared with."""

from __future__ import annotations

import time
from typing import Any

from towers.model.config import MAX_EPOCHS

# The deep towers tuned on ML-100K's random split, the default there until the temperature was
# chosen on validation (docs/QUALITY.md).
DEEP_TOWERS: dict[str, Any] = dict(
    embedding_dim=64,
    id_dim=64,
    hidden_dims=(256, 256),
    dropout=0.3,
    share_history_embeddings=False,
    history_dropout=0.2,
    item_two_hop=False,
    lr=3e-3,
)
# The default above 2,500 items before issue 24 (docs/QUALITY.md): mixed negatives over training
# pairs, the deep towers, 20 epochs. bench_scale's figures up to 2026-12-01 are
# its; the train step measures it beside today's default.
PREVIOUS_DEFAULT: dict[str, Any] = {"negatives": "mixed", **DEEP_TOWERS, "epochs": MAX_EPOCHS}


def measure_training(data: Any, config: Any, n_steps: int) -> tuple[Any, dict[str, Any]]:
    """``n_steps`` steps of ``config``'s own batches (pairs, or user rows for ``user_full``)
    after two warm-up steps: pairs a second, an epoch extrapolated over the training pairs (plus
    the two-hop refreshes an epoch makes, one timed), and ``config.epochs`` of them."""
    import torch

    from towers.model.network import TwoTower
    from towers.training.inputs import TrainingContext
    from towers.training.loop import LocalBatches
    from towers.training.steps import make_optimizer, train_epoch
    from towers.training.two_hop import refresh_two_hop

    torch.manual_seed(config.seed)
    model = TwoTower(config)
    optimizer = make_optimizer(model, config)
    ctx = TrainingContext.build(data.features, data.train, config, data.rating_scale)
    batches = LocalBatches(data, config.batch_size, config.seed, config=config).batches("search", 0)
    train_epoch(model, optimizer, batches[:2], ctx)  # warm-up: allocations, first-call costs
    steps = batches[2 : 2 + n_steps]
    started = time.perf_counter()
    stats = train_epoch(model, optimizer, steps, ctx)
    elapsed = time.perf_counter() - started
    rate = stats["samples"] / elapsed
    refresh_s = 0.0
    if config.item_two_hop:  # not in the steps' time unless one fell due in them
        ctx.two_hop_cache["due"] = 0
        started = time.perf_counter()
        refresh_two_hop(model, ctx, 0)
        refresh_s = time.perf_counter() - started
    epoch_s = len(data.train) / rate + (config.two_hop_refreshes * refresh_s)
    negatives = config.negatives + ("+sparse" if config.sparse_embeddings else "")
    return model, {
        "steps": len(steps),
        "ms_per_step": round(elapsed / len(steps) * 1000, 1),
        "samples_per_s": round(rate),
        "epoch_s_extrapolated": round(epoch_s, 1),  # the training split's pairs
        "epochs": config.epochs,
        "training_s": round(epoch_s * config.epochs, 1),  # without validation or refit
        "negatives": negatives,
        "towers": f"{config.embedding_dim}-d, hidden {list(config.hidden_dims)}",
    }
