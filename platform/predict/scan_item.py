"""One scan through predict, step by step (pure functions, no Ray): read -> model -> outputs.

    item = prepare(row, cfg)              # CPU: read, orient, resample, crop (int16) + geometry
    result = infer(model, item, cfg)      # model replica: probabilities, slice scores, HiResCAM
    status = write_scan(item, result, ctx, out_dir)   # CPU: maps on the input grid, PNG, atomic folder

The job (job.py) maps these over many scans with Ray Data; the benchmark times them one by one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.config import Config
from ctplatform.scans.scan import Scan, ScanError

#: Files of one scan's output folder.
PROBABILITIES = "probabilities.json"
SLICE_SCORES = "slice_scores.csv"
MAPS = "maps"
SUMMARY_PNG = "summary.png"


def scan_from_store(store_root: str, volume_id: str) -> Scan:
    """A stored volume as a Scan (its own grid is the 'original': maps are written on it)."""
    from ctplatform.store import Store

    arr = Store(store_root).volume(volume_id)
    attrs = dict(arr.attrs)
    hu = np.asarray(arr[...], dtype=np.float32)
    affine = np.asarray(attrs["affine"], dtype=np.float64)
    spacing = tuple(float(s) for s in attrs["spacing_mm"])
    return Scan(hu=hu, spacing_mm=spacing, source_format="store", original_shape=hu.shape,
                original_orientation="IPL", original_spacing_mm=spacing, affine=affine)


def read_row(row: dict, cfg: Config) -> Scan:
    """The scan a work row names: a file or series (scans.readers) or a stored volume."""
    from ctplatform.scans.readers import ctrate_metadata_row, read_scan

    if row.get("store"):
        return scan_from_store(row["store"], row["volume_id"])
    fmt = row.get("format") or None
    metadata: Any = None
    if fmt == "ctrate":
        metadata = ctrate_metadata_row(row["path"], row.get("metadata") or cfg.ingest.ctrate_metadata)
    return read_scan(row["path"], fmt, metadata)


def prepare(row: dict, cfg: Config) -> dict[str, Any]:
    """Read and preprocess one scan: {volume_id, error, crop int16 [Z, Y, X], geometry (JSON), seconds}.

    Never raises for a bad scan: `error` says why (geometry and file structure only, no header values).
    """
    from ctplatform.model.packaged import preprocess_scan
    from ctplatform.predict.maps import original_affine

    start = time.perf_counter()
    shape = tuple(cfg.model.geometry.input_shape)
    try:
        if row.get("error"):
            raise ScanError(row["error"])
        scan = read_row(row, cfg)
        crop, stored_affine, stored_shape = preprocess_scan(scan, cfg)
        geometry = {
            "stored_shape": list(stored_shape),
            "stored_affine": stored_affine.tolist(),
            "original_shape": [int(n) for n in scan.original_shape],
            "original_affine": original_affine(scan.affine, scan.original_orientation, scan.original_shape).tolist(),
            "source_format": scan.source_format,
        }
        return {"volume_id": row["volume_id"], "error": "", "crop": crop,
                "geometry": json.dumps(geometry), "read_seconds": time.perf_counter() - start}
    except Exception as e:  # a bad scan is flagged and the run goes on
        if isinstance(e, ScanError):
            error = str(e)
        elif isinstance(e, MemoryError):
            error = "out of memory while reading; raise predict.memory_per_task_gb"
        else:  # DICOM library messages may quote header values: only the type leaves the task
            error = f"unexpected error ({type(e).__name__}); please report it with the file's format"
        return {"volume_id": row["volume_id"], "error": error, "crop": np.zeros(shape, np.int16),
                "geometry": "{}", "read_seconds": time.perf_counter() - start}


def infer(model: Any, crop: np.ndarray, cfg: Config, device: Any = None, slice_chunk: int | None = None,
          amp: bool = True) -> dict[str, np.ndarray]:
    """{logits [80], slice_scores [80, H], hirescam [80, H, D1, D2]} of one preprocessed crop."""
    import torch

    from ctplatform.model.packaged import model_input, run_model

    x = torch.from_numpy(np.ascontiguousarray(model_input(crop, cfg)))[None]
    if device is not None:
        x = x.to(device)
    logits, c, maps = run_model(model, x, slice_chunk, amp)
    return {"logits": logits[0], "slice_scores": c[0], "hirescam": maps[0]}


def chosen_labels(prob: np.ndarray, thresholds: np.ndarray, min_maps: int, max_maps: int) -> list[int]:
    """Label indices whose maps are written: above threshold (and the top `min_maps`), highest first."""
    order = [int(i) for i in np.argsort(-prob, kind="stable")]
    above = [i for i in order if prob[i] >= thresholds[i]]
    top = order[:min_maps]
    picked = [i for i in order if i in set(above) | set(top)]
    return picked[:max_maps]


def write_scan(item: dict, result: dict, ctx: dict, out_dir: str | Path) -> dict[str, Any]:
    """Write one scan's folder atomically (temp folder, then rename); returns its table row.

    ctx: labels, thresholds, input_shape, spacing_mm, min_maps, max_maps, png (see job.write_context).
    A folder already finished by an earlier attempt is kept as it is (a retried task changes nothing).
    """
    from ctplatform.model.metrics import normalize_attention
    from ctplatform.model.operating_points import sigmoid
    from ctplatform.predict.maps import map_on_original, write_map_nifti

    start = time.perf_counter()
    vid = item["volume_id"]
    scans = Path(out_dir) / "scans"
    final = scans / vid
    labels = list(ctx["labels"])
    prob = sigmoid(result["logits"])
    thresholds = np.asarray(ctx["thresholds"], dtype=np.float64)
    geo = json.loads(item["geometry"])
    picked = chosen_labels(prob, thresholds, ctx["min_maps"], ctx["max_maps"])
    tmp = scans / f".tmp-{vid}-{uuid.uuid4().hex[:8]}"
    (tmp / MAPS).mkdir(parents=True)
    try:
        record = {
            "volume_id": vid,
            "source_format": geo.get("source_format", ""),
            "probabilities": {lab: float(p) for lab, p in zip(labels, prob)},
            "above_threshold": [labels[i] for i in range(len(labels)) if prob[i] >= thresholds[i]],
            "maps": [f"{MAPS}/{labels[i]}.nii.gz" for i in picked],
            "original_shape": geo["original_shape"],
        }
        c = np.asarray(result["slice_scores"], dtype=np.float32)  # [80, H]
        header = "slice_group," + ",".join(labels)
        rows = np.column_stack([np.arange(c.shape[1]), c.T])
        np.savetxt(tmp / SLICE_SCORES, rows, delimiter=",", header=header, comments="", fmt=["%d"] + ["%.6g"] * len(labels))
        grid_maps = normalize_attention(np.asarray(result["hirescam"])[picked]) if picked else []
        orig_maps = []
        for i, gm in zip(picked, grid_maps):
            m = map_on_original(gm, tuple(ctx["input_shape"]), tuple(geo["stored_shape"]),
                                np.asarray(geo["stored_affine"]), np.asarray(geo["original_affine"]),
                                tuple(geo["original_shape"]))
            write_map_nifti(tmp / MAPS / f"{labels[i]}.nii.gz", m, geo["original_affine"])
            orig_maps.append(m)
        if ctx.get("png", True):
            from ctplatform.predict.summary import draw_summary

            draw_summary(tmp / SUMMARY_PNG, vid, item["crop"], prob, thresholds, labels, c,
                         picked, list(grid_maps), tuple(ctx["input_shape"]), tuple(ctx["spacing_mm"]))
        (tmp / PROBABILITIES).write_text(json.dumps(record, indent=1))
        try:
            os.rename(tmp, final)  # atomic: the folder appears complete or not at all
        except OSError:
            if not (final / PROBABILITIES).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return table_row(vid, "ok", "", prob, labels, geo.get("source_format", ""), len(picked),
                     time.perf_counter() - start)


def table_row(vid: str, status: str, error: str, prob: np.ndarray | None, labels: list[str],
              source_format: str = "", n_maps: int = 0, seconds: float = 0.0) -> dict[str, Any]:
    """One row of the run's predictions table."""
    row: dict[str, Any] = {"volume_id": vid, "status": status, "error": error, "source_format": source_format,
                           "n_maps": n_maps, "write_seconds": seconds}
    for k, lab in enumerate(labels):
        row[lab] = float(prob[k]) if prob is not None else float("nan")
    return row


def finished_row(folder: Path, labels: list[str]) -> dict[str, Any] | None:
    """The table row of a scan finished by an earlier run (None when its folder is incomplete)."""
    try:
        rec = json.loads((folder / PROBABILITIES).read_text())
    except (OSError, ValueError):
        return None
    prob = np.array([rec["probabilities"][lab] for lab in labels])
    return table_row(rec["volume_id"], "ok", "", prob, labels, rec.get("source_format", ""), len(rec.get("maps", [])))
