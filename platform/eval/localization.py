"""Localization against true lesion masks (phantom cohorts) and explanation sanity checks.

All functions take M maps at once on the feature grid: attention float [M, H, D1, D2] and a
boolean mask of the same shape, and return one value per map (or per map and threshold).
Definitions (papers 002 and 004):
- lesion IoU and Dice of the binarised map (normalised as for OrganIoU, value > t) against the
  lesion mask; a scan without lesion cells for the label gives NaN (true negatives are excluded,
  paper 004);
- pointing game: a hit when the map's maximum lies inside the lesion (paper 004);
- Localization Utility: per map, the area under the precision-recall curve (average precision)
  of the continuous normalised map scoring each cell against the mask (paper 002);
- confounder share: the fraction of positive (ReLU'd) attention that falls on a confounder region;
- sanity check (Adebayo et al.'s model randomisation test): Spearman rank correlation between the
  maps of the trained model and of the same architecture with randomised weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctplatform.model.metrics import ORGAN_IOU_THRESHOLDS, as_numpy, binarized_counts, normalize_attention


def flat_maps(x: Any, dtype: Any = None) -> np.ndarray:
    """Maps [M, ...] as [M, cells] (optionally cast), refusing a single map without its leading axis."""
    a = as_numpy(x)
    if dtype is not None:
        a = a.astype(dtype)
    if a.ndim < 2:
        raise ValueError(f"expected maps [M, ...]; got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def lesion_overlap(
    attention: Any, lesion: Any, thresholds: np.ndarray = ORGAN_IOU_THRESHOLDS, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice of the binarised maps against lesion masks at every threshold: two float [M, T].

    NaN rows for maps whose lesion mask is empty.
    """
    a = as_numpy(attention)
    g = as_numpy(lesion).astype(bool)
    if normalize:
        a = normalize_attention(a)
    tp, fp = binarized_counts(a, g, thresholds)
    n_lesion = g.reshape(g.shape[0], -1).sum(axis=1)[:, None]
    fn = n_lesion - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    empty = (n_lesion[:, 0] == 0)
    iou[empty] = np.nan
    dice[empty] = np.nan
    return iou.astype(np.float64), dice.astype(np.float64)


def pointing_game(attention: Any, lesion: Any) -> np.ndarray:
    """Hit (1.0) when the map's maximum cell lies inside the lesion, else 0.0; NaN for an empty lesion.

    The raw map's arg-max equals the normalised map's whenever the latter is not all zero; ties go to
    the first cell in [H, D1, D2] order.
    """
    a = flat_maps(attention, np.float64)
    g = flat_maps(lesion, bool)
    hit = g[np.arange(a.shape[0]), np.argmax(a, axis=1)].astype(np.float64)
    hit[~g.any(axis=1)] = np.nan
    return hit


def average_precision(scores: Any, truth: Any) -> np.ndarray:
    """Average precision per row (sklearn's definition, ties grouped): float [M], NaN without positives.

    AP = (1 / P) * sum over true cells of the precision at the lowest score tied with that cell.
    """
    s = flat_maps(scores, np.float64)
    t = flat_maps(truth, bool)
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    t_sorted = np.take_along_axis(t, order, axis=1)
    k = s.shape[1]
    tp = np.cumsum(t_sorted, axis=1)
    precision = tp / np.arange(1, k + 1)
    # last position of each run of tied scores; each cell takes the precision there
    is_end = np.ones_like(s_sorted, dtype=bool)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    end_idx = np.where(is_end, np.arange(k), k)
    next_end = np.minimum.accumulate(end_idx[:, ::-1], axis=1)[:, ::-1]
    prec_at_end = np.take_along_axis(precision, next_end, axis=1)
    p = t.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (t_sorted * prec_at_end).sum(axis=1) / p
    ap[p == 0] = np.nan
    return ap


def localization_utility(attention: Any, lesion: Any) -> np.ndarray:
    """Localization Utility (paper 002): AUPRC of the normalised continuous map against the mask, per map."""
    return average_precision(normalize_attention(as_numpy(attention)), lesion)


def attention_share(attention: Any, region: Any) -> np.ndarray:
    """Fraction of positive attention (ReLU'd map) inside `region`, per map; NaN for a map with none."""
    a = np.maximum(flat_maps(attention, np.float64), 0.0)
    g = flat_maps(region, bool)
    total = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (a * g).sum(axis=1) / total
    share[total <= 0] = np.nan
    return share


def map_rank_correlation(maps_a: Any, maps_b: Any) -> np.ndarray:
    """Spearman rank correlation between paired maps (over their cells), per map: float [M].

    NaN when either map is constant (no ranking to compare).
    """
    from scipy.stats import rankdata

    a = rankdata(flat_maps(maps_a, np.float64), axis=1)
    b = rankdata(flat_maps(maps_b, np.float64), axis=1)
    if a.shape != b.shape:
        raise ValueError(f"paired maps differ in shape: {a.shape} vs {b.shape}")
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(np.isfinite(r), r, np.nan)
