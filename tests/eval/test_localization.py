"""Localization metrics against sklearn/scipy and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from ctplatform.eval.localization import (
    attention_share,
    average_precision,
    lesion_overlap,
    localization_utility,
    map_rank_correlation,
    pointing_game,
)


def _blob_case():
    grid = (4, 5, 5)
    lesion = np.zeros((2,) + grid, bool)
    lesion[:, 1:3, 1:3, 1:3] = True  # 8 cells
    att = np.zeros((2,) + grid, np.float32)
    att[0, 1:3, 1:3, 1:3] = 1.0  # exactly the lesion
    att[1, 0, 4, 4] = 1.0  # one cell, outside
    return att, lesion


def test_lesion_overlap_perfect_and_miss():
    att, lesion = _blob_case()
    iou, dice = lesion_overlap(att, lesion, np.array([0.5]))
    assert iou[:, 0].tolist() == [1.0, 0.0]
    assert dice[:, 0].tolist() == [1.0, 0.0]


def test_lesion_overlap_partial_matches_definition():
    rng = np.random.default_rng(0)
    att = rng.random((5, 3, 4, 4))
    lesion = rng.random((5, 3, 4, 4)) < 0.3
    iou, dice = lesion_overlap(att, lesion, np.array([0.3, 0.7]), normalize=False)
    for m in range(5):
        for k, t in enumerate([0.3, 0.7]):
            b = att[m] > t
            tp, fp, fn = (b & lesion[m]).sum(), (b & ~lesion[m]).sum(), (~b & lesion[m]).sum()
            assert iou[m, k] == pytest.approx(tp / (tp + fp + fn))
            assert dice[m, k] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    empty = np.zeros_like(lesion)
    assert np.isnan(lesion_overlap(att, empty, np.array([0.5]))[0]).all()


def test_pointing_game():
    att, lesion = _blob_case()
    assert pointing_game(att, lesion).tolist() == [1.0, 0.0]
    assert np.isnan(pointing_game(att, np.zeros_like(lesion))).all()


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((20, 60)), 1)  # many ties
    truth = rng.random((20, 60)) < 0.3
    ap = average_precision(scores, truth)
    for m in range(20):
        assert ap[m] == pytest.approx(average_precision_score(truth[m], scores[m]), abs=1e-12)
    assert np.isnan(average_precision(scores[:1], np.zeros((1, 60), bool)))[0]


def test_localization_utility_perfect_map_is_one():
    att, lesion = _blob_case()
    lu = localization_utility(att, lesion)
    assert lu[0] == pytest.approx(1.0)
    assert lu[1] == pytest.approx(lesion[1].mean())  # uninformative map: AP = prevalence


def test_attention_share():
    att = np.array([[[[2.0, -5.0], [1.0, 1.0]]]])  # one map [1, 1, 2, 2]
    region = np.array([[[[True, True], [False, False]]]])
    assert attention_share(att, region)[0] == pytest.approx(0.5)
    assert np.isnan(attention_share(-np.abs(att), region)[0])


def test_rank_correlation_matches_scipy():
    rng = np.random.default_rng(2)
    a = rng.random((4, 3, 4, 4))
    b = a + rng.normal(scale=[[[[0.01]]], [[[0.3]]], [[[1.0]]], [[[5.0]]]], size=a.shape)
    r = map_rank_correlation(a, b)
    for m in range(4):
        assert r[m] == pytest.approx(spearmanr(a[m].ravel(), b[m].ravel()).statistic)
    assert r[0] > r[3]
    assert np.isnan(map_rank_correlation(np.ones((1, 8)), a[:1].reshape(1, -1)[:, :8]))[0]
