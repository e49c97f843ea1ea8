"""True lesion masks of phantom cohorts on the model's feature grid (filled in with the phantom's format)."""

from __future__ import annotations

from pathlib import Path


def find_truth_root(configured: str | None, store_root: str) -> str | None:
    """The folder of truth masks: the configured one (must exist), else none."""
    if configured:
        if not Path(configured).is_dir():
            raise FileNotFoundError(f"eval.truth_dir {configured} is not a folder")
        return configured
    return None
