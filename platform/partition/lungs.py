"""Lung segmentation by morphological image processing (paper 000, appendix 7.2.2, Figure 6).

The published pipeline works one axial slice at a time:

1. binarise the slice at HU < -300;
2. clear the border: remove the 2D components (8-connected) that touch the slice's edge;
3. keep the 2 largest 2D components of the slice (every component whose area reaches the
   second-largest area, so ties keep more);
4. in 3D, remove components (6-connected) smaller than 1,000,000 voxels at 0.8 mm.

Here steps 1-3 run on slabs of a few slices: one labelling call with a structuring element that
has no neighbours across slices labels all the slab's slices at once, and the per-slice decisions
are lookups in per-label tables (`numpy.bincount`), so the result equals the per-slice
scikit-image loop voxel for voxel (tests and benchmarks/partition.py assert it). Slabs keep the
label arrays cache-sized and are independent, so `threads > 1` labels them concurrently (scipy
releases the GIL while labelling). Step 4 labels only the bounding box of what steps 1-3 kept.

`clear="exterior"` (the improved method) keeps a border-touching component only when it is not
pure air (fewer than half its voxels below `exterior_air_hu`, -950: lung parenchyma has a median
near -800 HU, outside air near -1000) and at least half its voxels are enclosed by the body
(body.py: a foam pad or carbon table under the patient is not). Lungs that touch the edge of a
tight crop therefore survive, while the air around the body is cleared as before. Severe emphysema
(half the lung below -950 HU) cut by a crop edge is still cleared, as in the reference.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from scipy import ndimage

from ctplatform.partition.body import BodyExtent, body_extent

#: 8-connectivity within an axial slice and no neighbours across slices: labels every slice at once.
SLICE_8 = np.zeros((3, 3, 3), dtype=bool)
SLICE_8[1] = True
#: 6-connectivity in 3D (scikit-image's `remove_small_objects` default, connectivity=1).
FACE_6 = ndimage.generate_binary_structure(3, 1)

REFERENCE_SPACING_MM = 0.8
SLAB_SLICES = 4  # slices labelled per call: label arrays of a few MB stay in cache


def min_voxels_at(spacing_mm: tuple[float, float, float], voxels_at_0p8mm: float) -> float:
    """The published 3D size threshold, scaled so it keeps the same physical volume at this spacing."""
    return voxels_at_0p8mm * REFERENCE_SPACING_MM**3 / float(np.prod(spacing_mm))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel (None when there is none)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def keep_two_largest(area: np.ndarray, slice_of: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """bool [n + 1]: per slice, the candidate labels whose area reaches the slice's second-largest.

    The published rule: when a slice has more than two components, drop those with an area below
    the second-largest; so ties at the second place are all kept.
    """
    idx = np.flatnonzero(candidate)
    keep = np.zeros(area.shape[0], dtype=bool)
    if idx.size == 0:
        return keep
    sl, ar = slice_of[idx], area[idx]
    order = np.lexsort((-ar, sl))  # by slice, largest first
    sl_sorted, ar_sorted = sl[order], ar[order]
    starts = np.flatnonzero(np.r_[True, sl_sorted[1:] != sl_sorted[:-1]])
    counts = np.diff(np.r_[starts, sl_sorted.size])
    second = np.where(counts >= 2, ar_sorted[np.minimum(starts + 1, sl_sorted.size - 1)], 0)
    kept_sorted = (np.repeat(counts, counts) <= 2) | (ar_sorted >= np.repeat(second, counts))
    keep[idx[order[kept_sorted]]] = True
    return keep


def _candidates_slab(
    hu: np.ndarray,
    out: np.ndarray,
    z0: int,
    hu_threshold: float,
    exterior_air_hu: float,
    body: BodyExtent | None,
) -> None:
    """Steps 1-3 on a slab of slices starting at z0, written into `out` (a view of the same slab)."""
    labels = np.empty(hu.shape, dtype=np.int32)
    n = ndimage.label(hu < hu_threshold, structure=SLICE_8, output=labels)
    # scipy numbers components in raster order of first appearance and none spans two slices,
    # so each slice owns a contiguous run of labels ending at its running maximum.
    last = np.maximum.accumulate(labels.reshape(labels.shape[0], -1).max(axis=1))
    slice_of = np.searchsorted(last, np.arange(n + 1), side="left")
    touch = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        touch[edge.ravel()] = True
    touch[0] = False
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)
    if body is not None and touch.any():
        # Outside air is mostly pure air (median below exterior_air_hu); the mean would be pulled
        # up by the partial-volume rim along the skin and the table at coarse spacing.
        pure = np.bincount(labels[hu < exterior_air_hu], minlength=n + 1)
        doubtful = np.flatnonzero(touch & (pure < 0.5 * area))
        if doubtful.size:
            # Not pure air (a cut lung, or a foam pad/table): keep it only when mostly inside the body.
            lut = np.zeros(n + 1, dtype=bool)
            lut[doubtful] = True
            sel = lut[labels]
            zz, yy, xx = np.nonzero(sel)
            inside = np.bincount(labels[sel], weights=body.enclosed(zz + z0, yy, xx), minlength=n + 1)
            keep = doubtful[inside[doubtful] >= 0.5 * area[doubtful]]
            touch[keep] = False
    touch[0] = True  # label 0 is tissue, never a candidate
    out[...] = keep_two_largest(area, slice_of, ~touch)[labels]


def lung_candidates(
    hu: np.ndarray,
    hu_threshold: float = -300.0,
    clear: Literal["border", "exterior"] = "border",
    exterior_air_hu: float = -950.0,
    spacing_mm: tuple[float, float, float] | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Steps 1-3 for every axial slice: air, border clearing, the two largest components per slice.

    clear="exterior" needs `spacing_mm` (the body is found on a grid of about 4 mm).
    """
    if clear not in ("border", "exterior"):
        raise ValueError(f"clear must be 'border' or 'exterior', not {clear!r}")
    if hu.ndim != 3:
        raise ValueError(f"expected a volume [z, y, x]; got shape {hu.shape}")
    body = None
    if clear == "exterior":
        if spacing_mm is None:
            raise ValueError("clear='exterior' needs spacing_mm")
        body = body_extent(hu, spacing_mm, hu_threshold)
    out = np.zeros(hu.shape, dtype=bool)
    starts = range(0, hu.shape[0], SLAB_SLICES)

    def work(z0: int) -> None:
        s = slice(z0, min(z0 + SLAB_SLICES, hu.shape[0]))
        _candidates_slab(hu[s], out[s], z0, hu_threshold, exterior_air_hu, body)

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, starts))
    else:
        for z0 in starts:
            work(z0)
    return out


