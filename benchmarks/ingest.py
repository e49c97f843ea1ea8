"""Ingest benchmark: our pipeline vs the reference (SimpleITK B-spline + np.savez_compressed).

On the real POPI DICOM series (141 x 512 x 512, 0.98 x 0.98 x 2 mm) resampled to 0.8 mm
(353 x 625 x 625, 275 MB as int16), in one run:
  1. seconds per scan and MB/s per core: read + resample + write, ours (separable trilinear, Zarr
     Blosc-zstd) vs the reference (SimpleITK B-spline, np.savez_compressed); both single-threaded
     and fed the same decoded scan reader, so the difference is resampling and storage;
  2. reading one whole volume back: Store.read_volume vs np.load of the .npz; bytes on disk;
  3. Ray scaling: the Ray Data ingest job over several scans with 2 tasks at once vs 1, on 2 CPUs.

    python benchmarks/ingest.py [--scans 6] [--workdir DIR]

Prints the table and writes benchmarks/results/ingest.md with the machine description.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

# Single-threaded codecs and numerics: figures are per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BLOSC_NTHREADS", "1")

import numpy as np  # noqa: E402
from machine_info import dir_bytes, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POPI = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared")) / "data" / "ct" / "popi_dicom"
TARGET = (0.8, 0.8, 0.8)


def ours(store_root: str) -> tuple[float, dict[str, float]]:
    from ctplatform.config import IngestConfig
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan
    from ctplatform.store import Store

    cfg = IngestConfig(spacing_mm=TARGET)
    t0 = time.perf_counter()
    scan = read_scan(POPI)
    t1 = time.perf_counter()
    hu16, attrs = to_store(scan, cfg)
    t2 = time.perf_counter()
    Store(store_root).write_volume("popi", hu16, attrs, chunk_slices=cfg.chunk_slices)
    t3 = time.perf_counter()
    return t3 - t0, {"read": t1 - t0, "resample": t2 - t1, "write": t3 - t2, "shape": hu16.shape}


def reference(npz_path: Path) -> tuple[float, dict[str, float]]:
    """The published preprocessing: B-spline resampling in SimpleITK, clip, int16, savez_compressed."""
    import SimpleITK as sitk

    from ctplatform.ingest.readers import read_scan
    from ctplatform.ingest.resample import resampled_shape

    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    t0 = time.perf_counter()
    scan = read_scan(POPI)
    t1 = time.perf_counter()
    img = sitk.GetImageFromArray(scan.hu)
    img.SetSpacing(tuple(float(s) for s in scan.spacing_mm[::-1]))
    out_size = resampled_shape(scan.hu.shape, scan.spacing_mm, TARGET)[::-1]
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing(TARGET[::-1])
    f.SetSize([int(n) for n in out_size])
    f.SetOutputOrigin(img.GetOrigin())
    f.SetOutputDirection(img.GetDirection())
    f.SetInterpolator(sitk.sitkBSpline)
    f.SetDefaultPixelValue(-1024)
    arr = sitk.GetArrayFromImage(f.Execute(img))
    arr = np.clip(np.rint(arr), -1024, 3071).astype(np.int16)
    t2 = time.perf_counter()
    np.savez_compressed(npz_path, ct=arr)
    t3 = time.perf_counter()
    return t3 - t0, {"read": t1 - t0, "resample": t2 - t1, "write": t3 - t2, "shape": arr.shape}


def read_back(store_root: str, npz_path: Path, repeats: int = 5) -> tuple[float, float]:
    """Fastest of `repeats` whole-volume reads each (the least disturbed by other load), warm cache."""
    from ctplatform.store import Store

    store = Store(store_root)
    zarr_times, npz_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a = store.read_volume("popi")
        zarr_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        with np.load(npz_path) as z:
            b = z["ct"]
        npz_times.append(time.perf_counter() - t)
        assert a.shape == b.shape
    return min(zarr_times), min(npz_times)


def codec_options(store_root: str, npz_seconds: float) -> list[str]:
    """Blosc settings for int16 volumes: bytes and single-thread decode time of the whole volume.

    Informational: the store's codec is fixed by its contract (zstd, bit-shuffle); this shows what a
    change would buy for read-back.
    """
    from numcodecs import Blosc

    from ctplatform.store import Store

    volume = Store(store_root).read_volume("popi")
    chunks = [np.ascontiguousarray(volume[i : i + 24]) for i in range(0, volume.shape[0], 24)]
    rows = ["| Blosc codec | MB on disk | decode s (1 thread) | read-back ratio vs npz |", "|---|---:|---:|---:|"]
    for cname, clevel, shuffle, label in [
        ("zstd", 3, Blosc.BITSHUFFLE, "zstd-3 bit-shuffle (the store's)"),
        ("lz4hc", 5, Blosc.BITSHUFFLE, "lz4hc-5 bit-shuffle"),
        ("lz4", 5, Blosc.SHUFFLE, "lz4-5 byte-shuffle"),
    ]:
        codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffle)
        encoded = [codec.encode(c) for c in chunks]
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for e in encoded:
                codec.decode(e)
            best = min(best, time.perf_counter() - t)
        rows.append(f"| {label} | {sum(map(len, encoded)) / 1e6:.1f} | {best:.3f} | {npz_seconds / best:.1f}x |")
    return rows


def ray_scaling(workdir: Path, scans: int) -> tuple[float, float]:
    import pandas as pd

    from ctplatform.config import load_config
    from ctplatform.ingest.job import run_ingest

    listing = workdir / "listing.csv"
    pd.DataFrame({"volume_id": [f"popi{i}" for i in range(scans)], "path": [str(POPI)] * scans}).to_csv(
        listing, index=False
    )
    times = {}
    for tasks in (1, 2):
        cfg = load_config(
            None,
            [f"store={workdir / f'ray{tasks}'}", "ray.num_cpus=2", f"ingest.max_tasks_in_flight={tasks}"],
        )
        t = time.perf_counter()
        df = run_ingest(listing, cfg, overwrite=True)
        times[tasks] = time.perf_counter() - t
        assert (df["status"] == "ok").all(), df["error"].tolist()
    return times[1], times[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=6, help="scans in the Ray scaling run")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest.md")
    args = parser.parse_args()
    if not POPI.is_dir():
        print(f"POPI DICOM series not found at {POPI} (set CTPLATFORM_SHARED)")
        return 1
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ctp-bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        store_root, npz_path = str(workdir / "store"), workdir / "popi.npz"
        print("ours: read + trilinear resample + Zarr write ...", flush=True)
        t_ours, parts_ours = ours(store_root)
        print("reference: read + SimpleITK B-spline + savez_compressed (about a minute) ...", flush=True)
        t_ref, parts_ref = reference(npz_path)
        mb = int(np.prod(parts_ours["shape"])) * 2 / 1e6
        t_zarr, t_npz = read_back(store_root, npz_path)
        numcodecs.blosc.set_nthreads(os.cpu_count() or 1)  # what a training reader gets by default
        t_zarr_mt, _ = read_back(store_root, npz_path)
        numcodecs.blosc.set_nthreads(1)
        codecs = codec_options(store_root, t_npz)
        bytes_zarr = dir_bytes(workdir / "store" / "data.zarr" / "volumes" / "popi")
        bytes_npz = npz_path.stat().st_size
        print(f"Ray Data job over {args.scans} scans, 1 then 2 tasks at once ...", flush=True)
        t1, t2 = ray_scaling(workdir, args.scans)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    shape = "x".join(str(n) for n in parts_ours["shape"])
    rows = [
        ("seconds per scan (1 core)", f"{t_ours:.2f}", f"{t_ref:.2f}", t_ref / t_ours, ">= 3x faster"),
        ("MB/s per core (int16 output)", f"{mb / t_ours:.0f}", f"{mb / t_ref:.1f}", (mb / t_ours) / (mb / t_ref), ">= 3x"),
        ("  of which resample (s)", f"{parts_ours['resample']:.2f}", f"{parts_ref['resample']:.2f}",
         parts_ref["resample"] / parts_ours["resample"], ""),
        ("  of which write (s)", f"{parts_ours['write']:.2f}", f"{parts_ref['write']:.2f}",
         parts_ref["write"] / parts_ours["write"], ""),
        ("  of which read DICOM (s, same reader)", f"{parts_ours['read']:.2f}", f"{parts_ref['read']:.2f}",
         parts_ref["read"] / parts_ours["read"], ""),
        ("read whole volume back, 1 thread (s)", f"{t_zarr:.3f}", f"{t_npz:.3f}", t_npz / t_zarr, ">= 5x faster"),
        (f"read whole volume back, Blosc {os.cpu_count()} threads (s)", f"{t_zarr_mt:.3f}", f"{t_npz:.3f}",
         t_npz / t_zarr_mt, ">= 5x faster"),
        ("bytes on disk (MB)", f"{bytes_zarr / 1e6:.1f}", f"{bytes_npz / 1e6:.1f}", bytes_npz / bytes_zarr,
         ">= 1x (no larger)"),
        (f"Ray job, {args.scans} scans: 2 tasks vs 1 (s)", f"{t2:.1f}", f"{t1:.1f}", t1 / t2, ">= 1.7x"),
    ]
    header = "| figure | ours | baseline | ratio (baseline/ours) | target |\n|---|---:|---:|---:|---|"
    lines = [header] + [f"| {name} | {a} | {b} | {ratio:.2f}x | {target} |" for name, a, b, ratio, target in rows]
    table = "\n".join(lines)
    notes = (
        f"Scan: POPI DICOM series 141 x 512 x 512 (0.98 x 0.98 x 2.0 mm) -> {shape} at 0.8 mm ({mb:.0f} MB int16).\n"
        "Baselines: the reference pipeline (SimpleITK B-spline resampling, np.savez_compressed) for the\n"
        "per-scan and storage rows, np.load of its .npz for read-back, the same Ray job with 1 task at a\n"
        "time for scaling. Per-scan rows are single-threaded (SimpleITK, Blosc, numpy) and share one DICOM\n"
        "reader. Read-back: fastest of 5 warm reads; np.load (zlib) is single-threaded either way. Ray rows: local Ray with 2 CPUs, each scan read, resampled and written by its task.\n"
    )
    print()
    print(table)
    print()
    print(notes)
    print("\n".join(codecs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Ingest benchmark\n\n"
        f"Machine: {machine()}\n\n"
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python benchmarks/ingest.py --scans {args.scans}` "
        "(the machine was shared with other work: figures are noisy)\n\n"
        f"{table}\n\n{notes}\nCodec options for the volumes (decode only, same volume):\n\n"
        + "\n".join(codecs)
        + "\n"
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
