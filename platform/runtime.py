"""Where a stage runs: Ray (local or cluster), MLflow tracking, logging.

Embedded default: with no address configured and no RAY_ADDRESS, a stage starts a local Ray on
this machine (dashboard on 127.0.0.1 only). Under `ray job submit`, RAY_ADDRESS is set by the job
supervisor and the same command joins the cluster.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ctplatform.config import Config

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
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        mlflow.set_experiment(cfg.mlflow.experiment)
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    exp_id = mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
