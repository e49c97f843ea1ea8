"""Abnormalities: where each goes (placed on the coarse plan) and how it is drawn (on any grid).

Every lesion is drawn inside the organ its label allows (a lung label inside that side's pleural
cavity, a mediastinal label inside the mediastinum), and contributes voxels to the mask of each
label it makes positive: a 14 mm nodule to `lung_nodule` and `lung_nodulegr1cm`, an atherosclerotic
plaque to `great_vessel_atherosclerosis` and its calcified core also to `great_vessel_calcification`.
Heart findings change the anatomy itself (heart size, pericardial fluid; see anatomy.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctplatform.phantom.anatomy import HU, ORGAN_CODES, Patient, heart_mask
from ctplatform.phantom.grid import Grid, Point, ellipsoid_value, rotation_from_axis, segment_distance
from ctplatform.phantom.planning import Plan

LOBES: dict[str, int] = {"RUL": 1, "RML": 2, "RLL": 3, "LUL": 4, "LLL": 5}
LOBE_SIDE: dict[str, str] = {"RUL": "right", "RML": "right", "RLL": "right", "LUL": "left", "LLL": "left"}
SIDE_CODE: dict[str, int] = {"right": ORGAN_CODES["right_lung"], "left": ORGAN_CODES["left_lung"]}
#: Mediastinal lymph node stations: (z, y, x) in units of (L, B, A).
NODE_STATIONS: dict[str, tuple[float, float, float]] = {
    "right paratracheal": (0.20, 0.12, -0.13),
    "subcarinal": (0.38, 0.38, 0.0),
    "prevascular": (0.23, -0.42, -0.02),
    "aortopulmonary window": (0.31, 0.10, 0.14),
}

Blob = tuple[Point, Point, Any]  # centre, radii, rotation (or None)


@dataclass
class Lesion:
    """One drawn abnormality and what the report says about it."""

    kind: str
    labels: tuple[str, ...]  # labels this lesion makes positive
    side: str | None = None  # right | left | None (both / not lateralised)
    lobe: str | None = None
    size_mm: float = 0.0
    blobs: list[Blob] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(self.params.get("sides", (self.side,) if self.side else ()))


class PlacementError(ValueError):
    pass


# -- placement ----------------------------------------------------------------------------------


def _pick(plan: Plan, rng, mask: np.ndarray, what: str) -> np.ndarray:
    pts = plan.points(mask)
    if len(pts) == 0:
        raise PlacementError(f"no room to place {what}; try a different seed or a smaller size")
    q = pts[rng.integers(len(pts))]
    return q + rng.uniform(-0.5, 0.5, 3) * np.asarray(plan.grid.spacing)


def _lobe_mask(plan: Plan, lobe: str, depth: float, zmax: float | None = None) -> np.ndarray:
    m = (plan.lobes == LOBES[lobe]) & (plan.depth >= depth)
    if zmax is not None:
        m &= plan.grid.coords()[0] < zmax
    return m


def _choose_lobe(rng, spec: dict[str, Any], lobes: tuple[str, ...] = tuple(LOBES)) -> str:
    if "lobe" in spec:
        lobe = str(spec["lobe"]).upper()
        if lobe not in LOBES:
            raise ValueError(f"unknown lobe {spec['lobe']!r}; use one of {list(LOBES)}")
        return lobe
    if "side" in spec:
        side = _side(spec["side"])
        lobes = tuple(lb for lb in lobes if LOBE_SIDE[lb] == side)
    return str(rng.choice(lobes))


def _side(value: Any) -> str:
    v = str(value).lower().replace("_lung", "")
    if v not in SIDE_CODE:
        raise ValueError(f"unknown side {value!r}; use 'right' or 'left'")
    return v


def place_nodule(p: Patient, plan: Plan, rng, spec: dict[str, Any], large: bool) -> Lesion:
    size = float(spec.get("size_mm", rng.uniform(12.0, 26.0) if large else rng.uniform(5.0, 9.0)))
    if large != (size > 10.0):
        raise ValueError(f"a {'lung_nodulegr1cm' if large else 'lung_nodule'} needs size_mm {'> 10' if large else '<= 10'}, got {size}")
    lobe = _choose_lobe(rng, spec)
    r = size / 2.0
    for depth in (r + 6.0, r + 2.0, r * 0.8):
        m = _lobe_mask(plan, lobe, depth)
        if m.any():
            break
    c = _pick(plan, rng, m, f"a {size:.0f} mm nodule in the {lobe}")
    radii = tuple(r * f for f in rng.uniform(0.9, 1.1, 3))
    labels = ("lung_nodule", "lung_nodulegr1cm") if size > 10.0 else ("lung_nodule",)
    return Lesion("nodule", labels, LOBE_SIDE[lobe], lobe, round(size), [(tuple(c), radii, _random_rotation(rng))])


def place_mass(p: Patient, plan: Plan, rng, spec: dict[str, Any]) -> Lesion:
    size = float(spec.get("size_mm", rng.uniform(32.0, 55.0)))
    if size <= 30.0:
        raise ValueError(f"a lung_mass is larger than 3 cm; got size_mm={size}")
    lobe = _choose_lobe(rng, spec, ("RUL", "RLL", "LUL", "LLL"))
    r = size / 2.0
    m = _lobe_mask(plan, lobe, 0.75 * r)
    if not m.any():
        m = _lobe_mask(plan, lobe, 0.5 * r)
    c = np.asarray(_pick(plan, rng, m, f"a {size:.0f} mm mass in the {lobe}"))
    blobs: list[Blob] = [(tuple(c), (r * 0.85, r * 0.8, r * 0.9), _random_rotation(rng))]
    for _ in range(3):  # lobulation
        off = rng.normal(size=3)
        off = off / np.linalg.norm(off) * r * 0.45
        rr = r * rng.uniform(0.4, 0.55)
        blobs.append((tuple(c + off), (rr, rr, rr), None))
    return Lesion("mass", ("lung_mass",), LOBE_SIDE[lobe], lobe, round(size / 10.0, 1) * 10.0, blobs)


def place_consolidation(p: Patient, plan: Plan, rng, spec: dict[str, Any]) -> Lesion:
    lobe = _choose_lobe(rng, spec, ("RUL", "RML", "RLL", "LUL", "LLL", "RLL", "LLL"))
    m = _lobe_mask(plan, lobe, 10.0)
    c = np.asarray(_pick(plan, rng, m, f"a consolidation in the {lobe}"))
    blobs: list[Blob] = []
    for k in range(3):
        rr = rng.uniform(18.0, 32.0) * p.scale
        cc = c + (rng.normal(0, 10.0, 3) if k else 0.0)
        blobs.append((tuple(cc), (rr, rr * rng.uniform(0.7, 1.0), rr * rng.uniform(0.7, 1.0)), _random_rotation(rng)))
    return Lesion("consolidation", ("lung_consolidation",), LOBE_SIDE[lobe], lobe, 0.0, blobs)


def place_groundglass(p: Patient, plan: Plan, rng, spec: dict[str, Any]) -> Lesion:
    if "lobes" in spec:
        lobes = [str(lb).upper() for lb in spec["lobes"]]
    elif "lobe" in spec or "side" in spec:
        lobes = [_choose_lobe(rng, spec)]
    else:
        k = int(rng.integers(1, 3))
        lobes = list(rng.choice(list(LOBES), size=k, replace=False))
    blobs: list[Blob] = []
    for lobe in lobes:
        if lobe not in LOBES:
            raise ValueError(f"unknown lobe {lobe!r}")
        for _ in range(int(rng.integers(1, 3))):
            c = _pick(plan, rng, _lobe_mask(plan, lobe, 8.0), f"ground-glass in the {lobe}")
            rr = rng.uniform(14.0, 26.0) * p.scale
            blobs.append((tuple(c), (rr, rr * rng.uniform(0.7, 1.0), rr * rng.uniform(0.7, 1.0)), _random_rotation(rng)))
    sides = tuple(sorted({LOBE_SIDE[lb] for lb in lobes}, key=("right", "left").index))
    return Lesion("groundglass", ("lung_groundglass",), sides[0] if len(sides) == 1 else None, None, 0.0, blobs,
                  {"lobes": tuple(sorted(set(lobes), key=list(LOBES).index)), "sides": sides})


def place_emphysema(p: Patient, plan: Plan, rng, spec: dict[str, Any]) -> Lesion:
    lung = (plan.organs == ORGAN_CODES["right_lung"]) | (plan.organs == ORGAN_CODES["left_lung"])
    upper = lung & (plan.grid.coords()[0] < 0.6 * p.L) & (plan.depth >= 4.0)
    pts = plan.points(upper)
    if len(pts) == 0:
        raise PlacementError("no upper-lung room for emphysema")
    n = int(spec.get("count", rng.integers(90, 170)))
    pick = pts[rng.integers(len(pts), size=n)] + rng.uniform(-2, 2, (n, 3))
    blobs: list[Blob] = [(tuple(q), (r, r, r), None) for q, r in zip(pick, rng.uniform(3.0, 6.0, n) * p.scale)]
    for _ in range(int(rng.integers(0, 3))):  # subpleural bullae near the apices
        cand = lung & (plan.grid.coords()[0] < 0.35 * p.L) & (plan.depth >= 8.0) & (plan.depth <= 14.0)
        if cand.any():
            r = rng.uniform(9.0, 15.0)
            blobs.append((tuple(_pick(plan, rng, cand, "a bulla")), (r, r, r), None))
    return Lesion("emphysema", ("lung_emphysema",), None, None, 0.0, blobs, {"sides": ("right", "left")})


def _sides(rng, spec: dict[str, Any], p_both: float) -> tuple[str, ...]:
    if "sides" in spec:
        return tuple(_side(s) for s in spec["sides"])
    if "side" in spec:
        return (_side(spec["side"]),)
    if rng.random() < p_both:
        return ("right", "left")
    return (str(rng.choice(["right", "left"])),)


def place_effusion(p: Patient, plan: Plan, rng, spec: dict[str, Any]) -> Lesion:
    sides = _sides(rng, spec, 0.4)
    depth = {s: float(spec.get("depth_mm", rng.uniform(14.0, 40.0))) for s in sides}
    return Lesion("effusion", ("lung_pleural_effusion",), sides[0] if len(sides) == 1 else None, None,
                  max(depth.values()), [], {"sides": sides, "depth": depth})


def place_atelectasis(p: Patient, plan: Plan, rng, spec: dict[str, Any], effusion: Lesion | None) -> Lesion:
    sides = effusion.sides if effusion is not None and "side" not in spec and "sides" not in spec else _sides(rng, spec, 0.4)
    thick = {s: float(rng.uniform(9.0, 16.0)) for s in sides}
    eff = {s: effusion.params["depth"][s] for s in sides if effusion is not None and s in effusion.sides}
    return Lesion("atelectasis", ("lung_atelectasis",), sides[0] if len(sides) == 1 else None, None, 0.0, [],
                  {"sides": sides, "thickness": thick, "effusion_depth": eff})


def place_pneumothorax(p: Patient, plan: Plan, rng, spec: dict[str, Any]) -> Lesion:
    side = _side(spec["side"]) if "side" in spec else str(rng.choice(["right", "left"]))
    t = float(spec.get("depth_mm", rng.uniform(10.0, 28.0)))
    return Lesion("pneumothorax", ("lung_pneumothorax",), side, None, t, [], {"sides": (side,)})


def place_aortic(p: Patient, rng, spec: dict[str, Any], athero: bool) -> Lesion:
    aorta = p.vessels[0]
    n_pts = len(aorta.points)
    n = int(spec.get("count", rng.integers(6, 13) if athero else rng.integers(1, 4)))
    blobs: list[Blob] = []
    thoracic = [i for i in range(int(0.3 * n_pts), n_pts - 1) if aorta.points[i][0] < 0.85 * p.L]
    for i in rng.choice(thoracic, size=n):
        p0, p1 = np.asarray(aorta.points[i]), np.asarray(aorta.points[i + 1])
        rot = rotation_from_axis(tuple(p1 - p0))
        th = rng.uniform(0, 2 * np.pi)
        R = aorta.radii[i]
        wall = p0 + R * (np.cos(th) * rot[:, 1] + np.sin(th) * rot[:, 2])
        extent = rng.uniform(4.0, 7.0) if athero else 0.0
        calc = rng.uniform(1.6, 2.6)
        blobs.append((tuple(wall), (extent, calc, R), (tuple(p0), tuple(p1))))
    labels = ("great_vessel_atherosclerosis", "great_vessel_calcification") if athero else ("great_vessel_calcification",)
    return Lesion("plaque" if athero else "calcification", labels, None, None, 0.0, blobs)


def place_nodes(p: Patient, rng, spec: dict[str, Any]) -> Lesion:
    names = list(NODE_STATIONS)
    stations = spec.get("stations") or list(rng.choice(names, size=int(rng.integers(1, 3)), replace=False))
    blobs: list[Blob] = []
    sizes = []
    for st in stations:
        if st not in NODE_STATIONS:
            raise ValueError(f"unknown lymph node station {st!r}; use one of {names}")
        h, v, u = NODE_STATIONS[st]
        short = float(spec.get("size_mm", rng.uniform(13.0, 22.0)))
        sizes.append(round(short))
        c = (h * p.L, v * p.B, u * p.A)
        blobs.append((c, (short * 0.75, short / 2.0, short / 2.0), None))
    return Lesion("nodes", ("mediastinum_lymphadenopathy",), None, None, float(max(sizes)), blobs,
                  {"stations": tuple(stations), "sizes": tuple(sizes)})


def _random_rotation(rng) -> np.ndarray:
    return rotation_from_axis(tuple(rng.normal(size=3)), helper=tuple(rng.normal(size=3)))


# -- drawing ------------------------------------------------------------------------------------


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
    if p.cardiomegaly:  # the enlarged heart itself
        add("heart_cardiomegaly", None, org == ORGAN_CODES["heart"])
    if p.pericardial_effusion_mm > 0:
        add("heart_pericardial_effusion", None, _pericardial_fluid(p, grid) & (org == ORGAN_CODES["heart"]))
    return masks


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
    t = les.size_mm * np.clip(np.sin(np.pi * (h - 0.05) / 0.75), 0.0, 1.0)
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
