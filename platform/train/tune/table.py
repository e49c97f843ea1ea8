"""The sweep's result table (pure: rows in, tables and text out).

The paper's Table 5 asks which grid-mask downsampling (nearest, trilinear, area) and dilation suit
the mask loss; its shape here: rows downsampling x dilation, columns lambda, cells the validation
median AUROC (and a second table for OrganIoU) at each trial's best epoch (lowest validation loss,
the weights training keeps). Every trial of the sweep also gets a row in the long table, with its
status; a failed trial is listed as failed, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

#: Statuses whose metrics count (ASHA-stopped trials count, marked, at their best epoch so far).
SCORED = ("completed", "early_stopped", "stopped_asha")
METHODS = ("nearest", "trilinear", "area")


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    run_name: str
    grid_variant: str
    lambda_mask: float
    lr: float
    seed: int
    status: str  # completed | early_stopped | stopped_asha | diverged | failed | running | interrupted | pending
    epochs: int = 0
    best_epoch: int | None = None
    val_auroc_median: float = math.nan
    val_organ_iou: float = math.nan
    val_class_loss: float = math.nan
    val_loss: float = math.nan
    metric_best: float = math.nan  # the sweep metric, best over the trial's epochs
    attempts: int = 0
    error: str = ""
    mlflow_run_id: str = ""
    checkpoint: str = ""

    @property
    def downsampling(self) -> str:
        return self.grid_variant.removesuffix("-dilated")

    @property
    def dilated(self) -> bool:
        return self.grid_variant.endswith("-dilated")

    @property
    def scored(self) -> bool:
        return self.status in SCORED and math.isfinite(self.val_auroc_median)


def trials_frame(rows: list[TrialRow]) -> pd.DataFrame:
    """One row per trial (the CSV), with downsampling and dilation split out."""
    cols = [f.name for f in fields(TrialRow)]
    df = pd.DataFrame([asdict(r) for r in rows], columns=cols)
    df.insert(3, "downsampling", [r.downsampling for r in rows])
    df.insert(4, "dilation", [r.dilated for r in rows])
    return df.sort_values(["downsampling", "dilation", "lambda_mask", "lr", "seed"], key=_method_order).reset_index(drop=True)


def _method_order(s: pd.Series) -> pd.Series:
    if s.name == "downsampling":
        return s.map({m: i for i, m in enumerate(METHODS)})
    return s


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The scored trial with the best sweep metric (min or max); None when no trial scored."""
    scored = [r for r in rows if r.status in SCORED and math.isfinite(r.metric_best)]
    if not scored:
        return None
    key = (lambda r: r.metric_best) if mode == "min" else (lambda r: -r.metric_best)
    return min(scored, key=key)


def table5(rows: list[TrialRow], value: str, lr_columns: bool = True) -> pd.DataFrame:
    """Rows (downsampling, dilation), columns lambda (and lr when `lr_columns` and the rows vary it),
    cells the mean of `value` over the cell's scored trials (seeds, repeats) as text: '0.654',
    '0.654 ± 0.012 (n=3)', '0.612†' when any was stopped by ASHA, or the statuses of a cell
    without a scored trial."""
    lr_varies = lr_columns and len({r.lr for r in rows}) > 1

    def column(r: TrialRow) -> tuple[float, float | None]:
        return (r.lambda_mask, r.lr if lr_varies else None)

    def column_name(key: tuple[float, float | None]) -> str:
        lam, lr = key
        return f"lambda={lam:.3g}" + (f", lr={lr:.2g}" if lr is not None else "")

    keys = sorted({column(r) for r in rows}, key=lambda k: (k[0], k[1] or 0.0))
    variants = sorted({(r.downsampling, r.dilated) for r in rows}, key=lambda v: (_rank(v[0]), v[1]))
    data = {
        column_name(k): [
            _cell([r for r in rows if (r.downsampling, r.dilated) == v and column(r) == k], value) for v in variants
        ]
        for k in keys
    }
    index = pd.MultiIndex.from_tuples([(m, "yes" if d else "no") for m, d in variants], names=["downsampling", "dilation"])
    return pd.DataFrame(data, index=index)


