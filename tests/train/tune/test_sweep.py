"""Ray Tune sweeps end to end on a small store: trials are real Ray Train runs on the session's local
Ray, tracked in MLflow (SQLite); a failing trial is retried then recorded; a killed sweep resumes
without redoing its finished trials."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from ctplatform.train import rundir
from ctplatform.train.tune.sweep import TRAIN_RUNS, run_sweep
from ctplatform.train.tune.trial import TRIAL_RECORD
from tests.conftest import REPO
from tests.train.small_store import SMALL_OVERRIDES, build_small_store, small_config

TINY = ["train.epochs=1", "tune.asha=false", "tune.max_trial_retries=1"]


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_tiny_sweep_leaves_a_parent_run_child_runs_and_the_table_with_the_failed_trial(ray_local, tmp_path: Path) -> None:
    build_small_store(tmp_path / "store", n_train=4, n_valid=2)  # grid masks of 'nearest' only
    cfg = small_config(tmp_path, tmp_path / "store", TINY + ["tune.lambdas=[0, 0.5]", "tune.variants=[nearest, area]"])
    outcome = run_sweep(cfg, name="tiny")

    rows = {(r.grid_variant, r.lambda_mask): r for r in outcome.rows}
    assert set(rows) == {("nearest", 0.0), ("nearest", 0.5), ("area", 0.0), ("area", 0.5)}
    for lam in (0.0, 0.5):
        ok, bad = rows[("nearest", lam)], rows[("area", lam)]
        assert ok.status == "completed" and ok.epochs == 1 and ok.best_epoch == 0 and ok.attempts == 1
        assert 0 <= ok.val_auroc_median <= 1 and 0 <= ok.val_organ_iou <= 1 and math.isfinite(ok.val_class_loss)
        assert Path(ok.checkpoint, "best_model_state.pt").is_file()
        # Missing grid masks: tried once, retried once (tune.max_trial_retries), then listed as failed.
        assert bad.status == "failed" and bad.attempts == 2 and bad.error == "MissingGridMaskError"
        record = rundir.read_json(str(Path(outcome.experiment_path, TRAIN_RUNS)), bad.run_name, TRIAL_RECORD)
        assert "grid/8x2x2/area" in record["error"]  # the message, beside the checkpoints (not in MLflow)
    assert outcome.best is not None and outcome.best.grid_variant == "nearest"

    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ctplatform.stage"] == "tune"
    assert parent.data.params["sweep_lambdas"] == "0,0.5" and parent.data.params["sweep_trials"] == "4"
    assert parent.data.tags["ctplatform.best_run_id"] == outcome.best.mlflow_run_id
    assert parent.data.tags["ctplatform.best_checkpoint"] == outcome.best.checkpoint
    children = _children(client, outcome.experiment_id, outcome.parent_run_id)
    by_id = {c.info.run_id: c for c in children}
    assert set(by_id) == {r.mlflow_run_id for r in outcome.rows}  # one child per trial, failed ones too
    for r in outcome.rows:
        child = by_id[r.mlflow_run_id]
        assert child.data.params["grid_variant"] == r.grid_variant and float(child.data.params["lambda_mask"]) == r.lambda_mask
        assert child.data.tags["ctplatform.trial_status"] == r.status
        if r.status == "completed":
            assert child.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(r.mlflow_run_id, "val_auroc_median")] == [0]
            assert {"checkpoint", "config.yaml"} <= {a.path for a in client.list_artifacts(r.mlflow_run_id)}
        else:
            assert child.info.status == "FAILED" and "MissingGridMaskError" in child.data.tags["ctplatform.stop_reason"]

    # The table on the parent: Table 5 shape (downsampling x dilation by lambda) and every trial.
    root = Path(mlflow.artifacts.download_artifacts(run_id=outcome.parent_run_id, artifact_path="sweep", tracking_uri=outcome.tracking_uri))
    t5 = pd.read_csv(root / "table5_auroc.csv", index_col=[0, 1])
    assert list(t5.index) == [("nearest", "no"), ("area", "no")] and list(t5.columns) == ["lambda=0", "lambda=0.5"]
    assert t5.loc[("area", "no")].tolist() == ["failed", "failed"]
    assert float(t5.loc[("nearest", "no"), "lambda=0"]) == round(rows[("nearest", 0.0)].val_auroc_median, 3)
    trials = pd.read_csv(root / "trials.csv")
    assert sorted(trials["status"]) == ["completed", "completed", "failed", "failed"]
    md = (root / "table.md").read_text()
    assert "## Validation median AUROC" in md and "## Validation OrganIoU" in md and outcome.best.mlflow_run_id in md
    assert (root / "best_config.yaml").is_file()
    assert Path(outcome.experiment_path, "sweep_table.md").read_text() == outcome.markdown


def _trial_records(train_runs: Path) -> dict[str, dict]:
    out = {}
    for d in sorted(train_runs.glob("*")):
        rec = rundir.read_json(str(train_runs), d.name, TRIAL_RECORD)
        if rec is not None:
            out[rec["trial_id"]] = rec
    return out


def _finished_in_tune_state(experiment: Path) -> int:
    """Trials Tune's saved experiment state lists as TERMINATED (what a resume skips)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(experiment))
    except Exception:  # not written yet, or being replaced
        return 0
    return sum(t.status == "TERMINATED" for t in analysis.trials)


