"""The same seed trains the same model: two runs on one machine give bit-identical weights and metrics.

This is what lets the demo and benchmarks/faithfulness.py promise the same table for the same seed on
a re-run (docs/demo.md, "Reproducibility"); across machines, a different intra-op thread count sums
in another order, so figures there agree only to the spread the benchmark measures across seeds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctplatform.train.trainer import run_training
from tests.train.small_store import build_small_store, small_config


def _weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(checkpoint) / "model_state.pt", weights_only=True)


def test_same_seed_same_weights_and_metrics(ray_local, tmp_path: Path) -> None:
    build_small_store(tmp_path / "store", n_train=4, n_valid=2)
    # the mask loss on, shuffling on (the sampler draws from the seed), augmentation on
    extra = ["train.lambda_mask=0.5", "train.augment=true", "train.seed=11", "train.early_stopping_patience=100"]
    cfg = small_config(tmp_path, tmp_path / "store", extra)
    first = run_training(cfg, run_name="seed11-a")
    second = run_training(cfg, run_name="seed11-b")
    a, b = _weights(first.checkpoint_path), _weights(second.checkpoint_path)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"same seed, different weights in {differing[:5]}"
    for key in ("train_loss", "val_loss", "val_auroc_median"):
        assert first.metrics[key] == second.metrics[key], key
    other = run_training(small_config(tmp_path, tmp_path / "store", extra[:-2] + ["train.seed=12", extra[-1]]),
                         run_name="seed12")
    assert any(not torch.equal(a[k], v) for k, v in _weights(other.checkpoint_path).items())  # the seed matters
