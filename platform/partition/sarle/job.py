"""The Ray Data job that labels reports and writes labels.parquet.

    summary = run_labelling(cfg, "reports.csv", store)

Rows of the reports CSV (`volume_id, report`) are read by Ray Data, labelled in batches by
`label_batch` (one task per batch of reports, `TaskPoolStrategy`), and come back as small status
rows: volume id, status, error, and the findings as "abnormality@location" strings. The driver alone
writes labels.parquet (one writer per table): every labelled volume's rows are replaced as a whole,
so a re-labelled volume never keeps stale rows, and volumes that failed keep what they had.
Report text stays inside the tasks: it is never logged, and errors name the volume id only.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ctplatform.config import Config
from ctplatform.labels import LOCATION_GROUP
from ctplatform.partition.sarle.labeler import LABEL_COLUMNS, label_report, label_rows
from ctplatform.runtime import init_ray
from ctplatform.store import Store, validate_volume_id

log = logging.getLogger("ctplatform.sarle")

STATUS_COLUMNS = ("volume_id", "status", "error", "findings")


def label_batch(
    batch: pd.DataFrame,
    id_column: str = "volume_id",
    text_column: str = "report",
    skip: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Label a batch of reports: one status row per report (pure; runs inside a Ray task).

    `findings` holds "abnormality@location" strings; an empty or unreadable report gives a failed
    row whose error names the volume id only (an invalid id cell is never quoted: its CSV line is
    named instead, from the batch's `line` column when present); a report that is not recognisable
    clinical English gets status "review" (never labelled normal); volumes in `skip` get "skipped".
    """
    from ctplatform.partition.sarle.language import unrecognised

    out: dict[str, list] = {c: [] for c in STATUS_COLUMNS}
    lines = batch["line"].tolist() if "line" in batch.columns else [None] * len(batch)
    for raw_id, text, line in zip(batch[id_column].tolist(), batch[text_column].tolist(), lines):
        volume_id = "" if raw_id is None or (isinstance(raw_id, float) and math.isnan(raw_id)) else str(raw_id).strip()
        status, error, findings = "ok", "", []
        if volume_id in skip:
            status = "skipped"
        try:
            validate_volume_id(volume_id)
        except ValueError as e:
            where = f"line {int(line)}" if line is not None else "a row"
            status, error, volume_id = "failed", f"{where}: {e}", ""
        if status == "ok" and (not isinstance(text, str) or not text.strip()):
            status, error = "failed", f"volume {volume_id}: the report is empty or missing; give the report text for it"
        if status == "ok":
            reason = unrecognised(text)
            if reason:
                status, error = "review", f"volume {volume_id}: {reason}"
        if status == "ok":
            try:
                findings = sorted(f"{a}@{loc}" for a, loc in label_report(text))
            except Exception as e:  # noqa: BLE001 - one bad report must not stop the job
                # The exception's message could quote the report, so only its type is kept.
                status, error = "failed", f"volume {volume_id}: labelling failed ({type(e).__name__}); report it as a bug"
        out["volume_id"].append(volume_id)
        out["status"].append(status)
        out["error"].append(error)
        out["findings"].append(findings)
    return pd.DataFrame(out)


def rows_from_status(status: pd.DataFrame) -> pd.DataFrame:
    """labels.parquet rows (long form, 80 labels per volume) of the labelled volumes."""
    rows: list[tuple[str, str, str, int]] = []
    for volume_id, findings in zip(status["volume_id"], status["findings"]):
        pairs = [tuple(f.split("@", 1)) for f in findings]
        rows.extend(label_rows(volume_id, pairs))
    return labels_frame(rows)


def labels_frame(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    df["value"] = df["value"].astype(np.int8)
    return df


def write_labels(store: Store, rows: pd.DataFrame) -> None:
    """Replace the rows of every volume in `rows` (whole volumes, so no stale rows survive)."""
    if len(rows):
        store.upsert_table("labels", rows, key=("volume_id",))


@dataclass
class LabelSummary:
    """What a labelling run did (counts only: no report text)."""

    labelled: int = 0
    failed: int = 0
    skipped: int = 0
    review: int = 0  # reports SARLE cannot read (not English): not labelled, listed in `errors`
    absent: int = 0  # report rows whose volume id is not in the store: not labelled, ids not shown
    positives_per_group: dict[str, int] = field(default_factory=dict)  # positive labels, summed over volumes
    volumes_with_positive: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"volumes labelled: {self.labelled}   failed: {self.failed}   skipped (already labelled): {self.skipped}",
            *([f"flagged for review (no recognisable clinical English; not labelled): {self.review}"] if self.review else []),
            *([f"refused: {self.absent} report row(s) name volume ids absent from the store (ids not shown)"]
              if self.absent else []),
            f"{'label group':<14}{'positive labels':>17}{'volumes with one':>18}",
        ]
        for g in ("lung", "heart", "great_vessel", "mediastinum"):
            lines.append(f"{g:<14}{self.positives_per_group.get(g, 0):>17}{self.volumes_with_positive.get(g, 0):>18}")
        return "\n".join(lines)


