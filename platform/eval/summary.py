"""Aggregate per-scan scores (scoring.ScanScores) into a run's evaluation: pure, on the driver.

- AUROC per label with bootstrap 95% CIs, median and mean over labels;
- OrganIoU per method: the threshold of each label is the one with the highest mean OrganIoU over
  the positive scans of the validation split (published code), then applied to the evaluated split;
  reported overall and by location group, pooled over positive (scan, label) pairs;
- lesion IoU, Dice (at the same thresholds), pointing-game hit rate and Localization Utility where
  true masks exist; the share of attention on a confounder; the sanity-check rank correlation;
- the same figures of the image-blind prior map (method `prior`, when the scans were scored with it),
  with its thresholds chosen on validation like a model's: the level each figure is read against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ctplatform.model.metrics import (
    ORGAN_IOU_THRESHOLDS,
    Convention,
    auroc_per_label,
    auroc_summary,
    bootstrap_auroc,
    iou_from_counts,
    quiet_nan_warnings,
)
from ctplatform.eval.baselines import PRIOR
from ctplatform.eval.scoring import METHODS, ScanScores
from ctplatform.labels import GROUPS, N_LABELS, all_labels

log = logging.getLogger("ctplatform.eval")


@dataclass
class Pairs:
    """OrganIoU of every positive (scan, label) pair at every threshold, for one method."""

    scan: np.ndarray  # int [P] index into the scan list
    label: np.ndarray  # int [P]
    iou: np.ndarray  # float [P, T]


def organ_pairs(scans: list[ScanScores], method: str, convention: Convention = "ours") -> Pairs:
    scan_idx, labels, ious = [], [], []
    t = ORGAN_IOU_THRESHOLDS.size
    for i, s in enumerate(scans):
        if not s.positives.size:
            continue
        inside, outside = s.organ[method]
        scan_idx.append(np.full(s.positives.size, i))
        labels.append(s.positives.astype(np.int64))
        ious.append(iou_from_counts(inside, outside, convention))
    if not labels:
        return Pairs(np.zeros(0, int), np.zeros(0, int), np.zeros((0, t)))
    return Pairs(np.concatenate(scan_idx), np.concatenate(labels), np.concatenate(ious))


def mean_by_label(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label mean of values [P, ...] (NaN ignored) and count: ([80, ...], [80, ...])."""
    shape = (N_LABELS,) + values.shape[1:]
    sums = np.zeros(shape)
    counts = np.zeros(shape)
    ok = np.isfinite(values)
    np.add.at(sums, labels, np.where(ok, values, 0.0))
    np.add.at(counts, labels, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def choose_pair_thresholds(pairs: Pairs) -> np.ndarray:
    """Index of the best threshold per label (highest mean OrganIoU; ties to the lowest): int [80], -1 if unseen."""
    mean, _ = mean_by_label(pairs.label, pairs.iou)
    best = np.full(N_LABELS, -1, dtype=np.int64)
    seen = np.isfinite(mean).any(axis=1)
    best[seen] = np.argmax(np.where(np.isfinite(mean[seen]), mean[seen], -np.inf), axis=1)
    return best


def at_thresholds(labels: np.ndarray, values: np.ndarray, threshold_index: np.ndarray) -> np.ndarray:
    """values [P, T] at each pair's label threshold: [P] (NaN for labels without a threshold)."""
    idx = threshold_index[labels]
    out = values[np.arange(labels.size), np.clip(idx, 0, None)].astype(np.float64)
    out[idx < 0] = np.nan
    return out


def pooled_by_group(labels: np.ndarray, values: np.ndarray, prefix: str) -> dict[str, float]:
    """Mean of per-pair values overall and by location group (pairs pooled, as the published code)."""
    groups = np.array([lab.group for lab in all_labels()])
    out: dict[str, float] = {}
    for name in ("overall",) + GROUPS:
        sel = np.isfinite(values) & (True if name == "overall" else groups[labels] == name)
        out[f"{prefix}_{name}"] = float(values[sel].mean()) if sel.any() else float("nan")
        out[f"{prefix}_{name}_n"] = int(sel.sum())
    return out


@dataclass
class Evaluation:
    """A run's evaluation on one split: scalar metrics (for MLflow) and the per-label table."""

    metrics: dict[str, float]
    per_label: pd.DataFrame
    thresholds: dict[str, np.ndarray]  # method -> threshold value per label (NaN: none)
    threshold_source: str
    notes: list[str] = field(default_factory=list)


def evaluate_scores(
    test: list[ScanScores],
    valid: list[ScanScores] | None,
    n_boot: int = 1000,
    seed: int = 0,
    convention: Convention = "ours",
    confounder_label: int | None = None,
) -> Evaluation:
    """The evaluation of `test` (any split), with OrganIoU thresholds chosen on `valid`.

    Without validation scans the thresholds are chosen on `test` itself, which flatters OrganIoU;
    the result says so (threshold_source = "evaluated split").
    """
    if not test:
        raise ValueError("no scans to evaluate")
    labels = all_labels()
    notes: list[str] = []
    y = np.stack([s.y for s in test]).astype(np.float64)
    prob = np.stack([s.prob for s in test]).astype(np.float64)
    auc = auroc_per_label(y, prob)
    metrics: dict[str, float] = {**auroc_summary(auc), "scans": len(test)}
    ci = bootstrap_auroc(y, prob, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    if ci is not None:
        metrics.update(
            auroc_median_ci_low=float(ci["median_low"]),
            auroc_median_ci_high=float(ci["median_high"]),
            auroc_mean_ci_low=float(ci["mean_low"]),
            auroc_mean_ci_high=float(ci["mean_high"]),
        )
    table = pd.DataFrame(
        {
            "label": [lab.name for lab in labels],
            "group": [lab.group for lab in labels],
            "positives": y.sum(axis=0).astype(int),
            "pos_pct": 100 * y.mean(axis=0),
            "auroc": auc,
            "auroc_ci_low": ci["label_low"] if ci else np.nan,
            "auroc_ci_high": ci["label_high"] if ci else np.nan,
        }
    )

    source = "validation split"
    if not valid:
        source = "evaluated split"
        notes.append(
            "OrganIoU thresholds were chosen on the evaluated split itself (no validation scans): optimistic"
        )
    thresholds: dict[str, np.ndarray] = {}
    for m in scored_maps(test):
        chosen = choose_pair_thresholds(organ_pairs(valid if valid else test, m, convention))
        # a label never positive in validation falls back to the threshold chosen over all labels
        if (chosen < 0).any():
            overall = _overall_best(organ_pairs(valid if valid else test, m, convention))
            chosen = np.where(chosen < 0, overall, chosen)
        thresholds[m] = np.where(chosen >= 0, ORGAN_IOU_THRESHOLDS[np.clip(chosen, 0, None)], np.nan)
        pairs = organ_pairs(test, m, convention)
        iou = at_thresholds(pairs.label, pairs.iou, chosen)
        metrics.update(pooled_by_group(pairs.label, iou, f"organ_iou_{m}"))
        per_label, _ = mean_by_label(pairs.label, iou)
        table[f"organ_iou_{m}"] = per_label
        table[f"threshold_{m}"] = thresholds[m]
        # lesion thresholds are chosen on validation separately from OrganIoU's (one per map)
        _lesion_metrics(test, m, lesion_threshold_index(valid if valid else test, m), metrics, table)
        _confounder_metrics(test, m, metrics, table, confounder_label)
    _baseline_metrics(test, metrics)
    rho = np.concatenate([s.sanity_rho for s in test]) if test else np.zeros(0)
    rho = rho[np.isfinite(rho)]
    if rho.size:
        metrics.update(
            sanity_rank_corr_mean=float(rho.mean()),
            sanity_rank_corr_median=float(np.median(rho)),
            sanity_rank_corr_n=int(rho.size),
        )
        if np.median(rho) > 0.8:  # maps barely change when the weights are destroyed: do not trust them
            notes.append(
                f"sanity check failed: HiResCAM of the randomised model correlates with the trained one "
                f"(median Spearman rho {np.median(rho):.2f}); the maps may reflect the input more than the model"
            )
    return Evaluation(metrics, table, thresholds, source, notes)


def _overall_best(pairs: Pairs) -> int:
    if not pairs.label.size:
        return -1
    with quiet_nan_warnings():
        return int(np.argmax(np.nanmean(pairs.iou, axis=0)))


def _lesion_metrics(
    scans: list[ScanScores], method: str, chosen: np.ndarray, metrics: dict[str, float], table: pd.DataFrame
) -> None:
    rows = [s.lesion for s in scans if s.lesion is not None]
    if not rows:
        return
    lab = np.concatenate([r.labels.astype(np.int64) for r in rows])
    iou = at_thresholds(lab, np.concatenate([r.iou[method] for r in rows]), chosen)
    dice = at_thresholds(lab, np.concatenate([r.dice[method] for r in rows]), chosen)
    hit = np.concatenate([r.hit[method] for r in rows]).astype(np.float64)
    util = np.concatenate([r.utility[method] for r in rows]).astype(np.float64)
    for name, values in [("lesion_iou", iou), ("lesion_dice", dice), ("pointing_hit_rate", hit), ("loc_utility", util)]:
        ok = np.isfinite(values)
        metrics[f"{name}_{method}"] = float(values[ok].mean()) if ok.any() else float("nan")
        table[f"{name}_{method}"] = mean_by_label(lab, values)[0]
    if method != PRIOR:  # the same pairs as the model's
        metrics[f"lesion_pairs_{method}"] = int(lab.size)


def lesion_threshold_index(scans: list[ScanScores], method: str) -> np.ndarray:
    """One threshold index for every label: the best mean lesion Dice over the scans' lesion pairs."""
    rows = [s.lesion.dice[method] for s in scans if s.lesion is not None]
    if not rows:
        return np.full(N_LABELS, -1, dtype=np.int64)
    with quiet_nan_warnings():
        mean = np.nanmean(np.concatenate(rows).astype(np.float64), axis=0)
    best = int(np.nanargmax(np.where(np.isfinite(mean), mean, -np.inf))) if np.isfinite(mean).any() else -1
    return np.full(N_LABELS, best, dtype=np.int64)


def _baseline_metrics(scans: list[ScanScores], metrics: dict[str, float]) -> None:
    """Pair means of the threshold-free figures and their chance levels (eval/baselines.py)."""
    names = sorted({k for s in scans for k in s.baselines})
    for name in names:
        v = np.concatenate([s.baselines[name] for s in scans if name in s.baselines]).astype(np.float64)
        ok = np.isfinite(v)
        metrics[name] = float(v[ok].mean()) if ok.any() else float("nan")
    if "lesion_cell_fraction" in metrics:
        metrics["pointing_chance"] = metrics.pop("lesion_cell_fraction")  # a random cell's hit rate


def _confounder_metrics(
    scans: list[ScanScores], method: str, metrics: dict[str, float], table: pd.DataFrame, target: int | None
) -> None:
    rows = [(s.positives, s.confounder_share[method]) for s in scans if s.confounder_share is not None]
    if not rows:
        return
    lab = np.concatenate([r[0].astype(np.int64) for r in rows])
    share = np.concatenate([r[1] for r in rows]).astype(np.float64)
    ok = np.isfinite(share)
    metrics[f"confounder_share_{method}"] = float(share[ok].mean()) if ok.any() else float("nan")
    per_label = mean_by_label(lab, share)[0]
    table[f"confounder_share_{method}"] = per_label
    if target is not None:  # the label the confounder was made to track (the shortcut to watch)
        metrics[f"confounder_share_{method}_target"] = float(per_label[target])


def scored_maps(scans: list[ScanScores]) -> tuple[str, ...]:
    """The model's methods, and `prior` when every scan was scored with the image-blind prior map."""
    with_prior = bool(scans) and all(PRIOR in s.organ for s in scans)
    return METHODS + ((PRIOR,) if with_prior else ())
