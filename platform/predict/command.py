"""`ctplatform predict`: a trained model on new scans, with maps that open over the input."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctplatform.config import Config

HELP = """Run a trained model on new scans: 80 probabilities, slice scores and HiResCAM maps per scan.

MODEL is an MLflow run id, a registered model URI (models:/NAME@ALIAS, models:/NAME/VERSION) or a
local MLflow model folder. INPUT is a NIfTI file, a DICOM series folder, a folder of many (searched
recursively), a .csv/.parquet listing (volume_id, path[, format]) or a ctplatform store. Scans go
through the same readers, orientation and resampling as ingest, then the model's own crop and
normalisation. Writes OUT/predictions.parquet and .csv (one row per scan) and, per scan,
OUT/scans/ID/: probabilities.json, slice_scores.csv, maps/LABEL.nii.gz (HiResCAM of each label above
its threshold, on the input file's own voxel grid and affine) and summary.png. A re-run resumes;
bad scans are reported as failed rows and the rest go on. Runs as Ray Data batch inference (model
replicas as an actor pool: GPU with bf16 where the cluster has GPUs, CPU otherwise).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL", help="run id, models:/NAME@ALIAS or a local model folder")
    parser.add_argument("--input", required=True, metavar="PATH", help="NIfTI, DICOM series folder, folder, listing or store")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (re-running with the same folder resumes)")


def run(args: argparse.Namespace, cfg: "Config") -> int:
    from ctplatform.predict.job import exit_status, run_predict

    try:
        table = run_predict(args.model, args.input, args.out, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"ctplatform predict: {e}")
        return 2
    ok = table[table["status"] == "ok"]
    failed = table[table["status"] != "ok"]
    print(f"{len(ok)} scan(s) predicted, {len(failed)} failed -> {args.out}/predictions.parquet (and .csv)")
    for _, r in failed.head(20).iterrows():
        print(f"  failed {r['volume_id']}: {r['error']}")
    return exit_status(table, cfg.predict.fail_fraction)
