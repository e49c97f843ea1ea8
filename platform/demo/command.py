"""`ctplatform demo`: the whole platform end to end on a generated phantom cohort with a confounder.

The stages and their reuse are in demo_pipeline.py, the printed table in demo_table.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctplatform.config import Config
    from ctplatform.demo.pipeline import DemoResult

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Run the platform end to end on a phantom cohort: with and without the mask loss.

Generates a synthetic chest CT cohort whose body-wall fat tracks great-vessel atherosclerosis (a
confounder, as in the paper's Figure 5), ingests it, runs PARTITION, labels the reports with SARLE,
trains AxialNet without (lambda 0) and with the mask loss on a local Ray, evaluates both on the test
split and on the 'shifted' split (where fat no longer tracks the label), compares them, and prints a
table (AUROC, OrganIoU, true-lesion localization, attention on the confounder, reliance of the
atherosclerosis score on fat) and the command that opens the MLflow UI.

Settings: configs/demo.yaml (the `demo`, `ingest`, `model`, `train` and `eval` sections; --config
and --set change them). Files go to <workdir>/demo/<setting>/, MLflow to <workdir>/mlflow.db.
A second run reuses every finished stage (training runs are found by a hash of their settings);
--fresh starts this setting over.
"""

#: The demo's configuration when --config is not given (cli.py reads it): configs/demo.yaml beside
#: the package folder, as in a checkout installed in editable mode (what `make` does).
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, metavar="N", help="scans in the phantom cohort (default demo.n)")
    parser.add_argument("--size", choices=("tiny", "demo"), help="phantom size (default demo.size)")
    parser.add_argument("--epochs", type=int, metavar="E", help="training epochs of each model (default train.epochs)")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="cohort and training seed (default demo.seed / train.seed): another seed, another cohort")
    parser.add_argument("--fresh", action="store_true", help="delete this setting's files and MLflow runs first")


def apply_flags(args: argparse.Namespace, cfg: "Config") -> "Config":
    """The demo's own flags (--n, --size, --epochs, --seed) over the loaded configuration."""
    flags = (("n", "demo", "n"), ("size", "demo", "size"), ("epochs", "train", "epochs"),
             ("seed", "demo", "seed"), ("seed", "train", "seed"))  # one seed sets the cohort and both models
    for flag, section, key in flags:
        value = getattr(args, flag, None)
        if value is not None:
            setattr(getattr(cfg, section), key, value)  # validated on assignment
    return cfg


def run(args: argparse.Namespace, cfg: "Config") -> int:
    import os
    import sys
    import time

    # The stages' own progress bars and lines are the demo's progress; MLflow's bar for every small
    # artifact download would drown them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from ctplatform.demo.pipeline import DemoStageError, run_demo
    from ctplatform.demo.table import summary_table, timing_table
    from ctplatform.eval.report import markdown_table
    from ctplatform.phantom.cohort import ConfounderSpec
    from ctplatform.train.tracking import ui_command

    try:
        cfg = apply_flags(args, cfg)
        target = ConfounderSpec.parse_many(cfg.demo.confounder)[0].label
    except (ValueError, KeyError) as e:
        print(f"ctplatform demo: configuration error: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        result = run_demo(cfg, fresh=args.fresh)
    except DemoStageError as e:
        print(
            f"\nctplatform demo: {e}\nFix the cause and run the demo again: finished stages are reused.",
            file=sys.stderr,
        )
        return 1
    print(f"\n=== ctplatform demo: done in {time.monotonic() - t0:.0f} s ===\n")
    print(markdown_table(timing_table(result.timings), digits=1))
    print()
    print(markdown_table(summary_table(result.metrics, list(cfg.demo.eval_splits), target)))
    print(
        "\nHow to read it: the phantom's body-wall fat agrees with atherosclerosis in train/valid/test, so the "
        "class-only model can score atherosclerosis from fat; on 'shifted' fat is independent of the label. "
        "Confounder reliance is the AUROC with which the atherosclerosis score separates thick from thin fat "
        "within each class (0.5 = ignores fat). See docs/demo.md."
    )
    if len(result.runs) == 2:
        print_faithfulness(cfg, result)
    for title, run_id in result.runs.items():
        print(f"  {title}: MLflow run {run_id}")
    for split, folder in result.comparisons.items():
        print(f"  comparison on {split}: {folder / 'compare.md'}")
    print(f"  files: {result.root}")
    print(f"\nOpen the results in MLflow (experiment {cfg.mlflow.experiment!r}):\n  {ui_command(cfg.tracking_uri)}")
    return 0


def print_faithfulness(cfg: "Config", result: "DemoResult") -> None:
    """The benchmark's faithfulness table for this seed (benchmarks/faithfulness.py prints the same rows)."""
    from ctplatform.demo import faithfulness as fx
    from ctplatform.demo.pipeline import demo_config

    print("\n=== faithfulness: every figure beside its chance / image-blind prior level (one seed) ===")
    analysis = fx.analyse_models(demo_config(cfg), result.runs, result.root / "cohort")
    rep = fx.report({cfg.demo.seed: analysis}, n_boot=500, meta={"demo": True})
    fx.to_json(rep, result.root / "faithfulness.json")
    print(fx.format_table(rep))
    print("\n" + fx.diagnostics(rep))
    print("\n" + fx.conclusion(rep) + f" (one seed; intervals resample the test scans; JSON: {result.root / 'faithfulness.json'})")
