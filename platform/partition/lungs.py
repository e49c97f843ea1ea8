"""Lung segmentation by morphological image processing (paper 000, appendix 7.2.2, Figure 6).

The published pipeline works one axial slice at a time:

1. binarise the slice at HU < -300;
2. clear the border: remove the 2D components (8-connected) that touch the slice's edge;
3. keep the 2 largest 2D components of the slice (every component whose area reaches the
   second-largest area, so ties keep more);
4. in 3D, remove components (6-connected) smaller than 1,000,000 voxels at 0.8 mm.

The reference path (`segment_lungs_reference`) runs steps 1-3 slice by slice with cc3d (2-3x
faster than scipy.ndimage.label), labelling each slice only inside the bounding box of its tissue
(outside it all is air joined to the edge, so the clear-border decisions are the same), counting
areas with a comparison per component (numpy's bincount widens every label to 64 bits first) and
painting the kept components by comparison; step 4 labels the candidates' bounding box once in 3D.
The result equals the per-slice scikit-image loop voxel for voxel (tests and
benchmarks/partition.py assert it). The improved method's exterior rule (`lung_candidates`) runs
steps 1-3 on slabs of a few slices: one scipy labelling call with a structuring element that has
no neighbours across slices labels all the slab's slices at once, and the per-slice decisions are
lookups in per-label tables. `threads > 1` runs slices or slabs concurrently (the labelling
releases the GIL).

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

import cc3d
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
    """Drop 6-connected 3D components with fewer than `min_voxels` voxels (skimage's exclusive rule).

    Labels only the mask's bounding box (cc3d; uint8, which cc3d reads as the same binary image).
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return out
    sub = mask[box]
    labels, n = cc3d.connected_components(sub.view(np.uint8), connectivity=6, return_N=True)
    sizes = np.bincount(labels[sub], minlength=n + 1)
    keep = np.flatnonzero(sizes >= min_voxels)
    keep = keep[keep > 0]
    if keep.size == n:
        out[box] = sub
    elif keep.size:
        _paint(out[box], labels, keep)
    return out


def segment_lungs_reference(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    hu_threshold: float = -300.0,
    min_voxels_at_0p8mm: float = 1_000_000,
    threads: int = 1,
) -> np.ndarray:
    """Both lungs as one bool mask [z, y, x], exactly as the published per-slice algorithm.

    Steps 1-3 run slice by slice (`border_cleared_candidates`), step 4 labels the candidates' box
    in 3D once (`remove_small_components`); both label with cc3d.
    """
    mask = border_cleared_candidates(hu, hu_threshold, threads)
    return remove_small_components(mask, min_voxels_at(spacing_mm, min_voxels_at_0p8mm))


def border_cleared_candidates(hu: np.ndarray, hu_threshold: float = -300.0, threads: int = 1) -> np.ndarray:
    """Steps 1-3 with a plain clear-border, one slice at a time.

    Each slice is labelled (8-connected, cc3d) only inside the bounding box of its tissue: outside it everything
    is air joined to the slice's edge, so a component touches the slice's edge exactly when it
    touches that box's edge, and the components that do not lie wholly inside it. `threads > 1`
    runs runs of slices concurrently (the labelling releases the GIL).
    """
    if hu.ndim != 3:
        raise ValueError(f"expected a volume [z, y, x]; got shape {hu.shape}")
    out = np.zeros(hu.shape, dtype=bool)
    if threads > 1 and hu.shape[0] > 1:
        bounds = np.linspace(0, hu.shape[0], min(threads, hu.shape[0]) + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: _slices_candidates(hu, out, range(bounds[i], bounds[i + 1]), hu_threshold),
                          range(len(bounds) - 1)))  # fmt: skip
    else:
        _slices_candidates(hu, out, range(hu.shape[0]), hu_threshold)
    return out


def _slices_candidates(hu: np.ndarray, out: np.ndarray, zs: range, hu_threshold: float) -> None:
    """border_cleared_candidates for the slices `zs`, written into `out`."""
    _, ny, nx = hu.shape
    air = np.empty((ny, nx), dtype=bool)
    air_bytes = air.view(np.uint8)
    same = np.empty(ny * nx, dtype=bool)  # scratch for _areas
    for z in zs:
        np.less(hu[z], hu_threshold, out=air)
        rows = np.flatnonzero(~air.all(axis=1))
        if rows.size == 0:
            continue  # all air: one component, on the edge
        cols = np.flatnonzero(~air.all(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        # uint8, not bool: cc3d 4.1.1 mislabels some background pixels of 2D bool images
        labels, n = cc3d.connected_components(air_bytes[y0:y1, x0:x1], connectivity=8, return_N=True)
        if n == 0:
            continue
        on_edge = np.zeros(n + 1, dtype=bool)
        for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            on_edge[edge] = True
        if on_edge[1:].all():
            continue
        on_edge[0] = True
        kept = np.flatnonzero(~on_edge)
        if kept.size > 2:  # the published rule: drop those below the second-largest (ties stay)
            area = _areas(labels, kept, n, same)
            kept = kept[area >= np.partition(area, -2)[-2]]
        _paint(out[z, y0:y1, x0:x1], labels, kept)


def _areas(labels: np.ndarray, which: np.ndarray, n: int, scratch: np.ndarray) -> np.ndarray:
    """Pixel counts of the labels `which` (of n). A comparison and a count per label run at memory
    speed; bincount first widens every label to 64 bits (about 25x slower per label here), so it
    is only worth it for many labels."""
    if which.size > 16:
        return np.bincount(labels.ravel(), minlength=n + 1)[which]
    same = scratch[: labels.size].reshape(labels.shape)
    out = np.empty(which.size, dtype=np.int64)
    for i, label in enumerate(which.tolist()):  # Python ints compare in the labels' own dtype
        np.equal(labels, label, out=same)
        out[i] = np.count_nonzero(same)
    return out


def _paint(out: np.ndarray, labels: np.ndarray, kept: np.ndarray) -> None:
    """out |= labels is one of `kept`: a comparison per label when they are few (a lookup table
    would first widen every label to 64 bits)."""
    if kept.size == 1 and not out.any():
        np.equal(labels, int(kept[0]), out=out)
    elif kept.size <= 4:
        for label in kept.tolist():  # Python ints compare in the labels' own dtype (no widening)
            out |= labels == label
    else:
        lut = np.zeros(int(labels.max()) + 1, dtype=bool)
        lut[kept] = True
        out |= lut[labels]
