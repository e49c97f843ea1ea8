"""Labels that already exist: RAD-ChestCT's abnormality x location CSVs and CT-RATE's 18 labels.

    rows = radchestct_rows(pd.read_csv("imgtrain_Abnormality_and_Location_Labels.csv"))
    rows = ctrate_rows(pd.read_csv("train_predicted_labels.csv"))

Both return labels.parquet rows (long form, all 80 labels per volume). docs/sarle.md lists the maps.

RAD-ChestCT (Draelos et al. 2021, Zenodo) releases SARLE's output as one column per
"abnormality*location" (e.g. "nodule*right_upper", "calcification*aorta") with the scan id in
NoteAcc_DEID. Lobes map onto their lung, valves and coronary terms onto the heart, the aorta, vena
cavae and pulmonary vessels onto the great vessels, mediastinum and hilum onto the mediastinum (the
authors' own grouping). "lung" and "airways" without a side give `lung` when no side is marked.

CT-RATE (Hamamci et al., Hugging Face) gives 18 abnormalities per volume (VolumeName, then one
column each). 15 of them map onto 16 of our labels, without sides ("Coronary artery wall
calcification" is heart calcification and coronary artery disease); "Medical material", "Hiatal
hernia" and "Mosaic attenuation pattern" have no counterpart. CT-RATE says nothing about the other
labels: they are written as absent, so train on `CTRATE_COVERED_LABELS` only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ctplatform.labels import LOCATION_GROUP, all_labels
from ctplatform.partition.sarle.job import labels_frame
from ctplatform.partition.sarle.labeler import label_rows

RADCHESTCT_ID = "NoteAcc_DEID"
#: RAD-ChestCT (SARLE) location -> labels.parquet location.
RADCHESTCT_LOCATIONS: dict[str, str] = {
    "right_upper": "right_lung",
    "right_mid": "right_lung",
    "right_lower": "right_lung",
    "right_lung": "right_lung",
    "left_upper": "left_lung",
    "left_mid": "left_lung",
    "left_lower": "left_lung",
    "left_lung": "left_lung",
    "lung": "lung",
    "airways": "lung",
    "heart": "heart",
    "mitral_valve": "heart",
    "aortic_valve": "heart",
    "tricuspid_valve": "heart",
    "pulmonary_valve": "heart",
    "aorta": "great_vessel",
    "svc": "great_vessel",
    "ivc": "great_vessel",
    "pulmonary_artery": "great_vessel",
    "pulmonary_vein": "great_vessel",
    "mediastinum": "mediastinum",
    "hilum": "mediastinum",
}

CTRATE_ID = "VolumeName"
#: CT-RATE column -> (abnormality, location) findings it means.
CTRATE_MAP: dict[str, tuple[tuple[str, str], ...]] = {
    "Medical material": (),
    "Arterial wall calcification": (("calcification", "great_vessel"),),
    "Cardiomegaly": (("cardiomegaly", "heart"),),
    "Pericardial effusion": (("pericardial_effusion", "heart"),),
    "Coronary artery wall calcification": (("calcification", "heart"), ("coronary_artery_disease", "heart")),
    "Hiatal hernia": (),
    "Lymphadenopathy": (("lymphadenopathy", "mediastinum"),),
    "Emphysema": (("emphysema", "lung"),),
    "Atelectasis": (("atelectasis", "lung"),),
    "Lung nodule": (("nodule", "lung"),),
    "Lung opacity": (("opacity", "lung"),),
    "Pulmonary fibrotic sequela": (("fibrosis", "lung"),),
    "Pleural effusion": (("pleural_effusion", "lung"),),
    "Mosaic attenuation pattern": (),
    "Peribronchial thickening": (("bronchial_wall_thickening", "lung"),),
    "Consolidation": (("consolidation", "lung"),),
    "Bronchiectasis": (("bronchiectasis", "lung"),),
    "Interlobular septal thickening": (("septal_thickening", "lung"),),
}
#: Names (`group_abnormality`) of the labels CT-RATE informs; the others are written as absent.
CTRATE_COVERED_LABELS: tuple[str, ...] = tuple(
    sorted({f"{LOCATION_GROUP[loc]}_{a}" for finds in CTRATE_MAP.values() for a, loc in finds})
)

_SUFFIXES = (".nii.gz", ".nii", ".npz")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def volume_id_from_name(name: str) -> str:
    """Store volume id of a scan file name, as ingest names it: the file name without .nii.gz,
    .nii or .npz, unsafe characters replaced by '_' ("train_1_a_1.nii.gz" -> "train_1_a_1")."""
    name = str(name).strip().rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _UNSAFE.sub("_", name).lstrip("._-")[:200].rstrip(".")


def _known_labels() -> set[tuple[str, str]]:
    return {(lab.abnormality, lab.group) for lab in all_labels()}


def radchestct_columns(columns: list[str]) -> dict[str, tuple[str, str]]:
    """Columns of a RAD-ChestCT label CSV that map onto a label: column -> (abnormality, location)."""
    known = _known_labels()
    out = {}
    for col in columns:
        abnormality, sep, location = str(col).partition("*")
        loc = RADCHESTCT_LOCATIONS.get(location) if sep else None
        if loc is not None and (abnormality, LOCATION_GROUP[loc]) in known:
            out[col] = (abnormality, loc)
    return out


def _positive(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").fillna(0) > 0


def radchestct_rows(df: pd.DataFrame) -> pd.DataFrame:
    """labels.parquet rows from a RAD-ChestCT abnormality x location table."""
    if RADCHESTCT_ID not in df.columns:
        raise ValueError(
            f"not a RAD-ChestCT label table: no {RADCHESTCT_ID} column (expected the released "
            "img*_Abnormality_and_Location_Labels.csv files)"
        )
    mapped = radchestct_columns(list(df.columns))
    if not mapped:
        raise ValueError("no 'abnormality*location' column of this table maps onto the 80 labels; is it a RAD-ChestCT label file?")
    ids = df[RADCHESTCT_ID].map(volume_id_from_name).tolist()
    cols = list(mapped)
    positive = np.column_stack([_positive(df[c]).to_numpy() for c in cols])
    found: dict[int, dict[tuple[str, str], set[str]]] = {}
    for r, c in zip(*np.nonzero(positive)):  # positives are sparse: loop over them only
        abnormality, loc = mapped[cols[c]]
        found.setdefault(int(r), {}).setdefault((abnormality, LOCATION_GROUP[loc]), set()).add(loc)
    rows = []
    for r, volume_id in enumerate(ids):
        findings = []
        for (abnormality, _), locs in found.get(r, {}).items():
            if {"right_lung", "left_lung"} & locs:
                locs = locs - {"lung"}  # SARLE marks "lung" beside every sided lung finding
            findings.extend((abnormality, loc) for loc in locs)
        rows.extend(label_rows(volume_id, findings))
    return _frame(rows)


def ctrate_rows(df: pd.DataFrame) -> pd.DataFrame:
    """labels.parquet rows from a CT-RATE multi-abnormality table (18 labels, no locations)."""
    by_name = {str(c).strip().lower(): c for c in df.columns}
    missing = [c for c in (CTRATE_ID, *CTRATE_MAP) if c.lower() not in by_name]
    if missing:
        raise ValueError(f"not a CT-RATE label table: columns {missing} are missing (expected VolumeName and the 18 labels)")
    ids = df[by_name[CTRATE_ID.lower()]].map(volume_id_from_name)
    positive = {name: _positive(df[by_name[name.lower()]]).to_numpy() for name, finds in CTRATE_MAP.items() if finds}
    rows = []
    for r, volume_id in enumerate(ids):
        findings = {f for name, flags in positive.items() if flags[r] for f in CTRATE_MAP[name]}
        rows.extend(label_rows(volume_id, findings))
    return _frame(rows)


def _frame(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    df = labels_frame(rows)
    dup = df.drop_duplicates(["volume_id", "abnormality", "location"]).shape[0] != df.shape[0]
    if dup:
        raise ValueError("a volume appears more than once in the label table(s); give each volume once")
    return df


def read_label_tables(paths: list[str | Path], kind: str) -> pd.DataFrame:
    """Read and convert one or more label CSVs of `kind` ("radchestct" or "ctrate")."""
    convert = {"radchestct": radchestct_rows, "ctrate": ctrate_rows}[kind]
    frames = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"label table {p} does not exist")
        try:
            usecols = None
            if kind == "radchestct":  # 4,368 columns: read the id and the ones that map onto labels
                header = list(pd.read_csv(p, nrows=0).columns)
                usecols = [c for c in header if c == RADCHESTCT_ID] + list(radchestct_columns(header))
            frames.append(convert(pd.read_csv(p, usecols=usecols, low_memory=False)))
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
    if len(frames) == 1:
        return frames[0]
    return _frame(list(pd.concat(frames, ignore_index=True).itertuples(index=False, name=None)))
