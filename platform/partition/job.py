"""The PARTITION job: Ray Data maps `partition_volume` over every finished volume in the store.

Rows are volume ids; each task reads its volume from the store, writes the organ map and all grid
variants itself and returns the small partition.parquet row, which the driver upserts as rows
arrive (every `TABLE_EVERY` rows or `TABLE_SECONDS`, and at the end). Resume: a volume is skipped
when its organ map and every configured grid variant are finished and partition.parquet has an ok
row for it made with the same method and geometry; `overwrite=True` redoes everything. Ray Data
may retry a task; its writes replace whole items atomically, so a retry is harmless.

Memory per task: the int16 volume (2 B/voxel) plus about 8 B/voxel of masks and 4-slice label
slabs: about 1.5 GB for a 350 x 625 x 625 volume at 0.8 mm (`partition.memory_per_task_gb`).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ctplatform.config import Config
from ctplatform.partition.volume import empty_row, grid_truth_current, is_complete, partition_volume
from ctplatform.runtime import TaskResources, init_ray, map_volumes
from ctplatform.store import Store

log = logging.getLogger("ctplatform.partition")

TABLE_EVERY = 100
TABLE_SECONDS = 60.0


def _task(row: dict[str, Any], store_root: str, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    cfg = Config.model_validate(cfg_dict)
    return partition_volume(Store(store_root), row["volume_id"], cfg)


def _frame(rows: list[dict[str, Any]], cfg: Config) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(empty_row("x", cfg)))


def _died(volume_id: str, cfg: Config) -> dict[str, Any]:
    row = empty_row(volume_id, cfg)
    row["error"] = "the partition task died (out of memory?); raise partition.memory_per_task_gb and re-run"
    return row


def volumes_to_do(store: Store, cfg: Config, overwrite: bool = False) -> tuple[list[str], list[str]]:
    """(to do, already done) among the store's finished volumes (module docstring, resume rule)."""
    ids = store.volume_ids()
    if overwrite:
        return ids, []
    table = store.read_table("partition")
    ok: set[str] = set()
    if table is not None and len(table):
        good = table[
            (table["status"] == "ok")
            & (table["method"] == cfg.partition.method)
            & (table["geometry"] == cfg.model.geometry.name)
        ]
        ok = set(good["volume_id"])
    # Listing each group once is far cheaper than opening 7 arrays per volume.
    finished = set(store.organ_ids())
    for variant in cfg.partition.variants:
        finished &= set(store.grid_ids(cfg.model.geometry.name, variant))
    # Volumes with truth but no current grid truth (e.g. truth added to an older store) are redone.
    finished -= {i for i in store.truth_ids() if i in finished and not grid_truth_current(store, i, cfg.model.geometry)}
    done = [i for i in ids if i in ok and i in finished]
    done_set = set(done)
    return [i for i in ids if i not in done_set], done


def run_partition(cfg: Config, overwrite: bool = False) -> pd.DataFrame:
    """Partition every finished volume of `cfg.store_path`; returns this run's rows (skipped ones excluded)."""
    store = Store(cfg.store_path)
    if not store.exists():
        raise FileNotFoundError(f"no store at {store.root}: run `ctplatform ingest` first")
    todo, done = volumes_to_do(store, cfg, overwrite)
    log.info(
        "partition: %d volumes, %d already done, %d to do (method=%s, geometry=%s)",
        len(todo) + len(done), len(done), len(todo), cfg.partition.method, cfg.model.geometry.name,
    )
    if not todo:
        return _frame([], cfg)
    init_ray(cfg)
    results = map_volumes(
        [{"volume_id": i} for i in todo],
        _task,
        fn_kwargs={"store_root": store.root, "cfg_dict": cfg.model_dump(mode="json")},
        resources=TaskResources(
            num_cpus=cfg.partition.cpus_per_task,
            memory_bytes=cfg.partition.memory_per_task_gb * 1e9,
            max_in_flight=cfg.partition.max_concurrent_tasks,
        ),
        on_rows=lambda rows: store.upsert_table("partition", _frame(rows, cfg)),
        every=TABLE_EVERY,
        seconds=TABLE_SECONDS,
        failed_row=lambda r: _died(r["volume_id"], cfg),
    )
    df = _frame(results, cfg)
    store.upsert_table("partition", df)
    failed = int((df["status"] != "ok").sum())
    fallback = int(df["fallback"].fillna(False).astype(bool).sum())
    log.info("partition: %d ok, %d failed, %d with the heuristic fallback", len(df) - failed, failed, fallback)
    return df.sort_values("volume_id", kind="stable").reset_index(drop=True)


__all__ = ["run_partition", "volumes_to_do", "is_complete"]
