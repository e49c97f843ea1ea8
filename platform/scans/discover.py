"""Discovery: turn an input path into work rows of ids and paths (never arrays).

An input is either a folder, searched recursively for NIfTI files (.nii, .nii.gz), RAD-ChestCT
.npz files and DICOM series folders (a folder directly holding DICOM files is one series), or a
listing (.csv or .parquet) with columns `volume_id, path[, format, split, metadata]` whose relative
paths are relative to the listing's folder.

Volume ids are deterministic: from the listing, else the file name without its suffix, else (DICOM)
the series folder's path relative to the input joined with '_'; each is sanitised to the store's
id rule. Two sources with the same id are both refused with one failed row (which source was
meant cannot be guessed); unreadable folders become failed rows too. Each row:
`{volume_id, path, format, split, metadata, error}` with `error` empty when the row is workable.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from ctplatform.scans.dicom import is_dicom_file
from ctplatform.scans.readers import CTRATE_NAME, FORMATS, is_nifti
from ctplatform.store import validate_volume_id

LISTING_SUFFIXES = (".csv", ".parquet")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIXES = (".nii.gz", ".nii", ".npz")


def sanitize_id(name: str) -> str:
    """Map any name onto the store's id rule: unsafe runs become '_', leading '.', '_', '-' go."""
    out = _UNSAFE.sub("_", name).lstrip("._-")[:200].rstrip(".")
    return out or "scan"


def id_from_file(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitize_id(name)


def _row(volume_id: str, path: Path | str, fmt: str, split: str = "", metadata: str = "", error: str = "") -> dict:
    return {
        "volume_id": volume_id,
        "path": str(path),
        "format": fmt,
        "split": split,
        "metadata": metadata,
        "error": error,
    }


def discover_folder(root: Path) -> list[dict]:
    """Scans under `root` (hidden files and folders are skipped), in sorted path order."""
    rows: list[dict] = []

    def unreadable(err: OSError) -> None:
        where = Path(err.filename) if err.filename else root
        rel = where.relative_to(root) if where != root and where.is_relative_to(root) else Path(where.name)
        reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or type(err).__name__)
        rows.append(
            _row(
                sanitize_id("_".join(rel.parts) or root.name),
                where,
                "dicom",
                error=f"cannot read folder {rel}: {reason}; fix its permissions and re-run",
            )
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        files = [here / f for f in sorted(filenames) if not f.startswith(".")]
        if any(is_dicom_file(f) for f in files):
            rel = here.relative_to(root)
            rows.append(_row(sanitize_id("_".join(rel.parts) or root.name), here, "dicom"))
        for f in files:
            if is_nifti(f):
                rows.append(_row(id_from_file(f), f, "ctrate" if CTRATE_NAME.match(f.name) else "nifti"))
            elif f.name.lower().endswith(".npz"):
                rows.append(_row(id_from_file(f), f, "npz"))
    return rows


def read_listing(path: Path) -> list[dict]:
    """Rows of a CSV/Parquet listing (`volume_id, path[, format, split, metadata]`)."""
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("volume_id", "path") if c not in df.columns]
    if missing:
        raise ValueError(f"listing {path} lacks columns {missing}; it needs volume_id and path (optional: format, split)")
    rows = []
    for rec in df.fillna("").astype(str).to_dict("records"):
        raw_id = rec["volume_id"].strip()
        src = rec["path"].strip()
        fmt = rec.get("format", "").strip().lower()
        metadata = rec.get("metadata", "").strip()
        error = ""
        if not src:
            error = "listing row has no path"
        elif fmt and fmt not in FORMATS:
            error = f"unknown format {fmt!r} in listing; use one of {', '.join(FORMATS)} or leave it empty"
        p = Path(src) if Path(src).is_absolute() else path.parent / src
        if metadata and not Path(metadata).is_absolute():
            metadata = str(path.parent / metadata)
        if not raw_id:
            error = error or "listing row has no volume_id"
        rows.append(_row(sanitize_id(raw_id or p.name), p, fmt, rec.get("split", "").strip(), metadata, error))
    return rows


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """One failed row per id claimed by several sources; other rows unchanged, order kept."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["volume_id"]].append(r)
    out, seen = [], set()
    for r in rows:
        vid = r["volume_id"]
        if vid in seen:
            continue
        seen.add(vid)
        group = groups[vid]
        if len(group) > 1:
            names = ", ".join(Path(g["path"]).name for g in group[:3]) + (" ..." if len(group) > 3 else "")
            r = {
                **r,
                "error": f"duplicate volume id: {len(group)} sources map to it ({names}); none was ingested. "
                "Give them distinct ids in a listing (volume_id, path)",
            }
        out.append(r)
    return out


def discover(input_path: str | Path) -> list[dict]:
    """Work rows for a folder or listing, duplicates marked, ids valid for the store."""
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file() and path.suffix.lower() in LISTING_SUFFIXES:
        rows = read_listing(path)
    elif path.is_dir():
        rows = discover_folder(path)
    elif path.is_file():
        rows = [_row(id_from_file(path), path, "")]
    else:
        raise ValueError(f"input {path} is neither a folder, a scan file nor a .csv/.parquet listing")
    for r in rows:
        validate_volume_id(r["volume_id"])  # sanitize_id guarantees it; a bug otherwise
    return mark_duplicates(rows)
