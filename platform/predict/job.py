"""The predict job: Ray Data batch inference over many scans, resumable, one folder per scan.

    rows (ids and paths) --map: read + preprocess (CPU tasks)--> int16 crops
        --map_batches: model replicas (ActorPoolStrategy; a GPU each where the cluster has GPUs,
          bf16 autocast; CPU otherwise)--> probabilities, slice scores, HiResCAM grids
        --map: maps on the input grid, PNG, atomic folder per scan (CPU tasks)--> small status rows

The model input travels as an int16 crop (half of float32; normalised on the replica) so the replicas
do only model work. A scan whose folder OUT/scans/<id>/ exists is finished (it appears by an atomic
rename) and is skipped by a re-run, so a killed job resumes; a bad scan becomes a `failed` row with
its reason and the rest go on. The driver writes OUT/predictions.parquet and .csv (every scan of the
run, finished ones included) and OUT/run.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctplatform.config import Config

log = logging.getLogger("ctplatform.predict")

TASK_RETRIES = 2
RUN_RECORD = "run.json"
MODEL_DIR = ".model"


# ----------------------------------------------------------------------------- inputs
def is_store(path: Path) -> bool:
    return path.is_dir() and (path / "data.zarr").is_dir() and (path / "manifest.parquet").is_file()


def find_inputs(input_path: str | Path) -> list[dict]:
    """Work rows `{volume_id, path, format, metadata, error, store}` for a scan, folder, listing or store."""
    from ctplatform.scans.discover import discover

    path = Path(input_path)
    if is_store(path):
        from ctplatform.store import Store

        store = Store(str(path))
        manifest = store.read_table("manifest")
        have = set(store.volume_ids())
        rows = []
        for vid in sorted(manifest.loc[manifest["status"] == "ok", "volume_id"].astype(str)):
            error = "" if vid in have else "volume listed in the manifest but not (completely) in the store"
            rows.append({"volume_id": vid, "path": "", "format": "store", "metadata": "", "error": error,
                         "store": str(path)})
        return rows
    return [{**r, "store": ""} for r in discover(path)]


# ----------------------------------------------------------------------------- the model
def model_fingerprint(model_dir: Path) -> str:
    """sha256 of the weights file: one output folder holds one model's predictions."""
    h = hashlib.sha256()
    with open(model_dir / "artifacts" / "model_state.pt", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_context(bundle: Any, cfg: Config) -> dict[str, Any]:
    """What a write task needs from the model (small, JSON-able)."""
    th = np.where(np.isfinite(bundle.thresholds), bundle.thresholds, cfg.predict.default_threshold)
    return {
        "labels": bundle.labels,
        "thresholds": [float(t) for t in th],
        "input_shape": list(bundle.cfg.model.geometry.input_shape),
        "spacing_mm": list(bundle.cfg.ingest.spacing_mm),
        "min_maps": cfg.predict.min_maps,
        "max_maps": cfg.predict.max_maps,
        "png": cfg.predict.png,
    }


def run_config(model_cfg: Config, cfg: Config) -> Config:
    """The model's configuration with this run's input checks: the geometry and preprocessing are the
    model's (spacing, HU range, interpolation, crop, normalisation); the plausibility limits and the
    memory budget are this run's."""
    m = model_cfg.ingest
    ingest = cfg.ingest.model_copy(update={
        "spacing_mm": m.spacing_mm, "hu_range": m.hu_range, "interpolation": m.interpolation,
        "memory_per_task_gb": cfg.predict.memory_per_task_gb,
    })
    return model_cfg.model_copy(update={"ingest": ingest})


class Replica:
    """One model replica (a Ray actor of the pool): loads the model once, scores batches of crops."""

    def __init__(self, model_dir: str, slice_chunk: int | None, amp: bool) -> None:
        import torch

        from ctplatform.model.packaged import load_bundle_from_dir

        self.bundle = load_bundle_from_dir(model_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bundle.model.to(self.device)
        self.slice_chunk, self.amp = slice_chunk, amp

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ctplatform.predict.scan_item import infer

        b = self.bundle
        h, d1, d2 = b.cfg.model.geometry.grid
        n = len(batch["volume_id"])
        logits = np.zeros((n, b.model.n_labels), np.float32)
        scores = np.zeros((n, b.model.n_labels, h), np.float32)
        cams = np.zeros((n, b.model.n_labels, h, d1, d2), np.float32)
        seconds = np.zeros(n, np.float64)
        for k in range(n):
            if batch["error"][k]:
                continue
            start = time.perf_counter()
            out = infer(b.model, batch["crop"][k], b.cfg, self.device, self.slice_chunk, self.amp)
            logits[k], scores[k], cams[k] = out["logits"], out["slice_scores"], out["hirescam"]
            seconds[k] = time.perf_counter() - start
        return {**batch, "logits": logits, "slice_scores": scores, "hirescam": cams, "model_seconds": seconds}


# ----------------------------------------------------------------------------- per-row steps
def prepare_row(row: dict, cfg_json: dict) -> dict:
    from ctplatform.predict.scan_item import prepare

    return prepare(row, Config.model_validate(cfg_json))


def write_row(row: dict, ctx: dict, out_dir: str) -> dict:
    """The write step of one row: its folder, or a failed table row (never raises for a bad scan)."""
    from ctplatform.predict.scan_item import table_row, write_scan

    labels = ctx["labels"]
    if row["error"]:
        out = table_row(row["volume_id"], "failed", str(row["error"]), None, labels)
    else:
        result = {k: np.asarray(row[k]) for k in ("logits", "slice_scores", "hirescam")}
        try:
            out = write_scan(row, result, ctx, out_dir)
        except Exception as e:  # a write problem of one scan must not end the run
            out = table_row(row["volume_id"], "failed", f"writing outputs failed ({type(e).__name__}: {str(e)[:200]})",
                            None, labels)
    out["read_seconds"] = float(row.get("read_seconds", 0.0))
    out["model_seconds"] = float(row.get("model_seconds", 0.0))
    return out


def map_over_scans(todo: list[dict], cfg: Config, run_cfg_json: dict, model_dir: Path, ctx: dict, out_dir: Path) -> list[dict]:
    """The Ray Data part: read (tasks) -> model (actor pool) -> write (tasks); returns the status rows.

    Kept apart from the rest so it can move onto a shared per-volume helper in runtime.py.
    """
    import ray

    from ctplatform.runtime import init_ray

    init_ray(cfg)
    p = cfg.predict
    gpus = p.gpus_per_replica
    if gpus == "auto":
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    ctx_data = ray.data.DataContext.get_current()
    previous = ctx_data.max_errored_blocks
    ctx_data.max_errored_blocks = len(todo)  # one scan per block: a dead task loses only its scan
    results: list[dict] = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ray.data.from_items(todo, override_num_blocks=len(todo))
            ds = ds.map(prepare_row, fn_kwargs={"cfg_json": run_cfg_json}, num_cpus=p.cpus_per_task,
                        memory=p.memory_per_task_gb * 1e9, max_retries=TASK_RETRIES)
            ds = ds.map_batches(
                Replica,
                fn_constructor_kwargs={"model_dir": str(model_dir), "slice_chunk": p.slice_chunk, "amp": p.amp},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=p.replicas),
                num_cpus=p.cpus_per_replica,
                num_gpus=gpus,
            )
            ds = ds.map(write_row, fn_kwargs={"ctx": ctx, "out_dir": str(out_dir)}, num_cpus=p.cpus_per_task,
                        max_retries=TASK_RETRIES)
        for row in ds.iter_rows():
            results.append(dict(row))
            log.info("predict: %s %s (%d/%d)", row["volume_id"], row["status"], len(results), len(todo))
    finally:
        ctx_data.max_errored_blocks = previous
    return results


# ----------------------------------------------------------------------------- the run
def run_predict(model_ref: str, input_path: str | Path, out_dir: str | Path, cfg: Config) -> pd.DataFrame:
    """Predict every scan at `input_path` with the model `model_ref` into `out_dir`; returns the run's table."""
    from ctplatform.model.packaged import download_model, load_bundle_from_dir, model_uri
    from ctplatform.predict.scan_item import finished_row, table_row

    out = Path(out_dir).resolve()
    (out / "scans").mkdir(parents=True, exist_ok=True)
    uri = model_uri(model_ref)
    model_dir = download_model(model_ref, out / MODEL_DIR, cfg.tracking_uri)
    bundle = load_bundle_from_dir(model_dir)
    fingerprint = model_fingerprint(model_dir)
    record_path = out / RUN_RECORD
    if record_path.is_file():
        earlier = json.loads(record_path.read_text())
        if earlier.get("model_sha256") != fingerprint:
            raise ValueError(f"{out} holds predictions of another model ({earlier.get('model_uri')}); choose another --out")
    record = {"model_uri": uri, "model_sha256": fingerprint, "threshold_sources": sorted(set(bundle.threshold_sources)),
              "training_run_id": bundle.card.get("training_run_id"), "input_shape": bundle.card.get("input")}
    record_path.write_text(json.dumps(record, indent=1))

    rows = find_inputs(input_path)
    ctx = write_context(bundle, cfg)
    labels = ctx["labels"]
    results: list[dict] = []
    todo: list[dict] = []
    for r in rows:
        done = finished_row(out / "scans" / r["volume_id"], labels)
        if done is not None:
            results.append({**done, "skipped": True})
        elif r["error"]:
            results.append(table_row(r["volume_id"], "failed", r["error"], None, labels))
        else:
            todo.append(r)
    log.info("predict: %d scans at %s (%d finished earlier, %d refused) -> %s",
             len(rows), input_path, sum(1 for r in results if r.get("skipped")),
             sum(1 for r in results if r["status"] == "failed"), out)
    if todo:
        run_cfg_json = run_config(bundle.cfg, cfg).model_dump(mode="json")
        done_ids = set()
        for r in map_over_scans(todo, cfg, run_cfg_json, model_dir, ctx, out):
            done_ids.add(r["volume_id"])
            results.append(r)
        for r in todo:
            if r["volume_id"] not in done_ids:  # its task died after Ray's retries
                results.append(table_row(r["volume_id"], "failed", "the task died (out of memory, or a crash in a "
                                         "decoder); see the Ray logs and re-run", None, labels))
    table = predictions_table(results, labels)
    write_table(table, out)
    return table


def predictions_table(rows: list[dict], labels: list[str]) -> pd.DataFrame:
    front = ["volume_id", "status", "error", "source_format", "n_maps"]
    df = pd.DataFrame(rows)
    for c in front:
        if c not in df.columns:
            df[c] = ""
    df = df[front + labels].sort_values("volume_id", kind="stable").reset_index(drop=True)
    df["n_maps"] = pd.to_numeric(df["n_maps"], errors="coerce").fillna(0).astype(int)
    return df


def write_table(table: pd.DataFrame, out: Path) -> None:
    """predictions.parquet and predictions.csv, each written to a temp name and renamed (atomic)."""
    for name, write in (("predictions.parquet", lambda p: table.to_parquet(p, index=False)),
                        ("predictions.csv", lambda p: table.to_csv(p, index=False, float_format="%.8g"))):
        tmp = out / f".{name}.tmp"
        write(tmp)
        tmp.replace(out / name)


def exit_status(table: pd.DataFrame, fail_fraction: float) -> int:
    n = len(table)
    failed = int((table["status"] != "ok").sum()) if n else 0
    if n == 0 or failed == n or failed / n > fail_fraction:
        return 1
    return 0
