"""Explanation figures: the slice drawn shows anatomy, the true lesion sits where the crop puts it,
the panel names its model, and "the most confident case" is the most confident positive."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ctplatform.eval.figures import (
    BODY_HU,
    choose_figure_scans,
    explanation_rows,
    render_scan,
)
from ctplatform.eval.scoring import ScanScores
from ctplatform.eval.truth import lesion_voxels
from ctplatform.geometry import center_crop_or_pad
from ctplatform.labels import N_LABELS, label_by_name
from ctplatform.model.dataset import read_crop
from ctplatform.store import Store

H, SPG, YX = 6, 3, 16  # slice groups, slices per group, in-plane size of the crop


def _outputs(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Explanation outputs of one scan (batch of 1) with per-slice scores C [80, H] and smooth maps."""
    rng = np.random.default_rng(0)
    maps = rng.random((1, N_LABELS, H, 2, 2)).astype(np.float32)
    return {"prob": np.full((1, N_LABELS), 0.7, np.float32), "slice_scores": scores[None].astype(np.float32),
            "hirescam": maps, "gradcam": maps[..., ::-1].copy()}


def _padded_crop() -> np.ndarray:
    """A body (soft tissue in air) of 4 slice groups, centre-padded with its minimum (air) to 6 groups."""
    body = np.full((4 * SPG, YX, YX), -1000, np.int16)
    body[:, 3:13, 2:14] = 40
    return center_crop_or_pad(body, (H * SPG, YX, YX))  # groups 0 and 5 are padding