def test_killed_sweep_resumes_without_redoing_finished_trials(ray_local, tmp_path: Path) -> None:
    store = build_small_store(tmp_path / "store", n_train=4, n_valid=2)
    extra = ["train.epochs=2", "tune.asha=false", "tune.lambdas=[0, 0.5, 1]", "tune.variants=[nearest]",
             "tune.max_concurrent_trials=1"]
    cfg = small_config(tmp_path, tmp_path / "store", extra)
    experiment = tmp_path / "work" / "tune_results" / "killed"
    args = [sys.executable, "-m", "ctplatform.cli", "tune", "--store", store.root, "--name", "killed"]
    for o in SMALL_OVERRIDES + extra + [f"workdir={cfg.workdir}", f"train.storage_path={tmp_path / 'ray_results'}"]:
        args += ["--set", o]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    with open(tmp_path / "driver.log", "w") as log_file:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 300
            while _finished_in_tune_state(experiment) < 1:
                assert driver.poll() is None, f"the sweep ended (code {driver.returncode}) before a trial finished"
                assert time.monotonic() < end, "timed out waiting for the first finished trial"
                time.sleep(1)
            driver.kill()
            driver.wait(30)
        finally:
            if driver.poll() is None:
                driver.kill()
    before = _trial_records(experiment / TRAIN_RUNS)
    finished_before = {t for t, r in before.items() if r.get("status") == "completed"}
    assert 1 <= len(finished_before) < 3, (tmp_path / "driver.log").read_text()[-3000:]

    outcome = run_sweep(cfg, name="killed", resume=True)
    assert outcome.name == "killed" and len(outcome.rows) == 3
    assert all(r.status == "completed" and r.epochs == 2 for r in outcome.rows)
    after = _trial_records(experiment / TRAIN_RUNS)
    for trial_id in finished_before:  # not run again: one attempt, and each epoch logged once
        assert after[trial_id]["attempts"] == 1
    client = MlflowClient(outcome.tracking_uri)
    for r in outcome.rows:
        steps = [m.step for m in client.get_metric_history(r.mlflow_run_id, "epoch")]
        if r.trial_id in finished_before:
            assert sorted(steps) == [0, 1]
        assert client.get_run(r.mlflow_run_id).info.status == "FINISHED"
    # The same parent run, finished, with every trial nested under it.
    parents = client.search_runs([outcome.experiment_id], filter_string="tags.`ctplatform.sweep` = 'killed' and tags.`ctplatform.stage` = 'tune'")
    assert [p.info.run_id for p in parents] == [outcome.parent_run_id] and parents[0].info.status == "FINISHED"
    assert {c.info.run_id for c in _children(client, outcome.experiment_id, outcome.parent_run_id)} == {r.mlflow_run_id for r in outcome.rows}
