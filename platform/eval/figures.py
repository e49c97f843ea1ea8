"""Which scans and labels to draw, and drawing one scan: the Figure 4 panel and its NIfTI heatmaps.

`render_scan` is the per-item function of the figure pass (run as a Ray task per scan): it reads the
scan's crop, explains it, takes each label's top slice group (highest per-slice score C), and draws
the middle slice of that group with both maps and the allowed region. Inside one slice group the
trilinear upsampling of a map equals its bilinear in-plane upsampling at the group's middle slice
(the group's centre), so only 2-D slices are upsampled for the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.eval.heatmaps import upsample_grid, write_heatmap_nifti
from ctplatform.model.metrics import normalize_attention
from ctplatform.eval.plots import ExplanationSlice, SliceCurves, plot_explanations
from ctplatform.eval.scoring import METHODS, ScanScores, SliceSums
from ctplatform.labels import all_labels


def choose_figure_scans(scans: list[ScanScores], n_scans: int, per_scan: int) -> list[tuple[int, list[int]]]:
    """Up to n_scans (scan index, labels) pairs: for the most frequent positive labels in turn, the
    scan most confidently (and correctly) predicted to have it; each scan then shows its most
    probable positive labels, the chosen one first."""
    if n_scans <= 0 or not scans:
        return []
    y = np.stack([s.y for s in scans]).astype(bool)
    prob = np.stack([s.prob for s in scans])
    order = np.argsort(-y.sum(axis=0), kind="stable")
    chosen: list[tuple[int, list[int]]] = []
    used: set[int] = set()
    for label in order:
        if len(chosen) >= n_scans or not y[:, label].any():
            break
        cand = [i for i in np.argsort(-prob[:, label], kind="stable") if y[i, label] and i not in used]
        if not cand:
            continue
        i = int(cand[0])
        others = [int(j) for j in np.argsort(-prob[i], kind="stable") if y[i, j] and j != label]
        chosen.append((i, [int(label)] + others[: per_scan - 1]))
        used.add(i)
    return chosen


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
) -> list[Path]:
    """Draw one scan's panel and (optionally) write its NIfTI heatmaps; returns the files written.

    outputs: `scoring.explain` of this scan (batch of 1); hu_crop [Z, Y, X] the model's input crop in
    HU; g_true bool [80, H, D1, D2].
    """
    names = all_labels()
    z, yy, xx = hu_crop.shape
    spg = z // outputs["slice_scores"].shape[-1]
    rows = []
    written: list[Path] = []
    for j in labels:
        h = int(np.argmax(outputs["slice_scores"][0, j]))
        maps = {m: normalize_attention(outputs[m][0, j]) for m in METHODS}  # over the whole volume map
        lab = names[j]
        rows.append(
            ExplanationSlice(
                ct=hu_crop[h * spg + spg // 2],
                hirescam=_slice_up(maps["hirescam"][h], (yy, xx), "trilinear"),
                gradcam=_slice_up(maps["gradcam"][h], (yy, xx), "trilinear"),
                allowed=_slice_up(g_true[j, h].astype(np.float32), (yy, xx), "nearest") > 0.5,
                title=f"{lab.name.replace('_', ' ')}  |  p = {outputs['prob'][0, j]:.2f}  |  slice group {h}",
                window="lung" if lab.group == "lung" else "mediastinum",
            )
        )
        if heatmap_dir is not None and stored_shape is not None and affine is not None:
            for m in METHODS:
                written.append(
                    write_heatmap_nifti(
                        heatmap_dir / f"{key}_{lab.name}_{m}.nii.gz",
                        outputs[m][0, j],
                        (z, yy, xx),
                        stored_shape,
                        affine,
                    )
                )
    written.insert(0, plot_explanations(rows, out_png))
    return written
