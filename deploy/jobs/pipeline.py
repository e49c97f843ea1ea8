"""The whole ctplatform pipeline as one job: ingest -> partition -> label-reports -> train -> evaluate.

    python deploy/jobs/pipeline.py --input /mnt/ctplatform/input/scans \
        --reports /mnt/ctplatform/input/reports.csv --workdir /mnt/ctplatform/work \
        --config configs/radchestct.yaml

Meant as a `ray job submit` entrypoint (it also runs as is on a machine with a local Ray). Each
stage is the `ctplatform` command of the same name, run in turn as a child process: under a Ray
job, RAY_ADDRESS is set, so every stage joins the cluster. The pipeline stops at the first stage
that fails and says how to go on; stages skip the items they already finished, so running the
same command again resumes. `--stages` picks a subset (e.g. `--stages train,evaluate`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ctplatform.demo.stages import DEPLOY_DEFAULT, DEPLOY_OPTIONAL

STAGES: tuple[str, ...] = DEPLOY_DEFAULT
OPTIONAL_STAGES: tuple[str, ...] = DEPLOY_OPTIONAL


@dataclass
class PipelineOptions:
    input: str | None = None
    reports: str | None = None
    store: str | None = None
    workdir: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    stages: tuple[str, ...] = STAGES
    run_name: str | None = None


def _is_remote_or_absolute(path: str) -> bool:
    return "://" in path or path.startswith("/")


def check_options(opts: PipelineOptions) -> list[str]:
    """What is wrong with the options (empty: fine); every problem at once, each with its fix."""
    problems = []
    unknown = [s for s in opts.stages if s not in STAGES + OPTIONAL_STAGES]
    if unknown:
        problems.append(f"unknown stages {unknown}; choose from {list(STAGES + OPTIONAL_STAGES)}")
    if "ingest" in opts.stages and not opts.input:
        problems.append("ingest needs --input (a folder of scans or a .csv/.parquet listing)")
    if "label-reports" in opts.stages and not opts.reports:
        problems.append("label-reports needs --reports (a CSV of report texts)")
    if opts.store is None and opts.workdir is None:
        problems.append("give --workdir (and optionally --store): where the store, MLflow database and runs go")
    # A job runs in a temporary copy of its working_dir: relative data paths would land there.
    for name in ("input", "reports", "store", "workdir"):
        value = getattr(opts, name)
        if value and not _is_remote_or_absolute(value):
            problems.append(f"--{name} {value!r} is relative: give an absolute path (or an s3:// URL)")
    return problems


def common_args(opts: PipelineOptions) -> list[str]:
    """The flags every stage takes: --config, --workdir, --set."""
    args: list[str] = []
    if opts.config:
        args += ["--config", opts.config]
    if opts.workdir:
        args += ["--workdir", opts.workdir]
    for item in opts.overrides:
        args += ["--set", item]
    return args


def stage_command(stage: str, opts: PipelineOptions, run_id: str | None = None) -> list[str]:
    """The `ctplatform` command line of one stage (run with this interpreter, so PATH does not matter)."""
    cmd = [sys.executable, "-m", "ctplatform.cli", stage]
    store = ["--store", opts.store] if opts.store else []
    if stage == "ingest":
        cmd += ["--input", str(opts.input)] + store
    elif stage == "label-reports":
        cmd += ["--reports", str(opts.reports)] + store
    elif stage in ("partition", "tune"):
        cmd += store
    elif stage == "train":
        cmd += store + (["--run-name", opts.run_name] if opts.run_name else [])
    elif stage == "evaluate":
        if not run_id:
            raise ValueError("evaluate needs the MLflow run id of a training run")
        cmd += ["--run-id", run_id] + store
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return cmd + common_args(opts)


def training_run_id(opts: PipelineOptions) -> str:
    """The MLflow run id of this pipeline's training run (found by its Ray run name tag)."""
    import mlflow

    from ctplatform import tracking
    from ctplatform.cli import config_from_args

    cfg = config_from_args(argparse.Namespace(config=opts.config, overrides=opts.overrides, workdir=opts.workdir, store=opts.store))
    mlflow.set_tracking_uri(cfg.tracking_uri)
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {cfg.mlflow.experiment!r} at {cfg.tracking_uri}: run the train stage first")
    run_id = tracking.find_run(exp.experiment_id, {tracking.RAY_RUN_NAME: opts.run_name}, finished=False)
    if run_id is None:
        raise LookupError(f"no MLflow run tagged {tracking.RAY_RUN_NAME}={opts.run_name!r}: did the train stage finish?")
    return run_id


def available_commands() -> set[str]:
    from ctplatform.cli import COMMANDS

    return {name for name, _ in COMMANDS}


def run_pipeline(opts: PipelineOptions) -> int:
    """Run the chosen stages in order; returns 0, or the failing stage's exit status."""
    problems = check_options(opts)
    missing = [s for s in opts.stages if s in STAGES + OPTIONAL_STAGES and s not in available_commands()]
    if missing:
        problems.append(f"this ctplatform has no {missing} command(s); install a version that does")
    if problems:
        for p in problems:
            print(f"pipeline: {p}", file=sys.stderr)
        return 2
    if opts.run_name is None:
        opts.run_name = time.strftime("pipeline-%Y%m%d-%H%M%S")
    timings: list[tuple[str, float, int]] = []
    for stage in opts.stages:
        run_id = training_run_id(opts) if stage == "evaluate" else None
        cmd = stage_command(stage, opts, run_id)
        print(f"\n=== pipeline: {stage} ===\n$ {shlex.join(cmd[2:])}", flush=True)
        start = time.monotonic()
        code = subprocess.call(cmd)
        timings.append((stage, time.monotonic() - start, code))
        if code:
            print(f"pipeline: {stage} failed (exit {code}); fix the cause above and run the same command again: "
                  f"finished stages and items are reused", file=sys.stderr)
            break
    print("\npipeline summary:")
    for stage, seconds, code in timings:
        print(f"  {stage:14s} {'ok' if code == 0 else f'exit {code}':8s} {seconds:8.1f} s")
    return timings[-1][2] if timings else 0


def parse_args(argv: list[str] | None = None) -> PipelineOptions:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", metavar="PATH", help="scans for ingest (absolute path or s3:// URL)")
    parser.add_argument("--reports", metavar="CSV", help="report texts for label-reports")
    parser.add_argument("--store", metavar="STORE", help="store root (default <workdir>/store)")
    parser.add_argument("--workdir", metavar="DIR", help="root for the store, MLflow database and runs")
    parser.add_argument("--config", metavar="FILE", help="YAML configuration, e.g. configs/radchestct.yaml")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override one setting in every stage (repeatable)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages in order (default: {','.join(STAGES)}; 'tune' may be added)")
    parser.add_argument("--run-name", help="training run name (default: pipeline-<date>-<time>)")
    a = parser.parse_args(argv)
    return PipelineOptions(
        input=a.input, reports=a.reports, store=a.store, workdir=a.workdir, config=a.config,
        overrides=a.overrides, stages=tuple(s.strip() for s in a.stages.split(",") if s.strip()), run_name=a.run_name,
    )


if __name__ == "__main__":
    sys.exit(run_pipeline(parse_args()))
