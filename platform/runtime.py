"""Where a stage runs: Ray (local or cluster), MLflow tracking, logging.

Embedded default: with no address configured and no RAY_ADDRESS, a stage starts a local Ray on
this machine (dashboard on 127.0.0.1 only). Under `ray job submit`, RAY_ADDRESS is set by the job
supervisor and the same command joins the cluster.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctplatform.config import Config
from ctplatform.tracking import set_tracking_uri

log = logging.getLogger("ctplatform")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def init_ray(cfg: Config) -> None:
    """Connect to the configured cluster, or start a local Ray when none is configured.

    A local Ray is this process's own, on loopback: its node IP is 127.0.0.1 (so the dashboard
    agent's metrics endpoint binds to loopback, not 0.0.0.0) and its GCS address is known before it
    starts, so every worker and actor (Ray Train's PlacementGroupCleaner among them), this process
    and its children get it as RAY_ADDRESS. Without that, Ray's state API looks for "the" local
    Ray and fails with "Found multiple active Ray instances" when another Ray runs on the machine.
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address and address != _own_local_address:  # our own local Ray from an earlier init: gone now
        # The cluster's workers and actors get its address too (as a local Ray's do, below): Ray
        # Train's PlacementGroupCleaner on a node that also runs other Rays otherwise fails to find it.
        env = {"env_vars": {"RAY_ADDRESS": address}} if "://" not in address and address != "auto" else None
        try:
            ray.init(address=address, log_to_driver=True, runtime_env=env)
        except ValueError:  # the job's own runtime_env sets RAY_ADDRESS: keep it
            ray.init(address=address, log_to_driver=True)
        return
    _init_local_ray(cfg)


#: The GCS address of the local Ray this process started last (RAY_ADDRESS points at it).
_own_local_address: str | None = None


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_local_ray(cfg: Config) -> None:
    global _own_local_address
    import ray
    from ray._private import ray_constants

    gcs_address = f"127.0.0.1:{_free_loopback_port()}"
    saved_port = os.environ.get(ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE)
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE] = gcs_address.rsplit(":", 1)[1]
    # Ray replaces a loopback node IP by the machine's address unless it runs single-node
    # (ENABLE_RAY_CLUSTER false); this Ray never takes other nodes.
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ.pop("RAY_ADDRESS", None)
    try:
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus,
            _node_ip_address="127.0.0.1",
            # The dashboard serves Ray's state API, which Ray Train V2 polls to clean up after a dead
            # controller; it binds to this machine only.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env={"env_vars": {"RAY_ADDRESS": gcs_address}},
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        if saved_port is None:
            os.environ.pop(ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE] = saved_port
    os.environ["RAY_ADDRESS"] = gcs_address
    _own_local_address = gcs_address


def setup_mlflow(cfg: Config) -> str:
    """Point MLflow at the configured tracking URI and experiment; returns the experiment id.

    A local SQLite backend keeps its artifacts beside it in <workdir>/mlartifacts.
    """
    import mlflow

    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        mlflow.set_experiment(cfg.mlflow.experiment)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    exp_id = mlflow.create_experiment(
        cfg.mlflow.experiment, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    )
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


#: MLflow 3's UI opens an experiment on its GenAI "Traces" view unless the experiment says it holds
#: model-training runs (the UI reads this tag; values as in its bundle: custom_model_development).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


# --- the shared per-volume Ray Data job ------------------------------------------------------------


@dataclass(frozen=True)
class TaskResources:
    """What one per-volume task asks Ray for, and how many run at once.

    `max_in_flight`: tasks at once (None: as many as the resources allow); with a callable class as
    `fn`, the size of its actor pool (each actor builds the class once, e.g. loads a model, then maps
    many volumes). `max_retries`: retries of a task whose worker died (None keeps Ray Data's default,
    which retries a task that kills its worker without end).
    """

    num_cpus: float = 1.0
    memory_bytes: float | None = None
    num_gpus: float | None = None
    max_in_flight: int | None = None
    max_retries: int | None = None


Row = dict[str, Any]


def map_volumes(
    rows: Sequence[Row],
    fn: Callable[..., Row] | type,
    *,
    resources: TaskResources,
    failed_row: Callable[[Row], Row],
    fn_kwargs: Mapping[str, Any] | None = None,
    fn_constructor_kwargs: Mapping[str, Any] | None = None,
    on_rows: Callable[[list[Row]], None] | None = None,
    every: int = 100,
    seconds: float = 60.0,
    key: str = "volume_id",
) -> list[Row]:
    """Map `fn` over `rows` with Ray Data, one volume per task; returns one result row per input row.

    The pattern of every per-volume stage (ingest, partition, predict): a row is a volume's id and
    paths, never its array; `fn(row, **fn_kwargs)` reads, computes and writes its output to the store
    itself, and returns a small status row holding `key`. Each row is its own block, so a worker that
    dies (out of memory, a crash in a decoder) loses only its own volume: its input row comes back
    as `failed_row(row)`. While the job runs, `on_rows` receives the new rows every `every` rows or
    `seconds` seconds, so a killed driver keeps the rows it had (the caller writes the whole result
    at the end; the last partial batch is not passed to `on_rows`).

    `fn` may be a callable class: Ray then builds it once per actor (`fn_constructor_kwargs`) in a
    pool of `resources.max_in_flight` actors. Result rows come back as plain dicts, in arrival order
    followed by the failed rows; Arrow's numpy arrays are turned back into lists. Ray must be
    initialised (`init_ray`). Ray Data may retry a task: `fn`'s writes must be idempotent.
    """
    # cli imports this module for `ctplatform --help`: Ray and numpy load only when a job runs
    import numpy as np
    import ray

    if not rows:
        return []
    is_class = isinstance(fn, type)
    compute = (
        ray.data.ActorPoolStrategy(size=resources.max_in_flight or 1)
        if is_class
        else ray.data.TaskPoolStrategy(size=resources.max_in_flight)
    )
    options: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.memory_bytes is not None:
        options["memory"] = resources.memory_bytes
    if resources.num_gpus is not None:
        options["num_gpus"] = resources.num_gpus
    if is_class:
        options["fn_constructor_kwargs"] = dict(fn_constructor_kwargs or {})
    if resources.max_retries is not None:
        options["max_retries"] = resources.max_retries
    ctx = ray.data.DataContext.get_current()
    previous = ctx.max_errored_blocks
    ctx.max_errored_blocks = len(rows)  # a dead task fails its own block, not the job
    results: list[Row] = []
    try:
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for max_retries yet (ray_remote_args is deprecated
            # for removal in 2.64); without it a volume that kills its worker is retried forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ray.data.from_items(list(rows), override_num_blocks=len(rows)).map(
                fn, fn_kwargs=dict(fn_kwargs or {}), compute=compute, **options
            )
        pending: list[Row] = []
        last = time.monotonic()
        for out in ds.iter_rows():
            out = {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in out.items()}
            results.append(out)
            pending.append(out)
            if on_rows is not None and (len(pending) >= every or time.monotonic() - last > seconds):
                on_rows(pending)
                pending, last = [], time.monotonic()
    finally:
        ctx.max_errored_blocks = previous
    returned = {r[key] for r in results}
    results += [failed_row(r) for r in rows if r[key] not in returned]
    return results