def test_the_drawn_slice_shows_anatomy_even_when_padding_scores_highest(tmp_path):
    hu = _padded_crop()
    assert (hu[:SPG] == -1000).all() and (hu[-SPG:] == -1000).all()  # the padded groups are air only
    j = label_by_name("lung_nodule").index
    scores = np.zeros((N_LABELS, H))
    scores[j] = [9.0, 1.0, 3.0, 2.0, 0.5, 8.0]  # the padded groups 0 and 5 score highest
    g_true = np.ones((N_LABELS, H, 2, 2), bool)
    (row,) = explanation_rows(_outputs(scores), hu, g_true, [j])
    assert (row.ct > BODY_HU).mean() > 0.2, "an empty padded slice was drawn"
    np.testing.assert_array_equal(row.ct, hu[2 * SPG + SPG // 2])  # the top-scoring group with anatomy
    assert "slice group 2" in row.title and "top with anatomy" in row.title
    # among groups with anatomy, one where the label's allowed region is empty is passed over
    g_true[j, 2] = False
    (row,) = explanation_rows(_outputs(scores), hu, g_true, [j])
    np.testing.assert_array_equal(row.ct, hu[3 * SPG + SPG // 2])
    # a scan without any body voxels still gets its top group, and says so
    (row,) = explanation_rows(_outputs(scores), np.full_like(hu, -1000), g_true, [j])
    assert "slice group 0" in row.title and "no slice shows anatomy" in row.title
    assert render_scan(_outputs(scores), hu, g_true, [j], tmp_path / "p.png")[0].is_file()


def test_true_lesion_is_cropped_like_the_ct_and_outlined(tmp_path):
    store = Store(str(tmp_path / "store"))
    shape, crop = (14, 20, 20), (H * SPG, YX, YX)  # z padded by 2 each side, y and x cropped by 2
    hu = np.full(shape, -1000, np.int16)
    hu[:, 4:16, 4:16] = 40
    hu[8, 9:12, 10:13] = 300  # a bright lesion, marked in the truth too
    bits = np.zeros(shape, np.uint8)
    bits[8, 9:12, 10:13] = 1  # bit 0: lung_nodule
    bits[0, 0, 0] = 2  # bit 1: the confounder, never drawn as a lesion
    store.write_volume("v1", hu, {"spacing_mm": [1.0, 1.0, 1.0]})
    store.write_truth("v1", bits, {"truth_labels": ["lung_nodule", "confounder"]})
    j, k = label_by_name("lung_nodule").index, label_by_name("heart_cardiomegaly").index
    lesions = lesion_voxels(store, "v1", shape, crop, [j, k])
    hu_crop = read_crop(store.volume("v1"), crop)
    np.testing.assert_array_equal(lesions[j], hu_crop == 300)  # exactly where the crop puts the CT
    assert lesions[j].sum() == 9 and not lesions[k].any()
    assert lesion_voxels(store, "v2", shape, crop, [j]) is None  # no truth (real data): nothing to draw
    assert lesion_voxels(store, "v1", (14, 20, 21), crop, [j]) is None  # a misfit truth is never drawn

    # the lesion lies in slice group 3 (crop slice 10, its middle); the row for it draws that slice with the outline
    scores = np.zeros((N_LABELS, H))
    scores[j] = [0, 0, 1, 5, 1, 0]
    scores[k] = [0, 0, 5, 1, 1, 0]
    g_true = np.ones((N_LABELS, H, 2, 2), bool)
    rows = explanation_rows(_outputs(scores), hu_crop.astype(np.float32), g_true, [j, k], lesions=lesions)
    assert rows[0].lesion is not None and rows[0].lesion.sum() == 9 and not rows[0].lesion_note
    assert rows[1].lesion is None  # cardiomegaly has no lesion voxels
    scores[j] = [0, 0, 5, 1, 1, 0]  # drawn on another slice: the row says where the lesion is
    rows = explanation_rows(_outputs(scores), hu_crop.astype(np.float32), g_true, [j], lesions=lesions)
    assert rows[0].lesion is not None and not rows[0].lesion.any() and "slice group(s) 3," in rows[0].lesion_note
    bits[8:14, 9:12, 10:13] = 1  # a lesion over crop slices 10-15 (groups 3-5), drawn on group 2
    store.write_truth("v1", bits, {"truth_labels": ["lung_nodule", "confounder"]})
    longer = lesion_voxels(store, "v1", shape, crop, [j])
    rows = explanation_rows(_outputs(scores), hu_crop.astype(np.float32), g_true, [j], lesions=longer)
    assert "slice group(s) 3-5, not on this slice" in rows[0].lesion_note

    scores[j] = [0, 0, 1, 5, 1, 0]
    png = render_scan(_outputs(scores), hu_crop.astype(np.float32), g_true, [j], tmp_path / "with.png",
                      lesions=lesions, title="mask-loss-0a1b on test")[0]
    plain = render_scan(_outputs(scores), hu_crop.astype(np.float32), g_true, [j], tmp_path / "without.png",
                        title="mask-loss-0a1b on test")[0]
    with_img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    lime = (with_img[..., 1] > 200) & (with_img[..., 0] < 80) & (with_img[..., 2] < 80)
    plain_img = np.asarray(Image.open(plain).convert("RGB")).astype(int)
    plain_lime = (plain_img[..., 1] > 200) & (plain_img[..., 0] < 80) & (plain_img[..., 2] < 80)
    assert lime.sum() > plain_lime.sum() + 20  # the outline is drawn only where truth exists
    title = Image.open(png).text["Title"]
    assert title.startswith("mask-loss-0a1b on test: HiResCAM vs Grad-CAM")


def _scan(i: int, prob: np.ndarray, y: np.ndarray) -> ScanScores:
    return ScanScores(volume_id=f"v{i}", split="test", prob=prob.astype(np.float32), y=y.astype(np.uint8),
                      positives=np.nonzero(y)[0].astype(np.int16), organ={}, top_group=np.zeros(0, np.int16))


def test_each_label_shows_its_most_confident_positive():
    a, b, c = (label_by_name(n).index for n in ("lung_nodule", "lung_opacity", "heart_cardiomegaly"))
    prob = np.zeros((4, N_LABELS))
    y = np.zeros((4, N_LABELS), bool)
    y[:, a] = [1, 1, 1, 0]  # the most frequent label: scan 0 is its most confident positive
    prob[:, a] = [0.9, 0.8, 0.7, 0.95]  # scan 3 scores higher but is negative: not a detection
    y[:, b] = [1, 1, 0, 0]
    prob[:, b] = [0.93, 0.6, 0.1, 0.1]  # its most confident positive is scan 0 too
    y[:, c] = [0, 0, 1, 1]
    prob[:, c] = [0.1, 0.1, 0.4, 0.8]
    scans = [_scan(i, prob[i], y[i]) for i in range(4)]
    picks = choose_figure_scans(scans, n_scans=2, per_scan=3)
    # the old choice showed lung_opacity on scan 1 (its 2nd most confident): it joins scan 0's panel
    assert [(p.scan, p.labels) for p in picks] == [(0, [a, b]), (3, [c])]
    assert picks[0].notes == ["most confident of 3 positives", "most confident of 2 positives"]
    assert picks[1].notes == ["most confident of 2 positives"]
    # other positives of a scan fill its panel, their rank told honestly
    picks = choose_figure_scans(scans, n_scans=1, per_scan=3)
    assert [(p.scan, p.labels) for p in picks] == [(0, [a, b])]
    picks = choose_figure_scans([scans[k] for k in (2, 3)], n_scans=2, per_scan=2)
    assert [(p.scan, p.labels) for p in picks] == [(1, [c]), (0, [a, c])]
    assert picks[1].notes == ["most confident of 1 positive", "2nd most confident of 2 positives"]
    assert choose_figure_scans(scans, 0, 3) == [] and choose_figure_scans([], 2, 3) == []
