"""Maps back on the input grid: the affine of the source array, and a hot grid cell landing on the
world position of its block; operating points."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctplatform.config import load_config
from ctplatform.geometry import crop_or_pad_slices
from ctplatform.model.operating_points import SOURCE_FALLBACK, SOURCE_VALIDATION, choose_operating_points
from ctplatform.model.packaged import preprocess_scan
from ctplatform.predict.maps import map_on_crop, map_on_original, original_affine
from ctplatform.scans.readers import read_scan

NIFTI = "chest_crop_mediastinum.nii.gz"
DEMO = ["model.input_shape=[36,96,96]", "model.custom_conv_padding=1", "ingest.spacing_mm=[4,3,3]"]


def test_original_affine_is_the_input_files_affine(ct_dir):
    path = ct_dir / NIFTI
    scan = read_scan(path)
    got = original_affine(scan.affine, scan.original_orientation, scan.original_shape)
    np.testing.assert_allclose(got, nib.load(path).affine, atol=1e-6)
    assert tuple(scan.original_shape) == nib.load(path).shape


@pytest.mark.parametrize("cell", [(2, 0, 2), (9, 2, 0), (5, 1, 1)])
def test_a_hot_cell_lands_on_its_blocks_world_position(ct_dir, cell):
    cfg = load_config(None, DEMO)
    g = cfg.model.geometry
    scan = read_scan(ct_dir / NIFTI)
    crop, stored_affine, stored_shape = preprocess_scan(scan, cfg)
    a_orig = original_affine(scan.affine, scan.original_orientation, scan.original_shape)
    grid = np.zeros(g.grid, np.float32)
    grid[cell] = 1.0
    m = map_on_original(grid, g.input_shape, stored_shape, stored_affine, a_orig, scan.original_shape)
    assert m.shape == tuple(scan.original_shape)
    # Where the cell's block centre is in the world: crop index -> stored index -> stored affine.
    centre_crop = np.array([(c + 0.5) * n / k - 0.5 for c, n, k in zip(cell, g.input_shape, g.grid)])
    starts = np.array([a - c for a, _, c, _ in crop_or_pad_slices(stored_shape, g.input_shape)])
    want = (stored_affine @ np.append(centre_crop + starts, 1.0))[:3]
    inside = m > 0.99 * m.max()
    idx = np.argwhere(inside).mean(axis=0)
    got = (a_orig @ np.append(idx, 1.0))[:3]
    cell_mm = np.array(g.input_shape) / np.array(g.grid) * np.array(cfg.ingest.spacing_mm)
    # the peak plateau may be clipped by the scan's edge: within one cell of the block's centre
    assert np.all(np.abs(got - want) <= cell_mm[[2, 1, 0]].max()), (got, want)


def test_map_on_crop_matches_torch_trilinear_upsampling():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    grid = rng.random((4, 3, 3)).astype(np.float32)
    shape = (12, 20, 17)
    want = F.interpolate(torch.from_numpy(grid)[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(map_on_crop(grid, shape), want.numpy(), atol=1e-5)


def test_operating_points_youden_and_fallback():
    y = np.zeros((6, 80))
    y[:3, 0] = 1
    logits = np.zeros((6, 80))
    logits[:, 0] = [3, 2, 1, -1, -2, -3]  # label 0 separable between 1 and -1
    y[:, 1] = 1  # label 1: no negatives -> fallback
    th, src = choose_operating_points(y, logits, fallback=0.4)
    p = 1 / (1 + np.exp(-np.array([1.0, -1.0])))
    assert p[1] < th[0] < p[0]
    assert src[0] == SOURCE_VALIDATION and src[1] == SOURCE_FALLBACK and th[1] == 0.4
