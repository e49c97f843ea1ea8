"""What a GPU user expects of a training step: bf16 autocast, channels_last, optional torch.compile,
and gradient accumulation for a batch of one volume. Each runs on CPU in tests.

- autocast: bf16 on CUDA when `train.amp` (CPU steps stay float32 unless asked: CPU bf16 is slow).
- channels_last: the 2D backbone sees [B*H, 3, Y, X] slice groups; with channels_last weights the
  convolutions pick NHWC kernels (tensor cores) and the input is converted once by the first conv.
- compile: `nn.Module.compile()` compiles the module in place, so the state_dict keys, `unwrap` and
  checkpoints are unchanged (a `torch.compile(model)` wrapper would prefix every key).
- accumulation: `train.accumulate_steps` micro-batches per optimizer step, each loss scaled by 1/k,
  DDP's all-reduce only on the last (`no_sync` before), so k micro-batches of one volume give the
  gradient of one batch of k volumes for the class loss (BatchNorm aside: its statistics are those
  of each forward pass, here the slice groups of one scan, as in the paper's batch of 1).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ctplatform.config import TrainConfig


def autocast(device: torch.device, t: TrainConfig, cpu_bf16: bool = False) -> Any:
    """The step's autocast context: bf16 on CUDA when train.amp (on CPU only when cpu_bf16)."""
    enabled = t.amp and (device.type == "cuda" or cpu_bf16)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def configure_model(model: torch.nn.Module, t: TrainConfig, device: torch.device, force: bool = False) -> torch.nn.Module:
    """channels_last (CUDA, or `force` in tests) and torch.compile (train.compile) applied in place."""
    if t.channels_last and (device.type == "cuda" or force):
        model.to(memory_format=torch.channels_last)
    if t.compile:
        model.compile()
    return model


def no_sync(model: torch.nn.Module, sync: bool) -> Any:
    """DDP's no_sync() for a micro-batch whose gradients are not yet all-reduced (no-op otherwise)."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


class Accumulator:
    """Counts micro-batches into optimizer steps of `k` (a shorter last group is rescaled to its size)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.pending = 0

    def loss_scale(self) -> float:
        return 1.0 / self.k

    def is_last(self, remaining: int | None) -> bool:
        """Whether the micro-batch now starting completes a step (remaining: micro-batches left, incl. this)."""
        return self.pending + 1 == self.k or remaining == 1

    def add(self) -> None:
        self.pending += 1

    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Apply the accumulated gradient: rescaled to a mean when the group fell short of k."""
        if self.pending < self.k:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.k / self.pending)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.pending = 0
