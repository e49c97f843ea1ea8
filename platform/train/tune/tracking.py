"""MLflow for a sweep: the parent run, the table of its trials, and a Tune callback that keeps both current.

The parent run holds the sweep's parameters, config.yaml and the table (sweep/table.md,
sweep/trials.csv, sweep/table5_auroc.csv, sweep/table5_organ_iou.csv), rewritten as each trial ends
so a long sweep can be followed in the MLflow UI. Each trial's child run (created by the trial,
tag mlflow.parentRunId) gets its per-epoch metrics from rank 0 of its Train run; the callback closes
child runs that Tune ended from outside (ASHA, errors). Per-epoch values come from MLflow, the
one record that survives retries and resumes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from ctplatform import tracking
from ctplatform.config import Config
from ctplatform.runtime import setup_mlflow
from ctplatform.train import rundir
from ctplatform.train.tracking import run_params
from ctplatform.train.tune.table import TrialRow, best_trial, sweep_markdown, table5, trials_frame
from ctplatform.train.tune.trial import EPOCHS_DONE, TRIAL_RECORD, SweepContext, trial_run_name

log = logging.getLogger("ctplatform.tune")

TABLE_ARTIFACTS = "sweep"
#: Per-epoch MLflow metrics read for the table.
_HISTORY_KEYS = ("val_auroc_median", "val_organ_iou", "val_class_loss", "val_loss")


@dataclass(frozen=True)
class TrialView:
    """What the table needs of a Tune trial, from a live Trial or a finished Result."""

    trial_id: str
    params: dict[str, Any]
    tune_status: str  # PENDING | RUNNING | PAUSED | TERMINATED | ERROR
    last_result: dict[str, Any]


# ------------------------------------------------------------------------------ the parent run
def sweep_params(cfg: Config, n_trials: int, concurrency: int) -> dict[str, Any]:
    t = cfg.tune
    params = {
        k: v for k, v in run_params(cfg).items() if k not in ("lambda_mask", "grid_variant", "lr", "seed", "mask_loss")
    }
    params.update(
        {
            "mask_loss_form": cfg.train.mask_loss,
            "sweep_lambdas": ",".join(f"{x:g}" for x in t.lambdas),
            "sweep_variants": ",".join(t.variants),
            "sweep_lrs": ",".join(f"{x:g}" for x in (t.lrs or [cfg.train.lr])),
            "sweep_lr_range": "" if t.lr_range is None else f"{t.lr_range[0]:g},{t.lr_range[1]:g}",
            "sweep_seeds": ",".join(str(x) for x in (t.seeds or [cfg.train.seed])),
            "sweep_search": t.search,
            "sweep_num_samples": t.num_samples,
            "sweep_trials": n_trials,
            "sweep_metric": t.metric,
            "sweep_mode": t.mode,
            "sweep_asha": t.asha,
            "sweep_asha_grace_period": t.asha_grace_period,
            "sweep_asha_reduction_factor": t.asha_reduction_factor,
            "sweep_max_concurrent_trials": concurrency,
            "sweep_trial_cpus": t.trial_cpus,
            "sweep_trial_gpus": t.trial_gpus,
            "sweep_trial_memory_gb": t.trial_memory_gb,
            "sweep_max_trial_retries": t.max_trial_retries,
        }
    )
    return params


def start_parent_run(cfg: Config, name: str, params: dict[str, Any]) -> tuple[str, str]:
    """Create the sweep's parent run (RUNNING until the sweep ends); returns (run id, experiment id)."""
    import mlflow
    from mlflow import MlflowClient

    experiment_id = setup_mlflow(cfg)
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=name, tags={tracking.STAGE: "tune", tracking.SWEEP: name})
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_params(params)
        mlflow.log_text(cfg.to_yaml(), "config.yaml")
    client.update_run(run.info.run_id, status="RUNNING")  # start_run's exit marked it FINISHED
    return run.info.run_id, experiment_id


# ------------------------------------------------------------------------------ rows of the table
def metric_history(client: Any, run_id: str, key: str) -> dict[int, float]:
    """{epoch: value}; an epoch logged twice (redone after a recovery) keeps its latest value."""
    out: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in out or m.timestamp >= out[m.step][0]:
            out[m.step] = (m.timestamp, m.value)
    return {step: v for step, (_, v) in out.items()}


