"""`ctplatform compare RUN_A RUN_B`: two evaluated runs side by side (DeLong + FDR per label)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctplatform.config import Config

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Compare two runs: AUROC per label (DeLong test, Benjamini-Hochberg FDR), OrganIoU, localization.

RUN_A and RUN_B are training runs (their latest evaluation on --split is used) or evaluation runs.
Prints the headline and the per-label table (the paper's Table 7 labels first), writes
compare.md/.html/.csv to <workdir>/eval/compare/A_vs_B, and logs them as a comparison run in MLflow.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="MLflow run id (training or evaluation run)")
    parser.add_argument("run_b", metavar="RUN_B", help="MLflow run id (training or evaluation run)")
    parser.add_argument("--split", metavar="SPLIT", help="evaluated split to compare (default: eval.split)")
    parser.add_argument("--rows", type=int, default=20, help="per-label rows printed (all are written)")


def run(args: argparse.Namespace, cfg: "Config") -> int:
    from ctplatform.eval.compare.job import run_comparison
    from ctplatform.eval.report import markdown_table

    split = args.split or cfg.eval.split
    try:
        result, out_dir, compare_run = run_comparison(cfg, args.run_a, args.run_b, split)
    except (FileNotFoundError, ValueError) as e:
        print(f"ctplatform compare: {e}")
        return 2
    print(f"A = {args.run_a}, B = {args.run_b}, split {split}, {result.n_scans} paired scans\n")
    print(markdown_table(result.headline))
    print()
    shown = result.per_label[result.per_label["pos_pct"] > 0].head(args.rows)
    cols = [c for c in ("label", "pos_pct", "auroc_a", "ci_a", "auroc_b", "ci_b", "delong_p", "fdr_q",
                        "organ_iou_hirescam_a", "organ_iou_hirescam_b") if c in shown.columns]
    print(markdown_table(shown[cols]))
    print(f"\nfiles: {out_dir}\nMLflow: comparison run {compare_run}")
    return 0
