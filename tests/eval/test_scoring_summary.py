"""Per-batch scoring and driver-side aggregation agree with the dense reference functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctplatform.model.metrics import (
    ORGAN_IOU_THRESHOLDS,
    auroc_per_label,
    choose_thresholds,
    iou_at,
    organ_iou,
    summarize_organ_iou,
)
from ctplatform.eval.scoring import SliceSums, explain, score_outputs
from ctplatform.eval.summary import evaluate_scores
from ctplatform.geometry import ModelGeometry
from ctplatform.model.axialnet import AxialNet

GRID = (4, 3, 3)


def _outputs(rng, n):
    return {
        "prob": rng.random((n, 80)).astype(np.float32),
        "slice_scores": rng.normal(size=(n, 80, GRID[0])).astype(np.float32),
        "hirescam": rng.normal(size=(n, 80) + GRID).astype(np.float32),
        "gradcam": rng.normal(size=(n, 80) + GRID).astype(np.float32),
    }


def _batch(rng, n, split):
    y = (rng.random((n, 80)) < 0.3).astype(np.float32)
    organ = rng.random((n, 1) + GRID) < 0.4
    g = np.broadcast_to(organ, (n, 80) + GRID) & (y[..., None, None, None] > 0)
    out = _outputs(rng, n)
    scans = score_outputs([f"{split}{i}" for i in range(n)], [split] * n, out, y, g)
    return scans, out, y, g


def test_evaluation_matches_dense_reference():
    rng = np.random.default_rng(0)
    valid, v_out, v_y, v_g = _batch(rng, 30, "valid")
    test, t_out, t_y, t_g = _batch(rng, 25, "test")
    ev = evaluate_scores(test, valid, n_boot=50)
    # dense path: thresholds on valid, applied to test
    for m in ("hirescam", "gradcam"):
        best = choose_thresholds(organ_iou(v_out[m], v_g, v_y > 0))
        dense = iou_at(organ_iou(t_out[m], t_g, t_y > 0), best)
        ref = summarize_organ_iou(dense)
        seen = best >= 0
        if seen.all():  # labels unseen in valid use a fallback in evaluate_scores
            assert ev.metrics[f"organ_iou_{m}_overall"] == pytest.approx(ref["organ_iou_overall"])
        else:
            cols = np.isfinite(dense) & seen[None, :]
            mine = ev.per_label[f"organ_iou_{m}"].to_numpy()
            with np.errstate(invalid="ignore"):
                ref_label = np.nanmean(np.where(cols, dense, np.nan), axis=0)
            assert np.allclose(mine[seen], ref_label[seen], equal_nan=True)
        assert np.allclose(
            ev.thresholds[m][seen], ORGAN_IOU_THRESHOLDS[best[seen]]
        )
    assert np.allclose(ev.per_label["auroc"], auroc_per_label(t_y, t_out["prob"]), equal_nan=True)
    assert ev.threshold_source == "validation split"
    assert ev.metrics["scans"] == 25


def test_thresholds_fall_back_to_evaluated_split_with_a_note():
    rng = np.random.default_rng(1)
    test, *_ = _batch(rng, 10, "test")
    ev = evaluate_scores(test, None, n_boot=0)
    assert ev.threshold_source == "evaluated split" and ev.notes


def test_localization_and_confounder_and_sanity_fields():
    rng = np.random.default_rng(2)
    n = 4
    out = _outputs(rng, n)
    y = np.zeros((n, 80), np.float32)
    y[:, 7] = 1
    lesion = np.zeros((80,) + GRID, bool)
    lesion[7, 1, 1, 1] = True
    out["hirescam"][:, 7] = -1.0
    out["hirescam"][:, 7, 1, 1, 1] = 5.0  # peak on the lesion
    conf = np.zeros(GRID, bool)
    conf[3] = True
    g = np.zeros((n, 80) + GRID, bool)
    g[:, 7, 1] = True
    scans = score_outputs(
        [f"s{i}" for i in range(n)], ["test"] * n, out, y, g,
        random_hirescam=2 * out["hirescam"] + 1,  # same ranking: correlation 1
        lesions=[lesion] * n, confounders=[conf] * n,
    )
    ev = evaluate_scores(scans, scans, n_boot=0)
    assert ev.metrics["pointing_hit_rate_hirescam"] == 1.0
    assert ev.metrics["lesion_iou_hirescam"] == 1.0  # only the lesion cell survives any threshold
    assert ev.metrics["loc_utility_hirescam"] == pytest.approx(1.0)
    assert ev.metrics["confounder_share_hirescam"] == 0.0
    assert ev.metrics["organ_iou_hirescam_overall"] == 1.0  # wholly inside the allowed region: ours = 1
    assert ev.metrics["sanity_rank_corr_mean"] == pytest.approx(1.0)
    # every localization figure beside its chance level (eval/baselines.py)
    assert ev.metrics["attention_in_allowed_hirescam"] == 1.0  # threshold-free OrganIoU
    assert ev.metrics["allowed_cell_fraction"] == pytest.approx(9 / 36)  # what a uniform map scores
    assert ev.metrics["pointing_chance"] == pytest.approx(1 / 36)  # one lesion cell of 36
    assert ev.metrics["confounder_cell_fraction"] == pytest.approx(9 / 36)
    assert ev.metrics["forbidden_evidence_signed_hirescam"] < 0  # forbidden cells hold -1: evidence against
    assert not any("prior" in k for k in ev.metrics)  # no prior map given: no prior figures invented

    # the image-blind prior map, scored like a model's map: here it peaks inside the allowed slice
    # group but not on the lesion, and weighs the confounder's slice group a little
    prior = np.full((80,) + GRID, 0.1, np.float32)
    prior[7, 1] = 0.6
    prior[7, 1, 0, 0] = 0.9
    with_prior = score_outputs([f"s{i}" for i in range(n)], ["test"] * n, out, y, g,
                               lesions=[lesion] * n, confounders=[conf] * n, prior=prior)
    ev = evaluate_scores(with_prior, with_prior, n_boot=0)
    assert ev.metrics["organ_iou_prior_overall"] == 1.0  # at its own validation threshold: only slice group 1
    assert ev.metrics["attention_in_allowed_prior"] == pytest.approx((8 * 0.6 + 0.9) / (8 * 0.6 + 0.9 + 27 * 0.1))
    assert ev.metrics["pointing_hit_rate_prior"] == 0.0  # its peak is not the lesion cell
    assert ev.metrics["confounder_share_prior"] == pytest.approx(0.9 / (8 * 0.6 + 0.9 + 27 * 0.1))
    assert "lesion_pairs_prior" not in ev.metrics  # the model's pairs, counted once
    assert ev.metrics["organ_iou_hirescam_overall"] == 1.0  # the model's figures do not change
    assert "organ_iou_prior" in ev.per_label.columns and np.isfinite(ev.thresholds["prior"][7])


def test_slice_sums_give_means_of_present_and_absent():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(10, 80, 5))
    y = rng.random((10, 80)) < 0.5
    sums = SliceSums.zeros(5)
    sums.add(c[:6], y[:6])
    other = SliceSums.zeros(5)
    other.add(c[6:], y[6:])
    sums.merge(other)
    j = 3
    assert np.allclose(sums.sum_pos[j] / sums.n_pos[j], c[y[:, j], j].mean(axis=0))
    assert np.allclose(sums.sum_neg[j] / sums.n_neg[j], c[~y[:, j], j].mean(axis=0))


def test_explain_matches_model_forward_and_gradcam():
    torch.manual_seed(0)
    geom = ModelGeometry(input_shape=(6, 64, 64), custom_conv_padding=1)
    model = AxialNet(geom).eval()
    x = torch.randn(2, 2, 3, 64, 64)
    out = explain(model, x)
    ref = model(x, cam=True)
    assert np.allclose(out["prob"], torch.sigmoid(ref.logits).detach().numpy(), atol=1e-6)
    assert np.allclose(out["hirescam"], ref.hirescam.detach().numpy(), atol=1e-6)
    assert np.allclose(out["gradcam"], model.gradcam(x).numpy(), atol=1e-6)
    assert out["slice_scores"].shape == (2, 80, geom.grid[0])
