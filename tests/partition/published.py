"""The published per-slice scikit-image lung segmentation, written plainly (the reference to match).

As in the authors' segmentlungs.py: binarise each slice at HU < -300, clear_border, label, drop
regions with an area below the second largest (when there are more than two), then
remove_small_objects in 3D with the exclusive threshold `min_size` (skimage 0.26 spells it
max_size = min_size - 1 for integer sizes). Region removal uses np.isin instead of the published
per-coordinate Python loop; the result is the same.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.measure import label, regionprops
from skimage.morphology import remove_small_objects
from skimage.segmentation import clear_border


def published_lungs(ct: np.ndarray, min_size: float = 1_000_000, hu_threshold: float = -300) -> np.ndarray:
    seg = np.zeros(ct.shape, dtype=bool)
    for i in range(ct.shape[0]):
        lab = label(clear_border(ct[i] < hu_threshold))
        regions = regionprops(lab)
        areas = sorted(r.area for r in regions)
        if len(areas) > 2:
            lab[np.isin(lab, [r.label for r in regions if r.area < areas[-2]])] = 0
        seg[i] = lab > 0
    return remove_small_objects(seg, max_size=math.ceil(min_size) - 1)
