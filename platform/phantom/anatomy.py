"""A chest drawn from simple shapes: body wall, bones, lungs, mediastinum, heart, great vessels, airways.

`sample_patient(rng, ...)` draws one patient's parameters (sizes, fat, heart, vessel centrelines,
pulmonary vessel and bronchial trees); `render_anatomy(patient, grid)` paints HU and the organ
label map on any grid (a slab of the output volume, a small box, or a coarse planning grid), so the
same patient looks the same at every resolution.

Proportions follow an adult chest: lung height L (apex to posterior costophrenic recess), thoracic
cavity half-width A and half-depth B; every structure is placed in units of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctplatform.phantom.grid import Grid, Point, catmull_rom, ellipsoid_value, rotation_from_axis, segment_box, segment_distance

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
#: The store's organ codes (1 right lung, 2 left lung, 3 mediastinum) from phantom codes.
STORE_ORGAN_FROM_PHANTOM: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 3, 5: 3, 6: 3}

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
    fat = float(rng.uniform(6.0, 22.0)) if fat_mm is None else float(fat_mm)
    hs = float(rng.uniform(0.92, 1.05)) if heart_scale is None else float(heart_scale)

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


# -- rendering ----------------------------------------------------------------------------------


def render_anatomy(p: Patient, grid: Grid, trees: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Paint the patient on `grid`: float32 HU (noise-free, unblurred) and uint8 organ codes."""
    z, y, x = grid.coords()
    shape = grid.shape
    hu = np.full(shape, HU["air"], dtype=np.float32)
    org = np.zeros(shape, dtype=np.uint8)
    C = ORGAN_CODES
    s = p.scale

    # table: a curved carbon-fibre shell with a foam core, wider than the field of view
    ytab = p.y_table - p.table_curve * x * x
    t = y - ytab
    table = (t >= 0) & (t < 28.0)
    shell = table & ((t < 3.0) | (t >= 25.0))
    _paint(hu, org, np.broadcast_to(table, shape), HU["table_core"], C["table"])
    _paint(hu, org, np.broadcast_to(shell, shape), HU["table_shell"], C["table"])

    a, b, yc = p.cavity(z)
    aM, bM, yM = p._muscle_ellipse(a, b)
    above_table = y < ytab - 1.0
    f = p.fat_mm
    skin = (((x / (aM + f + p.skin)) ** 2 + ((y - yM) / (bM + 0.8 * f + p.skin)) ** 2) < 1) & above_table
    _paint(hu, org, skin, HU["skin"], C["soft_tissue"])
    fat = ((x / (aM + f)) ** 2 + ((y - yM) / (bM + 0.8 * f)) ** 2 < 1) & above_table
    _paint(hu, org, fat, HU["fat"], C["subcutaneous_fat"])
    muscle = ((x / aM) ** 2 + ((y - yM) / bM) ** 2 < 1) & above_table
    _paint(hu, org, muscle, HU["muscle"], C["soft_tissue"])

    # ribs, costal cartilage, scapulae, sternum: bands in the ring just outside the cavity
    yr = y - yc
    q_in = (x / (a + 1.5)) ** 2 + (yr / (b + 1.5)) ** 2
    q_out = (x / (a + p.rib_t)) ** 2 + (yr / (b + p.rib_t)) ** 2
    ring = (q_in >= 1) & (q_out < 1)
    v = np.clip(yr / (b + p.rib_t), -1.0, 1.0)
    pitch = 21.0 * s
    phase = (z + 0.02 * p.L - 100.0 * s * (1.0 - v) / 2.0) / pitch  # ribs slope down toward the front
    k = np.floor(phase)
    rib = ring & ((phase - k) < 9.0 / pitch) & (k >= 0) & (k < RIB_PAIRS)
    front = (v < -0.7) & (np.abs(x) < 0.45 * a)
    floating = (k >= 10) & (v < 0.0)
    _paint(hu, org, rib & ~front & ~floating, HU["rib"], C["bone"])
    _paint(hu, org, rib & front & ~floating, HU["cartilage"], C["soft_tissue"])
    q_s0 = (x / (a + p.rib_t + 4.0 * s)) ** 2 + (yr / (b + p.rib_t + 4.0 * s)) ** 2
    q_s1 = (x / (a + p.rib_t + 9.0 * s)) ** 2 + (yr / (b + p.rib_t + 9.0 * s)) ** 2
    scap = (q_s0 >= 1) & (q_s1 < 1) & (v > 0.3) & (np.abs(x) > 0.5 * p.A) & (z > -0.05 * p.L) & (z < 0.45 * p.L)
    _paint(hu, org, scap, HU["rib"], C["bone"])
    stern = (np.abs(x) < 14.0 * s) & (yr < -b - 1.0) & (yr > -b - p.rib_t) & (z > 0.06 * p.L) & (z < 0.62 * p.L)
    _paint(hu, org, stern, HU["marrow"] + 100.0, C["bone"])

    # cavity contents: abdomen below the diaphragm, thoracic inlet above the apices, lungs between
    cav = (x / a) ** 2 + (yr / b) ** 2 < 1
    zd = p.diaphragm(y, x, yc)
    below = cav & (z > zd)
    _paint(hu, org, below, HU["abdomen"], C["soft_tissue"])
    _paint(hu, org, below & (x < 0.25 * p.A), HU["liver"], C["soft_tissue"])
    lungs = cav & (z <= zd)
    inlet = lungs & (z < p.apex(y, x))
    lungs &= ~inlet
    _paint(hu, org, inlet, HU["mediastinal_fat"] + 60.0, C["mediastinum"])
    lung_hu = HU["lung"] + 50.0 * np.clip(yr / b, -1.0, 1.0)  # dependent lung is denser (supine)
    right = x < p.x_mid
    _paint(hu, org, lungs & right, lung_hu, C["right_lung"])
    _paint(hu, org, lungs & ~right, lung_hu, C["left_lung"])

    # mediastinum: a central strip widening around the trachea and oesophagus
    yt = 0.25 * p.B
    half = s * (12.0 + 14.0 * np.exp(-(((y - yt) / (0.45 * p.B)) ** 2)))
    strip = cav & (np.abs(x - p.x_mid) < half) & (z <= zd) & (z > -10.0 * s)
    _paint(hu, org, strip, HU["mediastinal_fat"], C["mediastinum"])
    _paint_spine(p, grid, hu, org, z, y, x)
    oes = Tube([(-0.4 * p.L, 0.52 * p.B, 0.04 * p.A), (0.6 * p.L, 0.50 * p.B, 0.06 * p.A), (1.1 * p.L, 0.45 * p.B, 0.12 * p.A)], [8.0 * s] * 3, C["mediastinum"], HU["muscle"], 2.0 * s)
    _paint_tube(grid, hu, org, oes)
    for tube in p.vessels:
        _paint_tube(grid, hu, org, tube)
    _paint_heart(p, grid, hu, org)
    for tube in p.airways:
        _paint_tube(grid, hu, org, tube)
    for center, radii in p.nodes:
        _paint_ellipsoid(grid, hu, org, center, radii, HU["node"], C["mediastinum"])
    if trees:
        _paint_lung_tree(p, grid, hu, org)
    if p.marker is not None:
        _paint_ellipsoid(grid, hu, org, p.marker[0], p.marker[1], HU["marker"], C["marker"])
    return hu, org


