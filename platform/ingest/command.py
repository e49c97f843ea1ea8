"""`ctplatform ingest`: CT scans -> the Zarr store (Ray Data)."""

from __future__ import annotations

import argparse

from ctplatform.config import Config

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Ingest CT scans into the store: canonical orientation, resampling, int16 HU, Zarr.

PATH is a folder searched recursively for NIfTI files (.nii, .nii.gz), RAD-ChestCT .npz files and
DICOM series folders, or a .csv/.parquet listing with columns volume_id, path[, format, split].
Each scan becomes STORE/data.zarr/volumes/<volume_id> and one row of STORE/manifest.parquet.
A re-run skips scans already stored from an unchanged source (sha256); --overwrite redoes them.
Bad scans are recorded as status=failed with a reason and the job goes on.

Exit status: 0 when every scan is ok, or when the failed fraction is at most ingest.fail_fraction
(default 1.0: only a run where every scan failed exits 1); 1 otherwise; 2 for usage errors or an
input with no scans.
"""

#: Failures listed one by one in the summary; the rest are in the manifest.
SUMMARY_FAILURES = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="PATH", help="folder of scans, or a .csv/.parquet listing")
    parser.add_argument("--store", metavar="STORE", help="store root (local path or s3://...); default <workdir>/store")
    parser.add_argument("--overwrite", action="store_true", help="re-ingest scans that are already stored")


def summary(df, store_root: str) -> str:
    """Counts (ingested/skipped/failed) and each failure's reason by volume id."""
    ok = df["status"] == "ok"
    skipped = ok & df["skipped"].astype(bool)
    failed = df[~ok]
    lines = [
        f"ingest: {int((ok & ~skipped).sum())} ingested, {int(skipped.sum())} skipped (unchanged), "
        f"{len(failed)} failed, of {len(df)} scans -> {store_root}"
    ]
    if len(failed):
        lines.append("failed (volume_id: reason):")
        for vid, err in zip(failed["volume_id"][:SUMMARY_FAILURES], failed["error"][:SUMMARY_FAILURES]):
            lines.append(f"  {vid}: {err}")
        if len(failed) > SUMMARY_FAILURES:
            lines.append(f"  ... and {len(failed) - SUMMARY_FAILURES} more: see manifest.parquet where status == 'failed'")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    import sys

    from ctplatform.ingest.job import exit_status, run_ingest

    try:
        df = run_ingest(args.input, cfg, overwrite=args.overwrite)
    except (OSError, ValueError) as e:  # a missing input, a bad listing, a store path that is a file
        print(f"ctplatform ingest: {e}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"ctplatform ingest: no scans found at {args.input} (NIfTI, .npz, DICOM series folders)", file=sys.stderr)
        return 2
    print(summary(df, cfg.store_path))
    code = exit_status(df, cfg.ingest.fail_fraction)
    if code:
        print(
            f"ctplatform ingest: failing the run: {int((df['status'] != 'ok').sum())} of {len(df)} scans failed "
            f"(ingest.fail_fraction={cfg.ingest.fail_fraction})",
            file=sys.stderr,
        )
    return code
