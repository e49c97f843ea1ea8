"""The sweep driver: Ray Tune over Ray Train runs of lambda x grid-mask variant (x lr x seed), in MLflow.

    outcome = run_sweep(cfg)                               # a new sweep
    outcome = run_sweep(cfg, resume=True)                  # continue the latest interrupted sweep
    outcome = run_sweep(cfg, resume=True, name="sweep-...", retry_failed=True)

Layout (tune.storage_path, default <workdir>/tune_results; local, NFS or s3://):
    <storage>/<sweep>/                   Tune's experiment (state, one folder per trial id)
    <storage>/<sweep>/ctplatform_sweep.json   the parent MLflow run and the sweep's configuration
    <storage>/<sweep>/train_runs/<label>-<trial id>/   each trial's Ray Train run (checkpoints)

A resumed sweep keeps the configuration it started with (from ctplatform_sweep.json) and the same
parent run; `Tuner.restore` skips finished trials and restarts unfinished ones, whose Train runs
continue from their last checkpoint.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from ctplatform.config import Config
from ctplatform.model.dataset import MissingGridMaskError
from ctplatform.runtime import init_ray, setup_mlflow
from ctplatform.train import rundir
from ctplatform.train.tracking import finish_mlflow_run
from ctplatform.train.trainer import check_inputs, resolve_use_gpu, worker_config
from ctplatform.train.tune.space import (
    concurrent_trials,
    describe_resources,
    driver_bundle,
    n_trials,
    search_space,
    trial_config,
    trial_label,
    varied_params,
)
from ctplatform.train.tune.table import TrialRow, best_trial
from ctplatform.train.tune.tracking import (
    SweepTracker,
    collect_rows,
    log_table,
    start_parent_run,
    sweep_params,
    view_of_trial,
)
from ctplatform.train.tune.trial import EPOCHS_DONE, SweepContext, run_trial

log = logging.getLogger("ctplatform.tune")

SWEEP_RECORD = "ctplatform_sweep.json"
TRAIN_RUNS = "train_runs"


@dataclass(frozen=True)
class SweepOutcome:
    name: str
    experiment_path: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    rows: list[TrialRow]
    best: TrialRow | None
    markdown: str
    wall_s: float
    interrupted: bool = False  # stopped by Ctrl-C: trials left running or pending


# ------------------------------------------------------------------------------ storage and names
def tune_storage_root(cfg: Config) -> str:
    """tune.storage_path (absolute), else <workdir>/tune_results."""
    p = cfg.tune.storage_path
    if p:
        return p if "://" in p else str(Path(p).expanduser().resolve())
    return str((cfg.workdir.expanduser() / "tune_results").resolve())


def latest_sweep(storage: str) -> str | None:
    """The most recently created sweep in the storage path (by its record), or None."""
    import json

    fs, root = rundir.filesystem(storage)
    records = []
    for path in fs.glob(f"{root}/*/{SWEEP_RECORD}"):
        with fs.open(path, "r") as f:
            records.append(json.load(f))
    if not records:
        return None
    return max(records, key=lambda r: (float(r.get("created", 0)), r["name"]))["name"]


def resolve_sweep(storage: str, resume: bool, name: str | None) -> tuple[str, dict[str, Any] | None]:
    """(sweep name, its record when resuming); clear errors for a missing or clashing sweep."""
    if resume:
        name = name or latest_sweep(storage)
        if name is None:
            raise FileNotFoundError(f"--resume: no earlier sweep in {storage}; start one without --resume")
        record = rundir.read_json(storage, name, SWEEP_RECORD)
        if record is None:
            raise FileNotFoundError(f"--resume: sweep {name!r} is not in {storage} (sweeps there: see `ls {storage}`)")
        return name, record
    if name is not None and rundir.read_json(storage, name, SWEEP_RECORD) is not None:
        raise FileExistsError(f"sweep {name!r} already exists in {storage}: pass --resume to continue it, or choose another --name")
    return name or f"sweep-{uuid.uuid4().hex[:8]}", None


def sweep_base_config(cfg: Config, train_storage: str) -> Config:
    """The configuration every trial starts from: absolute paths (a trial runs in its own directory,
    maybe on another node), the tracking URI written out, the trials' Train storage."""
    base = worker_config(cfg)
    base.mlflow.tracking_uri = cfg.tracking_uri
    base.train.storage_path = train_storage
    return base


