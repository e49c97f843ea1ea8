"""Training honours partition's QC: volumes without lungs are left out, and the run records how many."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctplatform.model.dataset import load_split
from ctplatform.train.trainer import check_inputs, log_qc_counts
from tests.train.small_store import build_small_store, small_config


def _partition(store, flags: dict[str, str]) -> None:
    from ctplatform.partition.qc import FALLBACK_FLAGS

    rows = [
        {"volume_id": v, "status": "ok", "qc_flags": f, "fallback": bool(set(f.split(";")) & FALLBACK_FLAGS)}
        for v, f in flags.items()
    ]
    store.write_table("partition", pd.DataFrame(rows))


def test_no_lungs_volumes_are_excluded_and_counted_in_mlflow(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    store = build_small_store(tmp_path / "store", n_train=4, n_valid=2)
    _partition(store, {"vol000": "no_lungs", "vol001": "left_lung_missing", "vol002": "", "vol003": "partial_fov",
                       "vol004": "", "vol005": "no_lungs;partial_fov"})
    train = load_split(store, "train", ("no_lungs",))
    assert train.ids == ["vol001", "vol002", "vol003"] and train.qc_excluded == 1 and train.qc_fallback == 1
    assert len(train.y) == 3 and len(train.region_bits) == 3
    assert load_split(store, "train").ids == ["vol000", "vol001", "vol002", "vol003"]  # eval keeps every scan

    cfg = small_config(tmp_path, tmp_path / "store", [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert check_inputs(cfg) == (3, 1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)  # restored after the test
    mlflow.set_tracking_uri(cfg.tracking_uri)
    exp = mlflow.set_experiment("qc")
    run = MlflowClient().create_run(exp.experiment_id)
    counts = log_qc_counts(cfg, run.info.run_id)
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert counts == {"n_train_qc_excluded": 1, "n_train_qc_fallback": 1, "n_valid_qc_excluded": 1, "n_valid_qc_fallback": 0}
    assert params["n_train_qc_excluded"] == "1" and params["qc_exclude_flags"] == "no_lungs"
    assert not any(v.startswith("vol") for v in params.values())  # counts, never ids
