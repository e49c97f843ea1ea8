"""Small JSON files ctplatform keeps beside Ray Train's checkpoints in `<storage>/<run name>/`.

- `ctplatform_run.json` (driver): the MLflow run id, so `--resume` continues the same MLflow run.
- `ctplatform_outcome.json` (rank 0, end of each attempt): status, stop reason and last metrics.
  Ray Train V2's Result carries only the metrics of the latest checkpoint, and a diverged epoch
  reports none (its weights are not worth keeping), so the outcome travels this way.
The storage path may be local, NFS or an fsspec URL (s3://...).
"""

from __future__ import annotations

import json
from typing import Any

RUN_RECORD = "ctplatform_run.json"
OUTCOME = "ctplatform_outcome.json"


def filesystem(storage: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path, NFS path or URL (s3://...)."""
    import fsspec

    return fsspec.core.url_to_fs(storage)


def read_json(storage: str, run_name: str, name: str) -> dict[str, Any] | None:
    fs, root = filesystem(storage)
    path = f"{root}/{run_name}/{name}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def write_json(storage: str, run_name: str, name: str, data: dict[str, Any]) -> None:
    """Write whole (temporary file, then move) so a reader never sees half a file."""
    fs, root = filesystem(storage)
    fs.makedirs(f"{root}/{run_name}", exist_ok=True)
    tmp = f"{root}/{run_name}/.{name}.tmp"
    with fs.open(tmp, "w") as f:
        json.dump(data, f, default=_jsonable)
    fs.mv(tmp, f"{root}/{run_name}/{name}")


def remove(storage: str, run_name: str, name: str) -> None:
    fs, root = filesystem(storage)
    path = f"{root}/{run_name}/{name}"
    if fs.exists(path):
        fs.rm(path)


def list_records(storage: str) -> list[dict[str, Any]]:
    """The run records of every run in the storage path."""
    fs, root = filesystem(storage)
    out = []
    for path in fs.glob(f"{root}/*/{RUN_RECORD}"):
        with fs.open(path, "r") as f:
            out.append(json.load(f))
    return out


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")