def _paint(hu, org, mask, value, code) -> None:
    mask = np.broadcast_to(mask, hu.shape)
    if np.ndim(value):
        hu[mask] = np.broadcast_to(value, hu.shape)[mask]
    else:
        hu[mask] = value
    org[mask] = code


def _paint_spine(p: Patient, grid: Grid, hu, org, z, y, x) -> None:
    s = p.scale
    rv = 17.0 * s
    yv = p.B - 12.0 * s
    box = grid.box((-1e4, yv - rv - 2, -45.0 * s), (1e4, yv + rv + 50.0 * s, 45.0 * s))
    if box is None:
        return
    zz, yy, xx = grid.box_coords(box)
    h, o = hu[box], org[box]
    r = np.sqrt((yy - yv) ** 2 + xx**2)
    disc = ((zz / (24.0 * s)) % 1.0) < 0.22
    body = np.broadcast_to(r < rv, h.shape)
    cortex = np.broadcast_to(r >= rv - 2.0 * s, h.shape)
    disc = np.broadcast_to(disc, h.shape)
    _paint(h, o, body & ~disc & cortex, HU["cortex"], ORGAN_CODES["bone"])
    _paint(h, o, body & ~disc & ~cortex, HU["marrow"], ORGAN_CODES["bone"])
    _paint(h, o, body & disc, HU["disc"], ORGAN_CODES["soft_tissue"])
    yc = yv + rv + 8.0 * s
    rc = np.sqrt((yy - yc) ** 2 + xx**2)
    arch = (rc >= 8.0 * s) & (rc < 12.5 * s) & (yy > yv + rv - 2.0 * s)
    spinous = (np.abs(xx) < 4.0 * s) & (yy > yc + 10.0 * s) & (yy < yc + 38.0 * s)
    transverse = (np.abs(yy - yc + 2.0 * s) < 4.5 * s) & (np.abs(xx) < 36.0 * s)
    posterior = np.broadcast_to((arch | spinous | transverse) & ~disc, h.shape)
    _paint(h, o, posterior & (o != ORGAN_CODES["right_lung"]) & (o != ORGAN_CODES["left_lung"]), HU["cortex"] - 150.0, ORGAN_CODES["bone"])
    _paint(h, o, np.broadcast_to(rc < 8.0 * s, h.shape), HU["csf"], ORGAN_CODES["soft_tissue"])


