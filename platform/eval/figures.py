"""Which scans and labels to draw, and drawing one scan: the Figure 4 panel and its NIfTI heatmaps.

`render_scan` is the per-item function of the figure pass (run as a Ray task per scan): it reads the
scan's crop, explains it, takes each label's top slice group (highest per-slice score C among the
groups whose drawn slice shows anatomy and where the label's allowed region is not empty: a crop
padded with air must not show an empty slice), and draws the middle slice of that group with both
maps, the allowed region and, where the store holds it, the true lesion. Inside one slice group the
trilinear upsampling of a map equals its bilinear in-plane upsampling at the group's middle slice
(the group's centre), so only 2-D slices are upsampled for the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.eval.heatmaps import upsample_grid, write_heatmap_nifti
from ctplatform.model.metrics import normalize_attention
from ctplatform.eval.plots import ExplanationSlice, SliceCurves, plot_explanations
from ctplatform.eval.scoring import METHODS, ScanScores, SliceSums
from ctplatform.labels import all_labels

#: A voxel above this HU is body (fat, soft tissue, bone); air, the crop's padding (its minimum) and
#: lung parenchyma (about -850 HU) are below it. A lung slice still shows the chest wall.
BODY_HU = -500.0
#: The drawn slice shows anatomy when at least this fraction of its voxels is body.
MIN_BODY_FRACTION = 0.01


@dataclass(frozen=True)
class FigurePick:
    """One panel: a scan (index into the scored scans), its labels (rows) and each row's confidence note."""

    scan: int
    labels: list[int]
    notes: list[str]  # per label, e.g. "most confident of 14 positives"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def confidence_note(prob: np.ndarray, y: np.ndarray, scan: int, label: int) -> str:
    """Where `scan` ranks by probability among the positives of `label` (prob, y: [N, L])."""
    positives = [int(i) for i in np.argsort(-prob[:, label], kind="stable") if y[i, label]]
    rank = positives.index(scan) + 1
    which = "most confident" if rank == 1 else f"{_ordinal(rank)} most confident"
    return f"{which} of {len(positives)} positive{'s' if len(positives) != 1 else ''}"


def choose_figure_scans(scans: list[ScanScores], n_scans: int, per_scan: int) -> list[FigurePick]:
    """Up to n_scans panels: for the most frequent positive labels in turn, the positive scan with
    the highest probability for it (the most confident case, even when that scan is already drawn:
    the label then joins that scan's panel rather than a weaker scan being shown); each panel then
    fills up to per_scan rows with the scan's most probable other positive labels."""
    if n_scans <= 0 or not scans:
        return []
    y = np.stack([s.y for s in scans]).astype(bool)
    prob = np.stack([s.prob for s in scans])
    order = np.argsort(-y.sum(axis=0), kind="stable")
    panels: dict[int, list[int]] = {}  # scan -> labels chosen for it, in order of choice
    for label in order:
        if not y[:, label].any():
            break
        best = next(int(i) for i in np.argsort(-prob[:, label], kind="stable") if y[i, label])
        if best in panels:
            if len(panels[best]) < per_scan:  # a full panel leaves the label out, never shows a weaker scan
                panels[best].append(int(label))
            continue
        if len(panels) >= n_scans:
            continue  # a later label may still belong on a panel already drawn
        panels[best] = [int(label)]
    picks = []
    for i, chosen in panels.items():
        others = [int(j) for j in np.argsort(-prob[i], kind="stable") if y[i, j] and j not in chosen]
        labels = chosen + others[: max(0, per_scan - len(chosen))]
        picks.append(FigurePick(i, labels, [confidence_note(prob, y, i, j) for j in labels]))
    return picks


def curves_from_sums(sums: SliceSums, label_indices: list[int]) -> list[SliceCurves]:
    """Mean and 95% interval (normal approximation) of C per slice group from the sufficient statistics."""
    labels = all_labels()
    out = []
    for j in label_indices:
        parts = []
        for s, sq, n in [(sums.sum_pos, sums.sq_pos, sums.n_pos), (sums.sum_neg, sums.sq_neg, sums.n_neg)]:
            k = int(n[j])
            if k == 0:
                nan = np.full(s.shape[1], np.nan)
                parts.append((nan, nan, nan))
                continue
            mean = s[j] / k
            var = np.maximum(sq[j] - k * mean**2, 0.0) / (k - 1) if k > 1 else np.zeros_like(mean)
            half = 1.96 * np.sqrt(var / k)
            parts.append((mean, mean - half, mean + half))
        out.append(SliceCurves(labels[j].name, int(sums.n_pos[j]), int(sums.n_neg[j]), parts[0], parts[1]))
    return out


