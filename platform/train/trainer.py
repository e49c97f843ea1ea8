"""The training driver: checks the inputs, creates the MLflow run, builds and fits a Ray Train TorchTrainer.

    outcome = run_training(cfg)                       # a new run
    outcome = run_training(cfg, resume=True)          # continue the latest run in the storage path

`build_trainer` is reusable on its own: a Tune trial's driver function creates its MLflow run with
`tracking.start_mlflow_run(cfg, name, storage, parent_run_id=...)` and fits
`build_trainer(cfg, run_name=name, mlflow_run_id=..., callbacks=[TuneReportCallback()])`.

Runs live in the storage path (`train.storage_path`, default <workdir>/ray_results; local, NFS or
s3://) as `<storage>/<run name>/`; beside Ray Train's checkpoints, small JSON files (rundir.py)
record the MLflow run id, so `--resume` continues both the checkpoints and the MLflow run, and the
outcome of the last attempt. Ray Train V2 restores a run whose name and storage path match an
earlier one.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctplatform.config import Config
from ctplatform.model.dataset import check_grid_masks, check_volumes, load_split
from ctplatform.runtime import init_ray, setup_mlflow
from ctplatform.store import Store
from ctplatform.train import rundir
from ctplatform.train.loop import train_loop_per_worker
from ctplatform.train.tracking import finish_mlflow_run, start_mlflow_run

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

log = logging.getLogger("ctplatform.train")

class TrainingDivergedError(RuntimeError):
    """The loss became NaN or exploded; the run stopped and kept its last good checkpoint."""


@dataclass(frozen=True)
class TrainingOutcome:
    run_name: str
    storage_path: str
    status: str  # completed | early_stopped | diverged
    metrics: dict[str, Any]
    checkpoint_path: str | None
    mlflow_run_id: str | None
    experiment_id: str | None
    tracking_uri: str


# ------------------------------------------------------------------------------ configuration for workers
def _is_url(path: str) -> bool:
    return "://" in path


def storage_root(cfg: Config) -> str:
    """Ray Train storage path: train.storage_path, else <workdir>/ray_results (absolute)."""
    if cfg.train.storage_path:
        p = cfg.train.storage_path
        return p if _is_url(p) else str(Path(p).expanduser().resolve())
    return str((cfg.workdir / "ray_results").resolve())


def worker_config(cfg: Config) -> Config:
    """A copy with absolute local paths: workers may run in another directory or on another node."""
    c = cfg.model_copy(deep=True)
    c.workdir = cfg.workdir.expanduser().resolve()
    if not _is_url(cfg.store_path):
        c.store = str(Path(cfg.store_path).expanduser().resolve())
    if cfg.model.pretrained_weights is not None:
        c.model.pretrained_weights = cfg.model.pretrained_weights.expanduser().resolve()
    return c


def decide_use_gpu(setting: bool | str, gpus_now: float, gpus_declared: float | None, workers: int = 1) -> bool:
    """Whether Ray Train workers ask for GPUs (pure: the numbers come from `cluster_gpus`).

    An explicit true/false is what the run asks for: true on an autoscaling cluster makes the
    workers' placement group wait for GPU nodes, which is what brings them up. "auto" means GPUs
    when the cluster has some now OR its autoscaler declares a node group with GPUs
    (`gpus_declared`): a KubeRay GPU group at 0 replicas shows no GPU until something asks for one,
    so reading only what is up would train on CPU, silently, on the cluster built for GPUs.
    """
    if setting is True or setting is False:
        return setting
    if setting != "auto":
        raise ValueError(f"train.use_gpu must be true, false or auto, not {setting!r}")
    if gpus_now > 0:
        return True
    if gpus_declared:
        log.info(
            "train.use_gpu=auto: the cluster has no GPU up, but its autoscaler declares up to %g; asking for "
            "%d GPU worker(s) so it starts them (set train.use_gpu=false to train on CPU)", gpus_declared, workers,
        )
        return True
    return False


def cluster_gpus() -> tuple[float, float | None]:
    """(GPUs in the connected Ray cluster now, GPUs its autoscaler can bring up at most or None when
    the cluster has no autoscaler config); (0, None) without Ray."""
    import ray

    if not ray.is_initialized():
        return 0.0, None
    now = float(ray.cluster_resources().get("GPU", 0))
    declared = autoscaler_max_resources()
    return now, (None if declared is None else float(declared.get("GPU", 0)))


def autoscaler_max_resources() -> dict[str, float] | None:
    """What the connected cluster holds once its autoscaler has started every node group to its
    maximum, or None without an autoscaler (or without Ray)."""
    import ray

    if not ray.is_initialized():
        return None
    # The autoscaler (KubeRay's v2 among them) publishes its node groups' resources in the GCS;
    # Ray Data reads the same record to plan its own scaling.
    from ray._private.state import state

    declared = state.get_max_resources_from_cluster_config()
    return None if declared is None else {k: float(v) for k, v in declared.items()}


def resolve_use_gpu(cfg: Config) -> bool:
    """train.use_gpu for the connected cluster (see `decide_use_gpu`)."""
    t = cfg.train
    if t.use_gpu is False:
        return False
    now, declared = cluster_gpus()
    use = decide_use_gpu(t.use_gpu, now, declared, t.num_workers)
    if use and now < t.num_workers:
        log.info("waiting for %d GPU(s) (%g up now): an autoscaling cluster starts GPU nodes for them", t.num_workers, now)
    return use


def build_trainer(
    cfg: Config,
    *,
    run_name: str,
    mlflow_run_id: str | None = None,
    tracking_uri: str | None = None,
    callbacks: list[Any] | None = None,
    storage_path: str | None = None,
) -> "TorchTrainer":
    """A TorchTrainer (Train V2) running `loop.train_loop_per_worker` with this configuration.

    Rank 0 logs to `mlflow_run_id` (none: no MLflow logging); `callbacks` are Ray Train user
    callbacks (e.g. Tune's TuneReportCallback).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    wcfg = worker_config(cfg)
    t = wcfg.train
    use_gpu = resolve_use_gpu(wcfg)
    storage = storage_path or storage_root(wcfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": wcfg.model_dump(mode="json"),
            "mlflow_run_id": mlflow_run_id,
            "tracking_uri": tracking_uri or wcfg.tracking_uri,
            "storage_path": storage,
            "run_name": run_name,
        },
        # backend None: NCCL on GPU workers, gloo on CPU ones (the same code path).
        torch_config=TorchConfig(backend=None),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            callbacks=callbacks,
        ),
    )


