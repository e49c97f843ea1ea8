"""`ctplatform train`: train one AxialNet (DDP on Ray Train) and track it in MLflow."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctplatform.config import Config

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Train AxialNet with the HiResCAM mask loss on the store (Ray Train DDP), tracked in MLflow.

Reads the manifest's train and valid splits, labels.parquet and the grid masks of train.grid_variant
for the model geometry; checkpoints every epoch to train.storage_path (default <workdir>/ray_results)
and stops early on the validation loss. --resume continues the latest (or --run-name) run from its
last checkpoint. lambda 0 (--set train.lambda_mask=0) is the class-only baseline.
"""

log = logging.getLogger("ctplatform.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="STORE", help="store path or URL (default: <workdir>/store)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the latest run (or --run-name) from its last checkpoint"
    )
    parser.add_argument("--run-name", metavar="NAME", help="name of the run in the storage path (default: generated)")


def run(args: argparse.Namespace, cfg: "Config") -> int:
    from ray.train import TrainingFailedError

    from ctplatform.train.tracking import ui_command
    from ctplatform.train.trainer import TrainingDivergedError, run_training

    try:
        outcome = run_training(cfg, resume=args.resume, run_name=args.run_name)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"ctplatform train: {e}")
        return 2
    except TrainingDivergedError as e:
        print(f"ctplatform train: {e}")
        return 1
    except TrainingFailedError as e:
        print(f"ctplatform train: the workers kept failing ({type(e).__name__}); see the Ray logs above. "
              "Fix the cause and continue with --resume")
        return 1
    m = outcome.metrics
    print(f"training {outcome.status}: run {outcome.run_name}")
    if m:
        print(
            f"  best validation loss {m.get('best_val_loss', float('nan')):.4f} at epoch {m.get('best_epoch')}; "
            f"last epoch: median AUROC {m.get('val_auroc_median', float('nan')):.3f}, "
            f"OrganIoU {m.get('val_organ_iou', float('nan')):.3f}"
        )
    print(f"  checkpoints: {outcome.storage_path}/{outcome.run_name}")
    print(f"  MLflow: {outcome.tracking_uri}  experiment {outcome.experiment_id}  run {outcome.mlflow_run_id}")
    print(f"  open the UI: {ui_command(outcome.tracking_uri)}")
    return 0
