"""No identifier leaks: unique marker strings planted in DICOM tags (names, ids, dates), folder and
file names, report text and CSV cells never reach the logs, stdout/stderr, the MLflow database or
its artifacts, Ray's session logs, or the store (attributes, Zarr paths, manifest and labels).

Runs the real thing: `ctplatform ingest` with pseudonymised ids on a real Ray, `ctplatform
label-reports` (a Ray Data job), and a training run's MLflow bookkeeping (params, config, QC
counts) in a real sqlite MLflow.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctplatform.cli import main
from tests.faults.catalog import _bytes, _nifti, ct_array
from tests.ingest.dicom_writer import write_series

pytestmark = pytest.mark.slow


def _markers() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8].upper()
    names = ["PATNAME", "PATID", "ACCESSION", "INSTITUTION", "PHYSICIAN", "STUDYDESC", "FOLDER", "FILE",
             "BADFOLDER", "BADPATNAME", "BROKENFILE", "REPORT", "GERMANREPORT", "CELL", "ABSENT"]
    out = {n: f"MRK{n}{tag}" for n in names}
    # Dates hold digits only: two dates no header or log would hold by chance.
    out["BIRTHDATE"] = "18770419"
    out["STUDYDATE"] = "18830726"
    return out


def _tag_series(folder: Path, m: dict[str, str], name_key: str = "PATNAME") -> None:
    import pydicom

    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName = m[name_key]
        ds.PatientID = m["PATID"]
        ds.PatientBirthDate = m["BIRTHDATE"]
        ds.StudyDate = m["STUDYDATE"]
        ds.AccessionNumber = m["ACCESSION"][:16]
        ds.InstitutionName = m["INSTITUTION"]
        ds.ReferringPhysicianName = m["PHYSICIAN"]
        ds.StudyDescription = m["STUDYDESC"]
        ds.save_as(f, enforce_file_format=True)


def _found(text: str, markers: dict[str, str]) -> list[str]:
    return [k for k, v in markers.items() if v in text]


def _scan_tree(root: Path, markers: dict[str, str], skip_chunks: bool = False) -> dict[str, list[str]]:
    """Markers in file and folder names and in file contents under `root` (parquet read as tables;
    Zarr chunk files hold compressed HU only and are skipped when `skip_chunks`)."""
    hits: dict[str, list[str]] = {}
    for p in root.rglob("*"):
        where = str(p.relative_to(root))
        if found := _found(where, markers):
            hits[f"path {where}"] = found
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            text = pd.read_parquet(p).to_csv()
        elif skip_chunks and ("/c/" in f"/{where}" or p.name.startswith("c.")):  # c/0/0 or c.0.0 chunk keys
            continue
        else:
            text = p.read_bytes().decode("utf-8", "replace")
        if found := _found(text, markers):
            hits[where] = found
    return hits


def test_planted_markers_never_leave_their_inputs(ray_local, tmp_path: Path, capfd, caplog, monkeypatch) -> None:
    import ray

    m = _markers()
    src = tmp_path / "in"
    good = src / f"DOE_{m['FOLDER']}_ct_chest_1901-02-03"
    write_series(good, ct_array((8, 32, 32)).astype(np.float32), spacing=(2.0, 1.0, 1.0))
    _tag_series(good, m)
    _nifti(src / f"{m['FOLDER']}_nifti" / f"{m['FILE']}_scan.nii.gz", ct_array((12, 32, 32)))
    bad = src / f"{m['BADFOLDER']}_MRN123"
    write_series(bad, ct_array((4, 16, 16)).astype(np.float32), modality="MR")
    _tag_series(bad, m, "BADPATNAME")
    _bytes(src / f"{m['BROKENFILE']}.nii.gz", 3000)

    planted = b"".join(f.read_bytes() for f in sorted(good.iterdir())[:1] + sorted(bad.iterdir())[:1])
    assert {"PATNAME", "PATID", "BIRTHDATE", "STUDYDATE", "BADPATNAME"} <= set(_found(planted.decode("latin-1"), m))

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "pseudonym.key").write_bytes(os.urandom(32).hex().encode())
    store = tmp_path / "store"
    work = tmp_path / "work"
    db = work / "mlflow.db"
    # This run's own MLflow database (mlflow.set_tracking_uri elsewhere may have exported the variable).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    common = ["--store", str(store), "--workdir", str(work), "--set", f"ingest.pseudonymise_key={keys / 'pseudonym.key'}",
              "--set", "ingest.spacing_mm=[2.0,2.0,2.0]", "--set", "ingest.min_air_fraction=0"]

    with caplog.at_level(logging.DEBUG):
        assert main(["ingest", "--input", str(src), *common]) == 0
        manifest = pd.read_parquet(store / "manifest.parquet")
        assert len(manifest) == 4 and (manifest["status"] == "ok").sum() == 2
        assert set(manifest["source"]) == {"(pseudonymised)"}
        ok_ids = sorted(manifest.loc[manifest["status"] == "ok", "volume_id"])

        reports = tmp_path / "reports.csv"
        pd.DataFrame(
            {
                "volume_id": [ok_ids[0], ok_ids[1], f"DOE JOHN {m['CELL']} MRN123", f"{m['ABSENT']}"],
                "report": [
                    f"Patient {m['REPORT']}. Small left pleural effusion. Right upper lobe nodule.",
                    f"Patient {m['GERMANREPORT']}. Kein Pleuraerguss. Herz normal groß. Lunge frei.",
                    "Left lower lobe consolidation.",
                    "Cardiomegaly.",
                ],
            }
        ).to_csv(reports, index=False)
        rc = main(["label-reports", "--reports", str(reports), "--store", str(store), "--workdir", str(work)])
        assert rc == 0

        # A training run's MLflow bookkeeping over this store: params, config.yaml, QC counts.
        from ctplatform.config import load_config
        from ctplatform.train.trainer import log_qc_counts
        from ctplatform.train.tracking import finish_mlflow_run, start_mlflow_run

        cfg = load_config(None, [f"workdir={work}", f"store={store}", f"ingest.pseudonymise_key={keys / 'pseudonym.key'}",
                                 f"train.storage_path={tmp_path / 'runs'}"])
        run_id, _ = start_mlflow_run(cfg, "markers", str(tmp_path / "runs"), n_train=0, n_valid=0)
        log_qc_counts(cfg, run_id)
        finish_mlflow_run(run_id, "FINISHED", "markers test")
    out, err = capfd.readouterr()

    labels = pd.read_parquet(store / "labels.parquet")
    assert set(labels["volume_id"]) == {ok_ids[0]}  # the German report went to review, the others were refused
    assert "flagged for review" in out and "refused: 1 report row(s)" in out and "line 4: invalid volume id" in out

    leaks: dict[str, list[str]] = {}
    if found := _found(out + err, m):
        leaks["stdout/stderr"] = found
    if found := _found(caplog.text, m):
        leaks["log records"] = found
    for name, tree, skip in [("store", store, True), ("workdir (MLflow db, artifacts)", work, False),
                             ("run storage", tmp_path / "runs", False)]:
        for where, found in _scan_tree(tree, m, skip).items():
            leaks[f"{name}: {where}"] = found
    assert all(v.startswith("p") and len(v) == 25 for v in manifest["volume_id"])  # keyed hashes
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert any((session / "logs").glob("worker-*")), "no Ray worker logs to search"
    for where, found in _scan_tree(session / "logs", m).items():
        leaks[f"ray session logs: {where}"] = found
    assert db.is_file() and (work / "mlartifacts").is_dir(), "the MLflow database was not where expected"
    assert not leaks, leaks