def check_sweep_inputs(cfg: Config) -> dict[str, str]:
    """{variant: why its trials will fail} for variants whose grid masks are missing. Problems every
    trial shares (no store, an empty split, unfinished volumes) raise: the sweep cannot run."""
    problems: dict[str, str] = {}
    for variant in cfg.tune.variants:
        try:
            check_inputs(trial_config(cfg, {"grid_variant": variant}))
        except MissingGridMaskError as e:
            problems[variant] = str(e)
    if len(problems) == len(cfg.tune.variants):
        raise MissingGridMaskError(next(iter(problems.values())))
    return problems


# ------------------------------------------------------------------------------ Tune pieces
class TrainRunASHA(ASHAScheduler):
    """ASHA that stops only trials whose Train run would go on. A run that reported its last epoch
    (completed, early stopped, diverged) ends by itself; stopping it then saves nothing and kills
    the trial while rank 0 still logs its best model (Tune does not wait for the trial's thread)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get("status") != "running":
            self._num_stopped -= 1
            return self.CONTINUE
        return action


class TrialNamer:
    """Tune trial names ('area-dilated-lambda0p333_00003') and folder names (the trial id)."""

    def __init__(self, varied: list[str]) -> None:
        self.varied = set(varied)

    def __call__(self, trial: Any) -> str:
        return f"{trial_label(trial.config, self.varied)}_{trial.trial_id.rsplit('_', 1)[-1]}"


def trial_dirname(trial: Any) -> str:
    """A trial's folder in the experiment: its id (what the Train run and the MLflow child are named after)."""
    return str(trial.trial_id)


def make_trainable(base: Config, ctx: SweepContext) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, sweep=ctx.to_dict()),
        tune.PlacementGroupFactory([driver_bundle(base)]),
    )


def make_tuner(base: Config, ctx: SweepContext, storage: str, concurrency: int, trainable: Any) -> Any:
    from ray import tune

    t = base.tune
    scheduler = None
    if t.asha:
        scheduler = TrainRunASHA(
            time_attr=EPOCHS_DONE,
            max_t=base.train.epochs,
            grace_period=min(t.asha_grace_period, base.train.epochs),
            reduction_factor=t.asha_reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=search_space(base),
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            scheduler=scheduler,
            num_samples=t.num_samples,
            max_concurrent_trials=concurrency,
            trial_name_creator=TrialNamer(ctx.varied),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=ctx.name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=t.max_trial_retries),
            callbacks=[SweepTracker(ctx.to_dict())],
            verbose=1,
        ),
    )


def saved_trials(experiment_path: str) -> list[Any]:
    """TrialViews of every trial in Tune's saved experiment state, with their Tune status (a
    ResultGrid has no status: an interrupted trial would look finished)."""
    from ray.tune import ExperimentAnalysis

    return [view_of_trial(t) for t in ExperimentAnalysis(experiment_path).trials]


# ------------------------------------------------------------------------------ the driver
def create_sweep(base: Config, storage: str, name: str, concurrency: int) -> dict[str, Any]:
    """The parent MLflow run and the sweep record (ctplatform_sweep.json) of a new sweep."""
    experiment_path = f"{storage}/{name}"
    parent_run_id, experiment_id = start_parent_run(base, name, sweep_params(base, n_trials(base), concurrency))
    ctx = SweepContext(
        name=name,
        parent_run_id=parent_run_id,
        config=base.model_dump(mode="json"),
        train_storage=f"{experiment_path}/{TRAIN_RUNS}",
        metric=base.tune.metric,
        mode=str(base.tune.mode),
        varied=sorted(varied_params(base)),
    )
    record = {"name": name, "created": time.time(), "experiment_id": experiment_id, "context": ctx.to_dict()}
    rundir.write_json(storage, name, SWEEP_RECORD, record)
    return record


