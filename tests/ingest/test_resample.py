"""The separable resampler against scipy's general affine interpolation, and its grid convention."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ctplatform.ingest.resample import resample, resampled_affine, resampled_shape


def _reference(volume: np.ndarray, spacing, target, order: int) -> np.ndarray:
    """scipy: output voxel i samples input index i * t / s, edges replicated (the documented convention)."""
    shape = resampled_shape(volume.shape, spacing, target)
    ratios = [t / s for s, t in zip(spacing, target)]
    return ndimage.affine_transform(volume, ratios, output_shape=shape, order=order, mode="nearest")


@pytest.mark.parametrize(
    "spacing, target",
    [((2.0, 0.97, 1.3), (0.8, 0.8, 0.8)), ((0.7, 0.7, 3.0), (1.5, 2.0, 1.0)), ((1.0, 1.0, 1.0), (1.0, 2.5, 1.0))],
)
def test_trilinear_matches_scipy(spacing, target):
    rng = np.random.default_rng(1)
    vol = (rng.normal(size=(23, 31, 17)) * 300).astype(np.float32)
    ours = resample(vol, spacing, target, order=1)
    ref = _reference(vol, spacing, target, order=1)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_nearest_keeps_label_values():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(20, 25, 30), dtype=np.uint8)
    out = resample(labels, (2.0, 1.0, 0.9), (1.1, 1.7, 0.8), order=0)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(out, _reference(labels, (2.0, 1.0, 0.9), (1.1, 1.7, 0.8), order=0))


def test_int16_output_is_clipped_and_rounded():
    vol = np.linspace(-3000, 5000, 10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    out = resample(vol, (1, 1, 1), (0.5, 0.7, 1.3), dtype=np.int16, clip=(-1024, 3071))
    ref = np.rint(np.clip(_reference(vol, (1, 1, 1), (0.5, 0.7, 1.3), order=1), -1024, 3071))
    assert out.dtype == np.int16 and out.min() == -1024 and out.max() == 3071
    assert np.abs(out.astype(np.float32) - ref).max() <= 1


def test_same_spacing_is_identity():
    vol = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    np.testing.assert_array_equal(resample(vol, (1.5, 2, 2), (1.5, 2, 2), dtype=np.int16), vol)


def test_grid_keeps_voxel_zero_and_extent():
    assert resampled_shape((141, 512, 512), (2.0, 0.9765625, 0.9765625), (0.8, 0.8, 0.8)) == (353, 625, 625)
    affine = np.diag([-0.9765625, -0.9765625, 2.0, 1.0])
    affine[:3, 3] = (250.0, 164.0, -164.5)
    new = resampled_affine(affine, (0.9765625, 0.9765625, 2.0), (0.8, 0.8, 0.8))
    np.testing.assert_allclose(new[:3, 3], affine[:3, 3])  # voxel 0 does not move
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), 0.8)


def test_linear_ramp_is_reproduced_exactly():
    # Trilinear interpolation of a linear function is exact: a physical ramp stays the same ramp.
    z, y, x = np.meshgrid(np.arange(12) * 2.0, np.arange(15) * 1.3, np.arange(11) * 0.9, indexing="ij")
    vol = (3 * z - 2 * y + x).astype(np.float32)
    out = resample(vol, (2.0, 1.3, 0.9), (0.8, 0.8, 0.8))
    zz, yy, xx = np.meshgrid(*(np.arange(n) * 0.8 for n in out.shape), indexing="ij")
    inside = (zz <= 22) & (yy <= 14 * 1.3) & (xx <= 10 * 0.9)
    np.testing.assert_allclose(out[inside], (3 * zz - 2 * yy + xx)[inside], atol=1e-3)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="3-D"):
        resample(np.zeros((4, 4)), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="positive"):
        resample(np.zeros((4, 4, 4)), (1, 0, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="order"):
        resample(np.zeros((4, 4, 4)), (1, 1, 1), (1, 1, 1), order=3)
