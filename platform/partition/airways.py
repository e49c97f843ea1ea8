"""Airway removal for the improved method: the trachea and main bronchi must not join the lungs.

Steps 1-3 of the lung pipeline keep the trachea (enclosed air) and the bronchi, which connect both
lungs into one 3D component and put mediastinal air into "lung". The airway lumen is nearly pure
air (about -1000 HU) while lung parenchyma is about -850 HU, so the airway tree is grown from the
trachea as the 6-connected pure-air region (HU < `airway_hu`) inside the lung mask that contains
seed voxels near the midline of the upper lungs. Leaks into emphysematous lung are caught by
explosion control: if the grown tree is larger than `max_airway_ml`, stricter thresholds are tried,
and when every one leaks nothing is removed (the QC row says so). The found tree is dilated by
about 2 mm so the partial-volume wall voxels around the lumen go with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctplatform.partition.lungs import FACE_6, bounding_box

#: Thresholds tried in order; each is stricter (closer to pure air) than the one before.
THRESHOLD_STEPS_HU: tuple[float, ...] = (0.0, -25.0, -40.0)


@dataclass(frozen=True)
class AirwayResult:
    removed: np.ndarray | None  # bool [z, y, x] voxels taken out of the lungs (None: nothing found)
    volume_ml: float  # lumen volume before dilation
    threshold_hu: float | None
    status: str  # "removed" | "not_found" | "leak"


def _seed_region(lungs_box: np.ndarray, spacing_mm: tuple[float, float, float], band_mm: float) -> np.ndarray:
    """bool [z, y, x] in the lungs' box: the upper third of the lungs, within band_mm of their midline."""
    z, _, x = lungs_box.shape
    seed = np.zeros(lungs_box.shape, dtype=bool)
    half = max(1, int(round(band_mm / spacing_mm[2])))
    centre = x // 2
    seed[: max(1, z // 3), :, max(0, centre - half) : centre + half + 1] = True
    return seed


def find_airways(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing_mm: tuple[float, float, float],
    airway_hu: float = -950.0,
    max_airway_ml: float = 250.0,
    band_mm: float = 15.0,
    dilate_mm: float = 2.0,
) -> AirwayResult:
    """The trachea and bronchi inside `lungs` (see module docstring)."""
    box = bounding_box(lungs)
    if box is None:
        return AirwayResult(None, 0.0, None, "not_found")
    sub_lungs = lungs[box]
    sub_hu = hu[box]
    seed = _seed_region(sub_lungs, spacing_mm, band_mm)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    leaked = False
    for step in THRESHOLD_STEPS_HU:
        t = airway_hu + step
        air = sub_lungs & (sub_hu < t)
        labels, n = ndimage.label(air, structure=FACE_6)
        if n == 0:
            continue
        seeded = np.unique(labels[seed & air])
        seeded = seeded[seeded > 0]
        if seeded.size == 0:
            continue
        tree = np.isin(labels, seeded)
        volume_ml = float(tree.sum()) * voxel_ml
        if volume_ml > max_airway_ml:
            leaked = True
            continue
        removed = np.zeros(lungs.shape, dtype=bool)
        removed[box] = _dilate_within(tree, sub_lungs, spacing_mm, dilate_mm)
        return AirwayResult(removed, volume_ml, t, "removed")
    return AirwayResult(None, 0.0, None, "leak" if leaked else "not_found")


def _dilate_within(tree: np.ndarray, lungs: np.ndarray, spacing_mm: tuple[float, float, float], mm: float) -> np.ndarray:
    """Dilate the lumen by about `mm` (per-axis voxel radius), restricted to the lung mask."""
    radius = [max(1, int(round(mm / s))) for s in spacing_mm]
    box = bounding_box(tree)
    if box is None:
        return tree
    grown = tuple(
        slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, radius, tree.shape, strict=True)
    )
    structure = np.ones([2 * r + 1 for r in radius], dtype=bool)
    out = np.zeros_like(tree)
    out[grown] = ndimage.binary_dilation(tree[grown], structure=structure) & lungs[grown]
    return out