# ------------------------------------------------------------------------------ run records (resume)
def read_run_record(storage: str, run_name: str) -> dict[str, Any] | None:
    return rundir.read_json(storage, run_name, rundir.RUN_RECORD)


def latest_run_name(storage: str) -> str | None:
    """The most recently created run in the storage path (by its record), or None."""
    records = rundir.list_records(storage)
    if not records:
        return None
    return max(records, key=lambda r: (float(r.get("created", 0)), r["run_name"]))["run_name"]


def new_run_name(cfg: Config) -> str:
    lam = f"{cfg.train.lambda_mask:.3g}".replace(".", "p")
    return f"axialnet-{cfg.model.geometry.name}-{cfg.train.grid_variant}-lambda{lam}-{uuid.uuid4().hex[:8]}"


def resolve_run(storage: str, resume: bool, run_name: str | None) -> tuple[str, dict[str, Any] | None]:
    """(run name, its record when resuming); clear errors for a missing or clashing run."""
    if resume:
        name = run_name or latest_run_name(storage)
        if name is None:
            raise FileNotFoundError(f"--resume: no earlier training run in {storage}; start one without --resume")
        record = read_run_record(storage, name)
        if record is None:
            raise FileNotFoundError(
                f"--resume: run {name!r} is not in {storage} (runs there: see `ls {storage}`)"
            )
        return name, record
    name = run_name or None
    if name is not None and read_run_record(storage, name) is not None:
        raise FileExistsError(
            f"run {name!r} already exists in {storage}: pass --resume to continue it, or choose another --run-name"
        )
    return name, None


# ------------------------------------------------------------------------------ the driver
def check_inputs(cfg: Config) -> tuple[int, int]:
    """(n_train, n_valid) after checking splits, labels and grid masks exist; clear errors otherwise."""
    store = Store(cfg.store_path)
    if not store.exists():
        raise FileNotFoundError(f"no store at {cfg.store_path}: pass --store or run `ctplatform ingest` first")
    counts = []
    for role in ("train", "valid"):
        split = cfg.train.splits[role]
        index = load_split(store, split, cfg.train.qc_exclude_flags)
        if len(index) == 0:
            raise ValueError(
                f"no labelled scans with status ok in split {split!r} of {store.root}; "
                f"check manifest.parquet's split column or set train.splits.{role}"
            )
        check_volumes(store, index.ids)
        check_grid_masks(store, cfg.model.geometry, cfg.train.grid_variant, index.ids)
        counts.append(len(index))
    return counts[0], counts[1]


