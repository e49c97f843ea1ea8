"""Bring feature-grid maps back to the scan: upsample to the model's input crop, un-crop into the
stored volume, and write NIfTI files aligned with the source scan.

A grid cell (h, i, j) summarises the cropped input block z in [3h, 3h+3), y in [i Y/D1, (i+1) Y/D1),
x in [j X/D2, (j+1) X/D2) (geometry.py). Trilinear interpolation with `align_corners=False` puts
each cell's value at that block's centre, so the upsampled map lines up with the crop. The crop is
a centre crop/pad of the stored volume (geometry.crop_or_pad_slices), so un-cropping places the map
back in stored voxels (regions the crop cut away get 0). The stored volume's `affine` attribute maps
stored voxels to world RAS+ mm, so a NIfTI written with it opens over the original CT in 3D Slicer
or ITK-SNAP (they align images by world coordinates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.model.metrics import as_numpy, normalize_attention
from ctplatform.geometry import crop_or_pad_slices


def upsample_grid(grid_map: Any, input_shape: tuple[int, int, int], mode: str = "trilinear") -> np.ndarray:
    """float32 [Z, Y, X] (the model's input crop) from a map [H, D1, D2] (or masks, mode="nearest")."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(np.ascontiguousarray(as_numpy(grid_map), dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(m, size=tuple(input_shape), mode=mode, **kwargs)[0, 0].numpy()


def uncrop(crop: np.ndarray, stored_shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    """Inverse of geometry.center_crop_or_pad: place a crop back into an array of `stored_shape`."""
    out = np.full(tuple(stored_shape), fill, dtype=crop.dtype)
    src, dst = [], []
    for a, b, c, d in crop_or_pad_slices(tuple(stored_shape), crop.shape):
        src.append(slice(a, b))
        dst.append(slice(c, d))
    out[tuple(src)] = crop[tuple(dst)]
    return out


def heatmap_in_stored_grid(
    grid_map: Any, input_shape: tuple[int, int, int], stored_shape: tuple[int, int, int], normalize: bool = True
) -> np.ndarray:
    """A grid map (raw HiResCAM / Grad-CAM) as float32 on the stored volume's voxels, in [0, 1] when normalised."""
    m = as_numpy(grid_map).astype(np.float32)
    if normalize:
        m = normalize_attention(m)
    return uncrop(upsample_grid(m, input_shape), stored_shape)


def write_heatmap_nifti(
    path: str | Path,
    grid_map: Any,
    input_shape: tuple[int, int, int],
    stored_shape: tuple[int, int, int],
    affine: Any,
) -> Path:
    """Write the normalised heatmap of one label as NIfTI (uint8 with a 1/255 scale: small files).

    `affine` is the stored volume's `affine` attribute (4x4 voxel -> world RAS+ mm).
    """
    import nibabel as nib

    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4; got {aff.shape} (the stored volume has no usable `affine`)")
    data = heatmap_in_stored_grid(grid_map, input_shape, stored_shape)
    img = nib.Nifti1Image(np.round(data * 255).astype(np.uint8), aff)
    img.header["scl_slope"] = 1.0 / 255
    img.header["scl_inter"] = 0.0
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)  # scanner coordinates
    img.set_sform(aff, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
