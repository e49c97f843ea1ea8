"""Augmentation moves the volume and its grid masks together, deterministically by (seed, epoch, index)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ctplatform.model.augment import (
    Augmentation,
    apply_to_grid,
    apply_to_volume,
    augmentation_rng,
    draw_augmentation,
)

ALL = [Augmentation(f, k) for f, k in itertools.product([None, 0, 1, 2], range(4))]


def _cell(p: tuple[int, int, int], shape: tuple[int, int, int], grid: tuple[int, int, int]) -> tuple[int, ...]:
    """The grid cell whose input block holds voxel p (geometry.py's block mapping)."""
    return tuple(int(p[a] * grid[a] // shape[a]) for a in range(3))


@pytest.mark.parametrize("shape,grid", [((24, 64, 64), (8, 2, 2)), ((24, 96, 96), (8, 3, 3)), ((24, 64, 96), (8, 2, 3))])
def test_marker_voxel_lands_in_the_matching_grid_cell(shape, grid) -> None:
    rng = np.random.default_rng(0)
    square = shape[1] == shape[2]
    augs = [a for a in ALL if square or a.rot90_k in (0, 2)]
    for _ in range(20):
        p = tuple(int(rng.integers(0, n)) for n in shape)
        vol = np.zeros(shape, np.int16)
        vol[p] = 1000
        masks = np.zeros((3,) + grid, bool)
        masks[1][_cell(p, shape, grid)] = True  # channel 1 marks the marker's cell
        for aug in augs:
            v2, m2 = apply_to_volume(vol, aug), apply_to_grid(masks, aug)
            assert v2.shape[0] == shape[0] and m2.shape[0] == 3
            p2 = tuple(int(c) for c in np.argwhere(v2 == 1000)[0])
            cells = [tuple(int(c) for c in x) for x in np.argwhere(m2[1])]
            assert cells == [_cell(p2, v2.shape, m2.shape[1:])], (aug, p, p2)
            assert not m2[0].any() and not m2[2].any()  # channels keep their meaning


def test_draws_are_deterministic_by_seed_epoch_index() -> None:
    draw = lambda s, e, i: draw_augmentation(augmentation_rng(s, e, i))  # noqa: E731
    assert draw(0, 3, 7) == draw(0, 3, 7)
    per_epoch = {draw(0, e, 7) for e in range(40)}
    assert len(per_epoch) > 4  # different epochs draw differently
    draws = [draw(1, 0, i) for i in range(4000)]
    flips = np.mean([d.flip_axis is not None for d in draws])
    rots = np.mean([d.rot90_k != 0 for d in draws])
    assert 0.45 < flips < 0.55 and 0.45 < rots < 0.55
    assert {d.flip_axis for d in draws} == {None, 0, 1, 2} and {d.rot90_k for d in draws} == {0, 1, 2, 3}
    non_square = {draw_augmentation(augmentation_rng(1, 0, i), square=False).rot90_k for i in range(200)}
    assert non_square == {0, 2}


def test_identity_returns_input_unchanged() -> None:
    vol = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    assert apply_to_volume(vol, Augmentation(None, 0)) is vol
