"""Training-step benchmark: AxialNet on CPU at a small and the paper's geometry (H reduced), in one run.

  1. step time (forward + backward + SGD) with the mask loss (lambda 1/3, both forms) vs the
     class-only baseline (lambda 0, no HiResCAM computed): the mask loss's overhead;
  2. HiResCAM for all 80 labels: closed form in the forward pass vs hook-based autograd (one full
     backward per label, as general CAM libraries do; timed on a few labels and extrapolated to 80,
     maps checked equal): the speedup;
  3. loader throughput (volumes/s from a Zarr store holding the real POPI scan at 0.8 mm,
     353 x 625 x 625, with 0 / 1 / 2 forkserver loader processes) vs training-step throughput, and
     the loader CPUs one GPU needs at the paper geometry, from the measured per-volume read cost and
     a GPU step time derived from the counted FLOPs (assumptions printed);
  4. peak memory (RSS) per training process, with vs without the mask loss.

    python benchmarks/train_step.py [--steps 3] [--paper-slices 45] [--workdir DIR]

Prints the table and writes benchmarks/results/train_step.md with the machine description.
Figures are noisy on a shared machine: steps of the variants are interleaved so load hurts all alike.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
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

#: Assumed GPU for the loader-CPU estimate: V100 fp32 peak (the paper trained on a V100 32 GB) at a
#: sustained fraction of it typical of convolutional training.
GPU_NAME, GPU_PEAK_TFLOPS, GPU_UTILISATION = "V100 (fp32)", 15.7, 0.4


def geometries(paper_slices: int) -> dict[str, tuple[tuple[int, int, int], int]]:
    return {
        "small [48,128,128] pad 1": ((48, 128, 128), 1),
        f"paper [{paper_slices},420,420]": ((paper_slices, 420, 420), 0),
    }


def _batch(geom, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic batch of one scan: input, grid masks, labels (a few positives)."""
    from ctplatform.labels import LOCATION_BITS, label_index

    g = torch.Generator().manual_seed(seed)
    h, d1, d2 = geom.grid
    grid = torch.zeros(1, 3, h, d1, d2, dtype=torch.bool)
    grid[0, 0, :, :, : max(1, d2 // 2)] = True
    grid[0, 1, :, :, d2 // 2 :] = True
    grid[0, 2, h // 4 : 3 * h // 4, : max(1, d1 // 2), d2 // 3 : max(d2 // 3 + 1, 2 * d2 // 3)] = True
    y = torch.zeros(1, 80)
    bits = torch.zeros(1, 80, dtype=torch.uint8)
    for abn, loc in [("nodule", "right_lung"), ("cardiomegaly", "heart"), ("atelectasis", "lung")]:
        i = label_index(abn, loc)
        y[0, i] = 1
        bits[0, i] = LOCATION_BITS[loc]
    x = torch.rand(1, h, 3, *geom.input_shape[1:], generator=g) - 0.449
    return {"x": x, "grid": grid, "y": y, "region_bits": bits}


def _step(model, opt, batch, lam: float, form: str) -> float:
    from ctplatform.model.losses import total_loss

    t0 = time.perf_counter()
    out = model(batch["x"], cam=lam > 0)
    terms = total_loss(out.logits, out.hirescam, batch["y"], batch["region_bits"], batch["grid"], lam, form)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    opt.step()
    return time.perf_counter() - t0


VARIANTS = [("class only (lambda 0)", 0.0, "mean_softplus"), ("mask mean_softplus", 1 / 3, "mean_softplus"), ("mask sum_neglog", 1 / 3, "sum_neglog")]


def bench_steps(shape, pad, steps: int) -> dict[str, tuple[float, float]]:
    """Per variant: (median seconds per step, median ratio to the baseline step of the same round).

    The variants' steps are interleaved round by round and compared within a round, so a busy
    machine slows the baseline and the variant alike."""
    from ctplatform.geometry import ModelGeometry
    from ctplatform.model.axialnet import AxialNet

    geom = ModelGeometry(shape, custom_conv_padding=pad)
    torch.manual_seed(0)
    model = AxialNet(geom)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.99)
    batch = _batch(geom)
    times: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    for name, lam, form in VARIANTS:  # warm-up
        _step(model, opt, batch, lam, form)
    for _ in range(steps):
        for name, lam, form in VARIANTS:
            times[name].append(_step(model, opt, batch, lam, form))
    base = times[VARIANTS[0][0]]
    return {
        name: (statistics.median(v), statistics.median(a / b for a, b in zip(v, base)))
        for name, v in times.items()
    }


def mask_ops_seconds(shape, pad, form: str, reps: int = 30) -> float:
    """Seconds of the work the mask loss adds to a step, alone: HiResCAM maps from Z, G_true, L_mask
    and their backward. The minimum of many repeats: milliseconds of work that a busy machine can
    stretch a hundredfold, so the least-disturbed repeat is the cost."""
    from ctplatform.geometry import ModelGeometry
    from ctplatform.model.losses import forbidden_cells, mask_loss
    from ctplatform.model.axialnet import CUSTOM_CONV_CHANNELS
    from ctplatform.model.cams import hirescam_from_features

    geom = ModelGeometry(shape, custom_conv_padding=pad)
    h, d1, d2 = geom.grid
    f = CUSTOM_CONV_CHANNELS[-1]
    batch = _batch(geom)
    z = torch.rand(1, h, f, d1, d2, requires_grad=True)
    w = (torch.randn(80, f * d1 * d2) * 0.01).requires_grad_(True)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        cam = hirescam_from_features(z, w)
        loss = mask_loss(cam, forbidden_cells(batch["region_bits"], batch["grid"]), form) / 3
        loss.backward()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_hirescam(shape, pad, labels: int) -> dict[str, float]:
    """Closed form (forward with cam) vs hook-based autograd (forward + one full backward per label)."""
    from ctplatform.geometry import ModelGeometry
    from ctplatform.model.axialnet import AxialNet

    geom = ModelGeometry(shape, custom_conv_padding=pad)
    torch.manual_seed(0)
    model = AxialNet(geom).eval()
    x = _batch(geom)["x"]
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x, cam=False)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        closed = model(x, cam=True).hirescam
    t_closed = time.perf_counter() - t0

    # Hook-based, the way general CAM libraries do it: capture the target layer's activations and
    # gradients with hooks, then one full backward per label.
    saved: dict[str, torch.Tensor] = {}
    target = model.custom_convs[-1]

    def fwd_hook(_m, _i, out):
        saved["act"] = out
        out.register_hook(lambda g: saved.__setitem__("grad", g))

    handle = target.register_forward_hook(fwd_hook)
    t0 = time.perf_counter()
    out = model(x, cam=False)
    t_fwd = time.perf_counter() - t0
    back, max_diff = [], 0.0
    for m in np.linspace(0, 79, labels).round().astype(int):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out.logits[0, m].backward(retain_graph=True)
        act, grad = saved["act"], saved["grad"]  # [H, F, D1, D2] (slice groups are the batch of the 2D CNN)
        cam = (grad * act).sum(dim=1).detach()
        back.append(time.perf_counter() - t0)
        max_diff = max(max_diff, float((cam - closed[0, m]).abs().max()))
    handle.remove()
    return {
        "forward": t_plain,
        "closed": t_closed,
        "hooks80": t_fwd + 80 * statistics.mean(back),
        "per_backward": statistics.mean(back),
        "labels_timed": labels,
        "max_abs_diff": max_diff,
        "scale": float(closed.abs().max()),
    }


def _memory_child(shape, pad, lam, form, q) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from ctplatform.geometry import ModelGeometry
    from ctplatform.model.axialnet import AxialNet

    geom = ModelGeometry(shape, custom_conv_padding=pad)
    model = AxialNet(geom)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.99)
    batch = _batch(geom)
    for _ in range(2):
        _step(model, opt, batch, lam, form)
    # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's peak across fork/exec)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            q.put(int(line.split()[1]) / 1024)  # kB -> MiB
            return
    q.put(float("nan"))


def peak_memory_mb(shape, pad, lam, form) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(shape, pad, lam, form, q))
    p.start()
    value = q.get()
    p.join()
    return value


