"""A coarse rendering of the patient used to place things: pulmonary trees and lesions.

Placement runs on a fixed 4 mm grid, independent of the output voxel size, so a seed gives the same
patient (same tree, same lesion positions) at every `size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctplatform.phantom.anatomy import ORGAN_CODES, Patient
from ctplatform.phantom.grid import Grid, Point
from ctplatform.phantom.paint import render_anatomy

PLAN_SPACING = 4.0


@dataclass
class Plan:
    """Coarse organ map with per-voxel depth inside each lung (mm from the lung's boundary)."""

    grid: Grid
    organs: np.ndarray
    lobes: np.ndarray
    depth: np.ndarray  # mm from the nearest non-lung (or blocked) voxel, 0 outside the lungs
    blocked: np.ndarray  # lung voxels already taken by a lesion

    def index(self, pts: np.ndarray) -> tuple[np.ndarray, ...]:
        """Nearest voxel indices of points [N, 3] (z, y, x) mm, clipped to the grid."""
        idx = np.rint((pts - np.asarray(self.grid.origin)) / np.asarray(self.grid.spacing)).astype(int)
        for a in range(3):
            np.clip(idx[:, a], 0, self.grid.shape[a] - 1, out=idx[:, a])
        return idx[:, 0], idx[:, 1], idx[:, 2]

    def organ_at(self, pts: np.ndarray) -> np.ndarray:
        return self.organs[self.index(np.atleast_2d(pts))]

    def points(self, mask: np.ndarray) -> np.ndarray:
        """mm coordinates [N, 3] of the voxels in a boolean mask."""
        idx = np.argwhere(mask)
        return np.asarray(self.grid.origin) + idx * np.asarray(self.grid.spacing)

    def copy(self) -> "Plan":
        return Plan(self.grid, self.organs, self.lobes, self.depth.copy(), self.blocked.copy())

    def block(self, taken: np.ndarray) -> None:
        """Mark lung voxels as occupied by a lesion: later lesions are placed away from them."""
        self.blocked = self.blocked | taken
        self.depth = lung_depth(self.organs, self.grid, self.blocked)


def make_plan(p: Patient) -> Plan:
    sp = PLAN_SPACING
    lo = (-0.15 * p.L, -1.7 * p.B, -1.5 * p.A)
    hi = (1.15 * p.L, 1.9 * p.B, 1.5 * p.A)
    shape = tuple(int(np.ceil((h - l) / sp)) + 1 for l, h in zip(lo, hi))
    grid = Grid(shape, (sp, sp, sp), lo)  # type: ignore[arg-type]
    _, org = render_anatomy(p, grid, trees=False)
    z, y, x = grid.coords()
    lobes = np.where((org == 1) | (org == 2), p.lobe(z, y, x), 0).astype(np.uint8)
    blocked = np.zeros(org.shape, dtype=bool)
    return Plan(grid, org, lobes, lung_depth(org, grid, blocked), blocked)


def lung_depth(org: np.ndarray, grid: Grid, blocked: np.ndarray) -> np.ndarray:
    """mm from the nearest voxel that is not free lung; one transform for both lungs (the mediastinum
    keeps the sides apart), computed inside their bounding box."""
    lung = ((org == ORGAN_CODES["right_lung"]) | (org == ORGAN_CODES["left_lung"])) & ~blocked
    depth = np.zeros(org.shape, dtype=np.float32)
    box = ndimage.find_objects(lung.astype(np.uint8))
    if box:
        sl = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box[0])
        depth[sl] = ndimage.distance_transform_edt(lung[sl], sampling=grid.spacing)
    return depth


