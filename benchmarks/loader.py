"""Loader benchmark: CPU seconds a loader process spends per paper-geometry volume, current path vs
the model-ready path (decode only the crop into a shared slot; augment and normalise on the device).

Volumes are real CT: the POPI DICOM series ingested at 0.8 mm (353 x 625 x 625), stored as is and
as a paper-shaped volume (its central 420 x 420, z completed to 405 with its last 52 slices
mirrored: what a RAD-ChestCT scan of that size looks like to the loader), each with Blosc-zstd
(DESIGN default) and Blosc-lz4 (ingest.codec: lz4). All figures come from the same run.

  (the stored POPI shape only with --as-stored)
  1. where a volume's time goes, stage by stage, in one process (CPU seconds, mean over items and
     their augmentation draws);
  2. loader CPU seconds per volume in one DataLoader worker process (its own CPU clock), both paths;
  3. the device-side work of the new path, here on the CPU (on a GPU it is a few ms).

    python benchmarks/loader.py [--items 8] [--workdir DIR]

Writes benchmarks/results/loader.md and loader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import Report, machine

REPO = Path(__file__).resolve().parents[1]
POPI = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared")) / "data" / "ct" / "popi_dicom"
PAPER = (405, 420, 420)
#: Sustained H100 bf16 training throughput assumed by issue 18 (~40% of dense peak): ~75 volumes/s.
H100_VOLUMES_PER_S = 75.0
#: Volume codecs compared (store.VOLUME_CODECS): zstd is the store's default, the baseline.
CODECS = ("zstd", "lz4", "lz4hc")
#: CPU seconds to write one volume (encode + verify), per (volume, codec): filled by build_stores.
WRITE_CPU_S: dict[tuple[str, str], float] = {}


def popi_volumes() -> dict[str, np.ndarray]:
    from ctplatform.config import IngestConfig
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan

    hu, _ = to_store(read_scan(POPI), IngestConfig())
    z, y, x = hu.shape
    y0, x0 = (y - PAPER[1]) // 2, (x - PAPER[2]) // 2
    centre = hu[:, y0 : y0 + PAPER[1], x0 : x0 + PAPER[2]]
    extra = PAPER[0] - z
    paper = np.ascontiguousarray(np.concatenate([centre, centre[z - extra :][::-1]]) if extra > 0 else centre[: PAPER[0]])
    return {"paper-shaped 405x420x420": paper, f"POPI as stored {z}x{y}x{x}": hu}


def selected(vols: dict[str, np.ndarray], as_stored: bool) -> dict[str, np.ndarray]:
    return vols if as_stored else dict(list(vols.items())[:1])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def codec_costs(stores: dict, name: str, raw_bytes: int) -> dict[str, dict[str, float]]:
    """Per codec: MB on disk of one volume, compression ratio, CPU seconds to write it."""
    out = {}
    for codec in CODECS:
        root, ids = stores[(name, codec)]
        mb = dir_bytes(Path(root) / "data.zarr" / "volumes" / ids[0]) / 1e6
        out[codec] = {"mb_per_volume": mb, "ratio": raw_bytes / 1e6 / mb,
                      "write_cpu_s": WRITE_CPU_S.get((name, codec), float("nan"))}
    return out


def build_stores(root: Path, vols: dict[str, np.ndarray], copies: int) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(volume, codec) -> (store root, ids); each store also gets the grid masks and labels the Dataset needs."""
    from ctplatform.geometry import ModelGeometry
    from ctplatform.store import Store

    geom = ModelGeometry(PAPER)
    out = {}
    for v, (name, hu) in enumerate(vols.items()):
        for codec in CODECS:
            store = Store(str(root / f"v{v}-{codec}"))
            ids = [f"ct{k}" for k in range(copies)]
            for vid in ids:
                if store.has_volume(vid) and store.volume(vid).shape == hu.shape:
                    continue  # a kept --workdir: built by an earlier run
                t0 = time.process_time()
                store.write_volume(vid, hu, {}, chunk_slices=24, codec=codec)
                WRITE_CPU_S[(name, codec)] = time.process_time() - t0
                store.write_grid(geom.name, "nearest", vid, np.ones((3, *geom.grid), bool), {})
            out[(name, codec)] = (store.root, ids)
    return out


def _dataset(root: str, ids: list[str], items: int, preprocess: str):
    from ctplatform.geometry import ModelGeometry
    from ctplatform.model.dataset import SplitIndex, StoreDataset

    reps = [ids[i % len(ids)] for i in range(items)]
    index = SplitIndex(reps, np.zeros((items, 80), np.float32), np.zeros((items, 80), np.uint8))
    return StoreDataset(root, index, ModelGeometry(PAPER), "nearest", augment=True, seed=0, preprocess=preprocess)


