"""Shared fixtures: the real CT scans in ../shared/data/ct and one local Ray for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared"))
CT_DIR = SHARED / "data" / "ct"


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    """Folder of real CT scans; tests that need it skip when it is absent (a clone outside the workplace)."""
    if not CT_DIR.is_dir():
        pytest.skip(f"real CT scans not found at {CT_DIR} (set CTPLATFORM_SHARED to the shared folder)")
    return CT_DIR


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=1_000_000_000,  # rows are ids and paths; arrays never travel through it
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
_MLFLOW_ENV_AT_START = {k: os.environ.get(k) for k in _MLFLOW_ENV}


@pytest.fixture(autouse=True)
def _mlflow_env_restored():
    """After each test, MLflow's environment variables are as the session found them: a direct
    mlflow.set_tracking_uri (in a test) exports the URI, and every later config in the session would
    then log to that test's database, which is removed with its tmp_path once the test passes."""
    yield
    for k, v in _MLFLOW_ENV_AT_START.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
