"""The image-blind prior map of an evaluation, from the training split of the evaluated store.

Per label, the mean allowed region of its positive TRAINING scans (eval/baselines.image_blind_prior):
the same map for every scan, which knows the cohort's anatomy but not the scan. It is read from the
grid masks only (no volumes), in batches through the pack when the store has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ctplatform.eval.baselines import prior_from_sums, prior_sums
from ctplatform.geometry import ModelGeometry
from ctplatform.labels import N_LABELS
from ctplatform.model.allowed_regions import allowed_regions
from ctplatform.model.dataset import load_split
from ctplatform.store import Store

log = logging.getLogger("ctplatform.eval")


@dataclass
class TrainingPrior:
    """The prior map float32 [80, H, D1, D2] (None when it could not be made) and what the run should say."""

    prior: np.ndarray | None
    scans: int = 0  # training scans it was computed from
    notes: list[str] = field(default_factory=list)


def training_prior(
    store: Store, split: str | None, geometry: ModelGeometry, variant: str, batch: int = 16
) -> TrainingPrior:
    """The image-blind prior of `split` (the run's training split) on `geometry`'s grid, variant `variant`.

    Never raises for a store that lacks what it needs: without a training split, or without grid
    masks for it, the prior is None and the notes say why (the evaluation goes on without it).
    """
    import torch

    skip = "the image-blind prior map is not scored"
    if not split:
        return TrainingPrior(None, notes=[f"{skip}: the run's config names no training split (train.splits.train)"])
    try:
        index = load_split(store, split)
    except (FileNotFoundError, ValueError) as e:
        return TrainingPrior(None, notes=[f"{skip}: the training split {split!r} cannot be read ({e})"])
    have = set(store.grid_ids(geometry.name, variant))
    rows = [i for i, vid in enumerate(index.ids) if vid in have]
    if not rows:
        why = "has no labelled scans" if not len(index) else f"has no grid masks grid/{geometry.name}/{variant}"
        return TrainingPrior(None, notes=[f"{skip}: the training split {split!r} of the store {why}"])
    notes = []
    if len(rows) < len(index):
        notes.append(f"image-blind prior map from {len(rows)} of {len(index)} training scans (the rest lack grid masks)")
    total = np.zeros((N_LABELS, *geometry.grid))
    n = np.zeros(N_LABELS, np.int64)
    for s in range(0, len(rows), batch):
        sel = rows[s : s + batch]
        grids = store.read_grids(geometry.name, variant, [index.ids[i] for i in sel])
        if tuple(grids.shape[2:]) != tuple(geometry.grid):
            return TrainingPrior(None, notes=[f"{skip}: the training grid masks are {tuple(grids.shape[2:])}, "
                                              f"the model's feature grid is {tuple(geometry.grid)}"])
        allowed = allowed_regions(torch.from_numpy(index.region_bits[sel]), torch.from_numpy(np.asarray(grids, bool)))
        t, k = prior_sums(allowed.numpy(), index.y[sel] > 0.5)
        total += t
        n += k
    log.info("image-blind prior map from %d training scans (%s)", len(rows), split)
    return TrainingPrior(prior_from_sums(total, n).astype(np.float32), len(rows), notes)
