"""Figures are produced from arrays and are non-trivial images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ctplatform.eval.plots import (
    ExplanationSlice,
    choose_curve_labels,
    mean_ci,
    plot_explanations,
    plot_slice_scores,
    slice_score_curves,
)


def test_mean_ci_brackets_mean():
    v = np.random.default_rng(0).normal(size=(50, 7))
    m, lo, hi = mean_ci(v)
    assert np.all(lo < m) and np.all(m < hi)
    assert np.allclose(hi - lo, 2 * 1.96 * v.std(axis=0, ddof=1) / np.sqrt(50))


def test_slice_score_curves_separate_present_and_absent(tmp_path):
    rng = np.random.default_rng(1)
    n, h = 40, 30
    y = rng.random((n, 80)) < 0.4
    c = rng.normal(size=(n, 80, h))
    c += 2.0 * y[:, :, None] * np.exp(-((np.arange(h) - 10) ** 2) / 20)[None, None, :]
    labels = choose_curve_labels(y.sum(axis=0), (~y).sum(axis=0), k=4)
    assert len(labels) == 4
    curves = slice_score_curves(c, y, labels)
    for cur in curves:
        assert cur.present[0][10] > cur.absent[0][10]
        assert cur.n_present + cur.n_absent == n
    path = plot_slice_scores(curves, tmp_path / "curves.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not blank


def test_explanation_panel(tmp_path):
    yy, xx = np.mgrid[:96, :96]
    ct = np.where((yy - 48) ** 2 + (xx - 30) ** 2 < 400, -850.0, 40.0)
    hires = np.exp(-((yy - 48) ** 2 + (xx - 30) ** 2) / 200)
    grad = np.exp(-((yy - 48) ** 2 + (xx - 60) ** 2) / 200)
    rows = [ExplanationSlice(ct, hires, grad, ct < -500, "lung nodule, slice group 3")] * 2
    path = plot_explanations(rows, tmp_path / "panel.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 400
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100
