"""A cohort of phantoms on disk: scans, truth, reports, labels and a listing that `ctplatform ingest` reads.

Its files are laid out as layout.py says (`CohortLayout`).

Each scan is made by a pure function of (cohort seed, index, assignment), in a process pool; a
re-run skips scans whose record exists, so a killed run resumes.

Confounding (the paper's body-wall fat / atherosclerosis case study): the target label's presence
is assigned per split with exact counts, and the confounder (fat thickness, or an external marker)
is high for a fraction (1 + strength) / 2 of positives and low for that fraction of negatives in
train/valid/test; in the `shifted` split it is high for exactly half of each class (independent).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctplatform.phantom.anatomy import ORGAN_CODES
from ctplatform.phantom.findings import IMPLIES, SUPPORTED, check_labels, sample_findings
from ctplatform.phantom.generate import SIZES, Confounder, make_phantom
from ctplatform.phantom.layout import CohortLayout
from ctplatform.phantom.nifti import ORIENTATIONS, lesion_bitmap, lesion_codes_table, reorient, store_affine, write_nifti

log = logging.getLogger("ctplatform.phantom")

FAT_LOW_MM, FAT_HIGH_MM = (4.0, 12.0), (24.0, 34.0)
#: Phantom organ (anatomy.ORGAN_CODES) that is the region of each confounder kind.
CONFOUNDER_ORGAN: dict[str, str] = {"fat": "subcutaneous_fat", "marker": "marker"}
#: Version of a scan's truth files; a record of another version is regenerated (v2: confounder bit).
TRUTH_FORMAT = 2


@dataclass(frozen=True)
class ConfounderSpec:
    """Make `kind` (fat | marker) track `label` with `strength` in [0, 1] outside the shifted split."""

    kind: str = "fat"
    label: str = "great_vessel_atherosclerosis"
    strength: float = 0.9
    target_prevalence: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("fat", "marker"):
            raise ValueError(f"confounder kind must be fat or marker, got {self.kind!r}")
        check_labels([self.label])
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"confounder strength must lie in [0, 1], got {self.strength}")
        if not 0.0 < self.target_prevalence < 1.0:
            raise ValueError(f"target prevalence must lie in (0, 1), got {self.target_prevalence}")

    @classmethod
    def parse(cls, text: str) -> "ConfounderSpec":
        """'fat', 'marker:lung_nodule', 'fat:great_vessel_atherosclerosis:0.8'."""
        parts = [p.strip() for p in text.split(":")]
        if not parts[0] or len(parts) > 3:
            raise ValueError(f"confounder {text!r}: expected KIND[:LABEL[:STRENGTH]], e.g. fat:great_vessel_atherosclerosis:0.9")
        kw: dict[str, Any] = {"kind": parts[0]}
        if len(parts) > 1 and parts[1]:
            kw["label"] = parts[1]
        if len(parts) > 2:
            kw["strength"] = float(parts[2])
        return cls(**kw)


def split_counts(n: int, confounded: bool) -> dict[str, int]:
    fr = {"train": 0.5, "valid": 0.15, "test": 0.15, "shifted": 0.2} if confounded else {"train": 0.6, "valid": 0.2, "test": 0.2}
    counts = {k: int(np.floor(v * n)) for k, v in fr.items()}
    for k in list(fr)[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def assign(n: int, seed: int, confounder: ConfounderSpec | None, prevalence: Mapping[str, float] | None,
           cooccurrence: Mapping[tuple[str, str], float] | None) -> list[dict[str, Any]]:
    """Per scan: index, seed, split, findings, confounder value. Pure function of the arguments."""
    rng = np.random.default_rng([seed, 424242])
    splits = [s for s, k in split_counts(n, confounder is not None).items() for _ in range(k)]
    splits = list(rng.permutation(splits))
    out = []
    for i in range(n):
        vol_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] & 0x7FFFFFFF)
        findings = sample_findings(np.random.default_rng([vol_seed, 0]), prevalence, cooccurrence)
        out.append({"index": i, "seed": vol_seed, "split": str(splits[i]), "findings": findings,
                    "confounder_kind": "", "confounder_value": float("nan")})
    if confounder is not None:
        _confound(out, confounder, rng)
    return out


def _confound(rows: list[dict[str, Any]], spec: ConfounderSpec, rng: np.random.Generator) -> None:
    target = spec.label
    carriers = [k for k, implied in IMPLIES.items() if target in implied]
    for split in ("train", "valid", "test", "shifted"):
        idx = [r["index"] for r in rows if r["split"] == split]
        if not idx:
            continue
        n_pos = int(round(spec.target_prevalence * len(idx)))
        if len(idx) >= 2:
            n_pos = min(max(n_pos, 1), len(idx) - 1)
        pos = set(rng.choice(idx, size=n_pos, replace=False).tolist())
        high: set[int] = set()
        for group, is_pos in ((sorted(pos), True), (sorted(set(idx) - pos), False)):
            if split == "shifted":
                k = len(group) // 2 + (int(rng.integers(2)) if len(group) % 2 else 0)
            else:
                k = int(round(len(group) * (1.0 + spec.strength) / 2.0))
            agree = set(rng.choice(group, size=k, replace=False).tolist()) if group else set()
            high |= agree if is_pos else set(group) - agree
        for i in idx:
            f = rows[i]["findings"]
            if i in pos:
                f.setdefault(target, True)
            else:
                for lab in [target, *carriers]:
                    f.pop(lab, None)
            vr = np.random.default_rng([rows[i]["seed"], 1])
            if spec.kind == "fat":
                value = float(vr.uniform(*(FAT_HIGH_MM if i in high else FAT_LOW_MM)))
            else:
                value = 1.0 if i in high else 0.0
            rows[i]["confounder_kind"] = spec.kind
            rows[i]["confounder_value"] = round(value, 2)


def volume_id(seed: int, index: int) -> str:
    return f"ph{seed}-{index:05d}"


def make_one(out_dir: str, cohort_seed: int, row: dict[str, Any], size: str, preview: bool) -> dict[str, Any]:
    """Generate and write one scan; returns its record (also saved as truth/<id>.json)."""
    out = CohortLayout(out_dir)
    vid = volume_id(cohort_seed, row["index"])
    conf = Confounder(row["confounder_kind"], row["confounder_value"]) if row["confounder_kind"] else None
    ph = make_phantom(row["seed"], size, row["findings"], conf)
    rng = np.random.default_rng([row["seed"], 2])
    orientation = str(rng.choice(ORIENTATIONS))
    offset = (float(rng.uniform(-20, 20)), float(rng.uniform(-200, -120)), float(rng.uniform(-1400, -900)))
    aff = store_affine(ph.origin_mm, ph.spacing_mm, offset)
    kind = row["confounder_kind"]
    region = ph.organs == ORGAN_CODES[CONFOUNDER_ORGAN[kind]] if kind else None
    for path, array in ((out.scan(vid), ph.hu), (out.organs(vid), ph.organs),
                        (out.lesions(vid), lesion_bitmap(ph.lesions, ph.hu.shape, region))):
        data, a = reorient(array, aff, orientation)
        write_nifti(path, data, a)
    if preview:
        from ctplatform.phantom.preview import preview_png  # matplotlib: loaded only when a preview is asked for

        preview_png(ph, out.preview(vid), title=vid)
    record = {
        "volume_id": vid, "index": row["index"], "seed": row["seed"], "split": row["split"],
        "path": out.scan_relpath(vid), "format": "nifti", "orientation": orientation,
        "shape": list(ph.hu.shape), "spacing_mm": [round(s, 4) for s in ph.spacing_mm],
        "confounder_kind": row["confounder_kind"], "confounder_value": row["confounder_value"],
        "fat_mm": round(ph.fat_mm, 2), "marker": ph.marker, "positive_labels": ph.positive_labels,
        "label_rows": [list(r) for r in ph.label_rows], "report": ph.report, "truth_format": TRUTH_FORMAT,
    }
    final = out.record(vid)
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(final)
    return record


def generate_cohort(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: str = "demo",
    confounder: ConfounderSpec | str | None = None,
    prevalence: Mapping[str, float] | None = None,
    cooccurrence: Mapping[tuple[str, str], float] | None = None,
    workers: int | None = None,
    preview: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Write a cohort of `n` scans to `out_dir`; returns the listing (one row per scan).

    preview: write a PNG for the first `preview` scans. workers: processes (default: CPUs, at most n).
    """
    if n < 1:
        raise ValueError("a cohort needs n >= 1 scans")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {list(SIZES)}")
    if isinstance(confounder, str):
        confounder = ConfounderSpec.parse(confounder)
    out = Path(out_dir)
    params = {"n": n, "seed": seed, "size": size, "confounder": asdict(confounder) if confounder else None,
              "prevalence": dict(prevalence or {}),
              "cooccurrence": {f"{a}->{b}": v for (a, b), v in (cooccurrence or {}).items()} if cooccurrence is not None else None}
    _check_same_cohort(out, params)
    layout = CohortLayout(out)
    for sub in (layout.scans_dir, layout.truth_dir) + ((layout.preview_dir,) if preview else ()):
        sub.mkdir(parents=True, exist_ok=True)
    layout.params.write_text(json.dumps(params, indent=1))

    rows = assign(n, seed, confounder, prevalence, cooccurrence)
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for row in rows:
        rec = _finished(out, volume_id(seed, row["index"]))
        if rec is not None:
            records[row["index"]] = rec
        else:
            todo.append(row)
    if records:
        log.info("resuming: %d of %d scans already written", len(records), n)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = _progress(len(todo), progress)
    failed: list[dict[str, Any]] = []

    def failure(row: dict[str, Any], err: BaseException) -> None:
        # a generator failure is a bug, but one scan must not cost the others: record it and go on
        vid = volume_id(seed, row["index"])
        log.error("phantom %s (scan seed %d) failed: %s: %s", vid, row["seed"], type(err).__name__, err)
        failed.append({"volume_id": vid, "seed": row["seed"], "error": f"{type(err).__name__}: {err}"})

    if workers == 1 or len(todo) <= 1:
        for row in todo:
            try:
                records[row["index"]] = make_one(str(out), seed, row, size, row["index"] < preview)
            except Exception as err:  # noqa: BLE001 - reported per scan, see failure()
                failure(row, err)
            bar.update(1)
    else:
        ctx = get_context("forkserver")  # no fork: the caller may hold threads (Ray, tqdm)
        ctx.set_forkserver_preload(["ctplatform.phantom.generate", "ctplatform.phantom.nifti"])  # import once
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futs = [(row, pool.submit(make_one, str(out), seed, row, size, row["index"] < preview)) for row in todo]
            for row, f in futs:
                try:
                    rec = f.result()
                    records[rec["index"]] = rec
                except Exception as err:  # noqa: BLE001
                    failure(row, err)
                bar.update(1)
    bar.close()
    _write_csv(pd.DataFrame(failed, columns=["volume_id", "seed", "error"]), layout.failed)
    spec = (confounder.kind, confounder.label) if confounder else None
    listing = write_tables(out, [records[i] for i in range(n) if i in records], spec)
    listing.attrs["failed"] = len(failed)
    return listing


