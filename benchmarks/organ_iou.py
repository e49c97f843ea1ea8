"""OrganIoU at all 53 thresholds: the vectorised computation vs a per-threshold loop (the published
code's pattern: for each scan, label and threshold, binarise and sum inside/outside).

Paper geometry: maps [135, 6, 6] per positive label; a batch of scans with ~10 positive labels
each (RAD-ChestCT averages about that many). Both computations give the same numbers (checked).

    python benchmarks/organ_iou.py [--scans 40] [--positives 10]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ctplatform.model.metrics import ORGAN_IOU_THRESHOLDS, normalize_attention, organ_iou
from machine_info import best_of, cpu_model

RESULTS = Path(__file__).parent / "results" / "organ_iou.md"


def loop_baseline(attention: np.ndarray, g_true: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """One map and one threshold at a time (the published iou_analysis loop, without its DataFrame)."""
    out = np.full(positive.shape + (ORGAN_IOU_THRESHOLDS.size,), np.nan)
    for n, m in zip(*np.nonzero(positive)):
        a = normalize_attention(attention[n, m])
        g = g_true[n, m]
        for k, t in enumerate(ORGAN_IOU_THRESHOLDS):
            b = a > t
            allowed = float(b[g].sum())
            forbidden = float(b[~g].sum())
            out[n, m, k] = allowed / (allowed + forbidden) if allowed + forbidden else 0.0
    return out


def broadcast_baseline(attention: np.ndarray, g_true: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Naive vectorisation: compare every cell with every threshold at once (memory x53)."""
    n_idx, l_idx = np.nonzero(positive)
    a = normalize_attention(attention[n_idx, l_idx]).reshape(n_idx.size, 1, -1)
    g = g_true[n_idx, l_idx].reshape(n_idx.size, 1, -1)
    b = a > ORGAN_IOU_THRESHOLDS[None, :, None]
    allowed = (b & g).sum(axis=2).astype(np.float64)
    forbidden = (b & ~g).sum(axis=2).astype(np.float64)
    out = np.full(positive.shape + (ORGAN_IOU_THRESHOLDS.size,), np.nan)
    with np.errstate(invalid="ignore"):
        out[n_idx, l_idx] = np.where(allowed + forbidden > 0, allowed / (allowed + forbidden), 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=40)
    ap.add_argument("--positives", type=int, default=10, help="positive labels per scan")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    grid = (135, 6, 6)
    n = args.scans
    attention = rng.normal(size=(n, 80) + grid).astype(np.float32)
    positive = np.zeros((n, 80), bool)
    for i in range(n):
        positive[i, rng.choice(80, args.positives, replace=False)] = True
    g_true = np.zeros((n, 80) + grid, bool)
    organ = rng.random((n,) + grid) < 0.35  # one allowed region per scan, reused by its positive labels
    g_true[positive] = np.repeat(organ, args.positives, axis=0)

    t_vec, r_vec = best_of(lambda: organ_iou(attention, g_true, positive), args.repeats)
    t_loop, r_loop = best_of(lambda: loop_baseline(attention, g_true, positive), args.repeats)
    t_bc, r_bc = best_of(lambda: broadcast_baseline(attention, g_true, positive), args.repeats)
    assert np.allclose(r_vec, r_loop, equal_nan=True) and np.allclose(r_vec, r_bc, equal_nan=True)

    maps = int(positive.sum())
    header = (
        f"OrganIoU at {ORGAN_IOU_THRESHOLDS.size} thresholds, {n} scans x {args.positives} positive labels "
        f"= {maps} maps of {grid[0]}x{grid[1]}x{grid[2]}"
    )
    rows = [
        ("per-threshold loop (baseline)", t_loop, 1.0),
        ("broadcast over thresholds", t_bc, t_loop / t_bc),
        ("vectorised (binary search + bincount)", t_vec, t_loop / t_vec),
    ]
    lines = [
        f"# {header}",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; numpy {np.__version__}. Best of {args.repeats} runs each.",
        "",
        "| computation | seconds | maps / s | speedup vs loop |",
        "|---|---:|---:|---:|",
    ]
    for name, t, speed in rows:
        lines.append(f"| {name} | {t:.3f} | {maps / t:,.0f} | {speed:.1f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
