"""Importing RAD-ChestCT's and CT-RATE's released labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ctplatform.labels import N_LABELS
from ctplatform.partition.sarle.external import (
    CTRATE_COVERED_LABELS,
    CTRATE_MAP,
    ctrate_rows,
    radchestct_columns,
    radchestct_rows,
    read_label_tables,
    volume_id_from_name,
)


def _positives(rows: pd.DataFrame, volume_id: str) -> set[tuple[str, str]]:
    r = rows[(rows["volume_id"] == volume_id) & (rows["value"] == 1)]
    return set(zip(r["abnormality"], r["location"]))


def _radchestct() -> pd.DataFrame:
    cols = {
        "NoteAcc_DEID": ["trn00001", "trn00002", "val00003"],
        "nodule*right_upper": [1, 0, 0],
        "nodule*right_lung": [1, 0, 0],
        "nodule*lung": [1, 1, 0],
        "nodule*liver": [0, 1, 0],
        "calcification*aorta": [1, 0, 0],
        "calcification*mitral_valve": [0, 1, 0],
        "cardiomegaly*heart": [0, 1, 0],
        "lymphadenopathy*hilum": [0, 0, 1],
        "pneumonia*left_lower": [0, 0, 1],
        "atelectasis*other_location": [1, 1, 1],
        "other_disease*lung": [1, 1, 1],
    }
    return pd.DataFrame(cols)


def test_radchestct_columns_map_locations_by_the_authors_grouping() -> None:
    mapped = radchestct_columns(list(_radchestct().columns))
    assert mapped["nodule*right_upper"] == ("nodule", "right_lung")
    assert mapped["calcification*mitral_valve"] == ("calcification", "heart")
    assert mapped["lymphadenopathy*hilum"] == ("lymphadenopathy", "mediastinum")
    for unmapped in ("NoteAcc_DEID", "nodule*liver", "atelectasis*other_location", "other_disease*lung"):
        assert unmapped not in mapped


def test_radchestct_rows() -> None:
    rows = radchestct_rows(_radchestct())
    assert rows.groupby("volume_id").size().min() >= N_LABELS
    assert _positives(rows, "trn00001") == {("nodule", "right_lung"), ("calcification", "great_vessel")}
    assert _positives(rows, "trn00002") == {("nodule", "lung"), ("calcification", "heart"), ("cardiomegaly", "heart")}
    assert _positives(rows, "val00003") == {("lymphadenopathy", "mediastinum"), ("pneumonia", "left_lung")}


def _ctrate(n: int = 2) -> pd.DataFrame:
    df = pd.DataFrame({"VolumeName": [f"train_{i}_a_1.nii.gz" for i in range(1, n + 1)]})
    for col in CTRATE_MAP:
        df[col] = 0
    df.loc[0, ["Coronary artery wall calcification", "Lung nodule", "Hiatal hernia"]] = 1
    df.loc[1, "Lymphadenopathy"] = float("nan")  # some releases leave cells empty
    return df


def test_ctrate_rows_map_onto_our_labels_without_sides() -> None:
    rows = ctrate_rows(_ctrate())
    assert set(rows["volume_id"]) == {"train_1_a_1", "train_2_a_1"}
    assert _positives(rows, "train_1_a_1") == {
        ("calcification", "heart"),
        ("coronary_artery_disease", "heart"),
        ("nodule", "lung"),
    }
    assert _positives(rows, "train_2_a_1") == set()
    assert (rows.groupby("volume_id").size() == N_LABELS).all()
    assert len(CTRATE_COVERED_LABELS) == 16 and "lung_nodule" in CTRATE_COVERED_LABELS


def test_wrong_tables_are_rejected_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NoteAcc_DEID"):
        radchestct_rows(pd.DataFrame({"id": ["a"]}))
    with pytest.raises(ValueError, match="missing"):
        ctrate_rows(_ctrate().drop(columns=["Cardiomegaly"]))
    with pytest.raises(FileNotFoundError):
        read_label_tables([tmp_path / "absent.csv"], "ctrate")


def test_read_label_tables_reads_several_files(tmp_path: Path) -> None:
    a, b = tmp_path / "train.csv", tmp_path / "valid.csv"
    _radchestct().iloc[:2].to_csv(a, index=False)
    _radchestct().iloc[2:].to_csv(b, index=False)
    rows = read_label_tables([a, b], "radchestct")
    assert set(rows["volume_id"]) == {"trn00001", "trn00002", "val00003"}
    _radchestct().to_csv(b, index=False)  # now trn00001 is in both files
    with pytest.raises(ValueError, match="more than once"):
        read_label_tables([a, b], "radchestct")


def test_volume_ids_follow_ingest_naming() -> None:
    assert volume_id_from_name("train_1_a_1.nii.gz") == "train_1_a_1"
    assert volume_id_from_name("data/trn00001.npz") == "trn00001"
    assert volume_id_from_name("scan 7.nii") == "scan_7"
