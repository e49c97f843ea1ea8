"""The ingest job: `ingest_one` (one scan, no Ray) and `run_ingest` (Ray Data over all scans).

Rows travel through Ray as ids and paths; each task holds the volume's lease, reads, preprocesses,
writes and verifies its own Zarr array, records its manifest row in the store (an object of its
own) and returns the row. The driver folds the records into manifest.parquet as rows arrive (every
`MANIFEST_EVERY` rows and at the end); readers fold pending records in too, so a job killed at any
instant loses no finished volume, and a re-run skips every verified volume whose source sha256 and
settings match.

Memory per task (measured with the POPI series, 141 x 512 x 512 -> 353 x 625 x 625 at 0.8 mm:
peak 0.57 GB above the interpreter): the source as float32 (4 B/voxel; 6 B/voxel while DICOM slices
are converted), the int16 result (2 B/output voxel), float32 slabs of a few MB, and about 0.1 GB of
Zarr chunk buffers while writing; about 3 GB for a 512 x 512 x 700 series at 0.8 mm. Each task
requests `ingest.memory_per_task_gb` (default 4) from Ray, so Ray never runs more tasks on a node
than its memory holds, and a scan whose estimate exceeds the budget is refused before resampling.

Exit status (`exit_status`): 0 when every scan is ok, or when some failed but the failed fraction is
at most `ingest.fail_fraction` and at least one scan is ok; 1 otherwise (in particular when every
scan failed). The default fail_fraction 1.0 fails a run only when nothing could be ingested, so a
few bad scans among 36,000 do not fail a `ray job submit` run; their reasons are in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctplatform.config import Config, IngestConfig
from ctplatform.scans.dicom import series_files
from ctplatform.scans.discover import discover
from ctplatform.scans.preprocess import to_store
from ctplatform.scans.pseudonym import PSEUDONYMISED_SOURCE, load_key, scrub
from ctplatform.scans.readers import ctrate_metadata_row, detect_format, read_scan
from ctplatform.scans.scan import ScanError
from ctplatform.scans.sizing import ReadLimits
from ctplatform.ingest.truth import prepare_truth, store_truth, truth_source
from ctplatform.runtime import TaskResources, init_ray, map_volumes
from ctplatform.store import MANIFEST_COLUMNS, IncompleteItemError, LeaseHeldError, LeaseLostError, Store, manifest_row

log = logging.getLogger("ctplatform.ingest")

MANIFEST_EVERY = 200
#: Retries of a task whose worker died (ingest_one itself never raises for bad input).
TASK_RETRIES = 2
MANIFEST_SECONDS = 60.0
_BUF = 1 << 20


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)


def source_sha256(path: str | Path, fmt: str, extra: dict[str, Any] | None = None) -> str:
    """sha256 of what the volume is made from: the file, every file of a DICOM series (with its
    name), and for CT-RATE the metadata values used."""
    path = Path(path)
    h = hashlib.sha256()
    if fmt == "dicom":
        for f in series_files(path):
            h.update(f.name.encode() + b"\0")
            _hash_file(h, f)
    else:
        _hash_file(h, path)
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _status(row: dict, **fields: Any) -> dict:
    """The manifest row of a discovered scan: failed unless `fields` say otherwise.

    A pseudonymised row (`private` set) never shows its path: its source is `(pseudonymised)` and
    the names below the input root are scrubbed from its error."""
    private = row.get("private") or ""
    if private and fields.get("error"):
        fields["error"] = scrub(fields["error"], row["path"], private)
    # A pseudonymised row's path holds the names the pseudonym hides.
    source = PSEUDONYMISED_SOURCE if private else row["path"]
    base = {"volume_id": row["volume_id"], "source": source, "format": row.get("format") or "",
            "split": row.get("split") or ""}
    return manifest_row(**{**base, **fields})


def _settings_match(attrs: Any, cfg: IngestConfig) -> bool:
    return (
        np.allclose(attrs.get("spacing_mm", []), cfg.spacing_mm)
        and list(attrs.get("hu_range", [])) == list(cfg.hu_range)
        and attrs.get("interpolation") == cfg.interpolation
    )


def _geometry_fields(attrs: Any, shape: tuple[int, ...]) -> dict:
    return {
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in attrs.get("spacing_mm", [])],
        "original_shape": [int(n) for n in attrs.get("original_shape", [])],
        "original_spacing": [float(s) for s in attrs.get("original_spacing_mm", [])],
        "original_orientation": str(attrs.get("original_orientation", "")),
    }


def ingest_one(row: dict, store_root: str, ingest_cfg_dict: dict, overwrite: bool = False) -> dict:
    """Ingest one scan into the store and return its manifest row; never raises for bad input.

    Skips (status ok, skipped True) when a finished volume made from the same source sha256 with the
    same spacing/HU range/interpolation exists, unless `overwrite`. The whole of it runs under the
    volume's one-writer lease, and the row is recorded in the store (`Store.write_record`) before
    the lease is released, so the manifest always describes the array; a second job ingesting the
    same id meanwhile gets a failed row naming the holder and records nothing.
    """
    start = time.perf_counter()
    store = Store(store_root)
    try:
        with store.lease(store.volume_path(row["volume_id"])):
            out = _ingest_one(row, store, ingest_cfg_dict, overwrite)
            store.write_record("manifest", out)
            return out
    except (LeaseHeldError, LeaseLostError) as e:
        return _status(row, error=str(e), seconds=time.perf_counter() - start)
    except ValueError as e:  # an invalid id (discovery marks those; a direct call may not)
        return _status(row, error=str(e), seconds=time.perf_counter() - start)
    except OSError as e:  # the lease could not be taken: the store is not a writable folder
        return _status(row, error=_os_error(e), seconds=time.perf_counter() - start)


def _os_error(e: OSError) -> str:
    return f"cannot read or write {e.filename or 'a file'}: {e.strerror or type(e).__name__}"


def _ingest_one(row: dict, store: Store, ingest_cfg_dict: dict, overwrite: bool) -> dict:
    start = time.perf_counter()
    fmt = row.get("format") or ""
    try:
        if row.get("error"):
            return _status(row, error=row["error"])
        cfg = IngestConfig.model_validate(ingest_cfg_dict)
        path = Path(row["path"])
        if not path.exists():
            raise ScanError(f"{path} does not exist")
        fmt = fmt or detect_format(path)
        metadata: Any = None
        if fmt == "ctrate":
            metadata = ctrate_metadata_row(path, row.get("metadata") or cfg.ctrate_metadata)
        sha = source_sha256(path, fmt, metadata)
        truth = truth_source(row)
        if not overwrite:
            try:
                arr = store.volume(row["volume_id"])
                if (
                    arr.attrs.get("source_sha256") == sha
                    and _settings_match(arr.attrs, cfg)
                    and store.has(store.volume_path(row["volume_id"]))  # verified, not just flagged
                ):
                    # The volume is current; its truth may be new (a store from before truth was stored).
                    if truth is not None:
                        store_truth(store, row["volume_id"], truth, arr.shape, dict(arr.attrs), cfg.chunk_slices)
                    else:
                        store.remove_truth(row["volume_id"])
                    return _status(
                        row,
                        format=fmt,
                        status="ok",
                        sha256=sha,
                        skipped=True,
                        seconds=time.perf_counter() - start,
                        **_geometry_fields(arr.attrs, arr.shape),
                    )
            except IncompleteItemError:
                pass  # absent or half-written by a killed run: (re)do it
        scan = read_scan(path, fmt, metadata, ReadLimits.from_config(cfg))
        hu16, attrs = to_store(scan, cfg)
        del scan
        attrs["source_sha256"] = sha
        # Truth is carried (and checked) before anything is written: a mask that does not fit fails the row.
        truth_item = prepare_truth(truth, hu16.shape, attrs) if truth is not None else None
        store.write_volume(row["volume_id"], hu16, attrs, chunk_slices=cfg.chunk_slices, codec=cfg.codec)
        if truth_item is not None:
            store.write_truth(row["volume_id"], *truth_item, chunk_slices=cfg.chunk_slices)
        else:
            store.remove_truth(row["volume_id"])
        return _status(
            row,
            format=fmt,
            status="ok",
            sha256=sha,
            seconds=time.perf_counter() - start,
            **_geometry_fields(attrs, hu16.shape),
        )
    except (LeaseHeldError, LeaseLostError):
        raise  # another job owns the item now: this one records nothing
    except ScanError as e:
        error = str(e)
    except MemoryError:
        error = "out of memory while ingesting; raise ingest.memory_per_task_gb or use a coarser spacing"
    except PermissionError as e:
        error = f"permission denied: {e.filename or row['path']}; fix its permissions and re-run"
    except OSError as e:  # the store or the source is not where or what it should be
        error = _os_error(e)
    except Exception as e:  # a bug or an unforeseen file problem: the job must go on
        # DICOM library messages may quote header values: only the exception type leaves the task.
        detail = type(e).__name__ if fmt == "dicom" else f"{type(e).__name__}: {str(e)[:300]}"
        error = f"unexpected error ({detail}); please report it with the file's format"
    log.debug("ingest %s failed", row.get("volume_id"))
    return _status(row, format=fmt, error=error, seconds=time.perf_counter() - start)


def exit_status(results: pd.DataFrame, fail_fraction: float) -> int:
    """0 or 1 by the exit policy in the module docstring."""
    n = len(results)
    if n == 0:
        return 1
    failed = int((results["status"] != "ok").sum())
    if failed == 0:
        return 0
    if failed == n or failed / n > fail_fraction:
        return 1
    return 0


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _record_unless_owned(store: Store, row: dict) -> None:
    """Record a row the driver made (its task died), unless another job is writing that volume."""
    try:
        with store.lease(store.volume_path(row["volume_id"])):
            store.write_record("manifest", row)
    except LeaseHeldError:
        pass


def _check_memory_request(request: float) -> None:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("Resources", {}).get("memory", 0.0) for n in nodes), default=0.0)
    if largest and request > largest:
        raise ValueError(
            f"ingest.memory_per_task_gb={request / 1e9:.1f} exceeds the memory of the largest Ray node "
            f"({largest / 1e9:.1f} GB): no task could ever be scheduled; lower it"
        )


def run_ingest(input_path: str | Path, cfg: Config, overwrite: bool = False) -> pd.DataFrame:
    """Ingest every scan found at `input_path` into `cfg.store_path`; returns this run's rows.

    manifest.parquet receives every row (upsert by volume_id).
    """
    rows = discover(input_path, load_key(cfg.ingest.pseudonymise_key, cfg.store_path))
    store = Store(cfg.store_path)
    store.group  # create the store once here, not concurrently in the tasks
    if not rows:
        log.warning("no scans found at %s", input_path)
        return _frame([])
    ingest_dict = cfg.ingest.model_dump(mode="json")
    results = [ingest_one(r, store.root, ingest_dict, overwrite) for r in rows if r["error"]]
    todo = [r for r in rows if not r["error"]]
    log.info("ingest: %d scans found (%d refused at discovery) -> %s", len(rows), len(results), store.root)
    if todo:
        init_ray(cfg)
        request = cfg.ingest.memory_per_task_gb * 1e9
        _check_memory_request(request)
        def died(r: dict) -> dict:
            # Recorded here too: a re-run and readers see it even if this driver is killed next.
            row = _status(r, error="the ingest task died (out of memory, or a crash in a decoder); see the Ray "
                          "logs, raise ingest.memory_per_task_gb if needed, and re-run")
            _record_unless_owned(store, row)
            return row

        results += map_volumes(
            todo,
            ingest_one,
            fn_kwargs={"store_root": store.root, "ingest_cfg_dict": ingest_dict, "overwrite": overwrite},
            resources=TaskResources(
                num_cpus=cfg.ingest.cpus_per_task,
                memory_bytes=request,
                max_in_flight=cfg.ingest.max_tasks_in_flight,
                max_retries=TASK_RETRIES,
            ),
            # Tasks recorded their rows already; this only folds the records into the file.
            on_rows=lambda rows: store.sync_table("manifest"),
            every=MANIFEST_EVERY,
            seconds=MANIFEST_SECONDS,
            failed_row=died,
        )
    df = _frame(results)
    store.sync_table("manifest")
    return df.sort_values("volume_id", kind="stable").reset_index(drop=True)