def _slice_up(grid_slice: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    """[D1, D2] -> [Y, X]; a depth of one makes trilinear interpolation bilinear in-plane."""
    return upsample_grid(grid_slice[None], (1, *shape), mode=mode)[0]


def anatomy_groups(hu_crop: np.ndarray, n_groups: int) -> np.ndarray:
    """bool [H]: the drawn (middle) slice of each slice group shows anatomy (see MIN_BODY_FRACTION)."""
    spg = hu_crop.shape[0] // n_groups
    middle = hu_crop[np.arange(n_groups) * spg + spg // 2]
    return (middle > BODY_HU).reshape(n_groups, -1).mean(axis=1) >= MIN_BODY_FRACTION


def choose_slice_group(scores: np.ndarray, anatomy: np.ndarray, allowed: np.ndarray) -> tuple[int, str]:
    """The slice group to draw for one label and how it was chosen.

    scores: C [H]; anatomy bool [H] (anatomy_groups); allowed: the label's allowed region [H, D1, D2].
    The highest-scoring group among those showing anatomy with a non-empty allowed region; else
    among those showing anatomy; else the highest-scoring group (a scan without body voxels).
    """
    has_allowed = allowed.reshape(allowed.shape[0], -1).any(axis=1)
    top = int(np.argmax(scores))
    if anatomy.any():
        for eligible, how in [(anatomy & has_allowed, "top with anatomy"), (anatomy, "top with anatomy; no allowed cells")]:
            if eligible.any():
                h = int(np.argmax(np.where(eligible, scores, -np.inf)))
                return h, "" if h == top else how
    return top, "no slice shows anatomy"


def _spans(values: np.ndarray) -> str:
    """Sorted integers as runs: [2, 3, 4, 8] -> "2-4, 8"."""
    runs: list[list[int]] = []
    for v in map(int, values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def explanation_rows(
    outputs: dict[str, np.ndarray],
    hu_crop: np.ndarray,
    g_true: np.ndarray,
    labels: list[int],
    notes: list[str] | None = None,
    lesions: dict[int, np.ndarray] | None = None,
) -> list[ExplanationSlice]:
    """One ExplanationSlice per label (see render_scan); lesions: label -> bool [Z, Y, X] in the crop."""
    names = all_labels()
    z, yy, xx = hu_crop.shape
    n_groups = outputs["slice_scores"].shape[-1]
    spg = z // n_groups
    anatomy = anatomy_groups(hu_crop, n_groups)
    rows = []
    for r, j in enumerate(labels):
        h, how = choose_slice_group(outputs["slice_scores"][0, j], anatomy, g_true[j])
        maps = {m: normalize_attention(outputs[m][0, j]) for m in METHODS}  # over the whole volume map
        lab = names[j]
        s = h * spg + spg // 2
        lesion = lesion_note = None
        if lesions is not None and j in lesions and lesions[j].any():
            lesion = lesions[j][s]
            if not lesion.any():  # say where it is rather than leave the reader looking for it
                groups = np.nonzero(lesions[j].reshape(n_groups, -1).any(axis=1))[0]
                lesion_note = f"true lesion in slice group(s) {_spans(groups)}, not on this slice"
        note = f", {notes[r]}" if notes else ""
        group = f"slice group {h}" + (f" ({how})" if how else "")
        rows.append(
            ExplanationSlice(
                ct=hu_crop[s],
                hirescam=_slice_up(maps["hirescam"][h], (yy, xx), "trilinear"),
                gradcam=_slice_up(maps["gradcam"][h], (yy, xx), "trilinear"),
                allowed=_slice_up(g_true[j, h].astype(np.float32), (yy, xx), "nearest") > 0.5,
                title=f"{lab.name.replace('_', ' ')}  |  p = {outputs['prob'][0, j]:.2f}{note}  |  {group}",
                window="lung" if lab.group == "lung" else "mediastinum",
                lesion=lesion,
                lesion_note=lesion_note or "",
            )
        )
    return rows


def render_scan(
    outputs: dict[str, np.ndarray],
    hu_crop: np.ndarray,
    g_true: np.ndarray,
    labels: list[int],
    out_png: Path,
    heatmap_dir: Path | None = None,
    key: str = "scan",
    stored_shape: tuple[int, int, int] | None = None,
    affine: Any | None = None,
    notes: list[str] | None = None,
    lesions: dict[int, np.ndarray] | None = None,
    title: str = "",
) -> list[Path]:
    """Draw one scan's panel and (optionally) write its NIfTI heatmaps; returns the files written.

    outputs: `scoring.explain` of this scan (batch of 1); hu_crop [Z, Y, X] the model's input crop in
    HU; g_true bool [80, H, D1, D2]; notes: per label, its confidence note (FigurePick.notes);
    lesions: label -> true lesion voxels in the crop (None without truth: nothing extra is drawn);
    title: what the panel shows (model and split; never patient information).
    """
    names = all_labels()
    written: list[Path] = []
    rows = explanation_rows(outputs, hu_crop, g_true, labels, notes, lesions)
    if heatmap_dir is not None and stored_shape is not None and affine is not None:
        for j in labels:
            for m in METHODS:
                written.append(
                    write_heatmap_nifti(
                        heatmap_dir / f"{key}_{names[j].name}_{m}.nii.gz",
                        outputs[m][0, j],
                        tuple(hu_crop.shape),
                        stored_shape,
                        affine,
                    )
                )
    written.insert(0, plot_explanations(rows, out_png, title=title))
    return written
