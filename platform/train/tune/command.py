"""`ctplatform tune`: a Ray Tune sweep of Ray Train runs (lambda x grid-mask variant), compared in MLflow."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctplatform.config import Config

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Sweep lambda, grid-mask downsampling and dilation (and optionally lr and seed) with Ray Tune.

Each trial is a full Ray Train run of the train section with the trial's values (tune.lambdas,
tune.variants, tune.lrs, tune.seeds; grid or random search), stopped early by ASHA on
tune.metric. MLflow gets one parent run per sweep with the result table (paper Table 5 shape:
rows downsampling x dilation, columns lambda; validation median AUROC and OrganIoU) and one
nested child run per trial with its per-epoch metrics. A failed trial is retried
tune.max_trial_retries times, then listed as failed. --resume continues an interrupted sweep
without redoing finished trials (unfinished ones continue from their last checkpoint).
"""

log = logging.getLogger("ctplatform.tune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="STORE", help="store path or URL (default: <workdir>/store)")
    parser.add_argument("--name", metavar="SWEEP", help="sweep name (default: generated); with --resume, the sweep to continue")
    parser.add_argument("--resume", action="store_true", help="continue the latest sweep (or --name) where it stopped")
    parser.add_argument(
        "--retry-failed", action="store_true", help="with --resume: run the sweep's failed trials again"
    )


def run(args: argparse.Namespace, cfg: "Config") -> int:
    from ctplatform.train.tracking import ui_command
    from ctplatform.train.tune.sweep import run_sweep

    if args.retry_failed and not args.resume:
        print("ctplatform tune: --retry-failed needs --resume")
        return 2
    try:
        outcome = run_sweep(cfg, name=args.name, resume=args.resume, retry_failed=args.retry_failed)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"ctplatform tune: {e}")
        return 2
    print(outcome.markdown)
    failed = [r for r in outcome.rows if r.status == "failed"]
    print(f"sweep {outcome.name}: {len(outcome.rows)} trial(s) in {outcome.wall_s:.0f} s, {len(failed)} failed")
    print(f"  experiment: {outcome.experiment_path}  (resume: ctplatform tune --resume --name {outcome.name})")
    print(f"  MLflow: {outcome.tracking_uri}  experiment {outcome.experiment_id}  parent run {outcome.parent_run_id}")
    print(f"  open the UI: {ui_command(outcome.tracking_uri)}")
    if outcome.interrupted:
        print(f"  interrupted: continue with `ctplatform tune --resume --name {outcome.name}` (same store and config)")
        return 130
    if outcome.best is None:
        print("  no trial finished with a finite validation metric")
        return 1
    return 1 if len(failed) == len(outcome.rows) else 0
