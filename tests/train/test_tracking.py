"""MLflow runs of training: a sweep trial whose driver died before its run record was written adopts
the run it left behind instead of leaving a second child under the sweep's parent run."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from ctplatform import tracking
from ctplatform.train import rundir
from ctplatform.train.tracking import start_mlflow_run
from tests.train.small_store import small_config


def test_a_trial_restarted_before_its_run_record_adopts_its_run(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, tmp_path / "store")
    storage = str(tmp_path / "train_runs")
    parent = MlflowClient(cfg.tracking_uri)
    first, experiment_id = start_mlflow_run(cfg, "nearest-lambda0_00001", storage, parent_run_id="p" * 32)
    rundir.remove(storage, "nearest-lambda0_00001", rundir.RUN_RECORD)  # killed before the record landed
    again, _ = start_mlflow_run(cfg, "nearest-lambda0_00001", storage, parent_run_id="p" * 32)
    other, _ = start_mlflow_run(cfg, "nearest-lambda0_00002", storage, parent_run_id="p" * 32)
    assert again == first != other
    assert rundir.read_json(storage, "nearest-lambda0_00001", rundir.RUN_RECORD)["mlflow_run_id"] == first
    children = parent.search_runs([experiment_id], filter_string=f"tags.`{tracking.PARENT_RUN}` = '{'p' * 32}'")
    assert sorted(c.info.run_id for c in children) == sorted([first, other])
    # outside a sweep a run name is not adopted: a new `ctplatform train` run is its own run
    lone, _ = start_mlflow_run(cfg, "nearest-lambda0_00001", str(tmp_path / "elsewhere"))
    assert lone not in (first, other)