def _finished(out: Path, vid: str) -> dict[str, Any] | None:
    layout = CohortLayout(out)
    path = layout.record(vid)
    files = [layout.scan(vid), layout.organs(vid), layout.lesions(vid)]
    if path.is_file() and all(f.is_file() for f in files):
        record = json.loads(path.read_text())
        # a scan written by an older version lacks truth the store contract needs: make it again
        return record if record.get("truth_format") == TRUTH_FORMAT else None
    return None


def _check_same_cohort(out: Path, params: dict[str, Any]) -> None:
    path = CohortLayout(out).params
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(params)):
            raise ValueError(
                f"{out} holds a cohort made with different parameters ({path}); choose another folder or delete it"
            )


def write_tables(out: Path, records: list[dict[str, Any]], confounder: tuple[str, str] | None = None) -> pd.DataFrame:
    """scans.csv (the ingest listing, truth columns included), labels.csv, reports.csv, lesion_codes.csv."""
    listing = pd.DataFrame([
        {k: r[k] for k in ("volume_id", "path", "format", "split")}
        | {"truth": f"truth/{r['volume_id']}_lesions.nii.gz", "truth_codes": "truth/lesion_codes.csv"}
        | {k: r[k] for k in ("confounder_kind", "confounder_value", "fat_mm", "marker", "orientation", "seed")}
        | {"shape": "x".join(map(str, r["shape"])), "spacing_mm": "x".join(f"{s:g}" for s in r["spacing_mm"]),
           "positive_labels": "|".join(r["positive_labels"])}
        for r in records
    ])
    labels = pd.DataFrame([
        {"volume_id": r["volume_id"], "abnormality": a, "location": loc, "value": int(v), "split": r["split"],
         "confounder_value": r["confounder_value"]}
        for r in records for a, loc, v in r["label_rows"]
    ])
    reports = pd.DataFrame([{"volume_id": r["volume_id"], "report": r["report"]} for r in records])
    layout = CohortLayout(out)
    _write_csv(listing, layout.listing)
    _write_csv(labels, layout.labels)
    _write_csv(reports, layout.reports)
    _write_csv(pd.DataFrame(lesion_codes_table(confounder)), layout.lesion_codes)
    return listing


def cohort_confounder(out_dir: str | Path) -> tuple[str, str] | None:
    """(kind, target label) of the cohort's confounder from its cohort.json, or None."""
    path = Path(out_dir) / "cohort.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text()).get("confounder")
    return (spec["kind"], spec["label"]) if spec else None


def labels_table(out_dir: str | Path, split: str | None = None) -> pd.DataFrame:
    """The cohort's truth labels in the labels.parquet schema (volume_id, abnormality, location, value)."""
    df = pd.read_csv(CohortLayout(out_dir).labels, dtype={"volume_id": str, "abnormality": str, "location": str, "split": str},
                     keep_default_na=False)
    if split is not None:
        df = df[df["split"] == split]
    out = df[["volume_id", "abnormality", "location", "value"]].reset_index(drop=True)
    return out.astype({"value": "int8"})


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="phantom", unit="scan")


__all__ = ["ConfounderSpec", "generate_cohort", "assign", "make_one", "volume_id", "labels_table", "SUPPORTED"]