def label_components(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...] | None, np.ndarray]:
    """6-connected 3D components inside the mask's bounding box: (labels in the box, box, sizes)."""
    box = bounding_box(mask)
    if box is None:
        return np.zeros((0, 0, 0), dtype=np.int32), None, np.zeros(1, dtype=np.int64)
    sub = mask[box]
    labels = np.empty(sub.shape, dtype=np.int32)
    ndimage.label(sub, structure=FACE_6, output=labels)
    sizes = np.bincount(labels[sub], minlength=int(labels.max()) + 1)
    sizes[0] = 0
    return labels, box, sizes


def remove_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """Drop 6-connected 3D components with fewer than `min_voxels` voxels (skimage's exclusive rule)."""
    out = np.zeros(mask.shape, dtype=bool)
    labels, box, sizes = label_components(mask)
    if box is not None:
        keep = sizes >= min_voxels
        keep[0] = False
        out[box] = keep[labels]
    return out


def segment_lungs_reference(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    hu_threshold: float = -300.0,
    min_voxels_at_0p8mm: float = 1_000_000,
    threads: int = 1,
) -> np.ndarray:
    """Both lungs as one bool mask [z, y, x], exactly as the published per-slice algorithm."""
    mask = lung_candidates(hu, hu_threshold, clear="border", threads=threads)
    return remove_small_components(mask, min_voxels_at(spacing_mm, min_voxels_at_0p8mm))
