"""Ray Train end to end on a small store: 2-worker DDP (gloo), MLflow, checkpoints, worker-failure
recovery, kill-and-resume, identical weights across ranks, divergence and early stopping."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from ctplatform.store import Store
from ctplatform.model.checkpoint import load_from_run
from ctplatform.train.trainer import TrainingDivergedError, read_run_record, run_training
from tests.conftest import REPO
from tests.train.small_store import SMALL_OVERRIDES, build_small_store, small_config


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def _registered(run_dir: Path) -> list[dict]:
    """Metrics of the checkpoints Ray Train has registered (its snapshot), oldest first."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return [r["metrics"] for r in snap["checkpoint_results"]]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the training process ended (code {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _train_worker_pids() -> list[int]:
    """Ray Train worker processes of this test session's own local Ray (children of its raylet)."""
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(children.get(raylet, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            title = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith("ray::RayTrainWorker"):
            found.append(pid)
    return sorted(found)


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(run_id, key):
        out.setdefault(m.step, []).append(m.value)
    return out


def test_ddp_run_recovers_resumes_and_logs(ray_local, tmp_path: Path) -> None:
    store = build_small_store(tmp_path / "store", n_train=4, n_valid=2)
    extra = [
        "train.num_workers=2",
        "train.epochs=8",
        "train.early_stopping_patience=100",
        "train.checkpoints_to_keep=20",
        "train.max_failures=1",
    ]
    cfg = small_config(tmp_path, tmp_path / "store", extra)
    run_name = "ddp-test"
    run_dir = tmp_path / "ray_results" / run_name
    args = [sys.executable, "-m", "ctplatform.cli", "train", "--store", store.root, "--run-name", run_name]
    for o in SMALL_OVERRIDES + extra + [f"workdir={cfg.workdir}", f"train.storage_path={tmp_path / 'ray_results'}"]:
        args += ["--set", o]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log_file:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            # 1) a worker dies after the first checkpoint: FailureConfig restarts the group from it
            _wait_for(lambda: len(_registered(run_dir)) >= 1, 240, "the first checkpoint", driver)
            victims = _train_worker_pids()
            assert len(victims) == 2
            os.kill(victims[-1], signal.SIGKILL)
            # 2) the driver is killed after a checkpoint written by the recovered group
            _wait_for(
                lambda: any(r["attempt_start_epoch"] > 0 for r in _registered(run_dir)),
                240,
                "a checkpoint after recovery",
                driver,
            )
            driver.kill()
            driver.wait(30)
        finally:
            if driver.poll() is None:
                driver.kill()
    record = read_run_record(str(tmp_path / "ray_results"), run_name)
    assert record is not None, log_path.read_text()[-3000:]
    _wait_for(lambda: not _train_worker_pids(), 60, "the killed run's workers to exit")

    killed_at = len(_registered(run_dir))
    assert 2 <= killed_at < 8
    # 3) --resume continues the same checkpoints and the same MLflow run
    outcome = run_training(cfg, resume=True, run_name=run_name)
    assert outcome.status == "completed" and outcome.mlflow_run_id == record["mlflow_run_id"]
    m = outcome.metrics
    assert m["epoch"] == 7 and m["attempt_start_epoch"] >= 2
    assert m["weights_rank_spread"] == 0.0  # both ranks hold identical weights after their steps
    assert math.isfinite(m["val_loss"]) and 0 <= m["val_organ_iou"] <= 1 and 0 <= m["val_auroc_median"] <= 1

    mlflow.set_tracking_uri(outcome.tracking_uri)
    client = MlflowClient()
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lambda_mask"] == str(1 / 3) and run.data.params["pretrained"] == "False"
    assert run.data.params["geometry"] == "8x2x2" and run.data.params["mask_loss"] == "published"  # mean_softplus is its old name
    starts = _history(client, run.info.run_id, "attempt_start_epoch")
    assert set(starts) == set(range(8))  # every epoch logged
    assert len({v for vals in starts.values() for v in vals}) >= 3  # fresh, recovered, resumed
    assert all(v == 0.0 for vals in _history(client, run.info.run_id, "weights_rank_spread").values() for v in vals)
    for key in ("train_loss", "train_class_loss", "train_mask_loss", "val_class_loss", "val_mask_loss", "val_auroc_median", "val_organ_iou"):
        assert _history(client, run.info.run_id, key), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoint"} <= artifacts

    # 4) evaluation's entry point rebuilds the best model from the run
    model, logged_cfg = load_from_run(run.info.run_id)
    assert logged_cfg.model.geometry.name == "8x2x2"
    best = torch.load(Path(outcome.checkpoint_path) / "best_model_state.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    logged_models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert any(lm.source_run_id == run.info.run_id and lm.name == "model" for lm in logged_models)


def test_early_stopping_then_divergence_keeps_the_last_good_checkpoint(ray_local, tmp_path: Path) -> None:
    build_small_store(tmp_path / "store", n_train=2, n_valid=1)
    # A learning rate of 0 moves only BatchNorm's running statistics: the validation loss soon stops
    # improving and patience 1 ends the run one epoch after its best.
    still = small_config(tmp_path, tmp_path / "store", ["train.epochs=8", "train.lr=0", "train.early_stopping_patience=1"])
    first = run_training(still, run_name="diverge")
    last = first.metrics["epoch"]
    assert first.status == "early_stopped" and last == first.metrics["best_epoch"] + 1 and last < 7
    good = Path(first.checkpoint_path)
    # Resume with more patience and an absurd learning rate: the loss explodes, the run stops with a
    # clear error and the checkpoint of the last good epoch stays the latest.
    wild = small_config(
        tmp_path, tmp_path / "store", ["train.epochs=8", "train.lr=1e6", "train.early_stopping_patience=10"]
    )
    with pytest.raises(TrainingDivergedError, match="last good checkpoint is kept at .*" + good.name):
        run_training(wild, resume=True, run_name="diverge")
    run_dir = tmp_path / "ray_results" / "diverge"
    assert _checkpoints(run_dir)[-1] == good and _registered(run_dir)[-1]["epoch"] == last
    assert json.loads((good / "train_state.json").read_text())["next_epoch"] == last + 1
    assert all(torch.isfinite(v).all() for v in torch.load(good / "model_state.pt", weights_only=True).values())
    client = MlflowClient(first.tracking_uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FAILED" and run.data.tags["ctplatform.stop_reason"].startswith("diverged")


def test_clear_errors_before_launch(tmp_path: Path) -> None:
    build_small_store(tmp_path / "store", n_train=2, n_valid=1)
    cfg = small_config(tmp_path, tmp_path / "store", ["train.grid_variant=area"])
    with pytest.raises(FileNotFoundError, match="ctplatform partition"):
        run_training(cfg)
    cfg = small_config(tmp_path, tmp_path / "store", ["train.splits={train: train, valid: nowhere, test: test}"])
    with pytest.raises(ValueError, match="split 'nowhere'"):
        run_training(cfg)
    cfg = small_config(tmp_path, tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="no earlier training run"):
        run_training(cfg, resume=True)
    Store(str(tmp_path / "store")).volume("vol001").attrs["complete"] = False  # a killed ingest
    with pytest.raises(FileNotFoundError, match="vol001.*ctplatform ingest"):
        run_training(cfg)
