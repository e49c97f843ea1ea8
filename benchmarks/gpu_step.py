"""GPU step benchmark: volumes/s per GPU for class-only and mask-loss steps, peak GPU memory, and the
loader processes that keep the GPU fed (loader throughput measured in the same run).

With a GPU: the paper geometry [405, 420, 420], bf16 autocast, channels_last (train.* defaults), the
model-ready input path (preprocess: device, lz4 volumes). Without one it runs the same code on the CPU
at a reduced geometry (default [24, 128, 128], size-preserving custom convs) and says so: those
figures check the code path, they do not size anything.

  1. synthetic-input steps (forward + backward + SGD, batch 1 volume): volumes/s and peak memory,
     class only (lambda 0) and mask loss (lambda 1/3);
  2. the loader: one DataLoader process reading real CT (the POPI scan, cropped to the geometry) from
     a store, its CPU seconds per volume -> loader processes per GPU = ceil(volumes/s x CPU s);
  3. fed steps: the mask-loss step consuming that loader through DeviceBatches, volumes/s.

    python benchmarks/gpu_step.py [--steps 10] [--geometry 24 128 128] [--loader-workers N] [--compile]

Writes benchmarks/results/gpu_step.json and gpu_step.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import machine

REPO = Path(__file__).resolve().parents[1]
POPI = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared")) / "data" / "ct" / "popi_dicom"
PAPER = (405, 420, 420)
CPU_GEOMETRY = (24, 128, 128)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(geom, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    from ctplatform.labels import LOCATION_BITS, label_index

    g = torch.Generator().manual_seed(seed)
    h, d1, d2 = geom.grid
    grid = torch.zeros(1, 3, h, d1, d2, dtype=torch.bool)
    grid[0, 0, :, :, : max(1, d2 // 2)] = True
    grid[0, 1, :, :, d2 // 2 :] = True
    y = torch.zeros(1, 80)
    bits = torch.zeros(1, 80, dtype=torch.uint8)
    for abn, loc in [("nodule", "right_lung"), ("cardiomegaly", "heart")]:
        y[0, label_index(abn, loc)] = 1
        bits[0, label_index(abn, loc)] = LOCATION_BITS[loc]
    x = torch.rand(1, h, 3, *geom.input_shape[1:], generator=g) - 0.449
    return {k: v.to(device) for k, v in {"x": x, "grid": grid, "y": y, "region_bits": bits}.items()}


def make_model(cfg, device: torch.device):
    from ctplatform.model.axialnet import AxialNet
    from ctplatform.train.accel import configure_model

    torch.manual_seed(0)
    model = AxialNet(cfg.model.geometry).to(device)
    configure_model(model, cfg.train, device)
    return model, torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.99)


def step(model, opt, b, cfg, device, lam: float) -> None:
    from ctplatform.model.losses import total_loss
    from ctplatform.train.accel import autocast

    with autocast(device, cfg.train):
        out = model(b["x"], cam=lam > 0)
    terms = total_loss(out.logits, out.hirescam, b["y"], b["region_bits"], b["grid"], lam, cfg.train.mask_loss)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    opt.step()


def bench_synthetic(cfg, device: torch.device, steps: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, lam in (("class_only", 0.0), ("mask_loss", 1 / 3)):
        model, opt = make_model(cfg, device)
        b = synthetic_batch(cfg.model.geometry, device)
        for _ in range(2):  # warm-up (cudnn autotune, compilation)
            step(model, opt, b, cfg, device, lam)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step(model, opt, b, cfg, device, lam)
            _sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[name] = {
            "s_per_volume": med,
            "volumes_per_s": 1 / med,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        del model, opt
    return out


def build_store(root: Path, shape: tuple[int, int, int], copies: int) -> list[str]:
    """The POPI scan (real CT at 0.8 mm) cropped / completed to `shape`, lz4, under `copies` ids."""
    from ctplatform.config import IngestConfig
    from ctplatform.geometry import ModelGeometry, center_crop_or_pad
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan
    from ctplatform.store import Store

    hu, _ = to_store(read_scan(POPI), IngestConfig())
    if hu.shape[0] < shape[0]:  # complete z with mirrored slices (real CT, no padding)
        hu = np.concatenate([hu, hu[hu.shape[0] - (shape[0] - hu.shape[0]) :][::-1]])
    hu = np.ascontiguousarray(center_crop_or_pad(hu, shape))
    geom = ModelGeometry(shape, custom_conv_padding=0 if shape == PAPER else 1)
    store = Store(str(root))
    ids = [f"ct{k}" for k in range(copies)]
    for vid in ids:
        store.write_volume(vid, hu, {}, chunk_slices=24, codec="lz4")
        store.write_grid(geom.name, "nearest", vid, np.ones((3, *geom.grid), bool), {})
    return ids


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loader(cfg, root: Path, ids: list[str], items: int, workers: int):
    from ctplatform.model.dataset import EpochSampler, SplitIndex, StoreDataset, make_loader

    reps = [ids[i % len(ids)] for i in range(items)]
    index = SplitIndex(reps, np.zeros((items, 80), np.float32), np.zeros((items, 80), np.uint8))
    ds = StoreDataset(str(root), index, cfg.model.geometry, "nearest", augment=True, preprocess="device")
    sampler = EpochSampler(items, 0, 1, seed=0)
    return make_loader(ds, sampler, 1, workers), sampler


def bench_loader(cfg, root: Path, ids: list[str], items: int) -> dict[str, float]:
    """One loader process: CPU seconds per volume (second epoch of a persistent worker) and volumes/s."""
    from ctplatform.model.device_input import DeviceBatches

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader, sampler = _loader(cfg, root, ids, items, workers=1)
    feed = DeviceBatches(loader, device)
    for _ in feed:  # epoch 0: start-up
        pass
    pid = loader._iterator._workers[0].pid
    sampler.set_epoch(1)
    c0, t0 = _cpu_seconds(pid), time.perf_counter()
    n = sum(1 for _ in feed)
    _sync(device)
    c1, t1 = _cpu_seconds(pid), time.perf_counter()
    return {"loader_cpu_s_per_volume": (c1 - c0) / n, "one_process_volumes_per_s": n / (t1 - t0)}


def bench_fed(cfg, root: Path, ids: list[str], items: int, workers: int, device: torch.device) -> float:
    """Mask-loss steps fed by `workers` loader processes through DeviceBatches: volumes/s."""
    from ctplatform.model.device_input import DeviceBatches

    model, opt = make_model(cfg, device)
    loader, sampler = _loader(cfg, root, ids, items, workers)
    feed = DeviceBatches(loader, device)
    for b in feed:  # epoch 0: start-up and warm-up steps
        step(model, opt, b, cfg, device, 1 / 3)
    sampler.set_epoch(1)
    _sync(device)
    t0, n = time.perf_counter(), 0
    for b in feed:
        step(model, opt, b, cfg, device, 1 / 3)
        n += 1
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--geometry", type=int, nargs=3, help="input [Z Y X] (default: paper on GPU, 24 128 128 on CPU)")
    ap.add_argument("--loader-items", type=int, default=8, help="volumes per loader measurement")
    ap.add_argument("--loader-workers", type=int, help="loader processes for the fed run (default: the computed need, capped by CPUs)")
    ap.add_argument("--compile", action="store_true", help="train.compile=true")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    from ctplatform.config import load_config

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    shape = tuple(args.geometry) if args.geometry else (PAPER if gpu else CPU_GEOMETRY)
    pad = 0 if shape == PAPER else 1
    overrides = [f"model.input_shape={list(shape)}", f"model.custom_conv_padding={pad}", f"train.compile={str(args.compile).lower()}"]
    cfg = load_config(None, overrides)
    if not gpu:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    note = (
        f"GPU {torch.cuda.get_device_name(device)}, bf16 autocast {cfg.train.amp}, channels_last {cfg.train.channels_last}"
        if gpu
        else f"NO GPU: CPU run at the reduced geometry {list(shape)} (custom_conv_padding 1), float32 - checks the code path, sizes nothing"
    )
    result: dict = {
        "machine": machine(f"torch {torch.__version__}"),
        "device": str(device),
        "gpu": gpu,
        "note": note,
        "geometry": list(shape),
        "grid": list(cfg.model.geometry.grid),
        "compile": args.compile,
    }
    print(note, flush=True)
    result["synthetic"] = bench_synthetic(cfg, device, args.steps)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_gpu_step_"))
    try:
        ids = build_store(work / "store", shape, copies=2)
        loader = bench_loader(cfg, work / "store", ids, args.loader_items)
        result["loader"] = loader
        need = {
            name: math.ceil(r["volumes_per_s"] * loader["loader_cpu_s_per_volume"])
            for name, r in result["synthetic"].items()
        }
        result["loader_processes_to_feed"] = need
        cpus = len(os.sched_getaffinity(0))
        workers = args.loader_workers or max(1, min(max(need.values()), cpus - 1 if cpus > 1 else 1))
        result["fed"] = {"loader_workers": workers, "volumes_per_s": bench_fed(cfg, work / "store", ids, args.loader_items, workers, device)}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# gpu_step benchmark",
        "",
        f"Machine: {result['machine']}",
        "",
        f"**{note}**",
        "",
        f"Geometry {list(shape)}, feature grid {result['grid']}, batch 1 volume, torch.compile {args.compile}.",
        "",
        "| step | volumes/s | s per volume | peak GPU memory GiB | loader processes to feed it |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["synthetic"].items():
        mem = "n/a (CPU)" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.2f}"
        lines.append(f"| {name} | {r['volumes_per_s']:.2f} | {r['s_per_volume']:.3f} | {mem} | {need[name]} |")
    lines += [
        "",
        f"Loader (one process, real CT, lz4, preprocess: device): {loader['loader_cpu_s_per_volume']:.3f} CPU s per volume, "
        f"{loader['one_process_volumes_per_s']:.2f} volumes/s wall. Loader processes to feed = ceil(volumes/s x CPU s per volume).",
        "",
        f"Fed mask-loss steps with {workers} loader process(es) through DeviceBatches: {result['fed']['volumes_per_s']:.2f} volumes/s "
        f"(synthetic input: {result['synthetic']['mask_loss']['volumes_per_s']:.2f}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_step.md").write_text(text)
    (results / "gpu_step.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {results / 'gpu_step.json'}")


if __name__ == "__main__":
    main()
