"""Simple anatomical landmarks for orientation checks on real chest CT at coarse (about 2 mm) spacing.

Each landmark needs no model: the spinal canal is soft tissue enclosed by a ring of bone, the lungs
are air inside the body (outside air is the air component whose median is at the -1000 HU floor).
Each check returns a signed margin that must be positive in the stored orientation; flipping the
axis it tests flips its sign.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def spinal_canal(v: np.ndarray, spacing_mm: float) -> np.ndarray:
    """(z, y, x) centres of canal cross-sections: 0.6-5 cm2 holes of soft tissue inside bone (>200 HU)."""
    hits = []
    for z in range(v.shape[0]):
        bone = v[z] > 200
        holes = ndimage.binary_fill_holes(bone) & ~bone
        lab, n = ndimage.label(holes)
        if not n:
            continue
        idx = np.arange(1, n + 1)
        area = np.asarray(ndimage.sum(holes, lab, idx)) * spacing_mm**2
        mean = np.asarray(ndimage.mean(v[z], lab, idx))
        for i in idx[(area >= 60) & (area <= 500) & (mean >= -50) & (mean <= 120)]:
            yy, xx = np.nonzero(lab == i)
            hits.append((z, yy.mean(), xx.mean()))
    return np.array(hits).reshape(-1, 3)


def lungs(v: np.ndarray) -> np.ndarray:
    """Air (< -400 HU) inside the body: every air component except those at the -1000 HU floor."""
    air = v < -400
    lab, n = ndimage.label(air)
    median = np.asarray(ndimage.median(v, lab, np.arange(1, n + 1)))
    return air & ~np.isin(lab, 1 + np.flatnonzero(median < -980))


def lung_profile(v: np.ndarray) -> np.ndarray:
    """Lung area per axial slice, as a fraction of the largest."""
    prof = lungs(v).sum(axis=(1, 2)).astype(float)
    return prof / prof.max()


def spine_posterior_margin(v: np.ndarray, canal: np.ndarray) -> float:
    """Canal y minus the body's y centroid (voxels): the spine lies toward the patient's back."""
    body_y = np.nonzero(v > -300)[1].mean()
    return float(np.median(canal[:, 1]) - body_y)


def heart_left_margin(v: np.ndarray, canal: np.ndarray, spacing_mm: float) -> float:
    """Heart soft tissue x centroid minus the canal's x (voxels): the heart lies left of the midline.

    Heart: 0..600 HU (myocardium and blood, with or without contrast) in the middle half of the
    lungs' height, in a box from 20 to 120 mm in front of the canal and within 80 mm of the midline.
    """
    z_lungs = np.flatnonzero(lung_profile(v) > 0.05)
    z0, z1 = z_lungs[0], z_lungs[-1]
    a, b = int(z0 + 0.25 * (z1 - z0)), int(z0 + 0.75 * (z1 - z0))
    cy, cx = np.median(canal[:, 1]), np.median(canal[:, 2])
    mm = 1 / spacing_mm
    y0, y1 = max(0, int(cy - 120 * mm)), max(1, int(cy - 20 * mm))
    x0, x1 = max(0, int(cx - 80 * mm)), int(cx + 80 * mm)
    box = v[a : b + 1, y0:y1, x0:x1]
    heart = (box > 0) & (box < 600)
    xs = np.arange(x0, x0 + box.shape[2])
    return float((heart.sum(axis=(0, 1)) * xs).sum() / heart.sum() - cx)


def apex_top_margin(v: np.ndarray) -> float:
    """Positive when the lung apices are at small z.

    With the apices in view (little lung in the first slice) the lungs taper slowly toward the apex
    (a cone) and end quickly at the diaphragm: slices from 20% to 80% of the largest lung area at the
    top minus the same at the bottom. In a crop that cuts the apices off, the top is lung while the
    bottom is the upper abdomen below the diaphragm: top minus bottom lung area (in % of the largest).
    """
    prof = lung_profile(v)
    if prof[0] < 0.05 and prof[-1] < 0.05:
        over20, over80 = np.flatnonzero(prof > 0.2), np.flatnonzero(prof > 0.8)
        return float((over80[0] - over20[0]) - (over20[-1] - over80[-1]))
    return float(100 * (prof[0] - prof[-1]))