def _rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _cell(cell: list[TrialRow], value: str) -> str:
    if not cell:
        return "-"
    scored = [r for r in cell if r.scored and math.isfinite(getattr(r, value))]
    if not scored:
        return "/".join(sorted({r.status for r in cell}))
    vals = [float(getattr(r, value)) for r in scored]
    mean = sum(vals) / len(vals)
    text = f"{mean:.3f}"
    if len(vals) > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        text += f" ± {sd:.3f} (n={len(vals)})"
    if any(r.status == "stopped_asha" for r in scored):
        text += "†"
    if len(scored) < len(cell):
        text += f" [{len(cell) - len(scored)} not scored]"
    return text


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame (index columns included) as a GitHub markdown table."""
    flat = df.reset_index() if df.index.names != [None] else df
    header = "| " + " | ".join(map(str, flat.columns)) + " |"
    rule = "|" + "|".join("---" for _ in flat.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "/")


TRIAL_COLUMNS = [
    "downsampling", "dilation", "lambda_mask", "lr", "seed", "status", "epochs", "best_epoch",
    "val_auroc_median", "val_organ_iou", "val_class_loss", "metric_best", "attempts", "trial_id", "error",
]


def sweep_markdown(
    name: str,
    rows: list[TrialRow],
    metric: str,
    mode: str,
    extra: dict[str, str] | None = None,
    lr_columns: bool = True,
) -> str:
    """The whole report: Table 5 shape for AUROC and OrganIoU, the best trial, every trial."""
    lines = [f"# Sweep {name}", ""]
    for key, val in (extra or {}).items():
        lines.append(f"- {key}: {val}")
    if extra:
        lines.append("")
    counts = pd.Series([r.status for r in rows]).value_counts().to_dict() if rows else {}
    lines += [f"Trials: {len(rows)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})", ""]
    if rows:
        lines += [
            "## Validation median AUROC (rows: downsampling x dilation; columns: lambda)", "",
            markdown_table(table5(rows, "val_auroc_median", lr_columns)), "",
            "## Validation OrganIoU (HiResCAM, fixed threshold train.organ_iou_threshold)", "",
            markdown_table(table5(rows, "val_organ_iou", lr_columns)), "",
            "Cells: each trial's value at its best epoch (lowest validation loss, the weights it keeps); "
            "mean ± sd over the cell's seeds or repeats; † stopped early by ASHA (best epoch so far); "
            "a status instead of a number: no trial of the cell finished (failed, diverged, running).", "",
        ]
    best = best_trial(rows, mode)
    lines += ["## Best trial", ""]
    if best is None:
        lines += ["No trial finished with a finite value of the metric.", ""]
    else:
        lines += [
            f"- by {metric} ({mode}): {best.metric_best:.4g}",
            f"- configuration: train.grid_variant={best.grid_variant}, train.lambda_mask={best.lambda_mask:g}, "
            f"train.lr={best.lr:g}, train.seed={best.seed}",
            f"- validation median AUROC {best.val_auroc_median:.3f}, OrganIoU {best.val_organ_iou:.3f} "
            f"(epoch {best.best_epoch})",
            f"- MLflow run: {best.mlflow_run_id} (model and checkpoint/model_state.pt)",
            f"- checkpoint: {best.checkpoint or '(none)'} (best_model_state.pt: the weights of its best epoch)",
            "",
        ]
    lines += ["## Trials", ""]
    if rows:
        df = trials_frame(rows)[TRIAL_COLUMNS]
        df["error"] = [e if len(e) <= 120 else e[:117] + "..." for e in df["error"]]  # whole in trials.csv
        lines += [markdown_table(df), ""]
    return "\n".join(lines)