def grow_lung_trees(p: Patient, plan: Plan, rng: np.random.Generator, min_radius: float = 1.0, n_twigs: int = 600) -> None:
    """Fill `p.lung_tree` with pulmonary arteries + bronchi (paired) and veins, branching from the hila."""
    s = p.scale
    segs: list[tuple[Point, Point, float, int]] = []
    for side, code in (("right", ORGAN_CODES["right_lung"]), ("left", ORGAN_CODES["left_lung"])):
        sg = -1.0 if side == "right" else 1.0
        hil = np.asarray(p.hila[side])
        roots = [(-1.0, 0.1, 0.35 * sg), (-0.6, -0.5, 0.5 * sg), (0.0, 0.1, 1.0 * sg), (0.8, 0.5, 0.35 * sg),
                 (0.8, 0.0, 0.6 * sg), (0.7, -0.5, 0.4 * sg), (0.1, -0.8, 0.5 * sg)]
        for d in roots:
            d = np.asarray(d) / np.linalg.norm(d)
            _grow(segs, hil, d, 5.0 * s, 38.0 * s, 0, code, plan, rng, min_radius, kind=0)
            off = np.cross(d, (1.0, 0.0, 0.0))
            off = off / (np.linalg.norm(off) + 1e-9) * 7.0 * s
            _grow(segs, hil + off, d, 4.5 * s, 38.0 * s, 0, code, plan, rng, max(min_radius, 1.6 * s), kind=1, max_gen=3)
        vhil = hil + np.array([28.0, -12.0, -6.0 * sg]) * s
        for d in roots[2:]:
            d = np.asarray(d) + rng.normal(0, 0.15, 3)
            d = d / np.linalg.norm(d)
            _grow(segs, vhil, d, 5.0 * s, 34.0 * s, 0, code, plan, rng, min_radius, kind=0)
    segs += _peripheral_vessels(p, plan, rng, n_twigs)
    p.lung_tree = segs


def _peripheral_vessels(p: Patient, plan: Plan, rng: np.random.Generator, n: int) -> list[tuple[Point, Point, float, int]]:
    """Short vessels spread through the parenchyma, pointing away from the hilum, thinner with distance.

    They stand in for the branches a tree of finite depth cannot reach, so every part of the lung has
    the vessel texture of a real scan.
    """
    out: list[tuple[Point, Point, float, int]] = []
    for side, code in (("right", ORGAN_CODES["right_lung"]), ("left", ORGAN_CODES["left_lung"])):
        pts = plan.points((plan.organs == code) & (plan.depth >= 3.0))
        if len(pts) == 0:
            continue
        q = pts[rng.integers(len(pts), size=n)] + rng.uniform(-2.0, 2.0, (n, 3))
        hil = np.asarray(p.hila[side])
        d = q - hil
        dist = np.linalg.norm(d, axis=1, keepdims=True)
        u = d / np.maximum(dist, 1e-6) + rng.normal(0.0, 0.35, (n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        half = rng.uniform(4.0, 10.0, (n, 1)) * p.scale
        r = np.clip(0.45 + 2.0 * np.exp(-dist[:, 0] / (60.0 * p.scale)), 0.45, 2.4) * rng.uniform(0.8, 1.2, n)
        for a, b, rr in zip(q - u * half, q + u * half, r):
            out.append((tuple(map(float, a)), tuple(map(float, b)), float(rr), 0))
    return out


def _grow(segs, p0, d, r, length, gen, code, plan: Plan, rng, min_radius, kind: int, max_gen: int = 9) -> None:
    stack = [(np.asarray(p0, float), np.asarray(d, float), r, length, gen)]
    while stack:
        p0, d, r, ln, g = stack.pop()
        n = max(int(ln / 2.0), 2)
        pts = p0 + np.linspace(0.0, 1.0, n)[:, None] * (d * ln)
        inside = plan.organ_at(pts) == code
        if g == 0:
            # the first generation starts in the hilum (mediastinum): keep it until it has entered the lung
            entered = np.cumsum(inside) > 0
            outside_after = entered & ~inside
            stop = int(np.argmax(outside_after)) if outside_after.any() else n
        else:
            stop = int(np.argmax(~inside)) if (~inside).any() else n
        if stop < 2:
            continue
        p1 = pts[stop - 1]
        segs.append((tuple(p0), tuple(p1), float(r), kind))
        if stop < n or g >= max_gen or r * 0.74 < min_radius:
            continue
        for sign in (1.0, -1.0):
            perp = rng.normal(size=3)
            perp -= (perp @ d) * d
            perp /= np.linalg.norm(perp) + 1e-9
            ang = np.deg2rad(rng.uniform(18.0, 38.0)) * sign
            nd = np.cos(ang) * d + np.sin(ang) * perp
            stack.append((p1, nd / np.linalg.norm(nd), r * 0.74, ln * rng.uniform(0.7, 0.85), g + 1))