def _status(view: TrialView, trial: dict[str, Any], outcome: dict[str, Any] | None) -> str:
    if view.tune_status == "ERROR":
        return "failed"
    if view.tune_status in ("PENDING", "PAUSED"):
        # A sweep stopped by Ctrl-C leaves its started trials PENDING: they resume with --resume.
        return "interrupted" if trial.get("attempts") else "pending"
    if view.tune_status == "RUNNING":
        return "running"
    if outcome and outcome.get("status") in ("completed", "early_stopped", "diverged"):
        return str(outcome["status"])
    reported = view.last_result.get("status")
    if reported in ("completed", "early_stopped", "diverged"):
        return str(reported)
    if trial.get("status") == "failed":
        return "failed"
    # Terminated by Tune while its Train run was still running: ASHA stopped it.
    return "stopped_asha" if view.last_result else "failed"


def trial_row(ctx: SweepContext, view: TrialView, client: Any) -> TrialRow:
    """One trial's row: its status, metrics at its best epoch, attempts, error, MLflow run and checkpoint."""
    name = trial_run_name(view.trial_id, view.params, ctx.varied)
    storage = ctx.train_storage
    trial = rundir.read_json(storage, name, TRIAL_RECORD) or {}
    record = rundir.read_json(storage, name, rundir.RUN_RECORD) or {}
    outcome = rundir.read_json(storage, name, rundir.OUTCOME)
    last = dict(view.last_result)
    status = _status(view, trial, outcome)
    run_id = str(record.get("mlflow_run_id", ""))
    history = {k: metric_history(client, run_id, k) for k in {*_HISTORY_KEYS, ctx.metric}} if run_id else {}
    epoch = last.get("epoch")
    for k in history:  # the last reported epoch may not have reached MLflow (a trial stopped right after)
        if isinstance(epoch, int) and epoch not in history[k] and isinstance(last.get(k), (int, float)):
            history[k][epoch] = float(last[k])
    best_epoch = last.get("best_epoch")
    if outcome and isinstance((outcome.get("metrics") or {}).get("best_epoch"), int):
        best_epoch = outcome["metrics"]["best_epoch"]
    val_loss = history.get("val_loss", {})
    if not isinstance(best_epoch, int) and val_loss:  # no report kept (interrupted): as training picks it
        best_epoch = min(sorted(val_loss), key=lambda e: val_loss[e])
    best_epoch = best_epoch if isinstance(best_epoch, int) and best_epoch >= 0 else None
    epochs = int(last.get(EPOCHS_DONE) or 0) or (max(val_loss) + 1 if val_loss else 0)

    def at_best(key: str) -> float:
        if best_epoch is None:
            return math.nan
        return float(history.get(key, {}).get(best_epoch, math.nan))

    values = [v for v in history.get(ctx.metric, {}).values() if math.isfinite(v)]
    metric_best = (min(values) if ctx.mode == "min" else max(values)) if values else math.nan
    error = ""  # the exception type only: the table goes to MLflow (messages stay in the trial record)
    if status == "failed":
        error = str(trial.get("error_type") or "error")
    elif status == "diverged":
        error = str((outcome or {}).get("stop_reason") or "")  # loss figures only
    return TrialRow(
        trial_id=view.trial_id,
        run_name=name,
        grid_variant=str(view.params["grid_variant"]),
        lambda_mask=float(view.params["lambda_mask"]),
        lr=float(view.params["lr"]),
        seed=int(view.params["seed"]),
        status=status,
        epochs=epochs,
        best_epoch=best_epoch,
        val_auroc_median=at_best("val_auroc_median"),
        val_organ_iou=at_best("val_organ_iou"),
        val_class_loss=at_best("val_class_loss"),
        val_loss=at_best("val_loss"),
        metric_best=metric_best,
        attempts=int(trial.get("attempts", 0)),
        error=error,
        mlflow_run_id=run_id,
        checkpoint=str(last.get("checkpoint_path") or ""),
    )


def collect_rows(ctx: SweepContext, views: list[TrialView]) -> list[TrialRow]:
    from mlflow import MlflowClient

    client = MlflowClient(Config.model_validate(ctx.config).tracking_uri)
    return [trial_row(ctx, v, client) for v in views]


