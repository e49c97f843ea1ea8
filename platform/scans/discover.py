"""Discovery: turn an input path into work rows of ids and paths (never arrays).

An input is either a folder, searched recursively for NIfTI files (.nii, .nii.gz), RAD-ChestCT
.npz files and DICOM series folders (a folder directly holding DICOM files is one series), or a
listing (.csv or .parquet) with columns `volume_id, path[, format, split, metadata, truth, truth_codes]`
whose relative paths are relative to the listing's folder. `truth` names a lesion mask that came with
the scan and `truth_codes` what its values mean (ingest/truth.py); only a listing can bring truth.

Volume ids are deterministic: from the listing, else the file name without its suffix, else (DICOM)
the series folder's path relative to the input joined with '_'; each is sanitised to the store's
id rule. Two sources with the same id are both refused with one failed row (which source was
meant cannot be guessed); unreadable folders become failed rows too. Each row:
`{volume_id, path, format, split, metadata, truth, truth_codes, error}` with `error` empty when the
row is workable.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from ctplatform.scans.dicom import is_dicom_file
from ctplatform.scans.readers import CTRATE_NAME, FORMATS, is_nifti
from ctplatform.store import RESERVED_IDS, validate_volume_id

LISTING_SUFFIXES = (".csv", ".parquet")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIXES = (".nii.gz", ".nii", ".npz")


def sanitize_id(name: str) -> str:
    """Map any name onto the store's id rule: unsafe runs become '_', leading '.', '_', '-' go."""
    out = _UNSAFE.sub("_", name).lstrip("._-")[:200].rstrip(".")
    if out.lower() in RESERVED_IDS:  # e.g. a file named zarr.json.nii.gz
        out = out.replace(".", "_")
    return out or "scan"


def id_from_file(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitize_id(name)


def _row(volume_id: str, path: Path | str, fmt: str, split: str = "", metadata: str = "", error: str = "",
         truth: str = "", truth_codes: str = "", private: str = "") -> dict:
    """One work row; `private` (non-empty only when pseudonymising) holds the names below the input
    root that must never be shown ('/'-joined), and marks the row as pseudonymised."""
    return {
        "volume_id": volume_id,
        "path": str(path),
        "format": fmt,
        "split": split,
        "metadata": metadata,
        "truth": truth,
        "truth_codes": truth_codes,
        "error": error,
        "private": private,
    }


def _named(rows: list[dict], key: bytes | None) -> list[dict]:
    """With a key: ids become keyed hashes of the names they were made from (pseudonym.py)."""
    if key is None:
        return rows
    from ctplatform.scans.pseudonym import pseudonym

    out = []
    for r in rows:
        private = r["private"]
        error = r["error"]
        if error:
            from ctplatform.scans.pseudonym import scrub

            error = scrub(error, r["path"], private)
        out.append({**r, "volume_id": pseudonym(key, private), "error": error})
    return out


def discover_folder(root: Path, key: bytes | None = None) -> list[dict]:
    """Scans under `root` (hidden files and folders are skipped), in sorted path order; with `key`
    every id is a keyed hash of the scan's path below `root` (pseudonym.py)."""
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
                private=rel.as_posix() if key else "",
            )
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        files = [here / f for f in sorted(filenames) if not f.startswith(".")]
        rel = here.relative_to(root)
        if any(is_dicom_file(f) for f in files):
            private = (rel.as_posix() if rel.parts else root.name) if key else ""
            rows.append(_row(sanitize_id("_".join(rel.parts) or root.name), here, "dicom", private=private))
        for f in files:
            private = (rel / f.name).as_posix() if key else ""
            if is_nifti(f):
                rows.append(_row(id_from_file(f), f, "ctrate" if CTRATE_NAME.match(f.name) else "nifti", private=private))
            elif f.name.lower().endswith(".npz"):
                rows.append(_row(id_from_file(f), f, "npz", private=private))
    return _named(rows, key)


def read_listing(path: Path, key: bytes | None = None) -> list[dict]:
    """Rows of a CSV/Parquet listing (`volume_id, path[, format, split, metadata, truth, truth_codes]`).

    The listing's ids were chosen by its author and are kept; with `key`, a row without one gets
    a keyed hash of its path instead of the file name."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"listing {path.name}: byte {e.start} is not UTF-8; save the listing as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as e:
        # pandas' message can quote a cell: only its kind is shown.
        kind = "it is empty" if isinstance(e, pd.errors.EmptyDataError) else f"{type(e).__name__}"
        raise ValueError(f"listing {path.name} could not be read ({kind}); it needs columns volume_id and path") from None
    missing = [c for c in ("volume_id", "path") if c not in df.columns]
    if missing:
        raise ValueError(f"listing {path} lacks columns {missing}; it needs volume_id and path (optional: format, split)")
    rows = []
    for n, rec in enumerate(df.fillna("").astype(str).to_dict("records"), start=2 if path.suffix.lower() == ".csv" else 1):
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
        truth, truth_codes = (_beside(path, rec.get(c, "").strip()) for c in ("truth", "truth_codes"))
        if not raw_id:
            error = error or "listing row has no volume_id"
        elif raw_id.lower() in RESERVED_IDS:
            error = error or f"volume_id {raw_id!r} is a name Zarr reserves for its own metadata; choose another"
        elif sanitize_id(raw_id) != raw_id:
            # The author chose this id: renaming it silently would file the scan under another name,
            # and the cell may hold a name or an MRN, so it is never quoted.
            try:
                validate_volume_id(raw_id)
                why = "invalid volume id"
            except ValueError as e:
                why = str(e)
            error = error or f"listing {'line' if path.suffix.lower() == '.csv' else 'row'} {n}: {why}"
            raw_id = f"invalid-listing-row-{n}"
        private = src if key and not raw_id else ""
        row = _row(sanitize_id(raw_id or p.name), p, fmt, rec.get("split", "").strip(), metadata, error,
                   truth, truth_codes, private)
        rows.extend(_named([row], key) if private else [row])
    return rows


def _beside(listing: Path, value: str) -> str:
    """A listing's relative path, resolved against the listing's folder ("" stays "")."""
    return str(listing.parent / value) if value and not Path(value).is_absolute() else value


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
            if any(g.get("private") for g in group):
                names = "names withheld: pseudonymised"
            else:
                names = ", ".join(Path(g["path"]).name for g in group[:3]) + (" ..." if len(group) > 3 else "")
            r = {
                **r,
                "error": f"duplicate volume id: {len(group)} sources map to it ({names}); none was ingested. "
                "Give them distinct ids in a listing (volume_id, path)",
            }
        out.append(r)
    return out


def discover(input_path: str | Path, key: bytes | None = None) -> list[dict]:
    """Work rows for a folder or listing, duplicates marked, ids valid for the store; with `key`,
    ids made from folder/file names are pseudonymised (pseudonym.py)."""
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file() and path.suffix.lower() in LISTING_SUFFIXES:
        rows = read_listing(path, key)
    elif path.is_dir():
        rows = discover_folder(path, key)
    elif path.is_file():
        rows = _named([_row(id_from_file(path), path, "", private=path.name if key else "")], key)
    else:
        raise ValueError(f"input {path} is neither a folder, a scan file nor a .csv/.parquet listing")
    for r in rows:
        validate_volume_id(r["volume_id"])  # sanitize_id guarantees it; a bug otherwise
    return mark_duplicates(rows)
