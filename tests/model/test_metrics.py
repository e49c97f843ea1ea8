"""AUROC and OrganIoU against direct reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ctplatform.model.metrics import (
    ORGAN_IOU_THRESHOLDS,
    auroc_per_label,
    auroc_summary,
    binarized_counts,
    bootstrap_auroc,
    choose_thresholds,
    iou_at,
    normalize_attention,
    organ_iou,
    summarize_organ_iou,
)


def test_thresholds_are_the_published_53():
    assert ORGAN_IOU_THRESHOLDS.size == 53
    assert ORGAN_IOU_THRESHOLDS[:5].tolist() == [0.004, 0.008, 0.012, 0.016, 0.02]
    assert ORGAN_IOU_THRESHOLDS[-1] == 0.98


def test_auroc_matches_sklearn_with_ties_and_nan_for_one_class():
    rng = np.random.default_rng(0)
    y = rng.random((60, 80)) < 0.3
    s = np.round(rng.random((60, 80)) + 0.3 * y, 1)  # rounding creates ties
    y[:, 5] = False  # one class only
    auc = auroc_per_label(y, s)
    assert np.isnan(auc[5])
    for j in [0, 1, 40, 79]:
        assert auc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    summ = auroc_summary(auc)
    assert summ["auroc_labels"] == 79
    assert summ["auroc_median"] == pytest.approx(np.nanmedian(auc))
    # torch tensors are accepted
    assert np.allclose(auroc_per_label(torch.tensor(y), torch.tensor(s)), auc, equal_nan=True)


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.random((200, 80)) < 0.4
    s = rng.random((200, 80)) + 0.5 * y
    auc = auroc_per_label(y, s)
    ci = bootstrap_auroc(y, s, n_boot=200, seed=0)
    inside = (ci["label_low"] <= auc) & (auc <= ci["label_high"])
    assert inside.mean() > 0.95
    assert ci["median_low"] < np.median(auc) < ci["median_high"]
    assert np.all(ci["label_high"] - ci["label_low"] > 0.02)


def _naive_iou(att: np.ndarray, g: np.ndarray, thr: float, published: bool) -> float:
    a = np.maximum(att, 0)
    a = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)
    b = a > thr
    allowed, forbidden = float(b[g].sum()), float(b[~g].sum())
    if published:
        return allowed / (allowed + forbidden) if allowed and forbidden else 0.0
    return allowed / (allowed + forbidden) if allowed + forbidden else 0.0


@pytest.mark.parametrize("convention", ["ours", "published"])
def test_organ_iou_matches_per_threshold_loop(convention):
    rng = np.random.default_rng(2)
    n, L, grid = 3, 80, (5, 4, 4)
    att = rng.normal(size=(n, L) + grid).astype(np.float32)
    g = rng.random((n, L) + grid) < 0.4
    pos = rng.random((n, L)) < 0.2
    g[~pos] = False
    iou = organ_iou(att, g, pos, convention=convention)
    assert iou.shape == (n, L, 53)
    assert np.all(np.isnan(iou[~pos]))
    for i, j in list(zip(*np.nonzero(pos)))[:25]:
        for k in [0, 4, 20, 52]:
            ref = _naive_iou(att[i, j], g[i, j], ORGAN_IOU_THRESHOLDS[k], convention == "published")
            assert iou[i, j, k] == pytest.approx(ref, abs=1e-12)


def test_map_wholly_inside_allowed_region_scores_one_ours_zero_published():
    grid = (3, 4, 4)
    g = np.zeros((1, 80) + grid, bool)
    g[0, 0, 1] = True
    att = np.zeros((1, 80) + grid, np.float32)
    att[0, 0, 1, :2, :2] = 1.0
    pos = np.zeros((1, 80), bool)
    pos[0, 0] = True
    assert organ_iou(att, g, pos)[0, 0, 10] == 1.0
    assert organ_iou(att, g, pos, convention="published")[0, 0, 10] == 0.0
    # all attention outside: 0 in both conventions; empty map: 0
    att2 = np.zeros_like(att)
    att2[0, 0, 0] = 1.0
    assert organ_iou(att2, g, pos)[0, 0, 10] == 0.0
    assert organ_iou(np.zeros_like(att), g, pos)[0, 0, 10] == 0.0


def test_binarized_counts_is_strictly_greater_than():
    a = np.array([0.0, 0.004, 0.005, 0.02, 0.5, 1.0]).reshape(1, 1, 6)
    g = np.ones_like(a, bool)
    inside, outside = binarized_counts(a, g, np.array([0.004, 0.02, 0.98]))
    assert inside.tolist() == [4, 2, 1]
    assert outside.tolist() == [0, 0, 0]


def test_normalize_attention_is_relu_then_minmax_over_volume():
    att = np.array([[[-3.0, 1.0], [-4.0, 1.0]]])[None]  # paper's example: negative values clip
    out = normalize_attention(att)
    assert out.min() == 0.0 and out.max() == 1.0
    att2 = np.array([[[2.0, -1.0], [4.0, 2.0]]])[None]
    assert normalize_attention(att2).ravel().tolist() == [0.5, 0.0, 1.0, 0.5]


def test_threshold_choice_and_group_summary():
    rng = np.random.default_rng(3)
    iou = rng.random((10, 80, 53))
    iou[:, 3] = np.nan  # no positives for label 3
    iou[:, 0, 7] = 2.0  # clearly the best for label 0
    best = choose_thresholds(iou)
    assert best[0] == 7 and best[3] == -1
    picked = iou_at(iou, best)
    assert np.all(picked[:, 0] == 2.0) and np.all(np.isnan(picked[:, 3]))
    summ = summarize_organ_iou(picked)
    assert summ["organ_iou_overall_count"] == 790
    assert summ["organ_iou_lung_count"] + summ["organ_iou_heart_count"] + summ[
        "organ_iou_great_vessel_count"
    ] + summ["organ_iou_mediastinum_count"] == 790
