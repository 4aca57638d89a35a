"""The GPU path of training, checked on a CUDA machine without Ray: bf16 autocast, NCCL DDP.

    python -m bench.gpu_check --out results.json [--epochs 3]

What a `--use-gpu` Ray Train worker runs is `towers.training.steps.train_epoch` on `cuda` with the
model wrapped in DDP over an NCCL process group (Ray sets the group up). This script runs exactly
that in one process (an NCCL group of world size 1, which still goes through DDP's all-reduce
hooks) on ML-100K-shaped synthetic data, next to the same loop on the CPU, and reports samples/s,
losses and validation metrics of both. Ray itself is not needed (its wheel is too large to carry
to the GPU machine used for this check).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from towers.data.interactions import Interactions
from towers.data.prepared import movielens_features
from towers.data.splits import split_interactions
from towers.data.synthetic import SyntheticSpec, generate
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.steps import make_batches, make_optimizer, train_epoch, validation_metrics


def synthetic_split():
    raw = generate(SyntheticSpec(n_users=943, n_items=1682, n_interactions=100_000, seed=1))
    inter = raw.interactions
    users = raw.users.sort_values("user_id").reset_index(drop=True)
    items = raw.items.sort_values("item_id").reset_index(drop=True)
    users.insert(0, "user_idx", np.arange(len(users)))
    items.insert(0, "item_idx", np.arange(len(items)))
    u = inter["user_id"].to_numpy() - 1  # synthetic ids are 1..n
    i = inter["item_id"].to_numpy() - 1
    parts = split_interactions(u, i, inter["timestamp"].to_numpy(), "random")

    def part(rows):
        return Interactions(
            u[rows],
            i[rows],
            inter["rating"].to_numpy(np.float32)[rows],
            inter["timestamp"].to_numpy()[rows],
            len(users),
            len(items),
        )

    return part(parts.train), part(parts.valid), movielens_features(users, items)


def run(device: str, ddp: bool, epochs: int, train, valid, features) -> dict:
    config = TwoTowerConfig.from_preset("default", bf16=device == "cuda").sized_for(features)
    torch.manual_seed(config.seed)
    model = TwoTower(config).to(device)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    optimizer = make_optimizer(model, config)
    ctx = TrainingContext.build(features, train, config, (1.0, 5.0), device)
    rows = []
    for epoch in range(epochs):
        if device == "cuda":
            torch.cuda.synchronize()
        stats = train_epoch(model, optimizer, make_batches(train, config.batch_size, 0, epoch), ctx)
        if device == "cuda":
            torch.cuda.synchronize()
        rows.append({"epoch": epoch, **stats, **validation_metrics(model, ctx, train, valid)})
    return {"device": device, "ddp": ddp, "bf16": config.bf16, "epochs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    train, valid, features = synthetic_split()
    results = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    start = time.perf_counter()
    results["cpu"] = run("cpu", False, args.epochs, train, valid, features)
    if torch.cuda.is_available():
        results["gpu_name"] = torch.cuda.get_device_name(0)
        results["cuda_bf16"] = run("cuda", False, args.epochs, train, valid, features)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
        torch.distributed.init_process_group("nccl", rank=0, world_size=1)
        results["cuda_bf16_nccl_ddp"] = run("cuda", True, args.epochs, train, valid, features)
        torch.distributed.destroy_process_group()
    results["seconds"] = time.perf_counter() - start
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    for key in ("cpu", "cuda_bf16", "cuda_bf16_nccl_ddp"):
        if key in results:
            last = results[key]["epochs"][-1]
            print(
                f"{key:<20} samples/s {last['samples_per_s']:>10,.0f}  loss {last['loss']:.4f}  "
                f"valid recall@10 {last['recall@10']:.4f}"
            )


if __name__ == "__main__":
    main()
