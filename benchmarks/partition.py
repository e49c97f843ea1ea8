"""PARTITION benchmark: lung segmentation, grid masks and the Ray job on a real scan at 0.8 mm.

The POPI DICOM series (141 x 512 x 512, 0.98 x 0.98 x 2 mm) is resampled to 0.8 mm with the ingest
resampler (about 352 x 625 x 625). In one run:
  1. lung segmentation in `reference` mode vs the published per-slice scikit-image algorithm,
     implemented plainly here as the baseline (as in the authors' segmentlungs.py: per-slice
     clear_border, label, regionprops, removal of small regions coordinate by coordinate, a float64
     map, then remove_small_objects in 3D); also vs a tuned per-slice loop (np.isin instead of the
     coordinate loop). Every mask is asserted identical to ours;
  2. the whole improved organ map (segmentation, airways, split, holes, mediastinum) for reference;
  3. all six grid-mask variants for one volume vs the published torch code (F.interpolate of each
     organ's float map per method, conv3d dilation);
  4. Ray scaling: the partition job over several stored volumes with 2 tasks at once vs 1, on 2 CPUs.

    python benchmarks/partition.py [--volumes 4] [--workdir DIR]

Prints the table and writes benchmarks/results/partition.md with the machine description.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BLOSC_NTHREADS", "1")

import numpy as np  # noqa: E402
from machine_info import best_of, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POPI = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared")) / "data" / "ct" / "popi_dicom"
TARGET = (0.8, 0.8, 0.8)
VOL_THRESH = 1_000_000


def published_as_written(ctvol: np.ndarray, hu_thresh: int = -300, vol_thresh: int = VOL_THRESH) -> np.ndarray:
    """The authors' per-slice algorithm as published (segment_slice_2d + clean_up_volume_produced_from_2d)."""
    from skimage.measure import label, regionprops
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import clear_border

    segmap_4 = np.zeros(ctvol.shape)
    for slice_idx in range(ctvol.shape[0]):
        inputarray = copy.deepcopy(ctvol[slice_idx, :, :])
        binary_1 = inputarray < hu_thresh
        binary_2 = clear_border(binary_1)
        label_image = label(binary_2)
        areas = [r.area for r in regionprops(label_image)]
        areas.sort()
        if len(areas) > 2:
            for region in regionprops(label_image):
                if region.area < areas[-2]:
                    for coordinates in region.coords:
                        label_image[coordinates[0], coordinates[1]] = 0
        segmap_4[slice_idx, :, :] = (label_image > 0).astype("int")
    segmap_4 = segmap_4.astype("int")
    # skimage 0.26 spells the published exclusive `min_size=vol_thresh` as max_size=vol_thresh - 1
    return remove_small_objects(segmap_4.astype("bool"), max_size=vol_thresh - 1)


def tuned_per_slice(ctvol: np.ndarray, hu_thresh: int = -300, vol_thresh: int = VOL_THRESH) -> np.ndarray:
    """The same per-slice algorithm with whole-region removal (np.isin) and a bool map."""
    from skimage.measure import label, regionprops
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import clear_border

    seg = np.zeros(ctvol.shape, dtype=bool)
    for i in range(ctvol.shape[0]):
        lab = label(clear_border(ctvol[i] < hu_thresh))
        regions = regionprops(lab)
        areas = sorted(r.area for r in regions)
        if len(areas) > 2:
            lab[np.isin(lab, [r.label for r in regions if r.area < areas[-2]])] = 0
        seg[i] = lab > 0
    return remove_small_objects(seg, max_size=vol_thresh - 1)


