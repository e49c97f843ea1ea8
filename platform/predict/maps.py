"""HiResCAM maps back on the input scan's own voxel grid, written as NIfTI that overlays the input.

The chain a voxel of the input goes through on its way into the model is affine and axis-aligned:
original voxel --permute/flip (scans.orient)--> stored voxel --scale (scans.resample: voxel 0 kept)-->
resampled voxel --shift (geometry.crop_or_pad_slices)--> crop voxel --/3, /(Y/D1), /(X/D2)--> grid cell.
So each original axis maps to one grid axis by `g = a * i + b`, and the map on the original grid is
three 1-D linear interpolations of the small [H, D1, D2] map (no 3-D resampling of a large volume).
Interpolation follows eval's upsampling (torch `align_corners=False`: a cell's value sits at its
block's centre, edges clamped), and voxels outside the model's crop get 0. The NIfTI carries the
input's own affine, so 3D Slicer and ITK-SNAP overlay it on the input file with no registration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

from ctplatform.geometry import STORE_AXCODES, crop_or_pad_slices


def original_affine(store_affine: np.ndarray, original_orientation: str, original_shape: tuple[int, ...]) -> np.ndarray:
    """The affine of the source array as read (its own axis order), from the store-oriented one.

    scans.orient.to_store_orientation computed store = original @ T(original codes -> I-P-L); this
    inverts T, so a map written with it lies on exactly the source file's voxels.
    """
    t = ornt_transform(axcodes2ornt(tuple(original_orientation)), axcodes2ornt(STORE_AXCODES))
    return np.asarray(store_affine, dtype=np.float64) @ np.linalg.inv(inv_ornt_aff(t, tuple(original_shape)))


def _interp_matrix(coords: np.ndarray, n: int, inside: np.ndarray) -> np.ndarray:
    """float32 [len(coords), n]: linear interpolation weights at float positions (clamped); rows
    outside the crop are zero."""
    g = np.clip(coords, 0.0, n - 1)
    i0 = np.floor(g).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = g - i0
    rows = np.arange(len(coords))
    out = np.zeros((len(coords), n), np.float64)
    np.add.at(out, (rows, i0), 1.0 - w)
    np.add.at(out, (rows, i1), w)
    out[~inside] = 0.0
    return out.astype(np.float32)


def grid_to_voxels(
    grid_map: np.ndarray,
    input_shape: tuple[int, int, int],
    stored_shape: tuple[int, int, int],
    voxel_to_stored: np.ndarray,
    out_shape: tuple[int, int, int],
) -> np.ndarray:
    """float32 `out_shape` map from a grid map [H, D1, D2].

    `voxel_to_stored` (4x4) maps an output voxel index to a (continuous) stored-volume index; it must
    be axis-aligned (a signed permutation with scaling), which every grid in the chain above is.
    """
    m = np.asarray(voxel_to_stored, dtype=np.float64)
    grid = np.asarray(grid_map, dtype=np.float32)
    crop = crop_or_pad_slices(tuple(stored_shape), tuple(input_shape))
    stored_axis = [int(np.argmax(np.abs(m[:3, k]))) for k in range(3)]
    if sorted(stored_axis) != [0, 1, 2]:
        raise ValueError("the voxel-to-stored transform is not axis-aligned")
    weights: dict[int, np.ndarray] = {}
    for k, j in enumerate(stored_axis):
        u = m[j, k] * np.arange(out_shape[k]) + m[j, 3]  # stored index along axis j
        a, _, c, _ = crop[j]
        in_crop = u - a + c  # crop index
        coords = (in_crop + 0.5) * grid.shape[j] / input_shape[j] - 0.5
        inside = (u >= -0.5) & (u < stored_shape[j] - 0.5) & (in_crop >= -0.5) & (in_crop < input_shape[j] - 0.5)
        weights[j] = _interp_matrix(coords, grid.shape[j], inside)
    # One separable product (a Tucker product of the small grid with three interpolation matrices),
    # written straight in the output's axis order: the full-size array is made once.
    out_letters = "".join("abc"[stored_axis[k]] for k in range(3))
    return np.einsum(f"hij,ah,bi,cj->{out_letters}", grid, weights[0], weights[1], weights[2], optimize=True)


def map_on_original(
    grid_map: np.ndarray,
    input_shape: tuple[int, int, int],
    stored_shape: tuple[int, int, int],
    stored_affine: np.ndarray,
    orig_affine: np.ndarray,
    orig_shape: tuple[int, int, int],
) -> np.ndarray:
    """A grid map on the input scan's voxels (float32 `orig_shape`)."""
    voxel_to_stored = np.linalg.inv(np.asarray(stored_affine, dtype=np.float64)) @ np.asarray(orig_affine, dtype=np.float64)
    return grid_to_voxels(grid_map, input_shape, stored_shape, voxel_to_stored, orig_shape)


def map_on_crop(grid_map: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A grid map on the model's input crop (float32 input_shape), as eval's upsampling."""
    return grid_to_voxels(grid_map, input_shape, input_shape, np.eye(4), input_shape)


def write_map_nifti(path: str | Path, data: np.ndarray, affine: Any) -> Path:
    """A [0, 1] map as NIfTI: uint8 with scl_slope 1/255 (small files), qform and sform = `affine`."""
    import nibabel as nib

    aff = np.asarray(affine, dtype=np.float64)
    q = np.clip(data, 0, 1, dtype=np.float32)
    q *= 255
    q += 0.5
    img = nib.Nifti1Image(q.astype(np.uint8), aff)
    img.header["scl_slope"] = 1.0 / 255
    img.header["scl_inter"] = 0.0
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)  # scanner coordinates, as the input's own
    img.set_sform(aff, code=1)
    path = Path(path)
    nib.save(img, str(path))
    return path
