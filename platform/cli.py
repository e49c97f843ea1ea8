"""The `ctplatform` command.

Each sub-command lives in its stage's `command` module, which defines `HELP`, `add_arguments(parser)`
and `run(args, cfg) -> int`, and imports nothing heavy at module level so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from ctplatform.config import Config, load_config
from ctplatform.runtime import setup_logging

#: (sub-command, module), as `--help` lists them (the order a pipeline runs them is demo/stages.py's).
COMMANDS: list[tuple[str, str]] = [
    ("phantom", "ctplatform.phantom.command"),
    ("ingest", "ctplatform.ingest.command"),
    ("partition", "ctplatform.partition.command"),
    ("label-reports", "ctplatform.partition.sarle.command"),
    ("train", "ctplatform.train.command"),
    ("tune", "ctplatform.train.tune.command"),
    ("evaluate", "ctplatform.eval.command"),
    ("compare", "ctplatform.eval.compare.command"),
    ("predict", "ctplatform.predict.command"),
    ("demo", "ctplatform.demo.command"),
    ("store", "ctplatform.store_command"),
]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", help="YAML configuration (see configs/); defaults apply otherwise")
    g.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one setting, e.g. --set train.lambda_mask=0 (repeatable)",
    )
    g.add_argument("--workdir", metavar="DIR", help="root for the default store, MLflow database and runs")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return common


def _load(module: str) -> ModuleType:
    return importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctplatform",
        description=(
            "Explainable multi-abnormality classification of chest CT on Ray: ingest scans into a "
            "Zarr store, segment organs and label reports (PARTITION), train AxialNet with the "
            "HiResCAM mask loss, sweep variants, evaluate AUROC and OrganIoU in MLflow."
        ),
        epilog="Run `ctplatform <command> --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    common = _common_options()
    for name, module in COMMANDS:
        mod = _load(module)
        p = sub.add_parser(
            name,
            parents=[common],
            help=mod.HELP.splitlines()[0],
            description=mod.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def config_from_args(args: argparse.Namespace, default_config: str | None = None) -> Config:
    """--config (else the command's own `DEFAULT_CONFIG`, if it has one), then --set, --workdir, --store."""
    overrides = list(args.overrides)
    if getattr(args, "workdir", None):
        overrides.append(f"workdir={args.workdir}")
    if getattr(args, "store", None):
        overrides.append(f"store={args.store}")
    return load_config(args.config or default_config, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    module = _load(args._module)
    try:
        cfg = config_from_args(args, getattr(module, "DEFAULT_CONFIG", None))
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"ctplatform {args.command}: configuration error: {e}\n")
    return int(module.run(args, cfg) or 0)


if __name__ == "__main__":
    sys.exit(main())