def train_flops(shape, pad) -> float:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from ctplatform.geometry import ModelGeometry
    from ctplatform.model.axialnet import AxialNet

    geom = ModelGeometry((3,) + tuple(shape[1:]), custom_conv_padding=pad)  # one slice group, then scale
    model = AxialNet(geom)
    x = torch.rand(1, 1, 3, *shape[1:])
    with FlopCounterMode(display=False) as fc:
        model(x).logits.sum().backward()
    return fc.get_total_flops() * (shape[0] // 3)


def build_store(root: Path, copies: int) -> list[str]:
    """The POPI scan ingested at 0.8 mm (real CT, 353 x 625 x 625) under `copies` ids."""
    from ctplatform.config import IngestConfig
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan
    from ctplatform.store import Store

    cfg = IngestConfig()
    hu16, attrs = to_store(read_scan(POPI), cfg)
    store = Store(str(root))
    ids = [f"popi{k}" for k in range(copies)]
    for vid in ids:
        store.write_volume(vid, hu16, attrs, chunk_slices=cfg.chunk_slices)
    return ids


def bench_loader(store_root: Path, ids: list[str], shape, pad, workers: int, n_items: int) -> float:
    """Volumes per second through the training Dataset (crop, augment, normalise) and DataLoader."""
    from ctplatform.geometry import ModelGeometry
    from ctplatform.store import Store
    from ctplatform.model.dataset import EpochSampler, SplitIndex, StoreDataset, make_loader

    geom = ModelGeometry(shape, custom_conv_padding=pad)
    store = Store(str(store_root))
    grid = np.ones((3, *geom.grid), dtype=bool)
    for vid in ids:
        if not store.has_grid(geom.name, "nearest", vid):
            store.write_grid(geom.name, "nearest", vid, grid, {})
    reps = [ids[i % len(ids)] for i in range(n_items)]
    index = SplitIndex(reps, np.zeros((n_items, 80), np.float32), np.zeros((n_items, 80), np.uint8))
    ds = StoreDataset(str(store_root), index, geom, "nearest", augment=True, seed=0)
    sampler = EpochSampler(n_items, 0, 1, seed=0)
    loader = make_loader(ds, sampler, 1, workers)
    it = iter(loader)
    next(it)  # exclude process start-up
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed rounds of steps (after one warm-up round)")
    ap.add_argument("--paper-slices", type=int, default=45, help="Z of the paper geometry on CPU (405 on a GPU)")
    ap.add_argument("--loader-items", type=int, default=6, help="volumes read per loader measurement")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    os.environ["BENCH_THREADS"] = str(torch.get_num_threads())

    out = Report()

    out("# train_step benchmark")
    out()
    out(f"Machine: {machine(f'torch {torch.__version__} ({torch.get_num_threads()} threads)')}")
    out()
    geoms = geometries(args.paper_slices)

    out("## 1. Step time (forward + backward + SGD, batch 1), median of interleaved rounds")
    out()
    out("Overhead: median over rounds of (variant step / baseline step of the same round) - 1.")
    out()
    out(
        "| geometry | grid | class only (baseline) s | mask mean_softplus s | overhead | mask sum_neglog s | overhead "
        "| mask-loss ops alone (maps, G_true, L_mask, backward; min of 30) |"
    )
    out("|---|---|---|---|---|---|---|---|")
    step_s: dict[str, float] = {}
    from ctplatform.geometry import ModelGeometry

    for name, (shape, pad) in geoms.items():
        t = bench_steps(shape, pad, args.steps * (3 if pad else 1))  # small steps are cheap: more rounds
        base = t["class only (lambda 0)"][0]
        step_s[name] = base
        (ms, ms_r), (sn, sn_r) = t["mask mean_softplus"], t["mask sum_neglog"]
        ops = mask_ops_seconds(shape, pad, "mean_softplus")
        out(
            f"| {name} | {ModelGeometry(shape, custom_conv_padding=pad).name} | {base:.3f} | {ms:.3f} | "
            f"{100 * (ms_r - 1):+.1f}% | {sn:.3f} | {100 * (sn_r - 1):+.1f}% | {1000 * ops:.2f} ms "
            f"= {100 * ops / base:.2f}% of the baseline step |"
        )
    out()

    out("## 2. HiResCAM for all 80 labels: closed form vs hook-based autograd (one backward per label)")
    out()
    out("| geometry | forward only s | closed form (forward with maps) s | hooks: forward + 80 backward s | speedup | max abs diff of maps (scale) |")
    out("|---|---|---|---|---|---|")
    for name, (shape, pad) in geoms.items():
        r = bench_hirescam(shape, pad, labels=8 if pad else 3)
        out(
            f"| {name} | {r['forward']:.3f} | {r['closed']:.3f} | {r['hooks80']:.1f} "
            f"(backward {r['per_backward']:.3f} x 80, timed on {r['labels_timed']}) | "
            f"{r['hooks80'] / r['closed']:.0f}x | {r['max_abs_diff']:.1e} ({r['scale']:.1e}) |"
        )
    out()

    out("## 3. Loader throughput vs training-step throughput (real POPI CT at 0.8 mm, 353 x 625 x 625)")
    out()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        ids = build_store(work / "store", copies=3)
        out(f"(store built in {time.perf_counter() - t0:.0f} s: the scan ingested once, written under 3 ids)")
        out()
        out("| geometry (loader crop) | loader processes | volumes/s | s per volume per process | training steps/s on this CPU (baseline) | loader / step |")
        out("|---|---|---|---|---|---|")
        read_cost: dict[str, float] = {}
        paper_name = list(geoms)[1]
        for name, (shape, pad) in geoms.items():
            steps = 1 / step_s[name]
            crop = shape
            if name == paper_name:  # the loader does not depend on H: read the paper's whole crop
                crop = (405, 420, 420)
                steps = steps * shape[0] / 405  # the CPU step scales with the number of slice groups
            for workers in (0, 1, 2):
                rate = bench_loader(work / "store", ids, crop, pad, workers, args.loader_items)
                if workers == 0:
                    read_cost[name] = 1 / rate
                out(
                    f"| {name} ({crop[0]}x{crop[1]}x{crop[2]}) | {workers} | {rate:.2f} | "
                    f"{max(workers, 1) / rate:.2f} | {steps:.3f} | {rate / steps:.1f}x |"
                )
        out()
        out(f"(paper row: CPU steps/s extrapolated from the [{args.paper_slices}, 420, 420] step to 405 slices)")
        out()
        flops = train_flops((405, 420, 420), 0)
        t_gpu = flops / (GPU_PEAK_TFLOPS * 1e12 * GPU_UTILISATION)
        cost = read_cost[paper_name]
        out(
            f"Loader CPUs per GPU at the paper geometry [405, 420, 420]: one training step counts "
            f"{flops / 1e12:.2f} TFLOP (torch FlopCounterMode, forward + backward); assuming a {GPU_NAME} "
            f"sustains {GPU_UTILISATION:.0%} of its {GPU_PEAK_TFLOPS} TFLOPS, a step takes ~{t_gpu:.2f} s. "
            f"One loader process needs {cost:.2f} s per volume (measured above), so one GPU needs "
            f"ceil({cost:.2f} / {t_gpu:.2f}) = {math.ceil(cost / t_gpu)} loader CPUs; a GPU 3x faster "
            f"(bf16 on an A100) needs {math.ceil(cost / (t_gpu / 3))}."
        )
        out()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    out("## 4. Peak memory (RSS) of one training process, 2 steps")
    out()
    out("| geometry | class only (baseline) MiB | with mask loss MiB | ratio |")
    out("|---|---|---|---|")
    for name, (shape, pad) in geoms.items():
        base = peak_memory_mb(shape, pad, 0.0, "mean_softplus")
        mask = peak_memory_mb(shape, pad, 1 / 3, "mean_softplus")
        out(f"| {name} | {base:.0f} | {mask:.0f} | {mask / base:.2f} |")
    out()

    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "train_step.md").write_text(out.text())
    print(f"wrote {results / 'train_step.md'}")


if __name__ == "__main__":
    main()
