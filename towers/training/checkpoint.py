"""Training checkpoints: model, optimizer, epoch, loop state and config in one folder.

Written with ``torch.save`` of plain state dicts and read back with ``weights_only=True`` (no
arbitrary pickle); the config travels as JSON beside it so the model can be rebuilt from the
checkpoint alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.loop import LoopState
from towers.training.steps import unwrap

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    best_model: dict[str, torch.Tensor] | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """Writes ``state.pt`` (tensors and numbers only) and ``config.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    core = unwrap(model)
    payload = {
        "model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_model": best_model or {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
    }
    torch.save(payload, folder / STATE_FILE)
    meta = {"model_config": core.config.to_dict(), "loop": asdict(state)}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, default=float))


def load_checkpoint(folder: Path) -> tuple[TwoTowerConfig, dict[str, Any], LoopState]:
    """Reads a checkpoint folder: ``(config, tensors, loop state)``.

    ``tensors`` has ``model``, ``optimizer`` and ``best_model`` (empty when none was kept).
    """
    folder = Path(folder)
    for name in (STATE_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"checkpoint {folder} lacks {name}")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    tensors = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    return TwoTowerConfig.from_stored(meta["model_config"]), tensors, LoopState(**meta["loop"])


def model_from_checkpoint(folder: Path, weights: str = "final") -> TwoTower:
    """Rebuilds the model from a checkpoint: ``final`` (last epoch) or ``best`` weights."""
    config, tensors, _ = load_checkpoint(folder)
    model = TwoTower(config)
    state = (
        tensors["best_model"] if weights == "best" and tensors["best_model"] else tensors["model"]
    )
    model.load_state_dict(state)
    return model.eval()