def stage_breakdown(root: str, ids: list[str], items: int) -> dict[str, dict[str, float]]:
    """CPU seconds per stage (mean over items), current path and model-ready path, one process."""
    from ctplatform.geometry import center_crop_or_pad, crop_or_pad_slices
    from ctplatform.model.augment import apply_to_grid, apply_to_volume
    from ctplatform.model.chunk_read import WindowReader
    from ctplatform.model.dataset import normalize_hu, to_slice_groups
    from ctplatform.model.device_input import model_batch, read_crop_into

    ds = _dataset(root, ids, items, "loader")
    cur: dict[str, list[float]] = {k: [] for k in ("decode", "crop/pad", "augment", "clip+normalise", "copy")}
    new: dict[str, list[float]] = {k: [] for k in ("decode (crop only, into slot)", "pad fill", "device: augment+clip+normalise")}
    reader = WindowReader()
    slot = np.zeros(PAPER, np.int16)
    clock = time.process_time
    for i in range(-1, items):  # item -1: warm-up (arrays opened, buffers touched), not counted
        vol = ds.store.volume(ds.index.ids[max(i, 0)])
        aug = ds.augmentation(1, max(i, 0))
        grid = ds.read_grid(ds.index.ids[max(i, 0)])
        src = tuple(slice(a, b) for a, b, _, _ in crop_or_pad_slices(tuple(vol.shape), PAPER))
        t0 = clock()
        block = np.asarray(vol[src])
        t1 = clock()
        hu = center_crop_or_pad(block, PAPER, fill=block.min())
        t2 = clock()
        hu = apply_to_volume(hu, aug)
        g = apply_to_grid(grid, aug)
        t3 = clock()
        x = to_slice_groups(normalize_hu(hu, ds.hu_clip, ds.center))
        t4 = clock()
        # The DataLoader's collate copies each item into a fresh batch tensor (in shared memory
        # when the item comes from a loader process).
        shared = torch.empty(0, dtype=torch.float32).set_(torch.UntypedStorage._new_shared(x.size * 4))
        torch.stack([torch.from_numpy(x)], out=shared.reshape(1, *x.shape))
        t5 = clock()
        if i >= 0:
            for k, v in zip(cur, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                cur[k].append(v)
        del block, hu, x, shared

        parts = crop_or_pad_slices(tuple(vol.shape), PAPER)
        window = slot[tuple(slice(c, d) for _, _, c, d in parts)]
        t0 = clock()
        reader.read(vol, src, window)
        t1 = clock()
        read_crop_into(reader, vol, slot)  # whole call; the pad fill is its remainder
        t2 = clock()
        flip = -1 if aug.flip_axis is None else aug.flip_axis
        xb, _ = model_batch([torch.from_numpy(slot)], torch.from_numpy(g)[None], torch.tensor([[flip, aug.rot90_k]]), ds.hu_clip, ds.center, 3)
        t3 = clock()
        if i >= 0:
            new["decode (crop only, into slot)"].append(t1 - t0)
            new["pad fill"].append(max(0.0, (t2 - t1) - (t1 - t0)))
            new["device: augment+clip+normalise"].append(t3 - t2)
        np.testing.assert_array_equal(xb[0].numpy(), x_ref(ds, vol, aug))  # same tensor as the current path
    return {"current": {k: statistics.mean(v) for k, v in cur.items()}, "new": {k: statistics.mean(v) for k, v in new.items()}}


def x_ref(ds, vol, aug) -> np.ndarray:
    from ctplatform.model.augment import apply_to_volume
    from ctplatform.model.dataset import normalize_hu, read_crop, to_slice_groups

    return to_slice_groups(normalize_hu(apply_to_volume(read_crop(vol, PAPER), aug), ds.hu_clip, ds.center))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process_cpu_per_volume(root: str, ids: list[str], items: int, preprocess: str) -> float:
    """CPU seconds per volume of iterating the DataLoader in the training process (workers 0: the
    setting of train_step.py's 0.31-0.36 s); in device mode without the device work."""
    from ctplatform.model.dataset import EpochSampler, make_loader

    ds = _dataset(root, ids, items + 1, preprocess)
    it = iter(make_loader(ds, EpochSampler(items + 1, 0, 1, seed=0), 1, workers=0))
    next(it)  # warm-up: store and arrays opened
    t0 = time.process_time()
    n = sum(1 for _ in it)
    return (time.process_time() - t0) / n


def worker_cpu_per_volume(root: str, ids: list[str], items: int, preprocess: str) -> dict[str, float]:
    """One DataLoader worker process: its own CPU seconds per volume, wall seconds per volume, and
    the training process's CPU per volume (DeviceBatches: on this CPU it does the device work).

    Two epochs through a persistent worker: the first absorbs process start-up, imports and
    opening the store; the second is measured from the idle worker's CPU clock."""
    from ctplatform.model.dataset import EpochSampler, make_loader
    from ctplatform.model.device_input import DeviceBatches

    ds = _dataset(root, ids, items, preprocess)
    sampler = EpochSampler(items, 0, 1, seed=0)
    loader = make_loader(ds, sampler, 1, workers=1)
    feed = DeviceBatches(loader, torch.device("cpu"))
    for _ in feed:  # epoch 0: warm-up
        pass
    pid = loader._iterator._workers[0].pid
    sampler.set_epoch(1)
    c0, w0, m0 = _cpu_seconds(pid), time.perf_counter(), time.process_time()
    n = sum(1 for _ in feed)
    c1, w1, m1 = _cpu_seconds(pid), time.perf_counter(), time.process_time()
    del feed, loader
    return {"loader_cpu_s": (c1 - c0) / n, "wall_s": (w1 - w0) / n, "consumer_cpu_s": (m1 - m0) / n, "items": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=8, help="volumes timed per measurement")
    ap.add_argument("--as-stored", action="store_true", help="also the POPI volume as stored (625 x 625 planes: the crop decodes whole planes)")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one loader process is one core; the consumer's device work counted apart
    out = Report()
    result: dict = {"machine": machine(f"torch {torch.__version__}"), "geometry": list(PAPER), "volumes": {}}

    out("# loader benchmark: CPU seconds per paper-geometry volume, current path vs model-ready path")
    out()
    out(f"Machine: {result['machine']}")
    out()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        vols = selected(popi_volumes(), args.as_stored)
        stores = build_stores(work, vols, copies=2)
        out(f"(stores built in {time.perf_counter() - t0:.0f} s: real CT {list(vols)}, {', '.join(CODECS)}, 2 ids each)")
        out()
        for name in vols:
            r: dict = {}
            out(f"## {name}")
            out()
            out("### 0. What each codec costs to keep and to write (ingest pays the write once)")
            out()
            out("| codec | MB on disk per volume | ratio | write CPU s per volume (encode + verify) |")
            out("|---|---:|---:|---:|")
            for codec, d in codec_costs(stores, name, vols[name].nbytes).items():
                r[f"disk_{codec}"] = d
                out(f"| {codec} | {d['mb_per_volume']:.1f} | {d['ratio']:.2f} | {d['write_cpu_s']:.2f} |")
            out()
            out("### 1. Where a volume's CPU time goes (one process, mean over items and augmentation draws)")
            out()
            out("| path | codec | CPU seconds per stage |")
            out("|---|---|---|")
            for codec in CODECS:
                root, ids = stores[(name, codec)]
                b = stage_breakdown(root, ids, args.items)
                r[f"stages_{codec}"] = b
                for path, stages in b.items():
                    total = sum(v for k, v in stages.items() if not k.startswith("device"))
                    desc = ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
                    out(f"| {path} | {codec} | {desc}; loader total **{total:.3f}** |")
            out()
            out("### 2. Loader CPU seconds per volume in one DataLoader worker process (its own CPU clock)")
            out()
            out(
                "| path | codec | in the training process (workers 0) CPU s / volume | **one loader process CPU s / volume** "
                "| wall s / volume | training-process CPU s / volume (device work, on this CPU) | loader cores per H100 at 75 vol/s |"
            )
            out("|---|---|---|---|---|---|---|")
            for preprocess, codec in [("loader", "zstd"), ("loader", "lz4")] + [("device", c) for c in CODECS]:
                root, ids = stores[(name, codec)]
                w = worker_cpu_per_volume(root, ids, args.items, preprocess)
                w["in_process_cpu_s"] = in_process_cpu_per_volume(root, ids, args.items, preprocess)
                r[f"worker_{preprocess}_{codec}"] = w
                label = "current (preprocess: loader)" if preprocess == "loader" else "new (preprocess: device)"
                out(
                    f"| {label} | {codec} | {w['in_process_cpu_s']:.3f} | **{w['loader_cpu_s']:.3f}** | {w['wall_s']:.3f} | "
                    f"{w['consumer_cpu_s']:.3f} | {w['loader_cpu_s'] * H100_VOLUMES_PER_S:.1f} |"
                )
            out()
            result["volumes"][name] = r
        out(
            "Loader cores per H100 = loader CPU s per volume x 75 volumes/s (issue 18: 5.34 TFLOP a step at ~40% of "
            "the H100's dense bf16 peak). Device work (copy, flip/rot90, clip, normalise) runs on the GPU in "
            "production; the consumer column shows it on this CPU."
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "loader.md").write_text(out.text())
    (results / "loader.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {results / 'loader.md'} and loader.json")


if __name__ == "__main__":
    main()
