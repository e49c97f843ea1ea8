"""The Ray Data labelling job and the `ctplatform label-reports` command."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctplatform.cli import main
from ctplatform.config import load_config
from ctplatform.labels import N_LABELS
from ctplatform.partition.sarle.job import label_batch, run_labelling
from ctplatform.store import Store

SECRET = "Zyxwv Quentin"  # stands in for text that must never reach logs or errors

REPORTS = {
    "vol-a": "FINDINGS:\nLUNGS: Left lower lobe consolidation, concerning for pneumonia.\nNo pleural effusion.",
    "vol-b": "The lungs are clear. The heart is normal in size.",
    "vol-c": f"Patient {SECRET}. Status post CABG. Small right pleural effusion, unchanged.",
    "vol-d": "   ",
}


def _write_reports(path: Path, reports: dict[str, str | None]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["volume_id", "report"])
        for vid, text in reports.items():
            w.writerow([vid, "" if text is None else text])
    return path


def _with_volumes(store: Store, ids: list[str]) -> Store:
    """Tiny finished volumes: labels are written only for volumes the store holds."""
    for vid in ids:
        store.write_volume(vid, np.zeros((3, 4, 4), np.int16), {"spacing_mm": [1.0, 1.0, 1.0]}, chunk_slices=3)
    return store


def _positives(rows: pd.DataFrame, volume_id: str) -> set[tuple[str, str]]:
    r = rows[(rows["volume_id"] == volume_id) & (rows["value"] == 1)]
    return set(zip(r["abnormality"], r["location"]))


def test_label_batch_gives_one_status_row_per_report() -> None:
    batch = pd.DataFrame({"volume_id": ["a", "b", "bad id!", "c"], "report": ["Left pneumonia.", None, "x", "Clear lungs."]})
    out = label_batch(batch)
    assert list(out["status"]) == ["ok", "failed", "failed", "ok"]
    assert list(out.loc[0, "findings"]) == ["pneumonia@left_lung"]
    assert out.loc[1, "error"] == "volume b: the report is empty or missing; give the report text for it"
    assert "invalid volume id" in out.loc[2, "error"] and "bad id!" not in out.loc[2, "error"]
    assert list(out.loc[3, "findings"]) == []


def test_job_writes_labels_replaces_relabelled_volumes_and_keeps_failed_ones(
    ray_local, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(overrides=[f"workdir={tmp_path}"])
    store = _with_volumes(Store(str(tmp_path / "store")), ["vol-a", "vol-b", "vol-c", "vol-d", "vol-e"])
    csv_path = _write_reports(tmp_path / "reports.csv", REPORTS)
    with caplog.at_level(logging.INFO):
        summary = run_labelling(cfg, str(csv_path), store, batch_size=2, tasks=2)
    assert summary.labelled == 3 and summary.failed == 1
    assert summary.errors == ["volume vol-d: the report is empty or missing; give the report text for it"]
    assert SECRET not in caplog.text and SECRET not in summary.table()
    rows = store.read_table("labels")
    assert list(rows.columns) == ["volume_id", "abnormality", "location", "value"]
    assert set(rows["volume_id"]) == {"vol-a", "vol-b", "vol-c"}
    assert (rows.groupby("volume_id").size() >= N_LABELS).all()
    assert _positives(rows, "vol-a") == {("consolidation", "left_lung"), ("pneumonia", "left_lung")}
    assert _positives(rows, "vol-b") == set()
    assert _positives(rows, "vol-c") == {
        ("cabg", "heart"),
        ("postsurgical", "heart"),
        ("coronary_artery_disease", "heart"),
        ("pleural_effusion", "right_lung"),
    }
    assert summary.positives_per_group == {"lung": 3, "heart": 3}

    # Re-run with a changed report for vol-a and an emptied one for vol-c: vol-a's old rows go,
    # vol-c keeps what it had, vol-b is untouched by --skip-existing semantics off (relabelled, same).
    changed = dict(REPORTS, **{"vol-a": "Right upper lobe nodule.", "vol-c": ""})
    _write_reports(csv_path, changed)
    summary = run_labelling(cfg, str(csv_path), store, batch_size=2, tasks=2)
    assert summary.labelled == 2 and summary.failed == 2
    rows = store.read_table("labels")
    assert _positives(rows, "vol-a") == {("nodule", "right_lung")}
    assert (rows.groupby("volume_id").size() >= N_LABELS).all()
    assert ("pleural_effusion", "right_lung") in _positives(rows, "vol-c")

    # --skip-existing leaves labelled volumes alone and labels only new ones.
    _write_reports(csv_path, {"vol-a": "Left pneumothorax.", "vol-e": "Mild cardiomegaly."})
    summary = run_labelling(cfg, str(csv_path), store, skip_existing=True)
    assert summary.skipped == 1 and summary.labelled == 1
    rows = store.read_table("labels")
    assert _positives(rows, "vol-a") == {("nodule", "right_lung")}
    assert _positives(rows, "vol-e") == {("cardiomegaly", "heart")}


def test_duplicate_volume_ids_and_missing_columns(ray_local, tmp_path: Path) -> None:
    cfg = load_config(overrides=[f"workdir={tmp_path}"])
    store = _with_volumes(Store(str(tmp_path / "store")), ["x", "y"])
    path = tmp_path / "dup.csv"
    pd.DataFrame({"volume_id": ["x", "x", "y"], "report": ["Left pneumonia.", "Clear.", "Small left effusion."]}).to_csv(path, index=False)
    summary = run_labelling(cfg, str(path), store)
    assert summary.labelled == 1 and summary.errors == ["volume x: appears 2 times in the reports; give one report per volume"]
    pd.DataFrame({"id": ["x"], "text": ["y"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['volume_id', 'report'\]"):
        run_labelling(cfg, str(path), store)


def test_cli_labels_reports_and_imports_ctrate(ray_local, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store_dir = tmp_path / "store"
    _with_volumes(Store(str(store_dir)), ["v1", "v2"])
    csv_path = _write_reports(tmp_path / "reports.csv", {"v1": "Bilateral pleural effusions.", "v2": "Normal study."})
    rc = main(["label-reports", "--reports", str(csv_path), "--store", str(store_dir), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "volumes labelled: 2" in out and "lung" in out
    rows = Store(str(store_dir)).read_table("labels")
    assert _positives(rows, "v1") == {("pleural_effusion", "right_lung"), ("pleural_effusion", "left_lung")}

    from ctplatform.partition.sarle.external import CTRATE_MAP

    ct = pd.DataFrame({"VolumeName": ["valid_1_a_1.nii.gz"], **{c: [1 if c == "Cardiomegaly" else 0] for c in CTRATE_MAP}})
    ct.to_csv(tmp_path / "ct.csv", index=False)
    rc = main(["label-reports", "--ctrate-labels", str(tmp_path / "ct.csv"), "--store", str(store_dir), "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "CTRATE_COVERED_LABELS" in out
    rows = Store(str(store_dir)).read_table("labels")
    assert set(rows["volume_id"]) == {"v1", "v2", "valid_1_a_1"}
    assert _positives(rows, "valid_1_a_1") == {("cardiomegaly", "heart")}

    rc = main(["label-reports", "--reports", str(tmp_path / "absent.csv"), "--store", str(store_dir)])
    assert rc == 2


def test_cli_explain(capsys: pytest.CaptureFixture) -> None:
    assert main(["label-reports", "--explain", "Left lower lobe consolidation, no pleural effusion."]) == 0
    out = capsys.readouterr().out
    assert "left lower lobe consolidation" in out and "consolidation               left_lung" in out
