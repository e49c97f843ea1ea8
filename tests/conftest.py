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
