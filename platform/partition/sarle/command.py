"""`ctplatform label-reports`: abnormality x location labels from reports, or from released labels."""

from __future__ import annotations

import argparse
import logging

from ctplatform.config import Config

# Imports of the stage's jobs stay inside the functions that use them: cli imports this module to
# build `ctplatform --help`, which must stay fast.

HELP = """Write labels.parquet: SARLE over free-text reports, or import released labels.

  ctplatform label-reports --reports reports.csv --store STORE
      reports.csv has one row per volume: volume_id, report. Runs as a Ray Data job (batches of
      reports per task); a re-labelled volume's rows are replaced whole; an empty report fails
      for that volume only (the error names the volume id, never report text); a report that is
      not recognisable clinical English is flagged for review (not labelled normal); rows whose
      volume id is not in the store are refused by count; a malformed CSV fails naming its line.
  ctplatform label-reports --radchestct-labels imgtrain_Abnormality_and_Location_Labels.csv ... --store STORE
      RAD-ChestCT's released abnormality x location labels, mapped onto the 80 labels.
  ctplatform label-reports --ctrate-labels train_predicted_labels.csv ... --store STORE
      CT-RATE's 18 labels (15 map onto ours; the other labels are written as absent).
  ctplatform label-reports --explain "Left lower lobe consolidation, no effusion."
      Show how SARLE reads a text (abnormal phrases and findings); writes nothing.
"""

log = logging.getLogger("ctplatform.sarle")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reports", metavar="CSV", help="reports to label: columns volume_id, report")
    src.add_argument("--radchestct-labels", metavar="CSV", nargs="+", help="RAD-ChestCT abnormality x location label CSVs")
    src.add_argument("--ctrate-labels", metavar="CSV", nargs="+", help="CT-RATE multi-abnormality label CSVs")
    src.add_argument("--explain", metavar="TEXT", help="print how SARLE reads TEXT and exit")
    p.add_argument("--store", metavar="STORE", help="store path or URL (default: <workdir>/store)")
    p.add_argument("--id-column", default="volume_id", help="reports CSV column with the volume id (default volume_id)")
    p.add_argument("--text-column", default="report", help="reports CSV column with the report text (default report)")
    p.add_argument("--batch-size", type=int, default=256, help="reports per Ray Data batch (default 256)")
    p.add_argument("--tasks", type=int, default=None, help="labelling tasks at once (default: the cluster's CPUs)")
    p.add_argument("--skip-existing", action="store_true", help="leave volumes already in labels.parquet alone")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.explain is not None:
        from ctplatform.partition.sarle.labeler import explain

        e = explain(args.explain)
        print("abnormal phrases:")
        for phrase in e.abnormal_phrases or ["(none: the text reads as normal)"]:
            print(f"  {phrase}")
        print("findings:")
        for abnormality, location in e.findings or [("(none)", "")]:
            print(f"  {abnormality:<28}{location}")
        return 0

    from ctplatform.store import Store

    store = Store(cfg.store_path)
    if args.reports:
        from ctplatform.partition.sarle.job import run_labelling

        try:
            summary = run_labelling(
                cfg,
                args.reports,
                store,
                id_column=args.id_column,
                text_column=args.text_column,
                batch_size=args.batch_size,
                tasks=args.tasks,
                skip_existing=args.skip_existing,
            )
        except (ValueError, OSError) as e:  # a malformed CSV (its line and reason), a missing file or store
            log.error("%s", e)
            return 2
        print(summary.table())
        if summary.failed or summary.review:
            print(f"{summary.failed} volume(s) failed and {summary.review} were flagged for review; "
                  "their earlier labels, if any, are kept:")
            for err in summary.errors[:20]:
                print(f"  {err}")
            if len(summary.errors) > 20:
                print(f"  ... and {len(summary.errors) - 20} more (see the log)")
        # Nothing labelled while reports were refused (failed, for review, or absent from the store): exit 1.
        return 0 if summary.labelled or not (summary.failed or summary.review or summary.absent) else 1

    from ctplatform.partition.sarle.external import CTRATE_COVERED_LABELS, read_label_tables
    from ctplatform.partition.sarle.job import summarize, write_labels

    kind = "radchestct" if args.radchestct_labels else "ctrate"
    paths = args.radchestct_labels or args.ctrate_labels
    try:
        rows = read_label_tables(paths, kind)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    write_labels(store, rows)
    print(summarize(rows, []).table())
    if kind == "ctrate":
        print(
            f"CT-RATE informs {len(CTRATE_COVERED_LABELS)} of the 80 labels; the others were written as absent. "
            "Train on ctplatform.partition.sarle.external.CTRATE_COVERED_LABELS only."
        )
    return 0
