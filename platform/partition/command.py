"""`ctplatform partition`: organ segmentation, quality control and grid masks over the store (Ray Data)."""

from __future__ import annotations

import argparse

from ctplatform.config import Config
from ctplatform.labels import ORGAN_CODES

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

_CODES = ", ".join(f"{code} {name.replace('_', ' ')}" for name, code in ORGAN_CODES.items())
HELP = f"""Segment the right lung, left lung and mediastinum of every ingested volume (PARTITION).

Writes STORE/data.zarr/organs/<id> (uint8: {_CODES}), the grid
masks grid/<geometry>/<variant>/<id> for the model geometry of the configuration (all six
variants: nearest, trilinear, area, each with and without dilation), and one row per volume in
STORE/partition.parquet (lung volumes in mL, bounding boxes, QC flags, fallback, seconds).
Volumes that fail quality control (no lungs, one lung, implausible lungs) get the paper's heuristic
regions on the grid and say so. A re-run skips finished volumes; --overwrite redoes them.

--preview VOLUME_ID --out FILE.png draws the organ outlines over axial and coronal slices of one
volume instead (from the store's organ map when there is one, else computed on the fly).

Exit status: 0 when partition.parquet has at least one ok volume (this run's failures are listed),
1 when no volume of the store could be partitioned, 2 for usage errors (no store, unknown volume).
"""

SUMMARY_FAILURES = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="STORE", help="store root (local path or s3://...); default <workdir>/store")
    parser.add_argument("--overwrite", action="store_true", help="redo volumes that are already partitioned")
    parser.add_argument(
        "--method",
        choices=["reference", "improved"],
        help="reference: the published algorithm exactly; improved (default): see docs/partition.md",
    )
    parser.add_argument("--preview", metavar="VOLUME_ID", help="draw one volume's organ outlines instead of running the job")
    parser.add_argument("--out", metavar="FILE.png", help="where --preview writes its PNG (default <workdir>/partition-<id>.png)")


def summary(df, store_root: str) -> str:
    ok = df["status"] == "ok"
    fallback = ok & df["fallback"].fillna(False).astype(bool)
    failed = df[~ok]
    lines = [
        f"partition: {int(ok.sum())} ok ({int(fallback.sum())} with the heuristic fallback), {len(failed)} failed, "
        f"of {len(df)} volumes -> {store_root}"
    ]
    flagged = df[fallback]
    for vid, flags in zip(flagged["volume_id"][:SUMMARY_FAILURES], flagged["qc_flags"][:SUMMARY_FAILURES]):
        lines.append(f"  fallback {vid}: {flags}")
    for vid, err in zip(failed["volume_id"][:SUMMARY_FAILURES], failed["error"][:SUMMARY_FAILURES]):
        lines.append(f"  failed {vid}: {err}")
    if len(failed) > SUMMARY_FAILURES or len(flagged) > SUMMARY_FAILURES:
        lines.append("  ... more in partition.parquet")
    return "\n".join(lines)


def preview(cfg: Config, volume_id: str, out: str | None) -> str:
    """Write the PNG for one volume; returns its path."""
    from pathlib import Path

    from ctplatform.partition.preview import render_preview
    from ctplatform.partition.volume import partition_array, read_spacing
    from ctplatform.store import Store

    store = Store(cfg.store_path)
    arr = store.volume(volume_id)
    spacing = read_spacing(dict(arr.attrs), volume_id)
    hu = arr[...]
    if store.has_organs(volume_id):
        organs_arr = store.array(store.organs_path(volume_id))
        organs = organs_arr[...]
        method = organs_arr.attrs.get("method", "?")
        flags = ";".join(organs_arr.attrs.get("qc_flags", []))
        fallback = organs_arr.attrs.get("fallback", False)
        source = "stored"
    else:
        result = partition_array(hu, spacing, cfg.partition, cfg.model.geometry)
        organs, method, flags, fallback = result.organs, cfg.partition.method, result.row["qc_flags"], result.qc.fallback
        source = "computed, not stored"
    ml = spacing[0] * spacing[1] * spacing[2] / 1000.0  # mL per voxel
    right, left = (organs == 1).sum() * ml, (organs == 2).sum() * ml
    title = (
        f"{volume_id} ({source}, method={method}): right lung {right:.0f} mL, left lung {left:.0f} mL"
        f"{'  QC: ' + flags if flags else ''}{'  -> heuristic fallback on the grid' if fallback else ''}"
    )
    path = Path(out) if out else Path(cfg.workdir) / f"partition-{volume_id}.png"
    return str(render_preview(hu, organs, spacing, path, title=title))


def run(args: argparse.Namespace, cfg: Config) -> int:
    import sys

    from ctplatform.store import IncompleteItemError

    if args.method:
        cfg.partition.method = args.method
    if args.preview:
        try:
            print(preview(cfg, args.preview, args.out))
        except (IncompleteItemError, ValueError) as e:
            print(f"ctplatform partition: {e}", file=sys.stderr)
            return 2
        return 0
    from ctplatform.partition.job import run_partition

    try:
        df = run_partition(cfg, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"ctplatform partition: {e}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"partition: nothing to do in {cfg.store_path} (every volume is finished; --overwrite redoes them)")
        return 0
    print(summary(df, cfg.store_path))
    from ctplatform.store import Store

    table = Store(cfg.store_path).read_table("partition")
    return 0 if table is not None and (table["status"] == "ok").any() else 1