def report_sweep(ctx: SweepContext, base: Config, experiment_path: str, wall: float) -> tuple[list[TrialRow], str, bool]:
    """Rows of every trial from Tune's saved state, the table logged on the parent run and written to
    the experiment folder, the runs' final statuses; returns (rows, markdown, interrupted)."""
    rows = collect_rows(ctx, saved_trials(experiment_path))
    planned = n_trials(base)
    # Tune returns normally after Ctrl-C (SIGINT), with trials left running or pending.
    interrupted = any(r.status in ("running", "interrupted", "pending") for r in rows) or len(rows) < planned
    extra = {"experiment": experiment_path, "wall time of this run": f"{wall:.0f} s", "trials planned": str(planned)}
    if interrupted:
        extra["interrupted"] = f"continue with `ctplatform tune --resume --name {ctx.name}`"
    md = log_table(ctx, rows, extra=extra, final=not interrupted)
    if interrupted:
        for r in rows:
            if r.status in ("running", "interrupted") and r.mlflow_run_id:  # a resume sets them RUNNING again
                finish_mlflow_run(r.mlflow_run_id, "KILLED", "sweep interrupted")
        finish_mlflow_run(ctx.parent_run_id, "KILLED", "interrupted: resume with ctplatform tune --resume")
    else:
        n_failed = sum(r.status == "failed" for r in rows)
        finish_mlflow_run(ctx.parent_run_id, "FINISHED", f"{len(rows)} trials, {n_failed} failed")
    fs, path = rundir.filesystem(f"{experiment_path}/sweep_table.md")
    with fs.open(path, "w") as f:
        f.write(md)
    return rows, md, interrupted


def run_sweep(
    cfg: Config, *, name: str | None = None, resume: bool = False, retry_failed: bool = False
) -> SweepOutcome:
    """Run (or resume) a sweep; returns its table rows, best trial and where everything is.

    Raises FileNotFoundError / FileExistsError / ValueError for unusable inputs before anything starts.
    """
    import ray
    from mlflow import MlflowClient
    from ray import tune

    start = time.monotonic()
    storage = tune_storage_root(cfg)
    name, record = resolve_sweep(storage, resume, name)
    experiment_path = f"{storage}/{name}"
    if record is not None:  # a resumed sweep keeps its own configuration
        base = Config.model_validate(record["context"]["config"])
        setup_mlflow(base)
    else:
        base = sweep_base_config(cfg, f"{experiment_path}/{TRAIN_RUNS}")
        search_space(base)  # refuses inconsistent settings before anything is created
        for variant, problem in check_sweep_inputs(base).items():
            log.warning("variant %s: its trials will fail: %s", variant, problem)
    init_ray(cfg)  # where to run comes from this command (local Ray or RAY_ADDRESS)
    use_gpu = resolve_use_gpu(base)
    concurrency = concurrent_trials(base, ray.cluster_resources(), use_gpu)
    if record is None:
        record = create_sweep(base, storage, name, concurrency)
    else:
        log.info("resuming sweep %s (MLflow parent run %s)", name, record["context"]["parent_run_id"])
    ctx = SweepContext.from_dict(record["context"])
    log.info(
        "sweep %s: %d trial(s), %d at once (each: driver %s + %d Train worker(s) x %g CPU%s); experiment %s",
        name, n_trials(base), concurrency, describe_resources(driver_bundle(base)), base.train.num_workers,
        base.train.cpus_per_worker, " + 1 GPU" if use_gpu else "", experiment_path,
    )
    trainable = make_trainable(base, ctx)
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=retry_failed)
    else:  # a new sweep, or one killed before Tune saved its first state
        tuner = make_tuner(base, ctx, storage, concurrency, trainable)
    MlflowClient(base.tracking_uri).update_run(ctx.parent_run_id, status="RUNNING")
    try:
        tuner.fit()
    except BaseException as e:
        finish_mlflow_run(ctx.parent_run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", type(e).__name__)
        raise
    wall = time.monotonic() - start
    rows, md, interrupted = report_sweep(ctx, base, experiment_path, wall)
    return SweepOutcome(
        name, experiment_path, ctx.parent_run_id, str(record.get("experiment_id", "")), base.tracking_uri,
        rows, best_trial(rows, ctx.mode), md, wall, interrupted,
    )
