from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.conftest import SHARED
from ctplatform import labels as L


def test_eighty_labels_in_spec_order() -> None:
    labs = L.all_labels()
    assert len(labs) == 80 == L.N_LABELS
    groups = [lab.group for lab in labs]
    assert groups.count("lung") == 51
    assert groups.count("heart") == 16 and groups.count("great_vessel") == 7 and groups.count("mediastinum") == 6
    assert labs[L.label_index("nodule", "right_lung")].name == "lung_nodule"
    assert labs[L.label_index("calcification", "great_vessel")].name == "great_vessel_calcification"


def test_packaged_table_matches_shared_spec() -> None:
    spec = SHARED / "spec" / "abnormalities.csv"
    if not spec.is_file():
        pytest.skip(f"{spec} absent")
    rows = list(csv.DictReader(spec.read_text().splitlines()))
    assert [(r["location_group"], r["abnormality"]) for r in rows] == [
        (lab.group, lab.abnormality) for lab in L.all_labels()
    ]


def test_unknown_pair_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="cardiomegaly"):
        L.label_index("cardiomegaly", "left_lung")


def test_encode_volume_labels_accumulates_sides() -> None:
    rows = [("nodule", "right_lung", 1), ("nodule", "left_lung", 1), ("cardiomegaly", "heart", 1), ("mass", "lung", 0)]
    y, bits = L.encode_volume_labels(rows)
    i_nod, i_card, i_mass = L.label_index("nodule", "lung"), L.label_index("cardiomegaly", "heart"), L.label_index("mass", "lung")
    assert y.sum() == 2 and y[i_nod] == 1 and y[i_card] == 1 and y[i_mass] == 0
    assert bits[i_nod] == L.RIGHT_LUNG | L.LEFT_LUNG
    assert bits[i_card] == L.MEDIASTINUM
    assert np.all(bits[y == 0] == 0)
