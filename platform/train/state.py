"""What a training run carries across restarts: its state and its checkpoints.

A checkpoint holds `model_state.pt`, `optimizer_state.pt`, `best_model_state.pt` (state dicts, saved
with torch.save, loaded with weights_only=True) and `train_state.json` (TrainState).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctplatform.model.axialnet import unwrap

STATUS_RUNNING, STATUS_EARLY_STOPPED, STATUS_COMPLETED, STATUS_DIVERGED = (
    "running",
    "early_stopped",
    "completed",
    "diverged",
)


@dataclass
class TrainState:
    """What a resumed run needs besides the weights (train_state.json)."""

    next_epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    reference_loss: float | None = None
    status: str = STATUS_RUNNING
    last_metrics: dict[str, Any] = field(default_factory=dict)
    best_thresholds: list[float] | None = None  # validation operating points of the best weights
    best_threshold_sources: list[str] | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["best_val_loss"] = None if math.isinf(self.best_val_loss) else self.best_val_loss
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        d = json.loads(text)
        d["best_val_loss"] = math.inf if d.get("best_val_loss") is None else d["best_val_loss"]
        return cls(**d)


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, torch.Tensor] | None,
    state: TrainState,
) -> None:
    torch.save(unwrap(model).state_dict(), directory / "model_state.pt")
    torch.save(optimizer.state_dict(), directory / "optimizer_state.pt")
    if best_state is not None:
        torch.save(best_state, directory / "best_model_state.pt")
    (directory / "train_state.json").write_text(state.to_json())


def load_checkpoint(directory: Path) -> tuple[dict, dict, dict | None, TrainState]:
    load = lambda name: torch.load(directory / name, map_location="cpu", weights_only=True)  # noqa: E731
    best = load("best_model_state.pt") if (directory / "best_model_state.pt").exists() else None
    state = TrainState.from_json((directory / "train_state.json").read_text())
    return load("model_state.pt"), load("optimizer_state.pt"), best, state


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
