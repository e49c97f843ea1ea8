"""Canonical orientation: turn any voxel array with a world affine into the store's I-P-L order.

Affines follow nibabel: a 4x4 matrix mapping voxel indices to world RAS+ millimetres (+x toward the
patient's Right, +y Anterior, +z Superior). The stored orientation (geometry.STORE_AXCODES) has
axis 0 toward Inferior, 1 toward Posterior, 2 toward Left. Reorienting only permutes and flips
axes, so no voxel is interpolated; the returned affine keeps the exact world position of every
voxel (an oblique scan keeps its rotation in the affine and is mapped to its closest axes).
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import (
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from ctplatform.geometry import STORE_AXCODES

#: DICOM patient coordinates are LPS+; nibabel's world is RAS+: flip the first two axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def axis_codes(affine: np.ndarray) -> str:
    """Axis codes of a voxel array, e.g. 'LPS' (axis 0 increases toward the patient's left)."""
    return "".join(aff2axcodes(affine))


def voxel_spacing(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size along each array axis (norms of the affine's columns), in mm."""
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def to_store_orientation(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip `array` to I-P-L and return it with the affine of the new voxel grid."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("the scan's affine is degenerate (zero or non-finite voxel axes)")
    start = io_orientation(affine)
    transform = ornt_transform(start, axcodes2ornt(STORE_AXCODES))
    out = apply_orientation(array, transform)
    new_affine = affine @ inv_ornt_aff(transform, array.shape)
    # apply_orientation returns a view (flips, transposes). Resampling reads slabs of axis 0, so a
    # view whose axis 0 is the outermost in memory is kept as is (no copy of the whole volume, e.g.
    # a Fortran-ordered NIfTI or a flipped DICOM stack); anything else is made contiguous once.
    strides = [abs(s) for s in out.strides]
    if strides[0] < max(strides):
        out = np.ascontiguousarray(out)
    return out, new_affine
