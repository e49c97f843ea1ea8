"""Score one batch of scans with a trained AxialNet: the pure per-item layer of `ctplatform evaluate`.

For each scan the model gives probabilities, the per-slice score matrix C, and both explanations
(HiResCAM and Grad-CAM, from one pass through the backbone). What leaves the worker is small:
- probabilities and labels [80];
- per positive label and method, the cells above each of the 53 thresholds inside / outside the
  allowed region (OrganIoU at any threshold follows, on the driver, once thresholds are chosen on
  the validation split);
- the top slice group per positive label (for the pictures);
- sums of C over scans with / without each label (per-slice curves aggregate additively);
- when true lesion masks are given (phantoms): lesion IoU/Dice per threshold, pointing-game hit,
  Localization Utility, and the share of attention on a confounder region;
- when a randomised model is given: the rank correlation of its HiResCAM maps with the trained one's;
- when the image-blind prior map is given (eval/baselines.py, one map per label for every scan): the
  same figures of that map under the method name `prior`, the level each figure is read against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctplatform.eval.baselines import PRIOR, attention_in_region, cell_fraction, signed_forbidden_evidence
from ctplatform.eval.localization import (
    attention_share,
    lesion_overlap,
    localization_utility,
    map_rank_correlation,
    pointing_game,
)
from ctplatform.labels import N_LABELS
from ctplatform.model.cams import gradcam_from_features, hirescam_from_features
from ctplatform.model.metrics import ORGAN_IOU_THRESHOLDS, as_numpy, binarized_counts, normalize_attention

METHODS: tuple[str, ...] = ("hirescam", "gradcam")


@dataclass
class LesionScores:
    """Localization against true lesion masks for the positive labels that have lesion cells."""

    labels: np.ndarray  # int16 [Q]
    iou: dict[str, np.ndarray]  # method -> float32 [Q, T]
    dice: dict[str, np.ndarray]  # method -> float32 [Q, T]
    hit: dict[str, np.ndarray]  # method -> float32 [Q]
    utility: dict[str, np.ndarray]  # method -> float32 [Q]


@dataclass
class ScanScores:
    """Everything evaluation keeps about one scan (no arrays of volume size)."""

    volume_id: str
    split: str
    prob: np.ndarray  # float32 [80]
    y: np.ndarray  # uint8 [80]
    positives: np.ndarray  # int16 [P] positive label indices
    organ: dict[str, np.ndarray]  # method (and `prior`) -> int16 [2, P, T]: cells above threshold inside / outside G_true
    top_group: np.ndarray  # int16 [P] slice group with the highest C for each positive label
    sanity_rho: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [P] or empty
    lesion: LesionScores | None = None
    confounder_share: dict[str, np.ndarray] | None = None  # method -> float32 [P]
    # chance levels and threshold-free figures (eval/baselines.py): name -> float32 [P] (lesion ones [Q])
    baselines: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class SliceSums:
    """Sufficient statistics of the per-slice scores C for scans with / without each label."""

    sum_pos: np.ndarray  # float64 [80, H]
    sq_pos: np.ndarray
    n_pos: np.ndarray  # int64 [80]
    sum_neg: np.ndarray
    sq_neg: np.ndarray
    n_neg: np.ndarray

    @classmethod
    def zeros(cls, h: int) -> "SliceSums":
        z = np.zeros((N_LABELS, h))
        n = np.zeros(N_LABELS, np.int64)
        return cls(z.copy(), z.copy(), n.copy(), z.copy(), z.copy(), n.copy())

    def add(self, c: np.ndarray, y: np.ndarray) -> None:
        """Add one batch: C [B, 80, H], y [B, 80]."""
        pos = as_numpy(y).astype(bool)[..., None]
        c = as_numpy(c).astype(np.float64)
        self.sum_pos += np.where(pos, c, 0).sum(axis=0)
        self.sq_pos += np.where(pos, c * c, 0).sum(axis=0)
        self.n_pos += pos[..., 0].sum(axis=0)
        self.sum_neg += np.where(~pos, c, 0).sum(axis=0)
        self.sq_neg += np.where(~pos, c * c, 0).sum(axis=0)
        self.n_neg += (~pos[..., 0]).sum(axis=0)

    def merge(self, other: "SliceSums") -> "SliceSums":
        for name in ("sum_pos", "sq_pos", "n_pos", "sum_neg", "sq_neg", "n_neg"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def explain(model: Any, x: Any, slice_chunk: int | None = None) -> dict[str, np.ndarray]:
    """One forward pass: probabilities, C and both raw explanation maps for slice groups x [B, H, 3, Y, X].

    The backbone runs on `slice_chunk` slice groups at a time (None: all at once): in eval mode each
    slice group is independent, so chunking gives the same Z while bounding the activation memory
    (a 135-group paper volume at once needs several GB). x moves to the model's device.
    """
    import torch

    device = next(model.parameters()).device
    x = x.to(device)
    step = slice_chunk or x.shape[1]
    with torch.no_grad():
        z = torch.cat([model.forward_features(x[:, i : i + step]) for i in range(0, x.shape[1], step)], dim=1)
        logits, c = model.head(z)
        w = model.fc.weight
        return {
            "prob": torch.sigmoid(logits).float().cpu().numpy(),
            "slice_scores": c.float().cpu().numpy(),
            "hirescam": hirescam_from_features(z, w).float().cpu().numpy(),
            "gradcam": gradcam_from_features(z, w).float().cpu().numpy(),
        }


def score_outputs(
    volume_ids: list[str],
    splits: list[str],
    outputs: dict[str, np.ndarray],
    y: np.ndarray,
    g_true: np.ndarray,
    thresholds: np.ndarray = ORGAN_IOU_THRESHOLDS,
    random_hirescam: np.ndarray | None = None,
    lesions: list[np.ndarray | None] | None = None,
    confounders: list[np.ndarray | None] | None = None,
    prior: np.ndarray | None = None,
) -> list[ScanScores]:
    """Per-scan scores from model outputs (see `explain`) of a batch.

    y [B, 80]; g_true bool [B, 80, H, D1, D2]; random_hirescam [B, 80, H, D1, D2] from a model with
    randomised weights (sanity check) or None; lesions[b] bool [80, H, D1, D2] (the true lesion cells
    of each label on the feature grid) or None; confounders[b] bool [H, D1, D2] or None; prior float
    [80, H, D1, D2] (the image-blind prior map, the same for every scan) or None.
    """
    y = as_numpy(y)
    g_true = as_numpy(g_true).astype(bool)
    maps = METHODS
    if prior is not None:  # scored exactly like a model's map, under its own name
        maps = METHODS + (PRIOR,)
        outputs = {**outputs, PRIOR: np.broadcast_to(np.asarray(prior, np.float32), (len(volume_ids), *np.shape(prior)))}
    out: list[ScanScores] = []
    for b, vid in enumerate(volume_ids):
        pos = np.nonzero(y[b] > 0.5)[0]
        norm = {m: normalize_attention(outputs[m][b, pos]) for m in maps}
        organ = {}
        for m in maps:
            inside, outside = binarized_counts(norm[m], g_true[b, pos], thresholds)
            organ[m] = np.stack([inside, outside]).astype(np.int16)
        c = outputs["slice_scores"][b, pos]
        scan = ScanScores(
            volume_id=vid,
            split=splits[b],
            prob=outputs["prob"][b].astype(np.float32),
            y=(y[b] > 0.5).astype(np.uint8),
            positives=pos.astype(np.int16),
            organ=organ,
            top_group=(np.argmax(c, axis=1) if pos.size else np.zeros(0)).astype(np.int16),
        )
        if pos.size:
            scan.baselines = _baseline_figures(outputs, b, pos, g_true[b, pos], maps)
        if random_hirescam is not None and pos.size:
            scan.sanity_rho = map_rank_correlation(outputs["hirescam"][b, pos], random_hirescam[b, pos]).astype(
                np.float32
            )
        if lesions is not None and lesions[b] is not None and pos.size:
            scan.lesion = _lesion_scores(outputs, b, pos, lesions[b], thresholds, maps)
            if scan.lesion is not None:  # a uniformly random cell's pointing-game hit rate
                les = np.asarray(lesions[b], dtype=bool)[scan.lesion.labels.astype(np.int64)]
                scan.baselines["lesion_cell_fraction"] = cell_fraction(les).astype(np.float32)
        if confounders is not None and confounders[b] is not None and pos.size:
            region = np.broadcast_to(confounders[b], outputs["hirescam"][b, pos].shape)
            scan.confounder_share = {
                m: attention_share(outputs[m][b, pos], region).astype(np.float32) for m in maps
            }
            scan.baselines["confounder_cell_fraction"] = cell_fraction(region).astype(np.float32)
        out.append(scan)
    return out


def _baseline_figures(
    outputs: dict[str, np.ndarray], b: int, pos: np.ndarray, allowed: np.ndarray, maps: tuple[str, ...] = METHODS
) -> dict[str, np.ndarray]:
    """Per positive label: the threshold-free OrganIoU of each map, and what a uniform map scores."""
    out = {f"attention_in_allowed_{m}": attention_in_region(outputs[m][b, pos], allowed).astype(np.float32) for m in maps}
    out["allowed_cell_fraction"] = cell_fraction(allowed).astype(np.float32)
    out["forbidden_evidence_signed_hirescam"] = signed_forbidden_evidence(outputs["hirescam"][b, pos], ~allowed).astype(np.float32)
    return out


def _lesion_scores(
    outputs: dict[str, np.ndarray], b: int, pos: np.ndarray, lesion: np.ndarray, thresholds: np.ndarray,
    maps: tuple[str, ...] = METHODS,
) -> LesionScores | None:
    lesion = np.asarray(lesion, dtype=bool)
    has = pos[lesion[pos].reshape(pos.size, -1).any(axis=1)]
    if not has.size:
        return None
    scores = LesionScores(labels=has.astype(np.int16), iou={}, dice={}, hit={}, utility={})
    for m in maps:
        a = outputs[m][b, has]
        iou, dice = lesion_overlap(a, lesion[has], thresholds)
        scores.iou[m] = iou.astype(np.float32)
        scores.dice[m] = dice.astype(np.float32)
        scores.hit[m] = pointing_game(a, lesion[has]).astype(np.float32)
        scores.utility[m] = localization_utility(a, lesion[has]).astype(np.float32)
    return scores
