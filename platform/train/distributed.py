"""Small collectives over the DDP process group (no-ops in a single process)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ctplatform.model.axialnet import unwrap


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def weights_rank_spread(model: torch.nn.Module) -> float:
    """Largest difference between ranks of three parameter checksums (0.0: identical weights)."""
    vec = torch.cat([p.detach().reshape(-1).double().cpu() for p in unwrap(model).parameters()])
    sums = torch.stack([vec.sum(), vec.abs().sum(), (vec * vec).sum()])
    gathered = torch.stack([torch.as_tensor(s) for s in all_gather_objects(sums)])
    return float((gathered - gathered[0]).abs().max())