def summarize(rows: pd.DataFrame, failed: list[str], skipped: int = 0) -> LabelSummary:
    """Counts per label group of the written rows (a label counts once per volume)."""
    s = LabelSummary(labelled=int(rows["volume_id"].nunique()) if len(rows) else 0, failed=len(failed), skipped=skipped)
    s.errors = failed
    if len(rows):
        pos = rows[rows["value"] == 1].assign(group=lambda d: d["location"].map(LOCATION_GROUP))
        per_label = pos.drop_duplicates(["volume_id", "abnormality", "group"])
        s.positives_per_group = {str(k): int(v) for k, v in per_label["group"].value_counts().items()}
        s.volumes_with_positive = {str(k): int(v) for k, v in per_label.groupby("group")["volume_id"].nunique().items()}
    return s


def _read_reports(path: str, id_column: str, text_column: str, known_ids: frozenset[str] = frozenset()):
    """The reports as a Ray dataset (id, text, line), parsed strictly on the driver first
    (reports.py: a bad CSV fails with its line and reason, not a Ray traceback)."""
    import ray

    from ctplatform.partition.sarle.reports import read_reports_csv

    df = read_reports_csv(path, id_column, text_column, known_ids)
    return ray.data.from_pandas(df)


def run_labelling(
    cfg: Config,
    reports: str,
    store: Store,
    *,
    id_column: str = "volume_id",
    text_column: str = "report",
    batch_size: int = 256,
    tasks: int | None = None,
    skip_existing: bool = False,
) -> LabelSummary:
    """Label every report of `reports` (a CSV) with a Ray Data job and write labels.parquet."""
    import ray

    known = frozenset(store.volume_ids())
    init_ray(cfg)
    ds = _read_reports(reports, id_column, text_column, known)
    n_rows = ds.count()
    skip: frozenset[str] = frozenset()
    if skip_existing:
        old = store.read_table("labels")
        skip = frozenset(old["volume_id"].unique()) if old is not None else frozenset()
    size = tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = max(1, min(math.ceil(max(n_rows, 1) / batch_size), 4 * size))
    status = (
        ds.repartition(blocks)
        .map_batches(
            label_batch,
            fn_kwargs={"id_column": id_column, "text_column": text_column, "skip": skip},
            batch_format="pandas",
            batch_size=batch_size,
            compute=ray.data.TaskPoolStrategy(size=min(size, blocks)),
        )
        .to_pandas()
    )
    return _finish(status, store, known)


def _finish(status: pd.DataFrame, store: Store, known: frozenset[str] | None = None) -> LabelSummary:
    """Driver side: refuse ids absent from the store (by count, never by name), reject duplicate
    ids, write the labelled volumes, summarise."""
    skipped = int((status["status"] == "skipped").sum())
    status = status[status["status"] != "skipped"].copy()
    absent = 0
    if known is not None:
        named = status["volume_id"] != ""  # an invalid id cell already failed, by line number
        outside = named & ~status["volume_id"].isin(known)
        absent = int(outside.sum())
        status = status[~outside]
    if absent:
        log.warning("%d report row(s) name volume ids absent from the store; not labelled", absent)
    review = int((status["status"] == "review").sum())
    counts = Counter(v for v in status["volume_id"] if v)
    for i in status.index[status["volume_id"].map(lambda v: counts.get(v, 0)) > 1]:
        v = status.at[i, "volume_id"]
        status.at[i, "status"] = "failed"
        status.at[i, "error"] = f"volume {v}: appears {counts[v]} times in the reports; give one report per volume"
    ok = status[status["status"] == "ok"]
    failed = sorted(set(status.loc[status["status"] == "failed", "error"]))
    flagged = sorted(set(status.loc[status["status"] == "review", "error"]))
    for err in failed + flagged:
        log.warning(err)
    rows = rows_from_status(ok) if len(ok) else labels_frame([])
    write_labels(store, rows)
    out = summarize(rows, failed, skipped)
    out.review, out.absent = review, absent
    out.errors = failed + flagged
    return out