def qc_counts(cfg: Config) -> dict[str, int]:
    """Per training split: scans left out for partition QC, and kept scans on fallback masks (counts only)."""
    store = Store(cfg.store_path)
    out: dict[str, int] = {}
    for role in ("train", "valid"):
        index = load_split(store, cfg.train.splits[role], cfg.train.qc_exclude_flags)
        out[f"n_{role}_qc_excluded"] = index.qc_excluded
        out[f"n_{role}_qc_fallback"] = index.qc_fallback
    return out


def log_qc_counts(cfg: Config, run_id: str) -> dict[str, int]:
    """Record in the run which QC flags exclude scans and how many were excluded / on fallback masks."""
    from mlflow import MlflowClient

    counts = qc_counts(cfg)
    client = MlflowClient()
    client.log_param(run_id, "qc_exclude_flags", ",".join(cfg.train.qc_exclude_flags) or "none")
    for k, v in counts.items():
        client.log_param(run_id, k, v)
    log.info("partition QC: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def run_training(
    cfg: Config,
    *,
    resume: bool = False,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> TrainingOutcome:
    """Train one AxialNet on the configured store; returns where the run and its results are.

    Raises TrainingDivergedError when the loss became NaN or exploded (the MLflow run is FAILED and
    the last good checkpoint is kept), and Ray's TrainingFailedError when workers kept failing.
    """
    n_train, n_valid = check_inputs(cfg)
    storage = storage_root(cfg)
    name, record = resolve_run(storage, resume, run_name)
    tracking_uri = cfg.tracking_uri
    if record is not None:
        mlflow_run_id = record["mlflow_run_id"]
        experiment_id = record.get("experiment_id")
        setup_mlflow(cfg)
        log.info("resuming run %s (MLflow run %s)", name, mlflow_run_id)
    else:
        name = name or new_run_name(cfg)
        mlflow_run_id, experiment_id = start_mlflow_run(
            cfg, name, storage, parent_run_id=parent_run_id, n_train=n_train, n_valid=n_valid
        )
        log_qc_counts(cfg, mlflow_run_id)
    rundir.remove(storage, name, rundir.OUTCOME)  # only this attempt's outcome counts
    init_ray(cfg)
    trainer = build_trainer(cfg, run_name=name, mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri, storage_path=storage)
    try:
        result = trainer.fit()
    except BaseException as e:
        finish_mlflow_run(mlflow_run_id, "FAILED" if not isinstance(e, KeyboardInterrupt) else "KILLED", type(e).__name__)
        raise
    reported = rundir.read_json(storage, name, rundir.OUTCOME) or {}
    metrics = dict(reported.get("metrics") or result.metrics or {})
    status = str(reported.get("status") or metrics.get("status", "unknown"))
    checkpoint_path = result.checkpoint.path if result.checkpoint is not None else None
    outcome = TrainingOutcome(
        name, storage, status, metrics, checkpoint_path, mlflow_run_id, experiment_id, tracking_uri
    )
    if status == "diverged":
        reason = str(reported.get("stop_reason", "non-finite loss"))
        finish_mlflow_run(mlflow_run_id, "FAILED", f"diverged: {reason}")
        raise TrainingDivergedError(
            f"training stopped: {reason}. The last good checkpoint is kept at {checkpoint_path or '(none yet)'}; "
            "lower train.lr, check the inputs, or resume from that checkpoint with --resume"
        )
    log_receptive_field(cfg, mlflow_run_id)
    finish_mlflow_run(mlflow_run_id, "FINISHED", status)
    return outcome


def log_receptive_field(cfg: Config, mlflow_run_id: str) -> None:
    """Log the trained model's receptive-field diagnostic (model/receptive_field.py) on one validation
    scan: rf_own_block_mass_{mean,min,max} beside rf_own_block_mass_uniform. Never fails the run."""
    import mlflow

    from ctplatform.model.checkpoint import load_from_run
    from ctplatform.model.dataset import StoreDataset, load_split
    from ctplatform.model.receptive_field import own_block_gradient_mass
    from ctplatform.store import Store

    try:
        model, run_cfg = load_from_run(mlflow_run_id, cfg.tracking_uri)
        index = load_split(Store(cfg.store_path), cfg.train.splits["valid"])
        if not len(index):
            return
        x = StoreDataset.from_config(run_cfg, index, augment=False, preprocess="loader")[0]["x"][None].float()
        report = own_block_gradient_mass(model, x)
        client = mlflow.MlflowClient(cfg.tracking_uri)
        for k, v in report.as_metrics().items():
            if v == v:  # not NaN
                client.log_metric(mlflow_run_id, k, v)
    except Exception as e:  # a diagnostic: the trained model stays usable without it
        log.warning("receptive-field diagnostic not logged: %s: %s", type(e).__name__, e)
