"""The 80 abnormality labels, their location groups and allowed organs: the one source of truth.

A label is an (abnormality, location group) pair from paper 000, Table 4: "calcification" is four
labels (lung, heart, great vessel, mediastinum). The table `data/abnormalities.csv` is a copy of
`shared/spec/abnormalities.csv`; its row order fixes the label index used by the model's outputs.

Locations found in reports are finer than groups: a lung finding may be on the right, the left or
unspecified (`lung`). `labels.parquet` stores (volume_id, abnormality, location, value) rows; this
module maps such a row onto a label index and the organs it allows (a bitmask over the organ
channels of the grid masks: right lung, left lung, mediastinum).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

#: The organs, in the order of the grid masks' channels (0..2). The one definition of their codes
#: in the store's organ maps `organs/<id>` (0: none of them) and of their bits in a label's region
#: bitmask (`encode_volume_labels`; decoded by model.allowed_regions.organ_selector).
ORGANS: tuple[str, ...] = ("right_lung", "left_lung", "mediastinum")
ORGAN_CODES: dict[str, int] = {name: i + 1 for i, name in enumerate(ORGANS)}
RIGHT_LUNG, LEFT_LUNG, MEDIASTINUM = (1 << 0), (1 << 1), (1 << 2)
ORGAN_BITS: dict[str, int] = {"right_lung": RIGHT_LUNG, "left_lung": LEFT_LUNG, "mediastinum": MEDIASTINUM}
#: Bit of each organ code (index = code; code 0, no organ, has none): an organ map -> organ bits.
CODE_BITS: tuple[int, ...] = (0, *(ORGAN_BITS[name] for name in ORGANS))

#: Location groups of the paper (Table 4) and the finer locations reports give.
GROUPS: tuple[str, ...] = ("lung", "heart", "great_vessel", "mediastinum")
LOCATIONS: tuple[str, ...] = ("right_lung", "left_lung", "lung", "heart", "great_vessel", "mediastinum")
LOCATION_GROUP: dict[str, str] = {
    "right_lung": "lung",
    "left_lung": "lung",
    "lung": "lung",
    "heart": "heart",
    "great_vessel": "great_vessel",
    "mediastinum": "mediastinum",
}
#: Organs a positive finding at a location allows. A lung finding with no side allows both lungs;
#: heart and great-vessel findings are allowed in the mediastinum region (which contains them).
LOCATION_BITS: dict[str, int] = {
    "right_lung": RIGHT_LUNG,
    "left_lung": LEFT_LUNG,
    "lung": RIGHT_LUNG | LEFT_LUNG,
    "heart": MEDIASTINUM,
    "great_vessel": MEDIASTINUM,
    "mediastinum": MEDIASTINUM,
}


@dataclass(frozen=True)
class Label:
    """One of the 80 labels."""

    index: int
    group: str  # lung | heart | great_vessel | mediastinum
    abnormality: str  # e.g. "nodule", "calcification"
    allowed_organs: tuple[str, ...]

    @property
    def name(self) -> str:
        """Unique name, e.g. `lung_nodule`, `great_vessel_calcification`."""
        return f"{self.group}_{self.abnormality}"


@cache
def all_labels() -> tuple[Label, ...]:
    """The 80 labels in model output order."""
    # A plain path, not importlib.resources: `ctplatform` has no __init__.py (see pyproject.toml).
    text = (Path(__file__).parent / "data" / "abnormalities.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    labels = tuple(
        Label(
            index=i,
            group=row["location_group"],
            abnormality=row["abnormality"],
            allowed_organs=tuple(row["allowed_organs"].split("|")),
        )
        for i, row in enumerate(rows)
    )
    if len(labels) != 80 or len({lab.name for lab in labels}) != 80:
        raise ValueError("abnormalities.csv must define 80 distinct (group, abnormality) labels")
    return labels


N_LABELS = 80


@cache
def label_names() -> tuple[str, ...]:
    return tuple(lab.name for lab in all_labels())


@cache
def _index_by_key() -> dict[tuple[str, str], int]:
    return {(lab.group, lab.abnormality): lab.index for lab in all_labels()}


def label_index(abnormality: str, location: str) -> int:
    """Index of the label for an abnormality found at a location (`nodule`, `right_lung` -> lung_nodule).

    Raises KeyError when the pair is not one of the 80 labels (e.g. a cardiomegaly in the lung).
    """
    group = LOCATION_GROUP[location]
    try:
        return _index_by_key()[(group, abnormality)]
    except KeyError:
        raise KeyError(f"no label for abnormality {abnormality!r} at location {location!r}") from None


def label_by_name(name: str) -> Label:
    for lab in all_labels():
        if lab.name == name:
            return lab
    raise KeyError(f"unknown label {name!r}; see ctplatform.labels.label_names()")


def group_location(label: Label) -> str:
    """The location written for a negative (or side-less) row of this label."""
    return label.group


def encode_volume_labels(rows: list[tuple[str, str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Turn one volume's (abnormality, location, value) rows into model targets.

    Returns `y` float32 [80] (1 = present) and `region_bits` uint8 [80]: the organs a positive label
    allows (bit 0 right lung, bit 1 left lung, bit 2 mediastinum), 0 for a negative label. Sides
    accumulate: "nodule, right_lung" and "nodule, left_lung" allow both lungs.
    """
    y = np.zeros(N_LABELS, dtype=np.float32)
    bits = np.zeros(N_LABELS, dtype=np.uint8)
    for abnormality, location, value in rows:
        if not value:
            continue
        i = label_index(abnormality, location)
        y[i] = 1.0
        bits[i] |= LOCATION_BITS[location]
    return y, bits

