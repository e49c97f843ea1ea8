"""Painting a patient on a grid: HU and organ codes, structure by structure (painter's order).

Later structures overwrite earlier ones, so the lungs fill the thoracic cavity first and the
mediastinal structures, drawn afterwards with a rim of fat, push them back; pulmonary vessels and
bronchi are drawn only where the lungs remain. Compact structures are drawn inside their own
bounding boxes, so the cost follows their size, not the volume's.
"""

from __future__ import annotations

import numpy as np

from ctplatform.phantom.anatomy import HU, ORGAN_CODES, RIB_PAIRS, Patient, Tube
from ctplatform.phantom.grid import Grid, Point, ellipsoid_value, segment_box, segment_distance



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
    # a fat plane between the pectoral and the deeper chest-wall muscles, front and sides
    half_m = 0.5 * p.muscle
    q_plane = (x / (aM - half_m)) ** 2 + ((y - yM) / (bM - half_m)) ** 2
    plane = (q_plane < 1) & (q_plane > (1 - 2.4 / (aM - half_m)) ** 2) & (y - yM < 0.2 * bM) & (z < 0.75 * p.L)
    _paint(hu, org, plane, HU["fat"], C["soft_tissue"])

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
    if p.zmarker is not None:
        _paint_ellipsoid(grid, hu, org, p.zmarker[0], p.zmarker[1], HU["marker"], C["marker"])
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
        layers.append((p.epicardial_fat + e, 5.0, "pericardial effusion"))
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
