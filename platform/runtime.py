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
    """Connect to the configured cluster, or start a local Ray when none is configured."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        # The dashboard serves Ray's state API, which Ray Train V2 polls to clean up after a dead
        # controller; it binds to this machine only.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
    )


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
