"""Reference lung segmentation equals the published per-slice algorithm, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest

from ctplatform.partition.lungs import (
    border_cleared_candidates,
    keep_two_largest,
    lung_candidates,
    min_voxels_at,
    segment_lungs_reference,
)
from tests.partition.published import published_lungs


def test_min_voxels_scales_with_voxel_volume():
    assert min_voxels_at((0.8, 0.8, 0.8), 1_000_000) == pytest.approx(1_000_000)
    assert min_voxels_at((1.6, 1.6, 1.6), 1_000_000) == pytest.approx(125_000)
    assert min_voxels_at((2.0, 0.8, 0.8), 1_000_000) == pytest.approx(400_000)


def test_keep_two_largest_keeps_ties_at_second_place():
    area = np.array([0, 50, 30, 30, 10, 7, 3])
    slice_of = np.array([-1, 0, 0, 0, 0, 1, 1])
    keep = keep_two_largest(area, slice_of, np.array([False, True, True, True, True, True, True]))
    # slice 0: 50 and the two 30s (tie at second place) stay, 10 goes; slice 1 has only two: both stay
    assert keep.tolist() == [False, True, True, True, False, True, True]


def _random_slices(seed: int, shape=(12, 40, 48)) -> np.ndarray:
    """Blobs of air in tissue with ties, border contact and diagonal-only links between blobs."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, 40, dtype=np.int16)
    for _ in range(60):
        z, y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1] - 3), rng.integers(0, shape[2] - 3)
        h, w = rng.integers(1, 9, size=2)
        hu[z, y : y + h, x : x + w] = -900
    hu[:, 5, 5] = -900  # a one-voxel column: the same area in every slice
    hu[:, 6, 6] = -900  # touching it diagonally: one 8-connected component, two 6-connected ones
    return hu


@pytest.mark.parametrize("seed", range(6))
def test_reference_matches_published_on_random_volumes(seed):
    hu = _random_slices(seed)
    for min_size in (1, 5, 20, 60):
        ours = segment_lungs_reference(hu, (0.8, 0.8, 0.8), min_voxels_at_0p8mm=min_size)
        assert np.array_equal(ours, published_lungs(hu, min_size=min_size))


def _random_bodies(seed: int, shape=(10, 50, 60)) -> np.ndarray:
    """Outside air around a tissue blob of varying size per slice, air pockets inside it, some
    cutting its edge or meeting outside air only at a corner: the labelled box is the tissue's."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, dtype=np.int16)
    for z in range(shape[0]):
        y0, x0 = rng.integers(0, 8, size=2)
        y1, x1 = shape[1] - rng.integers(0, 8), shape[2] - rng.integers(0, 8)
        hu[z, y0:y1, x0:x1] = 30
        for _ in range(12):
            y, x = rng.integers(y0, y1), rng.integers(x0, x1)
            h, w = rng.integers(1, 12, size=2)
            hu[z, y : y + h, x : x + w] = -850
        hu[z, y0, x0] = -850  # a corner pocket: 8-connected to the outside air
    return hu


@pytest.mark.parametrize("seed", range(6))
def test_reference_matches_published_with_outside_air(seed):
    hu = _random_bodies(seed)
    for min_size in (1, 30):
        ours = segment_lungs_reference(hu, (0.8, 0.8, 0.8), min_voxels_at_0p8mm=min_size)
        assert np.array_equal(ours, published_lungs(hu, min_size=min_size))
    assert np.array_equal(border_cleared_candidates(hu, threads=2), border_cleared_candidates(hu))


def test_threads_give_the_same_mask():
    hu = _random_slices(11, shape=(23, 40, 48))
    assert np.array_equal(lung_candidates(hu, threads=1), lung_candidates(hu, threads=2))


def test_reference_matches_published_on_a_real_scan(ct_dir):
    from ctplatform.config import IngestConfig
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan

    hu, attrs = to_store(read_scan(ct_dir / "popi_thorax_256.nii.gz"), IngestConfig(spacing_mm=(2.0, 2.0, 2.0)))
    spacing = tuple(attrs["spacing_mm"])
    ours = segment_lungs_reference(hu, spacing)
    theirs = published_lungs(hu, min_size=min_voxels_at(spacing, 1_000_000))
    assert ours.sum() > 0.05 * ours.size  # a real chest: the lungs are found
    assert np.array_equal(ours, theirs)
