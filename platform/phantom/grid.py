"""Voxel grids in the patient frame and the primitive shapes the phantom is drawn with.

Patient frame (millimetres), the same axis order and directions as the store (I-P-L):
  z toward the feet (0 at the lung apices), y toward the back (0 at the body centre),
  x toward the patient's LEFT (0 on the midline).
Every shape is a function of broadcastable coordinate arrays, so the same code draws a whole slab,
a small box around one lesion, or a coarse planning grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Point = tuple[float, float, float]  # (z, y, x) in mm


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid: voxel (i, j, k) sits at origin + (i, j, k) * spacing (mm, patient frame)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, a: int) -> np.ndarray:
        return (self.origin[a] + np.arange(self.shape[a], dtype=np.float32) * self.spacing[a]).astype(np.float32)

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z [Z,1,1], y [1,Y,1], x [1,1,X]) coordinate arrays."""
        return (
            self.axis(0)[:, None, None],
            self.axis(1)[None, :, None],
            self.axis(2)[None, None, :],
        )

    def slab(self, z0: int, z1: int) -> "Grid":
        """The sub-grid of slices [z0, z1)."""
        z0, z1 = max(z0, 0), min(z1, self.shape[0])
        return Grid(
            (z1 - z0, self.shape[1], self.shape[2]),
            self.spacing,
            (self.origin[0] + z0 * self.spacing[0], self.origin[1], self.origin[2]),
        )

    def box(self, lo: Point, hi: Point) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the mm box [lo, hi] (clipped to the grid); None when it misses the grid."""
        out = []
        for a in range(3):
            i0 = int(np.floor((lo[a] - self.origin[a]) / self.spacing[a]))
            i1 = int(np.ceil((hi[a] - self.origin[a]) / self.spacing[a])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[a])
            if i0 >= i1:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def box_coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = self.axis(0)[sl[0]][:, None, None]
        y = self.axis(1)[sl[1]][None, :, None]
        x = self.axis(2)[sl[2]][None, None, :]
        return z, y, x


def ellipsoid_value(z, y, x, center: Point, radii: Point, rotation: np.ndarray | None = None):
    """Normalised ellipsoid radius squared: < 1 inside. `rotation` maps local axes to (z, y, x)."""
    dz, dy, dx = z - center[0], y - center[1], x - center[2]
    if rotation is None:
        return (dz / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dx / radii[2]) ** 2
    r = rotation
    q0 = r[0, 0] * dz + r[1, 0] * dy + r[2, 0] * dx
    q1 = r[0, 1] * dz + r[1, 1] * dy + r[2, 1] * dx
    q2 = r[0, 2] * dz + r[1, 2] * dy + r[2, 2] * dx
    return (q0 / radii[0]) ** 2 + (q1 / radii[1]) ** 2 + (q2 / radii[2]) ** 2


def segment_distance(z, y, x, p0: Point, p1: Point):
    """Distance (mm) from each point to the segment p0-p1, and the position t in [0, 1] along it."""
    d = np.subtract(p1, p0, dtype=np.float64)
    dd = float(d @ d) or 1e-9
    wz, wy, wx = z - p0[0], y - p0[1], x - p0[2]
    t = np.clip((wz * d[0] + wy * d[1] + wx * d[2]) / dd, 0.0, 1.0)
    ez, ey, ex = wz - t * d[0], wy - t * d[1], wx - t * d[2]
    return np.sqrt(ez * ez + ey * ey + ex * ex), t


def segment_box(p0: Point, p1: Point, margin: float) -> tuple[Point, Point]:
    lo = tuple(min(a, b) - margin for a, b in zip(p0, p1))
    hi = tuple(max(a, b) + margin for a, b in zip(p0, p1))
    return lo, hi  # type: ignore[return-value]


def rotation_from_axis(axis: Point, helper: Point = (0.0, 1.0, 0.0)) -> np.ndarray:
    """A rotation whose first column is `axis` (normalised); columns are the local axes in (z, y, x)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    h = np.asarray(helper, dtype=np.float64)
    v = h - (h @ u) * u
    if np.linalg.norm(v) < 1e-6:
        v = np.array([1.0, 0.0, 0.0]) - u[0] * u
    v = v / np.linalg.norm(v)
    w = np.cross(u, v)
    return np.stack([u, v, w], axis=1)


def catmull_rom(points: list[Point], per_segment: int = 8) -> list[Point]:
    """A smooth curve through `points` (uniform Catmull-Rom), as a dense polyline."""
    p = np.asarray(points, dtype=np.float64)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        for t in np.linspace(0.0, 1.0, per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(
                0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
            )
    out.append(p[-1])
    return [tuple(map(float, q)) for q in out]  # type: ignore[misc]
