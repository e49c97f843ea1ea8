"""A chest drawn from simple shapes: body wall, bones, lungs, mediastinum, heart, great vessels, airways.

`sample_patient(rng, ...)` draws one patient's parameters (sizes, fat, heart, vessel centrelines,
pulmonary trees are added by planning.py); `paint.render_anatomy(patient, grid)` paints HU and the
organ label map on any grid (a slab of the output volume, a small box, or a coarse planning grid),
so the same patient looks the same at every resolution.

Proportions follow an adult chest: lung height L (apex to posterior costophrenic recess), thoracic
cavity half-width A and half-depth B; every structure is placed in units of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctplatform.labels import ORGAN_CODES as STORE_ORGAN_CODES
from ctplatform.phantom.grid import Point, catmull_rom, rotation_from_axis

#: Organ label map codes of the phantom truth (`truth/<id>.nii.gz`, `Phantom.organs`).
ORGAN_CODES: dict[str, int] = {
    "background": 0,  # air outside the body
    "right_lung": 1,  # pleural cavity: parenchyma, its vessels/bronchi, lesions, effusion, pneumothorax
    "left_lung": 2,
    "heart": 3,  # the pericardial sac and everything in it
    "great_vessels": 4,  # aorta, pulmonary trunk and arteries, superior vena cava, arch branches
    "mediastinum": 5,  # everything else between the lungs: fat, oesophagus, lymph nodes, thoracic inlet
    "airways": 6,  # trachea and main bronchi (lumen and wall)
    "subcutaneous_fat": 7,
    "soft_tissue": 8,  # skin, muscle, abdomen below the diaphragm
    "bone": 9,
    "table": 10,
    "marker": 11,  # external marker (confounder), outside the body
}
#: The store's organ codes (labels.ORGAN_CODES) from phantom codes: the heart, great vessels and
#: airways lie in the mediastinum region.
STORE_ORGAN_FROM_PHANTOM: dict[int, int] = {
    ORGAN_CODES[phantom]: STORE_ORGAN_CODES[store]
    for phantom, store in (
        ("right_lung", "right_lung"),
        ("left_lung", "left_lung"),
        ("heart", "mediastinum"),
        ("great_vessels", "mediastinum"),
        ("mediastinum", "mediastinum"),
        ("airways", "mediastinum"),
    )
}

HU = {
    "air": -1000.0,
    "lung": -860.0,
    "fat": -100.0,
    "mediastinal_fat": -85.0,
    "skin": 30.0,
    "muscle": 45.0,
    "blood": 40.0,
    "myocardium": 45.0,
    "pericardium": 30.0,
    "liver": 58.0,
    "abdomen": 35.0,
    "cartilage": 120.0,
    "rib": 520.0,
    "cortex": 750.0,
    "marrow": 230.0,
    "disc": 85.0,
    "csf": 12.0,
    "table_shell": 250.0,
    "table_core": -600.0,
    "node": 40.0,
    "bronchus_wall": 30.0,
    "marker": 1800.0,
}

RIB_PAIRS = 12


@dataclass
class Tube:
    """A polyline tube: points (z, y, x) mm, one radius per point."""

    points: list[Point]
    radii: list[float]
    code: int
    hu: float
    margin: float = 0.0  # mediastinal fat drawn around it first (pushes the lungs away)
    lumen: float = 0.0  # air lumen radius fraction (airways)

    def segments(self):
        for i in range(len(self.points) - 1):
            yield self.points[i], self.points[i + 1], max(self.radii[i], self.radii[i + 1])


@dataclass
class Patient:
    """One synthetic patient: everything `render_anatomy` needs, in mm (patient frame, see grid.py)."""

    L: float
    A: float
    B: float
    scale: float
    rib_t: float
    muscle: float
    fat_mm: float
    skin: float
    x_mid: float
    y_table: float
    table_curve: float
    heart_parts: list[tuple[Point, Point, np.ndarray | None]]  # ventricles, atria: centre, radii, rotation
    epicardial_fat: float
    pericardial_effusion_mm: float
    vessels: list[Tube]
    airways: list[Tube]
    nodes: list[tuple[Point, Point]]  # normal lymph nodes: centre, radii
    lung_tree: list[tuple[Point, Point, float, int]] = field(default_factory=list)  # p0, p1, radius, kind
    marker: tuple[Point, Point] | None = None
    cardiomegaly: bool = False
    carina: Point = (0.0, 0.0, 0.0)
    hila: dict[str, Point] = field(default_factory=dict)

    # -- shape fields, shared by rendering and lesion placement ---------------------------------
    def cavity(self, z):
        """Thoracic cavity half-width a(z), half-depth b(z) and centre y_c(z) (posterior wall fixed at B)."""
        h = z / self.L
        a = self.A * (0.6 + 0.4 * np.sqrt(np.clip(h / 0.6, 0.0, 1.0)))
        b = self.B * (0.65 + 0.35 * np.sqrt(np.clip(h / 0.5, 0.0, 1.0)))
        return a, b, self.B - b

    def diaphragm(self, y, x, yc):
        """z of the lung base (dome surface) at (y, x): right dome higher, posterior recesses deepest."""
        L, A, B = self.L, self.A, self.B
        right = x < self.x_mid
        xs = np.where(right, -0.45 * A, 0.45 * A)
        dome = np.clip(1.0 - ((x - xs) / (0.75 * A)) ** 2 - ((y - yc + 0.1 * B) / B) ** 2, 0.0, 1.0)
        return L - (0.24 * L + np.where(right, 0.05 * L, 0.0)) * dome + 0.05 * L * (y - yc) / B

    def apex(self, y, x):
        """z of the lung apex surface: lungs lie below it."""
        L, A, B = self.L, self.A, self.B
        return 0.3 * L * (((np.abs(x - self.x_mid) - 0.36 * A) / (0.55 * A)) ** 2 + ((y - 0.35 * B) / (0.75 * B)) ** 2)

    def lobe(self, z, y, x):
        """Lobe code per point: 1 RUL, 2 RML, 3 RLL, 4 LUL (with lingula), 5 LLL (lung voxels only)."""
        a, b, yc = self.cavity(z)
        h = z / self.L
        v = np.clip((y - yc) / b, -1.0, 1.0)
        lower = h > 0.38 + 0.5 * (1.0 - v) / 2.0
        right = x < self.x_mid
        upper_r = np.where(h > 0.52, 2, 1)
        return np.where(right, np.where(lower, 3, upper_r), np.where(lower, 5, 4)).astype(np.uint8)

    def skin_anterior_y(self, z: float, x: float) -> float:
        a, b, yc = self.cavity(np.float32(z))
        aM, bM, yM = self._muscle_ellipse(a, b)
        ax, by = aM + self.fat_mm + self.skin, bM + 0.8 * self.fat_mm + self.skin
        return float(yM - by * np.sqrt(max(1.0 - (x / ax) ** 2, 0.0)))

    def body_half_width(self) -> float:
        a, b, _ = self.cavity(np.float32(self.L))
        return float(self._muscle_ellipse(a, b)[0] + self.fat_mm + self.skin)

    def body_anterior(self) -> float:
        return self.skin_anterior_y(0.6 * self.L, 0.0)

    def _muscle_ellipse(self, a, b):
        aM = np.maximum(a, 0.85 * self.A) + self.rib_t + self.muscle
        bM = np.maximum(b, 0.8 * self.B) + self.rib_t + self.muscle + 8.0 * self.scale
        return aM, bM, 8.0 * self.scale


# -- sampling -----------------------------------------------------------------------------------


def sample_patient(
    rng: np.random.Generator,
    scale: float = 1.0,
    fat_mm: float | None = None,
    heart_scale: float | None = None,
    pericardial_effusion_mm: float = 0.0,
    marker: bool = False,
) -> Patient:
    """Draw one patient's anatomy (everything but the pulmonary trees; see `grow_lung_trees`)."""
    s = scale * float(rng.normal(1.0, 0.04))
    L, A, B = 230.0 * s * float(rng.normal(1.0, 0.04)), 128.0 * s, 88.0 * s * float(rng.normal(1.0, 0.04))
    # always draw, then override: findings and confounders never change the rest of the patient
    fat, hs = float(rng.uniform(6.0, 22.0)), float(rng.uniform(0.92, 1.05))
    fat = fat if fat_mm is None else float(fat_mm)
    hs = hs if heart_scale is None else float(heart_scale)

    def P(h: float, v: float, u: float) -> Point:  # (z, y, x) in units of (L, B, A)
        return (h * L, v * B, u * A)

    heart_axis = (0.45, -0.45, 0.77)  # base (right, posterior, superior) -> apex (left, anterior, inferior)
    heart_parts = [
        (P(0.68, -0.22, 0.16), (58.0 * s * hs, 44.0 * s * hs, 38.0 * s * hs), rotation_from_axis(heart_axis, helper=(1.0, 0.0, 0.0))),
        (P(0.57, 0.02, -0.04), (30.0 * s * hs, 30.0 * s * hs, 42.0 * s * hs), None),  # atria: the right heart border
    ]

    j = lambda: float(rng.normal(0.0, 0.02))  # noqa: E731 - small per-patient jitter of landmarks
    aorta_pts = [
        P(0.50, -0.10, 0.00),
        P(0.30 + j(), -0.22, -0.06),
        P(0.19 + j(), 0.00, 0.03),
        P(0.24, 0.33, 0.20 + j()),
        P(0.42, 0.48, 0.18),
        P(0.72, 0.52, 0.12),
        P(1.15, 0.52, 0.04),
    ]
    aorta_r = [15.0 * s, 15.0 * s, 13.5 * s, 12.5 * s, 12.0 * s, 11.5 * s, 11.0 * s]
    aorta = _smooth_tube(aorta_pts, aorta_r, ORGAN_CODES["great_vessels"], HU["blood"], margin=3.0 * s)
    carina = P(0.30, 0.28, 0.0)
    hila = {"right": P(0.40, 0.08, -0.30), "left": P(0.38, 0.10, 0.30)}
    pa_bif = P(0.36, -0.05, 0.08)
    vessels = [
        aorta,
        _smooth_tube([P(0.56, -0.30, 0.12), P(0.45, -0.18, 0.12), pa_bif], [13.0 * s] * 3, ORGAN_CODES["great_vessels"], HU["blood"], 2.5 * s),
        _smooth_tube([pa_bif, P(0.37, 0.02, 0.22), hila["left"]], [10.0 * s] * 3, ORGAN_CODES["great_vessels"], HU["blood"], 2.0 * s),
        _smooth_tube([pa_bif, P(0.39, 0.12, -0.12), hila["right"]], [10.0 * s] * 3, ORGAN_CODES["great_vessels"], HU["blood"], 2.0 * s),
        _smooth_tube([P(-0.3, -0.08, -0.20), P(0.2, -0.10, -0.19), P(0.48, -0.10, -0.15)], [10.0 * s] * 3, ORGAN_CODES["great_vessels"], HU["blood"], 2.0 * s),
    ]
    arch_top = aorta_pts[2]
    for dx, r in ((-0.10, 6.5), (0.02, 5.0), (0.12, 5.5)):  # brachiocephalic, left carotid, left subclavian
        base = (arch_top[0] + 5.0 * s, arch_top[1] + 0.1 * B * (1 + 3 * dx), arch_top[2] + dx * A)
        top = (-0.35 * L, base[1] - 0.05 * B, base[2] + 1.6 * dx * A)
        vessels.append(_smooth_tube([base, top], [r * s, r * s], ORGAN_CODES["great_vessels"], HU["blood"], 2.0 * s))
    airways = [
        Tube([(-0.4 * L, 0.22 * B, 0.0), (0.1 * L, 0.24 * B, 0.0), carina], [9.0 * s] * 3, ORGAN_CODES["airways"], HU["bronchus_wall"], 1.5 * s, 0.78),
        Tube([carina, (carina[0] + 0.05 * L, carina[1] + 0.02 * B, -0.16 * A), (hila["right"][0] - 0.02 * L, 0.30 * B, -0.27 * A)], [7.0 * s] * 3, ORGAN_CODES["airways"], HU["bronchus_wall"], 1.5 * s, 0.75),
        Tube([carina, (carina[0] + 0.06 * L, carina[1] + 0.04 * B, 0.16 * A), (hila["left"][0] + 0.03 * L, 0.34 * B, 0.27 * A)], [6.5 * s] * 3, ORGAN_CODES["airways"], HU["bronchus_wall"], 1.5 * s, 0.75),
    ]
    nodes = []
    for station in (P(0.22, 0.10, -0.12), P(0.36, 0.40, 0.03), P(0.26, -0.30, 0.00)):
        r = float(rng.uniform(2.5, 4.0)) * s
        nodes.append((station, (r * 1.3, r, r)))
    p = Patient(
        L=L, A=A, B=B, scale=s, rib_t=11.0 * s, muscle=float(rng.uniform(8.0, 14.0)) * s, fat_mm=fat, skin=2.0,
        x_mid=3.0 * s, y_table=0.0, table_curve=0.0007,
        heart_parts=heart_parts,
        epicardial_fat=3.0 * s, pericardial_effusion_mm=float(pericardial_effusion_mm),
        vessels=vessels, airways=airways, nodes=nodes, carina=carina, hila=hila,
    )
    a, b, yc = p.cavity(np.float32(L))
    aM, bM, yM = p._muscle_ellipse(a, b)
    p.y_table = float(yM + bM + 0.8 * fat + p.skin - 6.0 * s)  # the back is flattened on the table
    if marker:
        z = 0.35 * L
        x = -0.3 * A
        p.marker = ((z, p.skin_anterior_y(z, x) - 6.0, x), (6.0, 3.0, 6.0))
    return p


def _smooth_tube(points: list[Point], radii: list[float], code: int, hu: float, margin: float) -> Tube:
    dense = catmull_rom(points, per_segment=6)
    r = np.interp(np.linspace(0, 1, len(dense)), np.linspace(0, 1, len(radii)), radii)
    return Tube(dense, [float(v) for v in r], code, hu, margin)
