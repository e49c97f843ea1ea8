"""Drawing placed lesions on a grid: HU changes plus one boolean mask per label they make positive.

Each lesion is restricted to the organ its label allows (a lung label to its side's pleural cavity,
a mediastinal one to the mediastinum), so masks never leave their allowed region. Drawing uses only
coordinates and the organ map already painted, never random numbers, so a slab drawn on its own
matches the same slab of a whole-volume drawing.
"""

from __future__ import annotations

import numpy as np

from ctplatform.phantom.anatomy import HU, ORGAN_CODES, Patient
from ctplatform.phantom.grid import Grid, ellipsoid_value, segment_distance
from ctplatform.phantom.lesions import LOBES, SIDE_CODE, Blob, Lesion
from ctplatform.phantom.paint import heart_mask

#: Lung lesions in painting order; a later one overwrites an earlier one where they meet, so the
#: earlier one's mask loses those voxels (a nodule inside ground glass is not ground glass).
LUNG_PAINT_ORDER: tuple[tuple[str, ...], ...] = (
    ("lung_emphysema",), ("lung_groundglass",), ("lung_consolidation",), ("lung_pleural_effusion",),
    ("lung_atelectasis",), ("lung_nodule", "lung_nodulegr1cm", "lung_mass"), ("lung_pneumothorax",),
)


def draw_lesions(p: Patient, lesions: list[Lesion], grid: Grid, hu: np.ndarray, org: np.ndarray) -> dict[str, np.ndarray]:
    """Paint every lesion on (hu, org) in place; returns label -> bool mask on `grid`."""
    masks: dict[str, np.ndarray] = {}

    def add(label: str, box, m: np.ndarray) -> None:
        if not m.any():
            return
        full = masks.setdefault(label, np.zeros(grid.shape, dtype=bool))
        if box is None:
            full |= m
        else:
            full[box] |= m

    order = ("emphysema", "groundglass", "consolidation", "effusion", "atelectasis", "nodule", "mass",
             "pneumothorax", "plaque", "calcification", "nodes")
    for kind in order:
        for les in (les for les in lesions if les.kind == kind):
            _DRAW[kind](p, les, grid, hu, org, add)
    covered = np.zeros(grid.shape, dtype=bool)
    for group in reversed(LUNG_PAINT_ORDER):
        present = [lab for lab in group if lab in masks]
        for lab in present:
            masks[lab] &= ~covered
        for lab in present:
            covered |= masks[lab]
    # later painting (e.g. an enlarged lymph node pushing the lung back) can move a voxel's organ
    lung = np.isin(org, (ORGAN_CODES["right_lung"], ORGAN_CODES["left_lung"]))
    for lab, m in masks.items():
        m &= lung if lab.startswith("lung_") else ~lung
    for lab in [lab for lab, m in masks.items() if not m.any()]:
        del masks[lab]
    if p.cardiomegaly:  # the enlarged heart itself
        add("heart_cardiomegaly", None, org == ORGAN_CODES["heart"])
    if p.pericardial_effusion_mm > 0:
        add("heart_pericardial_effusion", None, _pericardial_fluid(p, grid) & (org == ORGAN_CODES["heart"]))
    return masks


def lesion_footprint(p: Patient, les: Lesion, grid: Grid, org: np.ndarray) -> np.ndarray:
    """Voxels a lesion would take on `grid` (used on the coarse plan to keep lesions apart)."""
    masks: dict[str, np.ndarray] = {}

    def add(label: str, box, m: np.ndarray) -> None:
        full = masks.setdefault(label, np.zeros(grid.shape, dtype=bool))
        if box is None:
            full |= m
        else:
            full[box] |= m

    _DRAW[les.kind](p, les, grid, np.zeros(grid.shape, dtype=np.float32), org.copy(), add)
    out = np.zeros(grid.shape, dtype=bool)
    for m in masks.values():
        out |= m
    return out


def _blob_union(grid: Grid, blobs: list[Blob]):
    """Box covering all blobs and the union mask inside it."""
    lo = np.min([np.asarray(c) - max(r) - 1 for c, r, _ in blobs], axis=0)
    hi = np.max([np.asarray(c) + max(r) + 1 for c, r, _ in blobs], axis=0)
    box = grid.box(tuple(lo), tuple(hi))
    if box is None:
        return None, None
    z, y, x = grid.box_coords(box)
    m = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    for c, r, rot in blobs:
        m |= ellipsoid_value(z, y, x, c, r, rot) < 1.0
    return box, m


def _side_mask(o: np.ndarray, sides) -> np.ndarray:
    return np.isin(o, [SIDE_CODE[s] for s in sides])


def _draw_solid(value: float):
    def draw(p, les: Lesion, grid, hu, org, add) -> None:
        box, m = _blob_union(grid, les.blobs)
        if box is None:
            return
        m &= org[box] == SIDE_CODE[les.side]
        hu[box][m] = value
        for label in les.labels:
            add(label, box, m)
    return draw


def _draw_consolidation(p, les: Lesion, grid, hu, org, add) -> None:
    box, m = _blob_union(grid, les.blobs)
    if box is None:
        return
    z, y, x = grid.box_coords(box)
    m &= (org[box] == SIDE_CODE[les.side]) & (np.broadcast_to(p.lobe(z, y, x), m.shape) == LOBES[les.lobe])
    h = hu[box]
    h[m & (h > -950.0)] = 38.0  # bronchial lumens stay air: air bronchograms
    add("lung_consolidation", box, m)


