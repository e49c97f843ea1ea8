"""MLflow for evaluation: an evaluation run nested under the training run, holding every metric,
table and picture; the headline metrics are also written onto the training run, so the MLflow UI's
run list shows them beside the training metrics.

Metric names are prefixed by the split (`test_auroc_median`, `test_organ_iou_hirescam_overall`).
Only label-level aggregates and hashed scan keys are logged: no volume ids, no report text.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from ctplatform import tracking
from ctplatform.config import Config
from ctplatform.eval.summary import Evaluation
from ctplatform.model.checkpoint import check_run_exists
from ctplatform.runtime import setup_mlflow

log = logging.getLogger("ctplatform.eval")

#: Metrics copied onto the training run (without their `_n` counts).
HEADLINE = (
    "auroc_median",
    "auroc_mean",
    "organ_iou_hirescam_overall",
    "organ_iou_gradcam_overall",
    "lesion_iou_hirescam",
    "pointing_hit_rate_hirescam",
    "loc_utility_hirescam",
    "confounder_share_hirescam",
    "sanity_rank_corr_mean",
)


#: Per-label columns of the evaluation logged as metrics.
PER_LABEL_METRICS = ("auroc", "organ_iou_hirescam", "organ_iou_gradcam", "lesion_dice_hirescam", "loc_utility_hirescam")


def _finite(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[f"{prefix}{k}"] = f
    return out


def log_evaluation(
    cfg: Config, run_id: str, split: str, ev: Evaluation, out_dir: Path, exclude: list[str] | None = None
) -> str:
    """Create the evaluation run, log metrics, params and the files of out_dir; return its id."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    setup_mlflow(cfg)
    client = MlflowClient()
    parent = client.get_run(run_id)
    tags = {
        tracking.STAGE: "evaluate",
        tracking.EVALUATED_RUN: run_id,
        tracking.SPLIT: split,
        tracking.PARENT_RUN: run_id,
    }
    # the name says which model on which split (e.g. evaluate-mask-loss-0a1b2c3d4e5f-on-test)
    run = client.create_run(parent.info.experiment_id, run_name=f"evaluate-{parent.info.run_name}-on-{split}", tags=tags)
    eval_id = run.info.run_id
    now = int(1000 * time.time())
    metrics = _finite(ev.metrics, f"{split}_")
    # per-label numbers too, grouped by "/" in the MLflow UI (e.g. test_auroc/lung_nodule)
    for col in PER_LABEL_METRICS:
        if col in ev.per_label.columns:
            metrics.update(_finite(dict(zip(ev.per_label["label"], ev.per_label[col])), f"{split}_{col}/"))
    params = {
        "split": split,
        "organ_iou_threshold_source": ev.threshold_source,
        "organ_iou_convention": cfg.eval.organ_iou_convention,
        "bootstrap": cfg.eval.bootstrap,
        "evaluated_run": run_id,
    }
    client.log_batch(
        eval_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    skip = set(exclude or [])
    for path in sorted(out_dir.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(out_dir).parts)  # e.g. the score cache
        if path.is_file() and path.name not in skip and not hidden:
            rel = path.parent.relative_to(out_dir)
            client.log_artifact(eval_id, str(path), artifact_path=None if str(rel) == "." else str(rel))
    client.set_terminated(eval_id)
    # Headline numbers on the training run too (a finished run still accepts metrics).
    head = {f"{split}_{k}": metrics[f"{split}_{k}"] for k in HEADLINE if f"{split}_{k}" in metrics}
    try:
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in head.items()])
        client.set_tag(run_id, f"{tracking.EVALUATION_PREFIX}{split}", eval_id)
    except Exception as e:  # the evaluation run holds everything; this is a convenience
        log.warning("could not copy headline metrics onto training run %s: %s", run_id, type(e).__name__)
    log.info("logged evaluation run %s (nested under %s) at %s", eval_id, run_id, mlflow.get_tracking_uri())
    return eval_id


def find_evaluation_run(cfg: Config, run_id: str, split: str) -> str:
    """The latest finished evaluation run of `run_id` on `split` (or run_id itself if it is one)."""
    from mlflow import MlflowClient

    setup_mlflow(cfg)
    client = MlflowClient()
    check_run_exists(run_id)  # one message for an id that does not exist (a RunNotFoundError)
    run = client.get_run(run_id)
    if run.data.tags.get(tracking.STAGE) == "evaluate":
        return run_id
    found = tracking.find_run(run.info.experiment_id, {tracking.EVALUATED_RUN: run_id, tracking.SPLIT: split})
    if not found:
        raise FileNotFoundError(
            f"run {run_id} has no evaluation on split {split!r}: run "
            f"`ctplatform evaluate --run-id {run_id} --split {split}` first"
        )
    return found
