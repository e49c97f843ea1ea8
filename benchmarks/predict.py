"""Predict benchmark: scans/s per CPU core end to end at the demo geometry, beside the evaluation path.

Both run in this process on one thread (torch.set_num_threads(1): figures are per core), on the
real scans in the shared CT folder, with the same random-weight AxialNet (weights do not change the
cost):
  predict   read (NIfTI / DICOM) + orient + resample + crop  ->  model (logits, slice scores,
            HiResCAM)  ->  maps on the input grid for `--maps` labels + NIfTI + PNG + atomic folder
  eval path the volume already in a Zarr store (ingested beforehand, not timed): crop read from the
            store + the same model call (what `ctplatform evaluate` does per scan before scoring)
It prints JSON: scans/s per core of both, seconds per scan and share of time per step, and the CPU
cores that keep one GPU replica fed, from the measured CPU seconds per scan (read + write) and an
assumed GPU model time per scan (`--gpu-ms`, printed as an assumption).

    python benchmarks/predict.py [--repeats 2] [--maps 3] [--gpu-ms 15] [--out benchmarks/results/predict.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CT = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared")) / "data" / "ct"
SCANS = ["popi_dicom", "popi_thorax_256.nii.gz", "chest_crop_aorta.nii.gz", "chest_crop_mediastinum.nii.gz"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--maps", type=int, default=3, help="maps written per scan (predict.min_maps = max_maps)")
    ap.add_argument("--gpu-ms", type=float, default=15.0,
                    help="assumed model time per scan on one GPU replica at the demo geometry, ms")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "predict.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from ctplatform.config import load_config
    from ctplatform.model.axialnet import AxialNet
    from ctplatform.model.dataset import read_crop
    from ctplatform.model.packaged import ModelBundle, model_input, run_model
    from ctplatform.predict.job import run_config, write_context
    from ctplatform.predict.scan_item import infer, prepare, write_scan
    from ctplatform.scans.preprocess import to_store
    from ctplatform.scans.readers import read_scan
    from ctplatform.store import Store

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"predict.min_maps={args.maps}", f"predict.max_maps={args.maps}"])
    torch.manual_seed(0)
    model = AxialNet(cfg.model.geometry).eval()
    bundle = ModelBundle(model, cfg, np.full(80, 0.5), ["fallback"] * 80, {})
    run_cfg = run_config(cfg, cfg)
    ctx = write_context(bundle, cfg)
    scans = [s for s in SCANS if (CT / s).exists()]
    steps: dict[str, list[float]] = {"read_preprocess": [], "model": [], "maps_png_write": []}
    eval_steps: dict[str, list[float]] = {"store_read": [], "model": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "store"))
        for k, name in enumerate(scans):  # the evaluation path's input: ingested once, not timed
            hu16, attrs = to_store(read_scan(CT / name), run_cfg.ingest)
            store.write_volume(f"v{k}", hu16, attrs, chunk_slices=cfg.ingest.chunk_slices)
        for rep in range(args.repeats):
            for k, name in enumerate(scans):
                row = {"volume_id": f"r{rep}_{k}", "path": str(CT / name), "format": "", "error": "", "store": ""}
                t0 = time.perf_counter()
                item = prepare(row, run_cfg)
                t1 = time.perf_counter()
                result = infer(model, item["crop"], run_cfg, slice_chunk=cfg.predict.slice_chunk)
                t2 = time.perf_counter()
                write_scan(item, result, ctx, Path(tmp) / "out")
                t3 = time.perf_counter()
                assert not item["error"], item["error"]
                steps["read_preprocess"].append(t1 - t0)
                steps["model"].append(t2 - t1)
                steps["maps_png_write"].append(t3 - t2)
                # the evaluation path on the same scan, interleaved so machine load hurts both alike
                t0 = time.perf_counter()
                crop = read_crop(store.volume(f"v{k}"), cfg.model.geometry.input_shape)
                t1 = time.perf_counter()
                x = torch.from_numpy(np.ascontiguousarray(model_input(crop, cfg)))[None]
                run_model(model, x, cfg.predict.slice_chunk)
                t2 = time.perf_counter()
                eval_steps["store_read"].append(t1 - t0)
                eval_steps["model"].append(t2 - t1)

    def summary(parts: dict[str, list[float]]) -> dict:
        per_scan = {k: statistics.fmean(v) for k, v in parts.items()}
        total = sum(per_scan.values())
        return {"scans_per_s_per_core": 1.0 / total, "seconds_per_scan": total,
                "step_seconds": per_scan, "step_share": {k: v / total for k, v in per_scan.items()}}

    pred, ev = summary(steps), summary(eval_steps)
    cpu_s = pred["step_seconds"]["read_preprocess"] + pred["step_seconds"]["maps_png_write"]
    out = {
        "geometry": list(cfg.model.geometry.input_shape), "spacing_mm": list(cfg.ingest.spacing_mm),
        "scans": scans, "repeats": args.repeats, "maps_per_scan": args.maps, "threads": 1,
        "predict": pred, "eval_path": ev,
        "predict_vs_eval": pred["scans_per_s_per_core"] / ev["scans_per_s_per_core"],
        "sizing": {"cpu_seconds_per_scan_read_and_write": cpu_s, "assumed_gpu_ms_per_scan": args.gpu_ms,
                   "cpu_cores_per_gpu_replica": cpu_s / (args.gpu_ms / 1000.0)},
    }
    text = json.dumps(out, indent=1)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
