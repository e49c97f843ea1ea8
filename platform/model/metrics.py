"""Classification and organ-localization metrics: AUROC per label and OrganIoU (paper 000, 4.3).

Everything here is a pure function over numpy arrays (torch tensors are accepted and converted),
vectorised over scans, labels and thresholds, so training can call it for validation metrics and
evaluation for the test report.

OrganIoU of one positive label in one scan: the attention map on the feature grid [H, D1, D2] is
ReLU'd and min-max scaled over the whole volume map (the paper's visualisation normalisation),
binarised at a threshold (value > t, as the published code), and
    OrganIoU = allowed / (allowed + forbidden)
with `allowed` the number of binarised cells inside G_true and `forbidden` those outside.
The published code scores a map lying wholly inside the allowed region (forbidden = 0) as 0;
ours scores it 1 (it is the best possible localisation). A map with no cell above the threshold
scores 0 in both. `convention="published"` reproduces the published numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

from ctplatform.labels import GROUPS, N_LABELS, all_labels

#: The 53 candidate thresholds of the published code: 0.004..0.016 by 0.004, then 0.02..0.98 by 0.02.
ORGAN_IOU_THRESHOLDS: np.ndarray = np.round(
    np.concatenate([0.004 * np.arange(1, 5), 0.02 * np.arange(1, 50)]), 6
)

Convention = Literal["ours", "published"]


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array-like or a (possibly GPU, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- AUROC
def auroc_per_label(y_true: Any, y_score: Any) -> np.ndarray:
    """AUROC of each label: float64 [L] from y_true [N, L] (0/1) and y_score [N, L].

    Mann-Whitney form with mid-ranks for ties (equals sklearn's roc_auc_score); NaN where a label
    has only one class among the N scans.
    """
    from scipy.stats import rankdata

    y = as_numpy(y_true).astype(bool)
    s = as_numpy(y_score).astype(np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"y_true and y_score must both be [N, L]; got {y.shape} and {s.shape}")
    n_pos = y.sum(axis=0).astype(np.float64)
    n_neg = y.shape[0] - n_pos
    ranks = rankdata(s, axis=0)  # mid-ranks
    rank_sum = np.where(y, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def auroc_summary(auc: np.ndarray) -> dict[str, float]:
    """Median and mean over the labels that have both classes (the paper reports the median)."""
    ok = auc[np.isfinite(auc)]
    return {
        "auroc_median": float(np.median(ok)) if ok.size else float("nan"),
        "auroc_mean": float(np.mean(ok)) if ok.size else float("nan"),
        "auroc_labels": int(ok.size),
    }


def bootstrap_auroc(
    y_true: Any, y_score: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, np.ndarray]:
    """Percentile bootstrap CIs (scans resampled with replacement) for per-label, median and mean AUROC.

    Returns `label_low`, `label_high` [L] and `median_low/high`, `mean_low/high` (0-d arrays).
    A resample where a label has one class leaves that label out of that resample.
    """
    y = as_numpy(y_true)
    s = as_numpy(y_score)
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    boots = np.empty((n_boot, y.shape[1]))
    for b in range(n_boot):  # one vectorised AUROC over all labels per resample
        idx = rng.integers(0, n, n)
        boots[b] = auroc_per_label(y[idx], s[idx])
    with np.errstate(all="ignore"), quiet_nan_warnings():
        med = np.nanmedian(boots, axis=1)
        mean = np.nanmean(boots, axis=1)
        q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
        label_ci = np.nanpercentile(boots, q, axis=0)
        med_ci = np.nanpercentile(med, q)
        mean_ci = np.nanpercentile(mean, q)
    return {
        "label_low": label_ci[0],
        "label_high": label_ci[1],
        "median_low": med_ci[0],
        "median_high": med_ci[1],
        "mean_low": mean_ci[0],
        "mean_high": mean_ci[1],
    }


@contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's empty/all-NaN slice warnings (labels absent from a split are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


# --------------------------------------------------------------------------- OrganIoU
def normalize_attention(attention: Any) -> np.ndarray:
    """ReLU, then min-max scale each volume map over its last three axes [H, D1, D2] to [0, 1].

    A map with no positive value (or a constant one) becomes all zeros: it attends to nothing.
    """
    a = np.maximum(as_numpy(attention).astype(np.float32), 0.0)
    lo = a.min(axis=(-3, -2, -1), keepdims=True)
    hi = a.max(axis=(-3, -2, -1), keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out.astype(np.float32)


def binarized_counts(
    attention_norm: np.ndarray, region: np.ndarray, thresholds: np.ndarray = ORGAN_IOU_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """Cells above each threshold inside and outside `region`, for every map at once.

    attention_norm float [..., H, D1, D2] in [0, 1]; region bool, same shape. Returns
    (inside, outside), int64 [..., T]. One pass over the cells instead of one per threshold: each
    value's bin among the sorted thresholds is found by binary search, bins are counted per map, and
    a reverse cumulative sum turns "falls in bin k" into "exceeds threshold k".
    """
    a = np.asarray(attention_norm)
    g = np.asarray(region, dtype=bool)
    if a.shape != g.shape:
        raise ValueError(f"attention {a.shape} and region {g.shape} must have the same shape")
    thr = np.asarray(thresholds, dtype=np.float64)
    if np.any(np.diff(thr) <= 0):
        raise ValueError("thresholds must be strictly increasing")
    lead = a.shape[:-3]
    n_maps = int(np.prod(lead)) if lead else 1
    cells = int(np.prod(a.shape[-3:]))
    t = thr.size
    flat = a.reshape(n_maps, cells)
    gflat = g.reshape(n_maps, cells)
    inside = np.zeros((n_maps, t + 1), dtype=np.int64)
    total = np.zeros((n_maps, t + 1), dtype=np.int64)
    # Bound the temporary index arrays (~4M cells at a time) whatever the batch size.
    step = max(1, 4_000_000 // max(cells, 1))
    for start in range(0, n_maps, step):
        stop = min(n_maps, start + step)
        # number of thresholds strictly below the value = how many thresholds it exceeds
        k = np.searchsorted(thr, flat[start:stop], side="left")  # exact: float64 thresholds
        key = np.arange(stop - start)[:, None] * (t + 1) + k
        size = (stop - start) * (t + 1)
        total[start:stop] = np.bincount(key.ravel(), minlength=size).reshape(-1, t + 1)
        inside[start:stop] = np.bincount(key[gflat[start:stop]], minlength=size).reshape(-1, t + 1)
    # above[:, j] = cells exceeding threshold j = cells in bins j+1..T
    above_total = np.cumsum(total[:, ::-1], axis=1)[:, ::-1][:, 1:]
    above_inside = np.cumsum(inside[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return above_inside.reshape(*lead, t), (above_total - above_inside).reshape(*lead, t)


def iou_from_counts(allowed: np.ndarray, forbidden: np.ndarray, convention: Convention = "ours") -> np.ndarray:
    """OrganIoU = allowed / (allowed + forbidden); 0 when nothing is attended.

    convention="published": also 0 when forbidden == 0 (the published code's `a != 0 and b != 0`).
    """
    a = np.asarray(allowed, dtype=np.float64)
    f = np.asarray(forbidden, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(a + f > 0, a / np.where(a + f > 0, a + f, 1.0), 0.0)
    if convention == "published":
        iou = np.where((a > 0) & (f > 0), iou, 0.0)
    elif convention != "ours":
        raise ValueError(f"unknown convention {convention!r}: use 'ours' or 'published'")
    return iou


def organ_iou(
    attention: Any,
    g_true: Any,
    positive: Any | None = None,
    thresholds: np.ndarray = ORGAN_IOU_THRESHOLDS,
    normalize: bool = True,
    convention: Convention = "ours",
) -> np.ndarray:
    """OrganIoU at every threshold for every positive label of every scan.

    attention float [N, L, H, D1, D2] (raw HiResCAM / Grad-CAM; normalised here unless
    normalize=False) or [L, H, D1, D2] for one scan; g_true bool of the same shape (allowed
    regions, see partition.allowed_regions); positive bool [N, L] (default: labels whose allowed
    region is non-empty). Returns float64 [N, L, T] (or [L, T]), NaN for labels that are not
    positive.
    """
    a = as_numpy(attention)
    g = as_numpy(g_true).astype(bool)
    single = a.ndim == 4
    if single:
        a, g = a[None], g[None]
        if positive is not None:
            positive = as_numpy(positive)[None]
    if a.ndim != 5 or a.shape != g.shape:
        raise ValueError(
            f"attention and g_true must both be [N, L, H, D1, D2]; got {a.shape} and {g.shape}"
        )
    pos = g.any(axis=(-3, -2, -1)) if positive is None else as_numpy(positive).astype(bool)
    if pos.shape != a.shape[:2]:
        raise ValueError(f"positive must be [N, L] = {a.shape[:2]}; got {pos.shape}")
    thr = np.asarray(thresholds, dtype=np.float64)
    out = np.full(a.shape[:2] + (thr.size,), np.nan)
    n_idx, l_idx = np.nonzero(pos)
    if n_idx.size:
        maps = a[n_idx, l_idx]
        if normalize:
            maps = normalize_attention(maps)
        inside, outside = binarized_counts(maps, g[n_idx, l_idx], thr)
        out[n_idx, l_idx] = iou_from_counts(inside, outside, convention)
    return out[0] if single else out


def choose_thresholds(iou: np.ndarray) -> np.ndarray:
    """Per label, the index of the threshold with the highest mean OrganIoU over scans: int [L].

    iou float [N, L, T] with NaN for non-positive (scan, label) pairs (validation split). Labels
    with no positive scan get -1. Ties go to the lowest threshold (the published code's strict >).
    """
    with quiet_nan_warnings():
        mean = np.nanmean(iou, axis=0)  # [L, T]
    best = np.full(mean.shape[0], -1, dtype=np.int64)
    has = np.isfinite(mean).any(axis=1)
    best[has] = np.nanargmax(np.where(np.isfinite(mean[has]), mean[has], -np.inf), axis=1)
    return best


def iou_at(iou: np.ndarray, threshold_index: np.ndarray) -> np.ndarray:
    """OrganIoU [N, L] at each label's chosen threshold index ([L], -1 gives NaN)."""
    idx = np.asarray(threshold_index)
    picked = np.take_along_axis(iou, np.clip(idx, 0, None)[None, :, None], axis=2)[..., 0]
    picked[:, idx < 0] = np.nan
    return picked


def summarize_organ_iou(iou_best: np.ndarray, prefix: str = "organ_iou") -> dict[str, float]:
    """Mean OrganIoU over positive (scan, label) pairs: overall and by location group.

    iou_best float [N, 80] at the chosen thresholds (NaN where not positive). Pairs are pooled as in
    the published code, so a frequent label weighs more than a rare one.
    """
    if iou_best.shape[-1] != N_LABELS:
        raise ValueError(f"expected [N, {N_LABELS}] OrganIoU; got {iou_best.shape}")
    groups = np.array([lab.group for lab in all_labels()])
    out: dict[str, float] = {}
    for name, cols in [("overall", np.ones(N_LABELS, bool))] + [(gr, groups == gr) for gr in GROUPS]:
        vals = iou_best[:, cols]
        vals = vals[np.isfinite(vals)]
        out[f"{prefix}_{name}"] = float(vals.mean()) if vals.size else float("nan")
        out[f"{prefix}_{name}_count"] = int(vals.size)
    return out
