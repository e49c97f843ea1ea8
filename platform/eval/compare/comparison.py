"""Side-by-side comparison of two evaluated runs (paper 000, Table 7 and Table 2).

Per label: both AUROCs with their bootstrap CIs, the DeLong p-value on the paired predictions and
its Benjamini-Hochberg q-value over the labels tested; both runs' OrganIoU (HiResCAM, Grad-CAM) and
lesion localization where measured. Headline: median AUROC, OrganIoU overall and by group, and the
localization metrics, with the relative change B vs A; each localization figure is followed by the
chance levels it is read against (rows `baseline: ...`, eval/baselines.CHANCE_LEVELS), measured by
each evaluation on its own scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctplatform.eval.baselines import CHANCE_LEVELS
from ctplatform.eval.delong import benjamini_hochberg, delong_test
from ctplatform.eval.report import predictions_arrays

#: The nine abnormalities of the paper's Table 7, shown first when present.
TABLE7_LABELS: tuple[str, ...] = (
    "lung_nodule",
    "lung_opacity",
    "lung_atelectasis",
    "lung_pleural_effusion",
    "lung_consolidation",
    "lung_mass",
    "heart_pericardial_effusion",
    "heart_cardiomegaly",
    "lung_pneumothorax",
)
PER_LABEL_COLUMNS = (
    "organ_iou_hirescam",
    "organ_iou_gradcam",
    "lesion_iou_hirescam",
    "pointing_hit_rate_hirescam",
    "loc_utility_hirescam",
    "confounder_share_hirescam",
)
BASELINE_ROW = "  baseline: "  # how a chance-level row beneath its figure starts
BASELINE_NOTE = (
    "Each localization figure is followed by its chance levels (rows `baseline: ...`): what a map that "
    "ignores the image scores on the same pairs, measured by each evaluation (eval/baselines.py). A figure "
    "near its baseline says nothing about where the model looks. The image-blind prior map (per label, the "
    "mean allowed region of its positive training scans, the same for every scan) is scored when the run's "
    "store has a training split with grid masks; an evaluation without it says so in its notes."
)


@dataclass
class Comparison:
    headline: pd.DataFrame  # metric, A, B, B - A, relative
    per_label: pd.DataFrame
    n_scans: int


def paired_predictions(pred_a: pd.DataFrame, pred_b: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, prob_a, prob_b) on the scans of `split` both runs scored, matched by scan key."""
    a = pred_a[pred_a["split"] == split].set_index("scan_key")
    b = pred_b[pred_b["split"] == split].set_index("scan_key")
    common = a.index.intersection(b.index).sort_values()
    if common.empty:
        raise ValueError(f"the two runs share no scans of split {split!r}: were they evaluated on the same store?")
    ya, pa = predictions_arrays(a.loc[common].reset_index())
    yb, pb = predictions_arrays(b.loc[common].reset_index())
    if not np.array_equal(ya, yb):
        raise ValueError("the two runs were evaluated against different labels for the same scans")
    return ya, pa, pb


def compare_runs(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    labels_a: pd.DataFrame,
    labels_b: pd.DataFrame,
    metrics_a: dict[str, float],
    metrics_b: dict[str, float],
    split: str,
) -> Comparison:
    """Compare run A and run B from their evaluation artifacts (predictions, per-label table, metrics)."""
    y, pa, pb = paired_predictions(pred_a, pred_b, split)
    test = delong_test(y, pa, pb)
    q = benjamini_hochberg(test["p"])
    per = pd.DataFrame(
        {
            "label": labels_a["label"],
            "group": labels_a["group"],
            "pos_pct": 100 * y.mean(axis=0),
            "auroc_a": test["auc_a"],
            "ci_a": _ci(labels_a),
            "auroc_b": test["auc_b"],
            "ci_b": _ci(labels_b),
            "delong_p": test["p"],
            "fdr_q": q,
        }
    )
    for col in PER_LABEL_COLUMNS:
        if col in labels_a.columns or col in labels_b.columns:
            per[f"{col}_a"] = labels_a[col] if col in labels_a.columns else np.nan
            per[f"{col}_b"] = labels_b[col] if col in labels_b.columns else np.nan
    first = [n for n in TABLE7_LABELS if n in set(per["label"])]
    order = {n: i for i, n in enumerate(first)}
    per["_o"] = [order.get(n, len(order)) for n in per["label"]]
    per = per.sort_values(["_o", "pos_pct"], ascending=[True, False], kind="stable").drop(columns="_o")

    baselines = {metric for levels in CHANCE_LEVELS.values() for _, metric in levels}
    keys = [k for k in metrics_a.keys() | metrics_b.keys()
            if not k.endswith("_n") and "_ci_" not in k and k not in baselines]
    keys = sorted(keys, key=_metric_order)
    rows = []
    shown: set[str] = set()
    for k in keys:
        rows.append(_row(k, metrics_a.get(k, np.nan), metrics_b.get(k, np.nan)))
        for what, metric in CHANCE_LEVELS.get(k, ()):
            if metric in metrics_a or metric in metrics_b:  # each run's level on its own scans (B - A ~ 0 when paired)
                rows.append(_row(f"{BASELINE_ROW}{what} ({metric})", metrics_a.get(metric, np.nan),
                                 metrics_b.get(metric, np.nan), relative=False))
                shown.add(metric)
    for metric in sorted((metrics_a.keys() | metrics_b.keys()) & (baselines - shown)):  # a level without its figure
        rows.append(_row(metric, metrics_a.get(metric, np.nan), metrics_b.get(metric, np.nan), relative=False))
    rows.append(("labels with DeLong q < 0.05", np.nan, int(np.sum(q < 0.05)), np.nan, np.nan))
    headline = pd.DataFrame(rows, columns=["metric", "A", "B", "B - A", "relative"])
    return Comparison(headline, per.reset_index(drop=True), int(y.shape[0]))


def _row(name: str, va: float, vb: float, relative: bool = True) -> tuple[str, float, float, float, float]:
    """(metric, A, B, B - A, relative change); a baseline's relative change means nothing and is left out."""
    ok = relative and np.isfinite(va) and va != 0 and np.isfinite(vb)
    return (name, va, vb, vb - va, (vb - va) / abs(va) if ok else np.nan)


def _ci(df: pd.DataFrame) -> list[str]:
    if "auroc_ci_low" not in df.columns:
        return [""] * len(df)
    return [
        f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        for lo, hi in zip(df["auroc_ci_low"], df["auroc_ci_high"])
    ]


def _metric_order(k: str) -> tuple[int, str]:
    for i, prefix in enumerate(("auroc", "organ_iou_hirescam", "organ_iou_gradcam", "attention_in_allowed", "lesion", "pointing", "loc", "confounder", "sanity")):
        if k.startswith(prefix):
            return (i, k)
    return (99, k)
