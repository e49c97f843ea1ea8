"""runtime.map_volumes: the per-volume Ray Data job every per-volume stage runs on."""

from __future__ import annotations

import os

import numpy as np

from ctplatform.runtime import TaskResources, map_volumes


def _square(row: dict, offset: int) -> dict:
    if row["volume_id"] == "dies":
        os._exit(1)  # a worker killed mid-task (the OOM killer, a crash in a decoder)
    n = int(row["volume_id"].removeprefix("v"))
    return {"volume_id": row["volume_id"], "value": n * n + offset, "shape": np.array([n, n])}


class _Scaler:
    """A callable class: built once per actor (as a model would be loaded once)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.pid = os.getpid()

    def __call__(self, row: dict) -> dict:
        return {"volume_id": row["volume_id"], "value": self.factor, "pid": self.pid}


def test_maps_every_row_reports_batches_and_returns_a_row_for_a_dead_task(ray_local):
    rows = [{"volume_id": f"v{i}"} for i in range(5)] + [{"volume_id": "dies"}]
    batches: list[list[dict]] = []
    out = map_volumes(
        rows,
        _square,
        fn_kwargs={"offset": 1},
        resources=TaskResources(num_cpus=1, max_in_flight=2, max_retries=0),
        on_rows=batches.append,
        every=2,
        failed_row=lambda r: {"volume_id": r["volume_id"], "value": -1, "shape": []},
    )
    by_id = {r["volume_id"]: r for r in out}
    assert sorted(by_id) == sorted(r["volume_id"] for r in rows) and len(out) == len(rows)
    assert {i: by_id[f"v{i}"]["value"] for i in range(5)} == {i: i * i + 1 for i in range(5)}
    assert by_id["v3"]["shape"] == [3, 3] and isinstance(by_id["v3"]["shape"], list)
    assert by_id["dies"]["value"] == -1 and out[-1]["volume_id"] == "dies"
    # batches of `every` rows while running; the last partial batch is left to the caller
    assert [len(b) for b in batches] == [2, 2]
    assert all(r in out for b in batches for r in b)


def test_a_callable_class_is_built_once_per_actor(ray_local):
    rows = [{"volume_id": f"v{i}"} for i in range(4)]
    out = map_volumes(
        rows,
        _Scaler,
        fn_constructor_kwargs={"factor": 7},
        resources=TaskResources(num_cpus=1, max_in_flight=1),
        failed_row=lambda r: {"volume_id": r["volume_id"], "value": -1, "pid": -1},
    )
    assert sorted(r["volume_id"] for r in out) == [r["volume_id"] for r in rows]
    assert {r["value"] for r in out} == {7}
    assert len({r["pid"] for r in out}) == 1  # one actor served every volume


def test_no_rows_start_no_job():
    assert map_volumes([], _square, resources=TaskResources(), failed_row=dict) == []


def test_mlflow_experiment_opens_on_training_runs(tmp_path) -> None:
    """MLflow 3's UI shows the GenAI Traces view unless the experiment is tagged as model development."""
    import mlflow

    from ctplatform.config import load_config
    from ctplatform.runtime import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, setup_mlflow

    cfg = load_config(overrides=[f"workdir={tmp_path}", "mlflow.experiment=kind-test"])
    exp_id = setup_mlflow(cfg)
    assert mlflow.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "genai_development")
    assert setup_mlflow(cfg) == exp_id  # an existing experiment is put right too
    assert mlflow.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_second_workdir_in_one_process_logs_to_its_own_store(tmp_path, monkeypatch) -> None:
    """mlflow.set_tracking_uri copies the URI into MLFLOW_TRACKING_URI; read back as the user's
    choice, it sent a second workdir's runs to the first one's store (removed or not)."""
    import mlflow

    from ctplatform.config import load_config
    from ctplatform.runtime import setup_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = (load_config(overrides=[f"workdir={tmp_path / n}"]) for n in ("a", "b"))
    setup_mlflow(a)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert b.tracking_uri != a.tracking_uri and str(tmp_path / "b") in b.tracking_uri
    setup_mlflow(b)
    with mlflow.start_run() as run:
        pass
    assert mlflow.MlflowClient(b.tracking_uri).get_run(run.info.run_id)
    assert (tmp_path / "b" / "mlflow.db").is_file()
    # the user's own choice stays: a config without a tracking_uri follows it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    setup_mlflow(a)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'user.db'}"
    assert b.tracking_uri == os.environ["MLFLOW_TRACKING_URI"]