def _draw_groundglass(p, les: Lesion, grid, hu, org, add) -> None:
    box, m = _blob_union(grid, les.blobs)
    if box is None:
        return
    m &= _side_mask(org[box], les.sides)
    h = hu[box]
    h[m] = np.maximum(h[m], -580.0)  # hazy parenchyma; vessels stay visible through it
    add("lung_groundglass", box, m)


def _draw_emphysema(p, les: Lesion, grid, hu, org, add) -> None:
    for blob in les.blobs:
        box, m = _blob_union(grid, [blob])
        if box is None:
            continue
        m &= _side_mask(org[box], ("right", "left"))
        h = hu[box]
        h[m & (h < -600.0)] = -985.0
        add("lung_emphysema", box, m)


def _posterior_depth(p: Patient, grid: Grid):
    """Depth (mm, along y) in front of the posterior cavity wall, and h = z / L."""
    z, y, x = grid.coords()
    a, b, yc = p.cavity(z)
    wall = yc + b * np.sqrt(np.clip(1.0 - (x / a) ** 2, 0.0, 1.0))
    return wall - y, z / p.L


def _draw_effusion(p, les: Lesion, grid, hu, org, add) -> None:
    d, h = _posterior_depth(p, grid)
    for side in les.sides:
        t = les.params["depth"][side] * np.clip((h - 0.3) / 0.6, 0.0, 1.0) ** 0.7
        m = (d < t) & (org == SIDE_CODE[side])
        hu[m] = 12.0
        add("lung_pleural_effusion", None, m)


def _draw_atelectasis(p, les: Lesion, grid, hu, org, add) -> None:
    d, h = _posterior_depth(p, grid)
    eff = les.params.get("effusion_depth", {})
    for side in les.sides:
        t0 = eff.get(side, 0.0) * np.clip((h - 0.3) / 0.6, 0.0, 1.0) ** 0.7
        t = les.params["thickness"][side] * np.clip((h - 0.45) / 0.45, 0.0, 1.0) ** 0.5
        m = (d >= t0) & (d < t0 + t) & (org == SIDE_CODE[side])
        hu[m] = 35.0
        add("lung_atelectasis", None, m)


def _draw_pneumothorax(p, les: Lesion, grid, hu, org, add) -> None:
    z, y, x = grid.coords()
    a, b, yc = p.cavity(z)
    front = yc - b * np.sqrt(np.clip(1.0 - (x / a) ** 2, 0.0, 1.0))
    h = z / p.L
    t = les.size_mm * np.sqrt(np.clip(np.sin(np.pi * (h - 0.03) / 0.8), 0.0, 1.0))
    d = y - front
    side = SIDE_CODE[les.side]
    m = (d < t) & (org == side)
    line = (d >= t) & (d < t + 1.5) & (org == side) & (t > 0)
    hu[m] = HU["air"]
    hu[line] = -350.0  # the visceral pleural line
    add("lung_pneumothorax", None, m)


def _draw_aortic(p, les: Lesion, grid, hu, org, add) -> None:
    athero = les.kind == "plaque"
    for wall, (extent, calc, R), (p0, p1) in les.blobs:
        r = max(extent, calc) + 3.0
        box = grid.box(tuple(c - r for c in wall), tuple(c + r for c in wall))
        if box is None:
            continue
        z, y, x = grid.box_coords(box)
        d, _ = segment_distance(z, y, x, p0, p1)
        dw = np.sqrt((z - wall[0]) ** 2 + (y - wall[1]) ** 2 + (x - wall[2]) ** 2)
        o, h = org[box], hu[box]
        ok = np.isin(o, (ORGAN_CODES["great_vessels"], ORGAN_CODES["mediastinum"]))
        if athero:
            plaque = (dw < extent) & (d > R - 2.8) & (d < R + 0.8) & ok
            h[plaque] = 22.0
            o[plaque] = ORGAN_CODES["great_vessels"]
            add("great_vessel_atherosclerosis", box, plaque)
        core = (dw < calc) & (d > R - 2.2) & (d < R + 1.6) & ok
        h[core] = 950.0
        o[core] = ORGAN_CODES["great_vessels"]
        add("great_vessel_calcification", box, core)
        if athero:
            add("great_vessel_atherosclerosis", box, core)


def _draw_nodes(p, les: Lesion, grid, hu, org, add) -> None:
    box, m = _blob_union(grid, les.blobs)
    if box is None:
        return
    o = org[box]
    m &= np.isin(o, (ORGAN_CODES["mediastinum"], ORGAN_CODES["right_lung"], ORGAN_CODES["left_lung"]))
    hu[box][m] = HU["node"]
    o[m] = ORGAN_CODES["mediastinum"]
    add("mediastinum_lymphadenopathy", box, m)


def _pericardial_fluid(p: Patient, grid: Grid) -> np.ndarray:
    out = np.zeros(grid.shape, dtype=bool)
    box, outer = heart_mask(p, grid, p.epicardial_fat + p.pericardial_effusion_mm)
    if box is None:
        return out
    inner = np.zeros(grid.shape, dtype=bool)
    b2, m2 = heart_mask(p, grid, p.epicardial_fat)
    if b2 is not None:
        inner[b2] = m2
    out[box] = outer & ~inner[box]
    return out


_DRAW = {
    "nodule": _draw_solid(40.0),
    "mass": _draw_solid(38.0),
    "consolidation": _draw_consolidation,
    "groundglass": _draw_groundglass,
    "emphysema": _draw_emphysema,
    "effusion": _draw_effusion,
    "atelectasis": _draw_atelectasis,
    "pneumothorax": _draw_pneumothorax,
    "plaque": _draw_aortic,
    "calcification": _draw_aortic,
    "nodes": _draw_nodes,
}
