"""Grid masks: torch-equal downsampling, dilation, the fallback regions and cell-for-cell alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctplatform.config import GRID_VARIANTS
from ctplatform.geometry import ModelGeometry, crop_or_pad_slices
from ctplatform.partition.grid import _BITS, dilate, downsample_bits, grid_masks, heuristic_grid


def _torch_grid(organs: np.ndarray, grid: tuple[int, int, int], method: str) -> np.ndarray:
    out = []
    for code in (1, 2, 3):
        t = torch.from_numpy((organs == code).astype(np.float32))[None, None]
        out.append((F.interpolate(t, size=grid, mode=method)[0, 0] > 0).numpy())
    return np.stack(out)


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    organs = np.zeros(shape, dtype=np.uint8)
    for _ in range(10):
        z, y, x = (int(rng.integers(0, n)) for n in shape)
        dz, dy, dx = (int(rng.integers(1, 5)) for _ in range(3))
        organs[z : z + dz, y : y + dy, x : x + dx] = rng.integers(1, 4)
    return organs


@pytest.mark.parametrize("method", ["nearest", "trilinear", "area"])
def test_downsampling_equals_torch_interpolate(method):
    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(4, 90, size=3))
        grid = tuple(int(rng.integers(1, n + 1)) for n in shape)
        organs = _blobs(rng, shape)
        ours = downsample_bits(_BITS[organs], grid, method)
        ours = np.stack([(ours & (1 << k)) != 0 for k in range(3)])
        assert np.array_equal(ours, _torch_grid(organs, grid, method)), (shape, grid)


def test_paper_geometry_equals_torch():
    rng = np.random.default_rng(1)
    organs = np.zeros((405, 420, 420), dtype=np.uint8)
    organs[100:300, 60:350, 40:200] = 1
    organs[90:310, 70:340, 230:390] = 2
    organs[150:250, 100:250, 160:280] = 3
    organs[rng.random(organs.shape) < 1e-5] = 3  # isolated voxels test the > 0 rule
    geometry = ModelGeometry((405, 420, 420))
    masks = grid_masks(organs, geometry)
    assert set(masks) == set(GRID_VARIANTS)
    for method in ("nearest", "trilinear", "area"):
        assert masks[method].shape == (3, 135, 6, 6) and masks[method].dtype == np.bool_
        assert np.array_equal(masks[method], _torch_grid(organs, (135, 6, 6), method))


def test_dilation_equals_the_published_conv3d():
    rng = np.random.default_rng(2)
    mask = rng.random((3, 9, 6, 6)) < 0.05
    padded = F.pad(torch.from_numpy(mask.astype(np.float32)), [1, 1, 1, 1, 1, 1])
    conv = F.conv3d(padded[:, None], torch.ones(1, 1, 3, 3, 3))[:, 0]
    assert np.array_equal(dilate(mask), torch.clamp(conv, 0, 1).numpy() > 0)


def test_heuristic_grid_is_the_published_fallback_for_six_columns():
    g = heuristic_grid(ModelGeometry((405, 420, 420)))
    assert g.shape == (3, 135, 6, 6)
    right, left, mediastinum = (g[k, 0, 0] for k in range(3))
    assert right.tolist() == [True] * 3 + [False] * 3  # published [:, :, 0:3]
    assert left.tolist() == [False] * 3 + [True] * 3  # [:, :, 3:]
    assert mediastinum.tolist() == [False, True, True, True, True, False]  # [:, :, 1:5]
    assert g.all(axis=(1, 2))[:, None].any()  # every slice group and row
    masks = grid_masks(np.zeros((10, 10, 10), np.uint8), ModelGeometry((405, 420, 420)), fallback=True)
    assert np.array_equal(masks["nearest"], g) and np.array_equal(masks["area-dilated"], dilate(g))


SMALL = ModelGeometry((30, 256, 256), custom_conv_padding=1)  # grid 10 x 8 x 8, cells 3 x 32 x 32


@pytest.mark.parametrize(
    "stored_shape",
    [(30, 256, 256), (37, 301, 263), (24, 200, 230), (41, 255, 300), (29, 257, 190)],
)
def test_marker_block_lands_in_its_cell_for_every_variant(stored_shape):
    """A block filling one cell of the cropped input, placed in stored coordinates, marks that cell only."""
    h_n, d1, d2 = SMALL.grid
    z_in, y_in, x_in = SMALL.input_shape
    (zs, _, zd, _), (ys, _, yd, _), (xs, _, xd, _) = crop_or_pad_slices(stored_shape, SMALL.input_shape)
    organs = np.zeros(stored_shape, dtype=np.uint8)
    cells = {3: (4, 3, 4), 1: (6, 5, 2), 2: (2, 2, 5)}  # organ code -> (h, i, j), inside every stored shape
    for code, (h, i, j) in cells.items():
        z0, y0, x0 = 3 * h, i * y_in // d1, j * x_in // d2
        z1, y1, x1 = 3 * h + 3, (i + 1) * y_in // d1, (j + 1) * x_in // d2
        # input coordinate c is stored coordinate c - dst_start + src_start
        lo, hi = np.array([z0 - zd + zs, y0 - yd + ys, x0 - xd + xs]), np.array([z1 - zd + zs, y1 - yd + ys, x1 - xd + xs])
        assert (lo >= 0).all() and (hi <= np.array(stored_shape)).all()
        organs[z0 - zd + zs : z1 - zd + zs, y0 - yd + ys : y1 - yd + ys, x0 - xd + xs : x1 - xd + xs] = code
    masks = grid_masks(organs, SMALL)
    for variant, mask in masks.items():
        for code, (h, i, j) in cells.items():
            expected = np.zeros(SMALL.grid, dtype=bool)
            expected[h, i, j] = True
            if variant.endswith("-dilated"):
                expected = dilate(expected[None])[0]
            assert np.array_equal(mask[code - 1], expected), (variant, code, stored_shape)


def test_unknown_variant_and_bad_codes_are_refused():
    with pytest.raises(ValueError, match="unknown grid variants"):
        grid_masks(np.zeros((30, 256, 256), np.uint8), SMALL, ["bicubic"])
    with pytest.raises(ValueError, match="organ codes"):
        grid_masks(np.full((30, 256, 256), 7, np.uint8), SMALL)


def test_organ_codes_and_bits_come_from_labels():
    from ctplatform import labels as L
    from ctplatform.partition import grid, organs

    assert (organs.RIGHT_LUNG, organs.LEFT_LUNG, organs.MEDIASTINUM) == tuple(L.ORGAN_CODES[o] for o in L.ORGANS)
    organ_map = np.array([[[0, 1, 2, 3]]], dtype=np.uint8)  # one row of each code
    masks = grid.unpack(grid._BITS[organ_map])
    assert masks[:, 0, 0].tolist() == [[False, True, False, False], [False, False, True, False], [False, False, False, True]]
