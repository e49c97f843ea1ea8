"""Loading a trained model: a run id that does not exist is reported as such."""

from __future__ import annotations

import mlflow
import pytest

from ctplatform.model.checkpoint import RunNotFoundError, load_from_run


def test_a_nonexistent_run_id_is_reported_as_such(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("x")
    with pytest.raises(RunNotFoundError, match="there is no MLflow run 'ffffffffffffffffffffffffffffffff'"):
        load_from_run("f" * 32, tracking_uri=uri)
