"""`ctplatform store`: migrate a store to the current layout, audit it, pack its grid masks."""

from __future__ import annotations

import argparse
import json

from ctplatform.config import Config

HELP = """Maintain a store: migrate | audit | pack.

migrate  bring a store written by an earlier version to the current layout in place (grid masks
         one array per volume, checksums recorded on older arrays, tables folded, grid masks
         packed); safe to re-run after it was interrupted.
audit    list items that fail verification and manifest rows that disagree with their arrays
         (--deep also re-reads every array and compares its checksum). Exit status 1 when any.
pack     rebuild the packed grid masks loaders read (partition does this at its end).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["migrate", "audit", "pack"])
    parser.add_argument("--store", metavar="STORE", help="store root (local path or s3://...); default <workdir>/store")
    parser.add_argument("--deep", action="store_true", help="audit: re-read every array and check its checksum")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from ctplatform.store import Store
    from ctplatform.store_migrate import audit, migrate
    from ctplatform.store_pack import pack_grids

    store = Store(cfg.store_path)
    if not store.exists():
        print(f"ctplatform store: no store at {store.root}")
        return 2
    if args.action == "migrate":
        print(json.dumps(migrate(store), indent=1))
        return 0
    if args.action == "pack":
        pointer = pack_grids(store, cfg.model.geometry.name)
        print(f"packed {len(pointer['ids'])} volumes' grid masks ({', '.join(pointer['variants'])})")
        return 0
    problems = audit(store, deep=args.deep)
    for p in problems:
        print(p)
    print(f"audit: {len(problems)} problem(s) in {store.root}")
    return 1 if problems else 0