# ------------------------------------------------------------------------------ logging the table
def log_table(ctx: SweepContext, rows: list[TrialRow], extra: dict[str, str] | None = None, final: bool = False) -> str:
    """Write the table to the parent run (markdown + CSVs) and, at the end, the best trial's tags and
    metrics; returns the markdown."""
    from mlflow import MlflowClient

    cfg = Config.model_validate(ctx.config)
    client = MlflowClient(cfg.tracking_uri)
    lr_columns = cfg.tune.search == "grid"
    md = sweep_markdown(ctx.name, rows, ctx.metric, ctx.mode, extra, lr_columns)
    client.log_text(ctx.parent_run_id, md, f"{TABLE_ARTIFACTS}/table.md")
    client.log_text(ctx.parent_run_id, trials_frame(rows).to_csv(index=False), f"{TABLE_ARTIFACTS}/trials.csv")
    for value, fname in (("val_auroc_median", "table5_auroc.csv"), ("val_organ_iou", "table5_organ_iou.csv")):
        if rows:
            client.log_text(ctx.parent_run_id, table5(rows, value, lr_columns).to_csv(), f"{TABLE_ARTIFACTS}/{fname}")
    if final:
        counts = {s: sum(r.status == s for r in rows) for s in {r.status for r in rows}}
        for status, n in counts.items():
            client.log_metric(ctx.parent_run_id, f"trials_{status}", n)
        best = best_trial(rows, ctx.mode)
        if best is not None:
            client.log_metric(ctx.parent_run_id, f"best_{ctx.metric}", best.metric_best)
            for key in ("val_auroc_median", "val_organ_iou"):
                if math.isfinite(getattr(best, key)):
                    client.log_metric(ctx.parent_run_id, f"best_{key}", getattr(best, key))
            for key, value in {
                tracking.BEST_TRIAL: best.trial_id,
                tracking.BEST_RUN_ID: best.mlflow_run_id,
                tracking.BEST_CHECKPOINT: best.checkpoint,
                tracking.BEST_CONFIG: f"train.grid_variant={best.grid_variant} train.lambda_mask={best.lambda_mask:g} "
                f"train.lr={best.lr:g} train.seed={best.seed}",
            }.items():
                client.set_tag(ctx.parent_run_id, key, value)
            best_cfg = Config.model_validate(ctx.config)
            for k in ("grid_variant", "lambda_mask", "lr", "seed"):
                setattr(best_cfg.train, k, getattr(best, k))
            client.log_text(ctx.parent_run_id, best_cfg.to_yaml(), f"{TABLE_ARTIFACTS}/best_config.yaml")
    return md


def close_child(ctx: SweepContext, row: TrialRow) -> None:
    """End a child run Tune stopped from outside (still RUNNING): FINISHED for ASHA, FAILED for errors."""
    if not row.mlflow_run_id:
        return
    from mlflow import MlflowClient

    client = MlflowClient(Config.model_validate(ctx.config).tracking_uri)
    if client.get_run(row.mlflow_run_id).info.status != "RUNNING":
        return
    if row.status == "stopped_asha":
        client.set_tag(row.mlflow_run_id, tracking.STOP_REASON, f"stopped by ASHA after {row.epochs} epoch(s)")
        client.set_terminated(row.mlflow_run_id, status="FINISHED")
    elif row.status == "failed":
        client.set_tag(row.mlflow_run_id, tracking.STOP_REASON, (row.error or "failed")[:500])
        client.set_terminated(row.mlflow_run_id, status="FAILED")
    client.set_tag(row.mlflow_run_id, tracking.TRIAL_STATUS, row.status)


def view_of_trial(trial: Any) -> TrialView:
    return TrialView(trial.trial_id, dict(trial.config), str(trial.status), dict(trial.last_result or {}))


class SweepTracker(Callback):
    """Tune callback (in the sweep's driver process): closes each ended trial's child run, tags its
    status and rewrites the parent's table. Holds only the small sweep context, so Tune can save it
    with the experiment and restore it on resume."""

    def __init__(self, sweep: dict[str, Any]) -> None:
        self.sweep = sweep

    def _ended(self, trials: list[Any], trial: Any, tune_status: str) -> None:
        ctx = SweepContext.from_dict(self.sweep)
        try:
            views = [view_of_trial(t) for t in trials]
            # Tune calls on_trial_complete before it marks the trial TERMINATED.
            views = [TrialView(v.trial_id, v.params, tune_status, v.last_result) if v.trial_id == trial.trial_id else v for v in views]
            rows = collect_rows(ctx, views)
            ended = next(r for r in rows if r.trial_id == trial.trial_id)
            close_child(ctx, ended)
            if ended.mlflow_run_id:
                from mlflow import MlflowClient

                MlflowClient(Config.model_validate(ctx.config).tracking_uri).set_tag(
                    ended.mlflow_run_id, tracking.TRIAL_STATUS, ended.status
                )
            log_table(ctx, rows)
            log.info("trial %s ended: %s", ended.run_name, ended.status + (f" ({ended.error})" if ended.error else ""))
        except Exception as e:  # the table is a report; a failure to write it must not stop the sweep
            log.warning("could not update the sweep table after trial %s: %s", trial.trial_id, e)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trials, trial, "ERROR")
