"""Read a reports CSV strictly, saying which line is wrong and why.

    df = read_reports_csv("reports.csv", "volume_id", "report", known_ids=set(store.volume_ids()))
    # columns: volume_id, report, line (the physical line the row starts on)

Refused as a whole (ReportsCSVError, naming the line): an empty file, a header without rows,
missing columns, bytes that are not UTF-8, a quote that is never closed or is followed by more
text, and a quoted report that runs on over a line starting like a new row (`<known id>,`): the
signature of an unbalanced quote merging two reports, which would give one volume the other's
findings. Cell values are never quoted in messages (a cell may hold a name or an MRN).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection

import pandas as pd

#: Largest report accepted (characters): far above any radiology report, far below a merged file.
MAX_REPORT_CHARS = 1_000_000
_ROW_START = re.compile(r'^\s*"?([A-Za-z0-9][A-Za-z0-9._-]{0,199})"?\s*,')


class ReportsCSVError(ValueError):
    """The reports CSV cannot be read safely; the message names the line and the reason."""


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ReportsCSVError(
            f"{name} line {line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8 (the file looks like "
            "latin-1/Windows-1252); save the CSV as UTF-8 and re-run"
        ) from None


def read_reports_csv(
    path: str, id_column: str = "volume_id", text_column: str = "report", known_ids: Collection[str] = ()
) -> pd.DataFrame:
    """Rows `id_column, text_column, line` of a reports CSV; raises ReportsCSVError (see module doc)."""
    name = path.rsplit("/", 1)[-1]
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"reports CSV {path} does not exist") from None
    except IsADirectoryError:
        raise ReportsCSVError(f"reports CSV {path} is a folder, not a CSV file") from None
    if not data.strip():
        raise ReportsCSVError(f"{name} is empty: it needs a header line ({id_column},{text_column}) and one row per volume")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ReportsCSVError(f"{name} line {line}: holds a NUL byte; a binary file, not a CSV")
    text = _decode(data, name)
    lines = text.splitlines(keepends=True)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise ReportsCSVError(f"{name} line 1: the header is not valid CSV ({e})") from None
    header = [h.strip() for h in header]
    missing = [c for c in (id_column, text_column) if c not in header]
    if missing:
        shown = [h[:40] for h in header[:10]]
        raise ReportsCSVError(
            f"reports CSV {name} lacks columns {missing} (it has {shown}); it needs one row per volume with "
            f"columns {id_column}, {text_column} (choose others with --id-column/--text-column)"
        )
    i_id, i_text = header.index(id_column), header.index(text_column)
    known = set(known_ids)
    ids: list[str | None] = []
    texts: list[str | None] = []
    starts: list[int] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ReportsCSVError(
                f"{name} line {reader.line_num}: {e} (a quote in the row starting on line {start} is unbalanced or "
                'followed by text; inside a quoted report write a quote as "")'
            ) from None
        end = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            start = end + 1
            continue
        if len(cells) != len(header):
            raise ReportsCSVError(
                f"{name} line {start}: {len(cells)} cells where the header has {len(header)}; quote reports that "
                "hold commas, and check for an unbalanced quote above"
            )
        if end > start and known:
            for k in range(start, min(end, len(lines))):  # physical lines 2.. of the record (0-based index k)
                m = _ROW_START.match(lines[k])
                if m and m.group(1) in known:
                    raise ReportsCSVError(
                        f"{name} line {k + 1}: a quoted report that starts on line {start} runs on over a line that "
                        "starts like a new row (a known volume id, then a comma): an unbalanced quote would merge "
                        "two reports; close the quote"
                    )
        report = cells[i_text]
        if len(report) > MAX_REPORT_CHARS:
            raise ReportsCSVError(
                f"{name} line {start}: the report has {len(report)} characters (lines {start}-{end}); far beyond a "
                "radiology report: an unbalanced quote?"
            )
        ids.append(cells[i_id].strip() or None)
        texts.append(report if report.strip() else None)
        starts.append(start)
        start = end + 1
    if not ids:
        raise ReportsCSVError(f"{name} holds a header but no rows: nothing to label")
    return pd.DataFrame({id_column: ids, text_column: texts, "line": starts})
