"""Where the body is, coarsely: to tell a lung cut by a crop's edge from air outside the patient.

The improved border clearing (lungs.py) keeps a border-touching air component only when it is not
pure air and lies mostly inside the body. "Inside" is judged per pixel by enclosure: body tissue on
both sides along its row, or on both sides along its column. The body is the largest 3D tissue
component (HU >= threshold) on a grid of about 4 mm, so the table and its foam pad (separated from
the patient by air or pad) are not body. Where the body itself touches an edge of the slice (the
field of view or a crop cuts through the patient), that edge counts as body: a lung reaching a
crop's edge is enclosed by the chest wall and mediastinum on its other sides, while the pad under
the patient has no body below it and outside air has none beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


BODY_GRID_MM = 4.0
FACE_6 = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class BodyExtent:
    """Per coarse row and column, the open interval (in full-resolution voxels) the body encloses."""

    factor: tuple[int, int, int]
    row_lo: np.ndarray  # [Zc, Yc] x below which nothing is enclosed along the row
    row_hi: np.ndarray  # [Zc, Yc]
    col_lo: np.ndarray  # [Zc, Xc] y bounds along the column
    col_hi: np.ndarray  # [Zc, Xc]

    def enclosed(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """bool per voxel (full-resolution coordinates): body on both sides along x or along y."""
        fz, fy, fx = self.factor
        zc, yc, xc = z // fz, y // fy, x // fx
        along_x = (self.row_lo[zc, yc] < x) & (x < self.row_hi[zc, yc])
        along_y = (self.col_lo[zc, xc] < y) & (y < self.col_hi[zc, xc])
        return along_x | along_y


def body_extent(hu: np.ndarray, spacing_mm: tuple[float, float, float], hu_threshold: float = -300.0) -> BodyExtent:
    """The body's enclosure intervals from a coarse sample of the volume (module docstring)."""
    factor = tuple(max(1, int(round(BODY_GRID_MM / s))) for s in spacing_mm)
    fz, fy, fx = factor
    nz, ny, nx = hu.shape
    coarse = hu[::fz, ::fy, ::fx] >= hu_threshold
    labels, n = ndimage.label(coarse, structure=FACE_6)
    if n:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = labels == int(np.argmax(sizes))
    else:
        body = np.zeros_like(coarse)
    zc, yc, xc = body.shape
    big = np.iinfo(np.int64).max // 4

    def first_last(axis: int, n_full: int, f: int) -> tuple[np.ndarray, np.ndarray]:
        has = body.any(axis=axis)
        first = np.argmax(body, axis=axis).astype(np.int64) * f
        last = (body.shape[axis] - 1 - np.argmax(np.flip(body, axis=axis), axis=axis)).astype(np.int64) * f + f - 1
        lo = np.where(has, first, big)  # no body in the row: nothing is enclosed
        hi = np.where(has, last, -big)
        # An edge the body touches in this slice (a cut through the patient) counts as body.
        edge_lo = np.take(body, 0, axis=axis).any(axis=1)  # per slice
        edge_hi = np.take(body, body.shape[axis] - 1, axis=axis).any(axis=1)
        lo = np.where(edge_lo[:, None], -1, lo)
        hi = np.where(edge_hi[:, None], n_full, hi)
        return lo, hi

    row_lo, row_hi = first_last(2, nx, fx)
    col_lo, col_hi = first_last(1, ny, fy)
    return BodyExtent(factor, row_lo, row_hi, col_lo, col_hi)  # type: ignore[arg-type]
