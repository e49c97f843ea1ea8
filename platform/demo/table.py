"""The comparison table `ctplatform demo` prints: the class-only model beside the mask-loss model.

Pure functions over numbers already computed by `ctplatform evaluate` (MLflow metrics of each
evaluation run, without the split prefix) plus one measure only a phantom cohort allows:

**confounder reliance** (`confounder_reliance`): on a split where the confounder is independent of
its target label (the phantom's `shifted` split), the AUROC with which the model's score for the
target label separates scans with the confounder (thick body-wall fat, or the marker) from scans
without it, computed within each class of the label and averaged over the two classes. 0.5: the
score ignores the confounder; 1.0: it ranks scans by the confounder alone. Unlike the attention
share, this measures what the model's output depends on, not where its explanation points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ctplatform.eval.report import scan_key
from ctplatform.model.metrics import auroc_per_label
from ctplatform.phantom.cohort import FAT_HIGH_MM, FAT_LOW_MM

#: (row title, split role, metric key, what is better); role "headline" is the first evaluated
#: split (test), "shifted" the split where the confounder is independent of its label.
#: `{target}` is replaced by the confounder's target label.
TABLE_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("AUROC, median over labels", "headline", "auroc_median", "higher"),
    ("AUROC, mean over labels", "headline", "auroc_mean", "higher"),
    ("AUROC, median over labels", "shifted", "auroc_median", "higher"),
    ("AUROC {target}", "headline", "auroc/{target}", "higher"),
    ("AUROC {target}", "shifted", "auroc/{target}", "higher"),
    ("OrganIoU HiResCAM, overall", "headline", "organ_iou_hirescam_overall", "higher"),
    ("OrganIoU Grad-CAM, overall", "headline", "organ_iou_gradcam_overall", "higher"),
    ("true lesion Dice, HiResCAM", "headline", "lesion_dice_hirescam", "higher"),
    ("pointing game hit rate, HiResCAM", "headline", "pointing_hit_rate_hirescam", "higher"),
    ("Localization Utility (AUPRC), HiResCAM", "headline", "loc_utility_hirescam", "higher"),
    ("attention share on confounder, {target}", "headline", "confounder_share_hirescam_target", "lower"),
    ("attention share on confounder, all positives", "headline", "confounder_share_hirescam", "lower"),
    ("confounder reliance of the {target} score", "shifted", "confounder_reliance_auroc", "0.5"),
)

RELIANCE_METRIC = "confounder_reliance_auroc"


def confounder_reliance(score: np.ndarray, label: np.ndarray, has_confounder: np.ndarray) -> float:
    """Mean over the label's two classes of AUROC(score separates confounder present vs absent).

    score, label (0/1), has_confounder (bool): one value per scan. NaN when neither class holds
    scans with and without the confounder.
    """
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label) > 0.5
    has = np.asarray(has_confounder, dtype=bool)
    if not (score.shape == label.shape == has.shape):
        raise ValueError(f"score {score.shape}, label {label.shape} and confounder {has.shape} must match")
    per_class = []
    for cls in (False, True):
        sel = label == cls
        if has[sel].any() and (~has[sel]).any():
            per_class.append(float(auroc_per_label(has[sel][:, None].astype(np.float64), score[sel][:, None])[0]))
    return float(np.mean(per_class)) if per_class else math.nan


def confounder_present(kind: str, values: np.ndarray) -> np.ndarray:
    """The phantom's confounder value -> present: fat thickness in the thick range, or the marker drawn."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "fat":
        return values >= (FAT_LOW_MM[1] + FAT_HIGH_MM[0]) / 2  # between the thin and thick ranges
    if kind == "marker":
        return values >= 0.5
    raise ValueError(f"unknown confounder kind {kind!r}")


def reliance_from_predictions(
    predictions: pd.DataFrame, cohort_listing: pd.DataFrame, target: str, split: str, salt: bytes
) -> float:
    """confounder_reliance on `split` from an evaluation's predictions.parquet and the cohort's scans.csv.

    Predictions are keyed by scan_key (a keyed hash of the volume id, `salt` from
    eval.report.scan_key_salt); the listing gives each volume's confounder kind and value.
    """
    listing = cohort_listing[cohort_listing["split"] == split]
    kinds = set(listing["confounder_kind"].dropna().astype(str)) - {""}
    if not kinds:
        return math.nan
    value = {scan_key(str(v), salt): float(c) for v, c in zip(listing["volume_id"], listing["confounder_value"])}
    pred = predictions[(predictions["split"] == split) & predictions["scan_key"].isin(value)]
    if pred.empty:
        return math.nan
    has = confounder_present(kinds.pop(), np.array([value[k] for k in pred["scan_key"]]))
    return confounder_reliance(pred[f"p_{target}"].to_numpy(), pred[f"y_{target}"].to_numpy(), has)


def summary_table(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    splits: list[str],
    target: str,
    shifted: str = "shifted",
) -> pd.DataFrame:
    """Rows of TABLE_ROWS for which a split was evaluated; one column per model.

    metrics[model][split][key] (keys as logged by evaluate, without the split prefix). Columns:
    metric, split, one per model (in the mapping's order), better.
    """
    roles = {"headline": splits[0] if splits else None, "shifted": shifted if shifted in splits else None}
    models = list(metrics)
    rows = []
    for title, role, key, better in TABLE_ROWS:
        split = roles[role]
        if split is None:
            continue
        k = key.format(target=target)
        values = [metrics[m].get(split, {}).get(k, math.nan) for m in models]
        if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            continue  # not measured (e.g. no confounder, no true masks)
        rows.append([title.format(target=target), split, *values, better])
    return pd.DataFrame(rows, columns=["metric", "split", *models, "better"])


def timing_table(stages: list[tuple[str, float, str]]) -> pd.DataFrame:
    """(stage, seconds, outcome) -> a table with the total."""
    df = pd.DataFrame(stages, columns=["stage", "seconds", "outcome"])
    total = pd.DataFrame([["total", float(df["seconds"].sum()), ""]], columns=df.columns)
    return pd.concat([df, total], ignore_index=True)
