"""Abnormalities: where each goes, placed on the coarse plan (drawing: lesion_drawing.py).

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

from ctplatform.phantom.anatomy import ORGAN_CODES, Patient
from ctplatform.phantom.grid import Point, rotation_from_axis
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
    """No free lung room is left for a lesion (the other lesions, or the requested lobe, took it)."""


# -- placement ----------------------------------------------------------------------------------


def _pick(plan: Plan, rng, mask: np.ndarray, what: str) -> np.ndarray:
    pts = plan.points(mask)
    if len(pts) == 0:
        raise PlacementError(f"no free room to place {what}; request fewer or smaller lesions, or another seed")
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
    # the report either names both lungs ("in the upper lobes") or no side at all ("Centrilobular
    # emphysema."): the label rows follow the wording (right_lung + left_lung, or lung)
    stated = bool(spec.get("bilateral_wording", rng.random() < 0.5))
    return Lesion("emphysema", ("lung_emphysema",), None, None, 0.0, blobs,
                  {"sides": ("right", "left"), "bilateral_wording": stated})


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
    t = float(spec.get("depth_mm", rng.uniform(15.0, 35.0)))
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
