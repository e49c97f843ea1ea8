"""One trial of a sweep: the Tune trainable that builds and fits a Ray Train run (the Train V2 pattern).

    tuner = Tuner(tune.with_parameters(run_trial, sweep=context.to_dict()), param_space=...)

`run_trial(params, sweep)` runs inside a Tune trial actor. It needs little itself (it launches and
watches the run); the TorchTrainer's workers get their own placement group. The trial's Train run
is named after its Tune trial id, so a retried or resumed trial restores the same run from its last
checkpoint and keeps logging into the same MLflow child run (recorded in rundir files beside the
checkpoints). `SweepReportCallback` forwards every epoch's metrics to Tune.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.integration.ray_train import TuneReportCallback

from ctplatform import tracking
from ctplatform.config import Config
from ctplatform.runtime import setup_mlflow
from ctplatform.train import rundir
from ctplatform.train.tracking import finish_mlflow_run, start_mlflow_run
from ctplatform.train.trainer import build_trainer, check_inputs
from ctplatform.train.tune.space import trial_config, trial_label

if TYPE_CHECKING:
    from ray.train import Checkpoint

log = logging.getLogger("ctplatform.tune")

#: Per-trial record beside the Train run's checkpoints: attempts, last error, final status.
TRIAL_RECORD = "ctplatform_trial.json"
#: The time attribute ASHA reads: epochs finished (epoch numbers restart nowhere, unlike Tune's
#: training_iteration, which restarts when a trial is retried and its Train run restored).
EPOCHS_DONE = "epochs_done"


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares (small: it travels to each trial actor)."""

    name: str
    parent_run_id: str
    config: dict[str, Any]  # the base Config as JSON, paths absolute, tracking URI explicit
    train_storage: str  # where the trials' Train runs live
    metric: str
    mode: str
    varied: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepContext":
        return cls(**d)


def trial_run_name(trial_id: str, params: dict[str, Any], varied: list[str] | set[str]) -> str:
    """Deterministic per trial (Train restores a run by name): '<label>-<trial id>'."""
    return f"{trial_label(params, set(varied))}-{trial_id}"


def worst_value(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


class SweepReportCallback(TuneReportCallback):
    """TuneReportCallback that adds `epochs_done` and always carries the sweep metric (a diverged
    epoch reports none, and Tune refuses a result without the metric its scheduler needs)."""

    def __init__(self, metric: str, mode: str) -> None:
        super().__init__()
        self.metric, self.mode = metric, mode

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: "Checkpoint | None") -> None:
        first = dict(metrics[0]) if metrics else {}
        first[EPOCHS_DONE] = int(first.get("epoch", -1)) + 1
        value = first.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            first[self.metric] = worst_value(self.mode)
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def run_trial(params: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune trainable: one full Ray Train run of the base config with this trial's parameters.

    A bad input (e.g. grid masks of this variant missing) or a Train failure raises, so Tune retries
    the trial up to tune.max_trial_retries and then records it as failed; a divergence ends the
    trial without a retry (it would diverge again) and is recorded as diverged.
    """
    import ray.tune

    ctx = SweepContext.from_dict(sweep)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(Config.model_validate(ctx.config), params)
    storage = ctx.train_storage
    name = trial_run_name(trial_id, params, ctx.varied)

    trial = rundir.read_json(storage, name, TRIAL_RECORD) or {"trial_id": trial_id, "params": params, "attempts": 0}
    trial.update(attempts=int(trial["attempts"]) + 1, error=None, error_type=None, status="running")
    rundir.write_json(storage, name, TRIAL_RECORD, trial)

    def fail(e: BaseException) -> None:
        # The message stays in the trial record beside the checkpoints; MLflow gets the exception
        # type only (as `ctplatform train` does): messages can name volumes, and ids may carry PHI.
        trial.update(error=short_error(e), error_type=type(e).__name__, status="failed")
        rundir.write_json(storage, name, TRIAL_RECORD, trial)
        finish_mlflow_run(mlflow_run_id, "FAILED", type(e).__name__)

    counts: tuple[int, int] | None = None
    input_error: Exception | None = None
    try:
        counts = check_inputs(cfg)
    except (FileNotFoundError, ValueError) as e:
        input_error = e
    mlflow_run_id = child_run(cfg, ctx, storage, name, trial_id, counts)
    if input_error is not None:
        fail(input_error)
        raise input_error

    rundir.remove(storage, name, rundir.OUTCOME)  # only this attempt's outcome counts
    trainer = build_trainer(
        cfg,
        run_name=name,
        mlflow_run_id=mlflow_run_id,
        tracking_uri=cfg.tracking_uri,
        callbacks=[SweepReportCallback(ctx.metric, ctx.mode)],
        storage_path=storage,
    )
    try:
        trainer.fit()
    except BaseException as e:
        fail(e)
        raise
    outcome = rundir.read_json(storage, name, rundir.OUTCOME) or {}
    status = str(outcome.get("status") or "unknown")
    trial.update(status=status)
    rundir.write_json(storage, name, TRIAL_RECORD, trial)
    if status == "diverged":
        finish_mlflow_run(mlflow_run_id, "FAILED", f"diverged: {outcome.get('stop_reason', 'non-finite loss')}")
    else:
        finish_mlflow_run(mlflow_run_id, "FINISHED", status)


def child_run(
    cfg: Config, ctx: SweepContext, storage: str, name: str, trial_id: str, counts: tuple[int, int] | None
) -> str:
    """The trial's MLflow run nested under the sweep's parent: created once, reused by retries."""
    record = rundir.read_json(storage, name, rundir.RUN_RECORD)
    if record is not None:
        setup_mlflow(cfg)
        return str(record["mlflow_run_id"])
    n_train, n_valid = counts if counts is not None else (None, None)
    # The same run record as `ctplatform train` keeps: `ctplatform train --resume --run-name NAME` with
    # train.storage_path set to the sweep's train_runs folder continues a trial's run by hand.
    run_id, _ = start_mlflow_run(
        cfg, name, storage, parent_run_id=ctx.parent_run_id, n_train=n_train, n_valid=n_valid,
        tags={tracking.SWEEP: ctx.name, tracking.TRIAL_ID: trial_id},
    )  # fmt: skip
    from ctplatform.train.trainer import log_qc_counts

    log_qc_counts(cfg, run_id)  # which scans partition QC kept out (counts only)
    return run_id


def short_error(e: BaseException, limit: int = 300) -> str:
    """'TypeName: first line of the message', bounded (for the table, tags and the trial record)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    out = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."
