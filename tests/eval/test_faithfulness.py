"""Baselines, the deletion check and the faithfulness figures on hand-made maps and a small AxialNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctplatform.eval.baselines import (
    attention_in_region,
    cell_fraction,
    image_blind_prior,
    pointing_chance,
    signed_forbidden_evidence,
)
from ctplatform.eval.deletion import deletion_drops
from ctplatform.eval.faithfulness import SplitMaps, Thresholds, auroc_figures, mean_over, paired_bootstrap, pair_figures
from ctplatform.geometry import ModelGeometry
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.cams import gradcam_from_features, hirescam_from_features
from ctplatform.model.dataset import SplitIndex, scored_labels


def test_threshold_free_organ_iou_and_cell_fractions() -> None:
    a = np.array([[[3.0, 1.0], [-2.0, 0.0]]])  # [1, 2, 2]
    region = np.array([[[True, False], [True, False]]])
    assert attention_in_region(a, region)[0] == pytest.approx(0.75)  # 3 of 4 positive units
    assert cell_fraction(region)[0] == pytest.approx(0.5)  # what a uniform map scores
    assert attention_in_region(np.ones_like(a), region)[0] == pytest.approx(cell_fraction(region)[0])
    assert np.isnan(attention_in_region(-np.ones_like(a), region)[0])
    # forbidden cells hold 1 and 0 (+1 of |total| 6): signed share 1/6; negative evidence counts negative
    assert signed_forbidden_evidence(a, ~region)[0] == pytest.approx(1 / 6)
    assert signed_forbidden_evidence(-a, ~region)[0] == pytest.approx(-1 / 6)
    assert pointing_chance(region)[0] == pytest.approx(0.5) and np.isnan(pointing_chance(~region & region)[0])


def test_image_blind_prior_is_the_mean_allowed_region_of_positives() -> None:
    allowed = np.zeros((3, 2, 1, 1, 2), dtype=bool)
    allowed[0, 0, ..., 0] = True
    allowed[1, 0, ..., :] = True
    positive = np.array([[True, False], [True, False], [False, False]])
    prior = image_blind_prior(allowed, positive)
    np.testing.assert_allclose(prior[0, 0, 0], [1.0, 0.5])
    np.testing.assert_allclose(prior[1], 1.0)  # never positive: uniform


def test_deletion_drop_equals_the_hirescam_mass_removed_and_beats_gradcam() -> None:
    torch.manual_seed(0)
    g = ModelGeometry((6, 64, 64), custom_conv_padding=1, backbone_layers=3)  # grid 2x4x4
    m = AxialNet(g, n_labels=3).eval()
    with torch.no_grad():
        z = m.forward_features(torch.randn(1, 2, 3, 64, 64))
    hc = hirescam_from_features(z, m.fc.weight)[0]
    gc = gradcam_from_features(z, m.fc.weight)[0]
    ks = (1, 2, 4, 8, 32)
    for label in range(3):
        drop_h = deletion_drops(m, z, label, hc[label], ks)
        drop_g = deletion_drops(m, z, label, gc[label], ks)
        top = torch.sort(hc[label].reshape(-1), descending=True).values
        want = [float(top[: min(k, top.numel())].sum()) for k in ks]
        np.testing.assert_allclose(drop_h, want, rtol=1e-4, atol=1e-5)  # the head is linear in Z
        assert (drop_h >= drop_g - 1e-5).all()
        assert drop_h[-1] == pytest.approx(float(hc[label].sum()), rel=1e-4, abs=1e-5)  # all cells: whole evidence


def _maps() -> SplitMaps:
    n, l, shape = 4, 80, (1, 2, 2)
    rng = np.random.default_rng(0)
    y = np.zeros((n, l))
    y[:2, 0] = 1
    allowed = np.zeros((n, l, *shape), dtype=bool)
    allowed[:2, 0, 0, 0, :] = True  # label 0: top row allowed for its two positive scans
    hc = rng.normal(size=(n, l, *shape)).astype(np.float32)
    hc[0, 0] = [[[2.0, 1.0], [0.0, 0.0]]]  # all positive mass in allowed cells
    hc[1, 0] = [[[0.0, 0.0], [1.0, 1.0]]]  # none
    lesions = np.zeros_like(allowed)
    lesions[:2, 0, 0, 0, 0] = True
    return SplitMaps(
        ids=[f"s{i}" for i in range(n)], y=y, logits=rng.normal(size=(n, l)), hirescam=hc, gradcam=hc.copy(),
        allowed=allowed, lesions=lesions, confounders={"zmarker": np.zeros((n, *shape), dtype=bool)},
        deletion={"hirescam": np.ones((n, l, 2)), "gradcam": np.zeros((n, l, 2))}, ks=(1, 2),
    )


def test_pair_figures_and_means() -> None:
    maps = _maps()
    prior = np.ones((80, 1, 2, 2))
    thr = Thresholds({k: np.zeros(80, dtype=np.int64) for k in ("hirescam", "gradcam", "prior")}, {"hirescam": 0.5, "prior": 0.5})
    figs = pair_figures(maps, prior, thr, labels=[0, 1], confounder_targets={"zmarker": 0})
    means = mean_over(figs)
    assert means["attention_in_allowed_hirescam"] == pytest.approx(0.5)  # 1.0 and 0.0
    assert means["attention_in_allowed_uniform"] == pytest.approx(0.5)  # two of four cells allowed
    assert means["attention_in_allowed_prior"] == pytest.approx(0.5)
    assert means["pointing_hirescam"] == pytest.approx(0.5)  # scan 0 hits, scan 1 misses
    assert means["pointing_uniform"] == pytest.approx(0.25)
    assert means["deletion_hirescam_k2"] == 1.0 and means["deletion_gradcam_k1"] == 0.0
    assert mean_over(figs, np.array([0, 0]))["attention_in_allowed_hirescam"] == pytest.approx(1.0)
    assert np.isfinite(figs["organ_iou_hirescam"][:2, 0]).all() and np.isnan(figs["organ_iou_hirescam"][2:]).all()
    auc = auroc_figures(maps.y, maps.logits, [0], {"x": 0})
    assert set(auc) == {"auroc_median", "auroc/x"}


def test_paired_bootstrap_interval_of_a_known_difference() -> None:
    diff = np.array([1.0, 1.2, 0.8, 1.1, 0.9])
    ci = paired_bootstrap([lambda rows: {"d": float(diff[rows].mean())}], [5], n_boot=300)
    lo, hi = ci["d"]
    assert 0.8 <= lo < 1.0 < hi <= 1.2


def test_scored_labels_present_in_training() -> None:
    y = np.zeros((3, 80), dtype=np.float32)
    y[0, 4] = y[2, 9] = 1
    idx = SplitIndex(["a", "b", "c"], y, np.zeros((3, 80), np.uint8))
    assert scored_labels(idx, "present").tolist() == [4, 9]
    assert scored_labels(idx, "all").size == 80
    with pytest.raises(ValueError):
        scored_labels(idx, "some")