def interleaved(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float], dict]:
    """Best wall and CPU time of each function, running them in turn each round so a busy machine
    hurts all alike. CPU time (of this process) is the fair figure for one thread on a shared machine."""
    wall = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    outs: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            outs[name] = fn()
            wall[name] = min(wall[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return wall, cpu, outs


def published_grids(organs: np.ndarray, grid: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The published mask.py: per organ, F.interpolate of a float map, != 0, conv3d dilation."""
    import torch
    import torch.nn.functional as F

    out = {}
    full = torch.from_numpy(organs)
    for mode in ("nearest", "trilinear", "area"):
        small = []
        for code in (1, 2, 3):
            seg = (full == code).float()
            small.append((F.interpolate(seg[None, None], size=grid, mode=mode)[0, 0] != 0).float())
        out[mode] = torch.stack(small)
        padded = F.pad(out[mode], [1, 1, 1, 1, 1, 1])
        out[f"{mode}-dilated"] = torch.clamp(F.conv3d(padded[:, None], torch.ones(1, 1, 3, 3, 3))[:, 0], 0, 1)
    return {k: v.numpy() > 0 for k, v in out.items()}


def ray_scaling(workdir: Path, hu: np.ndarray, attrs: dict, volumes: int) -> tuple[float, float]:
    from ctplatform.config import load_config
    from ctplatform.partition.job import run_partition
    from ctplatform.store import Store

    root = workdir / "store"
    store = Store(str(root))
    for i in range(volumes):
        store.write_volume(f"popi{i}", hu, attrs)
    times = {}
    for tasks in (1, 2):
        cfg = load_config(None, [f"store={root}", "ray.num_cpus=2", f"partition.max_concurrent_tasks={tasks}"])
        t = time.perf_counter()
        df = run_partition(cfg, overwrite=True)
        times[tasks] = time.perf_counter() - t
        assert (df["status"] == "ok").all(), df["error"].tolist()
    return times[1], times[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=4, help="volumes in the Ray scaling run")
    parser.add_argument("--repeats", type=int, default=3, help="timings take the best of this many runs")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "partition.md")
    args = parser.parse_args()
    described = machine()  # before the run: the load it reports is the machine's
    if not POPI.is_dir():
        print(f"POPI DICOM series not found at {POPI} (set CTPLATFORM_SHARED)")
        return 1
    import numcodecs.blosc

    from ctplatform.config import IngestConfig, load_config
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan
    from ctplatform.partition.grid import grid_masks
    from ctplatform.partition.lungs import segment_lungs_reference
    from ctplatform.partition.organs import segment_organs

    numcodecs.blosc.set_nthreads(1)
    hu, attrs = to_store(read_scan(POPI), IngestConfig(spacing_mm=TARGET))
    spacing = tuple(attrs["spacing_mm"])
    shape = "x".join(str(n) for n in hu.shape)
    print(f"POPI at 0.8 mm: {shape}", flush=True)

    print("lung segmentation: ours (reference mode, 1 and 2 threads), the published per-slice algorithm as "
          "written and a tuned per-slice loop, interleaved ...", flush=True)
    times, cpu, outs = interleaved(
        {
            "ours": lambda: segment_lungs_reference(hu, spacing),
            "ours2": lambda: segment_lungs_reference(hu, spacing, threads=2),
            "published": lambda: published_as_written(hu),
            "tuned": lambda: tuned_per_slice(hu),
        },
        args.repeats,
    )
    t_ours, t_pub, t_tuned = (cpu[k] for k in ("ours", "published", "tuned"))
    w_ours2, w_pub = times["ours2"], times["published"]
    mask = outs.pop("ours")
    for name, other in outs.items():
        assert np.array_equal(mask, other), f"reference mode differs from the {name} mask"
    lung_ml = mask.sum() * np.prod(spacing) / 1000.0
    del outs

    print("improved organ map ...", flush=True)
    t_improved, seg = best_of(lambda: segment_organs(hu, spacing, "improved"), 1)

    print("grid masks: six variants ...", flush=True)
    geometry = load_config(None).model.geometry
    t_grid, ours_grids = best_of(lambda: grid_masks(seg.organs, geometry), 3)
    from ctplatform.geometry import center_crop_or_pad

    cropped = center_crop_or_pad(seg.organs, geometry.input_shape, fill=0)
    t_torch, torch_grids = best_of(lambda: published_grids(cropped, geometry.grid), 1)
    for variant, m in ours_grids.items():
        assert np.array_equal(m, torch_grids[variant]), f"grid variant {variant} differs from torch"

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ctp-bench-partition-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"Ray Data job over {args.volumes} volumes, 1 then 2 tasks at once ...", flush=True)
        t1, t2 = ray_scaling(workdir, hu, attrs, args.volumes)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [
        ("lung segmentation (s CPU), reference mode, 1 thread", f"{t_ours:.2f}", f"{t_pub:.2f}", t_pub / t_ours,
         ">= 5x vs published (identical masks)"),
        ("  same, wall clock (s)", f"{times['ours']:.2f}", f"{w_pub:.2f}", w_pub / times["ours"], ""),
        ("  same, 2 threads, wall clock (s)", f"{w_ours2:.2f}", f"{w_pub:.2f}", w_pub / w_ours2, ""),
        ("  vs a tuned per-slice skimage loop (s CPU)", f"{t_ours:.2f}", f"{t_tuned:.2f}", t_tuned / t_ours, ""),
        ("improved organ map, whole (s wall, 1 thread)", f"{t_improved:.2f}", f"{w_pub:.2f}", w_pub / t_improved,
         "(more work than the baseline)"),
        (f"six grid variants, {geometry.name} (s)", f"{t_grid:.3f}", f"{t_torch:.3f}", t_torch / t_grid,
         "well under 1 s (identical masks)"),
        (f"Ray job, {args.volumes} volumes: 2 tasks vs 1 (s)", f"{t2:.1f}", f"{t1:.1f}", t1 / t2, ">= 1.6x on 2 CPUs"),
    ]
    header = "| figure | ours | baseline | ratio (baseline/ours) | target |\n|---|---:|---:|---:|---|"
    lines = [header] + [f"| {name} | {a} | {b} | {ratio:.2f}x | {target} |" for name, a, b, ratio, target in rows]
    table = "\n".join(lines)
    notes = (
        f"Scan: POPI DICOM series resampled to 0.8 mm by the ingest resampler: {shape} "
        f"({hu.size / 1e6:.0f} M voxels); lungs {lung_ml:.0f} mL.\n"
        "Baselines: the published per-slice scikit-image algorithm as written (row 1-2, 4), the same loop\n"
        "with whole-region removal (row 3), the published torch grid code (F.interpolate per organ and\n"
        "method, conv3d dilation; row 5), the same Ray job with 1 task at a time (row 6). Every mask was\n"
        "asserted identical to its baseline. Timings are the best of the repeats (segmentation rows run\n"
        "interleaved, round by round; CPU time of this process where marked, the fair figure for one\n"
        "thread on a shared machine); single-threaded BLAS and Blosc. The improved organ map does more\n"
        "than the baseline (airways, split, hole filling).\n"
    )
    print()
    print(table)
    print()
    print(notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# PARTITION benchmark\n\n"
        f"Machine: {described}\n\n"
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python benchmarks/partition.py --volumes "
        f"{args.volumes}` (timings on a shared machine are noisy: compare figures of the same run)\n\n"
        f"{table}\n\n{notes}"
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