def _paint_tube(grid: Grid, hu, org, tube: Tube) -> None:
    """Fat margin first (so neighbours recede), then the wall/blood, then an air lumen if any."""
    for pass_ in ("margin", "body", "lumen"):
        if pass_ == "margin" and tube.margin <= 0:
            continue
        if pass_ == "lumen" and tube.lumen <= 0:
            continue
        for p0, p1, r in tube.segments():
            rr = r + tube.margin if pass_ == "margin" else (r * tube.lumen if pass_ == "lumen" else r)
            box = grid.box(*segment_box(p0, p1, rr + 1.0))
            if box is None:
                continue
            d, _ = segment_distance(*grid.box_coords(box), p0, p1)
            m = d < rr
            h, o = hu[box], org[box]
            if pass_ == "margin":
                m &= (o == ORGAN_CODES["right_lung"]) | (o == ORGAN_CODES["left_lung"]) | (o == ORGAN_CODES["mediastinum"])
                _paint(h, o, m, HU["mediastinal_fat"], ORGAN_CODES["mediastinum"])
            elif pass_ == "body":
                _paint(h, o, m, tube.hu, tube.code)
            else:
                _paint(h, o, m, HU["air"], tube.code)


def _paint_ellipsoid(grid: Grid, hu, org, center: Point, radii: Point, value: float, code: int, rotation=None) -> np.ndarray | None:
    r = max(radii) + 1.0
    box = grid.box(tuple(c - r for c in center), tuple(c + r for c in center))  # type: ignore[arg-type]
    if box is None:
        return None
    m = ellipsoid_value(*grid.box_coords(box), center, radii, rotation) < 1.0
    _paint(hu[box], org[box], m, value, code)
    return m


def heart_layers(p: Patient) -> list[tuple[float, float, str]]:
    """(radius increase mm, HU, name) of the heart's shells from outside in."""
    e = p.pericardial_effusion_mm
    peri = 1.5 * p.scale
    layers = [(p.epicardial_fat + e + peri + 4.0 * p.scale, HU["mediastinal_fat"], "paracardial fat")]
    layers.append((p.epicardial_fat + e + peri, HU["pericardium"], "pericardium"))
    if e > 0:
        layers.append((p.epicardial_fat + e, 10.0, "pericardial effusion"))
    layers.append((p.epicardial_fat, HU["fat"], "epicardial fat"))
    layers.append((0.0, HU["myocardium"], "myocardium"))
    return layers


def heart_mask(p: Patient, grid: Grid, grow: float):
    """Box and mask of the heart's parts, each grown by `grow` mm (None when off the grid)."""
    lo = np.min([np.asarray(c) - max(r) - grow - 1.0 for c, r, _ in p.heart_parts], axis=0)
    hi = np.max([np.asarray(c) + max(r) + grow + 1.0 for c, r, _ in p.heart_parts], axis=0)
    box = grid.box(tuple(lo), tuple(hi))
    if box is None:
        return None, None
    z, y, x = grid.box_coords(box)
    m = np.zeros(tuple(sl.stop - sl.start for sl in box), dtype=bool)
    for c, r, rot in p.heart_parts:
        m |= ellipsoid_value(z, y, x, c, tuple(v + grow for v in r), rot) < 1.0
    return box, m


def _paint_heart(p: Patient, grid: Grid, hu, org) -> None:
    for grow, value, name in heart_layers(p):
        box, m = heart_mask(p, grid, grow)
        if box is None:
            continue
        code = ORGAN_CODES["mediastinum"] if name == "paracardial fat" else ORGAN_CODES["heart"]
        _paint(hu[box], org[box], m, value, code)


def _paint_lung_tree(p: Patient, grid: Grid, hu, org) -> None:
    """Pulmonary vessels (solid) and bronchi (wall + air lumen), only inside the lungs."""
    min_r = 0.3 * min(grid.spacing)
    lung = (ORGAN_CODES["right_lung"], ORGAN_CODES["left_lung"])
    for p0, p1, r, kind in p.lung_tree:
        if r < min_r:
            continue
        box = grid.box(*segment_box(p0, p1, r + 1.0))
        if box is None:
            continue
        d, _ = segment_distance(*grid.box_coords(box), p0, p1)
        h, o = hu[box], org[box]
        inside = (o == lung[0]) | (o == lung[1])
        if kind == 0:
            m = (d < r) & inside
            h[m] = HU["blood"]
        else:
            m = (d < r) & inside
            h[m] = HU["bronchus_wall"]
            m = (d < 0.7 * r) & inside
            h[m] = HU["air"]
