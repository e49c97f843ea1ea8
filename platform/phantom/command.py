"""`ctplatform phantom`: write a synthetic chest CT cohort with exact ground truth."""

from __future__ import annotations

import argparse
import logging
from typing import Any

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Generate synthetic chest CT scans with reports, labels and voxel-exact truth.

Writes OUT/scans/*.nii.gz (varied orientation, spacing and slice count), OUT/truth/ (organ label
maps, lesion bit maps, lesion_codes.csv), OUT/reports.csv, OUT/labels.csv and OUT/scans.csv, the
listing `ctplatform ingest --input OUT/scans.csv` reads. A re-run with the same options resumes.

Confounder (shortcut-learning test, as the paper's body-wall fat / atherosclerosis case study):
  --confounder fat                                   fat thickness tracks great_vessel_atherosclerosis
  --confounder marker:lung_nodule:0.8                an external marker tracks lung_nodule, strength 0.8
In train/valid/test the feature agrees with the label for a fraction (1 + strength) / 2 of scans;
in the extra `shifted` split it is independent of the label.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--n", type=int, default=60, help="number of scans (default 60)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0); same seed, same cohort")
    p.add_argument("--size", choices=("tiny", "demo", "paper"), default="demo",
                   help="tiny: ~3.7 mm (tests); demo: 224x224 at ~1.5 mm, ~100 slices; paper: 512x512 at ~0.75 mm")
    p.add_argument("--confounder", metavar="KIND[:LABEL[:STRENGTH]]",
                   help="fat | marker, optionally the label it tracks and the strength in [0, 1] (default 0.9)")
    p.add_argument("--prevalence", metavar="LABEL=P", action="append", default=[],
                   help="override a finding's prevalence, e.g. --prevalence lung_nodule=0.5 (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--preview", nargs="?", type=int, const=4, default=0, metavar="K",
                   help="write OUT/preview/<id>.png for the first K scans (default K=4)")


def _prevalence(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--prevalence {item!r}: expected LABEL=P, e.g. lung_nodule=0.4")
        k, v = item.split("=", 1)
        p = float(v)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"--prevalence {item!r}: P must lie in [0, 1]")
        out[k.strip()] = p
    return out


def run(args: argparse.Namespace, cfg: Any) -> int:
    from ctplatform.phantom.cohort import generate_cohort

    log = logging.getLogger("ctplatform.phantom")
    try:
        listing = generate_cohort(
            args.out, args.n, seed=args.seed, size=args.size, confounder=args.confounder,
            prevalence=_prevalence(args.prevalence), workers=args.workers, preview=args.preview,
        )
    except (ValueError, KeyError) as e:
        log.error("phantom: %s", e)
        return 2
    failed = int(listing.attrs.get("failed", 0))
    if failed:
        log.error("phantom: %d scans failed (see %s/failed.csv); the listing holds the %d others", failed, args.out, len(listing))
    if listing.empty:
        return 1
    counts = listing["split"].value_counts().to_dict()
    log.info("wrote %d scans to %s (%s); ingest with: ctplatform ingest --input %s/scans.csv",
             len(listing), args.out, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), args.out)
    if args.preview:
        log.info("previews in %s/preview/", args.out)
    return 1 if failed else 0
