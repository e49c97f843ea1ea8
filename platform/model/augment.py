"""Augmentation of the published code, applied identically to a volume and its grid masks.

With p = 0.5 the volume is flipped along one random axis (z, y or x); with p = 0.5 it is rotated by
k * 90 degrees (k in 1..3) in the axial plane. The grid masks [3, H, D1, D2] get the same flip and
rotation on their (H, D1, D2) axes, so a voxel and the grid cell that summarises it stay together
(a z flip reverses the slice groups and the slices within each, since Z = 3H exactly). The channel
order (right lung, left lung, mediastinum) is kept: a channel follows its organ wherever it moves.

A 90-degree rotation swaps Y and X, so for a non-square crop only k = 2 is drawn.
Draws come from a generator seeded by (seed, epoch, index): the same scan gets the same
augmentation in the same epoch on any worker, whatever the loader's process layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    flip_axis: int | None  # 0 z, 1 y, 2 x of the volume; None: no flip
    rot90_k: int  # quarter turns in the axial (y, x) plane, 0..3

    @property
    def identity(self) -> bool:
        return self.flip_axis is None and self.rot90_k == 0


NO_AUGMENTATION = Augmentation(None, 0)


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, epoch, index))


def draw_augmentation(rng: np.random.Generator, square: bool = True) -> Augmentation:
    """One draw of the published code's flip (p = 0.5) and axial rotation (p = 0.5)."""
    flip_axis = int(rng.integers(0, 3)) if rng.random() < 0.5 else None
    k = 0
    if rng.random() < 0.5:
        k = int(rng.integers(1, 4)) if square else 2
    return Augmentation(flip_axis, k)


def apply_to_volume(volume: np.ndarray, aug: Augmentation) -> np.ndarray:
    """Augment a [Z, Y, X] volume (returns a contiguous copy, or the input when identity)."""
    if aug.identity:
        return volume
    out = volume
    if aug.flip_axis is not None:
        out = np.flip(out, axis=aug.flip_axis)
    if aug.rot90_k:
        out = np.rot90(out, k=aug.rot90_k, axes=(1, 2))
    return np.ascontiguousarray(out)


def apply_to_grid(grid: np.ndarray, aug: Augmentation) -> np.ndarray:
    """Augment grid masks [C, H, D1, D2] exactly as apply_to_volume moves their voxels."""
    if aug.identity:
        return grid
    out = grid
    if aug.flip_axis is not None:
        out = np.flip(out, axis=aug.flip_axis + 1)
    if aug.rot90_k:
        out = np.rot90(out, k=aug.rot90_k, axes=(2, 3))
    return np.ascontiguousarray(out)
