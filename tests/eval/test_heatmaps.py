"""Heatmaps exported as NIfTI land where the grid cell lies in the source scan's world space."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from ctplatform.eval.heatmaps import heatmap_in_stored_grid, uncrop, upsample_grid, write_heatmap_nifti
from ctplatform.geometry import ModelGeometry, center_crop_or_pad, crop_or_pad_slices
from ctplatform.ingest.orient import to_store_orientation, voxel_spacing
from ctplatform.ingest.resample import resample, resampled_affine


def test_uncrop_inverts_center_crop_or_pad():
    rng = np.random.default_rng(0)
    vol = rng.random((10, 7, 12)).astype(np.float32)
    for target in [(6, 9, 4), (10, 7, 12), (14, 3, 20)]:
        crop = center_crop_or_pad(vol, target, fill=0)
        back = uncrop(crop, vol.shape)
        kept = np.zeros(vol.shape, bool)
        kept[tuple(slice(a, b) for a, b, _, _ in crop_or_pad_slices(vol.shape, target))] = True
        assert np.array_equal(back[kept], vol[kept]) and np.all(back[~kept] == 0)


def test_upsampled_cell_covers_its_input_block():
    grid = np.zeros((4, 3, 3), np.float32)
    grid[2, 1, 0] = 1.0
    up = upsample_grid(grid, (12, 30, 30))
    z, y, x = np.unravel_index(np.argmax(up), up.shape)
    assert 6 <= z < 9 and 10 <= y < 20 and 0 <= x < 10


def test_nifti_heatmap_aligns_with_source_scan(ct_dir, tmp_path):
    src = nib.load(ct_dir / "popi_thorax_256.nii.gz")
    data = np.asarray(src.dataobj, dtype=np.float32)
    # What ingest does: reorient to I-P-L, resample to the store spacing; the affine follows.
    stored, aff = to_store_orientation(data, src.affine)
    spacing = voxel_spacing(aff)
    target = (4.0, 4.0, 4.0)
    stored = resample(stored, spacing, target)
    aff = resampled_affine(aff, spacing, target)

    geom = ModelGeometry(input_shape=(36, 160, 96), custom_conv_padding=1)  # crops z, pads y and x
    h, d1, d2 = geom.grid
    cell = (3, 1, 1)  # off-centre (but not on the edge, where trilinear upsampling plateaus)
    grid_map = np.zeros(geom.grid, np.float32)
    grid_map[cell] = 5.0
    path = write_heatmap_nifti(tmp_path / "map.nii.gz", grid_map, geom.input_shape, stored.shape, aff)

    # expected world position: the cell's block centre in the crop -> stored voxel -> world
    zy_x = [(cell[0] + 0.5) * 3 - 0.5, (cell[1] + 0.5) * 160 / d1 - 0.5, (cell[2] + 0.5) * 96 / d2 - 0.5]
    offsets = [a - c for a, _, c, _ in crop_or_pad_slices(stored.shape, geom.input_shape)]
    expected = aff @ np.array([*(p + o for p, o in zip(zy_x, offsets)), 1.0])

    heat = nib.load(path)
    assert heat.shape == stored.shape and np.allclose(heat.affine, aff)
    exact = heatmap_in_stored_grid(grid_map, geom.input_shape, stored.shape)
    assert np.abs(heat.get_fdata() - exact).max() <= 0.5 / 255 + 1e-6  # uint8 storage
    on_source = resample_from_to(heat, src, order=1)  # into the original scan's voxels by world coords
    peak = np.unravel_index(np.argmax(on_source.get_fdata()), src.shape)
    found = src.affine @ np.array([*peak, 1.0])
    # The peak sits at the block centre: within one stored voxel plus one source voxel (feature cells
    # are 12-128 mm here, so a flipped axis or a wrong crop offset misses by far more).
    assert np.linalg.norm(found[:3] - expected[:3]) <= np.linalg.norm(target) + np.linalg.norm(src.header.get_zooms())
