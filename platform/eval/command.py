"""`ctplatform evaluate`: score a trained run on a split and log everything to MLflow."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctplatform.config import Config

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Evaluate a trained run: AUROC, OrganIoU, localization against truth, explanation pictures.

Scores the MLflow run's model on --split (default eval.split) as a Ray job (one task per
eval.scans_per_task volumes): AUROC per label with bootstrap 95% CIs (median and mean over labels);
OrganIoU of HiResCAM and Grad-CAM with each label's threshold chosen on the validation split and
reported overall and by location group; lesion IoU/Dice, pointing game and Localization Utility
where the store holds lesion truth (ingested with the scans); a randomised-weights sanity check. Writes per-slice score
curves, HiResCAM vs Grad-CAM panels, NIfTI heatmaps aligned with the source scans and summary tables
to <workdir>/eval/RUN/SPLIT, and logs them to an evaluation run nested under the training run.
"""

log = logging.getLogger("ctplatform.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True, metavar="RUN", help="MLflow run id of the trained model")
    parser.add_argument("--store", metavar="STORE", help="store path or URL (default: the store the run trained on)")
    parser.add_argument("--split", metavar="SPLIT", help="manifest split to evaluate (default: eval.split, 'test')")


def run(args: argparse.Namespace, cfg: "Config") -> int:
    from ctplatform.eval.job import run_evaluation
    from ctplatform.eval.report import headline_table, markdown_table

    try:
        out = run_evaluation(cfg, args.run_id, args.split)
    except (FileNotFoundError, ValueError) as e:
        print(f"ctplatform evaluate: {e}")
        return 2
    except RuntimeError as e:
        print(f"ctplatform evaluate: {e}")
        return 1
    print(markdown_table(headline_table(out.metrics)))
    for note in out.notes:
        print(f"note: {note}")
    if out.failed:
        print(f"{len(out.failed)} scan(s) failed and were left out (errors above)")
    print(f"files: {out.out_dir}")
    print(f"MLflow: evaluation run {out.eval_run_id} (nested under {out.run_id}) at {cfg.tracking_uri}")
    return 0
