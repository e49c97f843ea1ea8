"""Which abnormalities the phantom draws, how often, and which tend to come together.

Findings are keyed by the platform's label names (`ctplatform.labels.label_names()`), e.g.
`lung_nodule`, `great_vessel_atherosclerosis`. A request (`make_phantom(abnormalities=...)`) maps a
label name to `True` (random parameters), a dict of parameters, or a list of dicts (several lesions).

Implications follow the label definitions: a nodule over 1 cm is also a nodule (SARLE labels both);
atherosclerosis is drawn as calcified wall plaque, so it is also a great-vessel calcification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ctplatform.labels import label_by_name

SUPPORTED: tuple[str, ...] = (
    "lung_nodule",
    "lung_nodulegr1cm",
    "lung_mass",
    "lung_consolidation",
    "lung_groundglass",
    "lung_emphysema",
    "lung_atelectasis",
    "lung_pleural_effusion",
    "lung_pneumothorax",
    "heart_cardiomegaly",
    "heart_pericardial_effusion",
    "great_vessel_atherosclerosis",
    "great_vessel_calcification",
    "mediastinum_lymphadenopathy",
)

#: Marginal probability of each finding before co-occurrence boosts (roughly the ordering of
#: RAD-ChestCT's frequencies, raised so a 60-scan demo cohort has positives for every label).
DEFAULT_PREVALENCE: dict[str, float] = {
    "lung_nodule": 0.30,
    "lung_nodulegr1cm": 0.12,
    "lung_mass": 0.06,
    "lung_consolidation": 0.12,
    "lung_groundglass": 0.14,
    "lung_emphysema": 0.18,
    "lung_atelectasis": 0.16,
    "lung_pleural_effusion": 0.12,
    "lung_pneumothorax": 0.05,
    "heart_cardiomegaly": 0.12,
    "heart_pericardial_effusion": 0.07,
    "great_vessel_atherosclerosis": 0.25,
    "great_vessel_calcification": 0.12,
    "mediastinum_lymphadenopathy": 0.10,
}

#: (given, then) -> extra probability of `then` when `given` is present (sampled in SUPPORTED order,
#: so `given` must come first there).
DEFAULT_COOCCURRENCE: dict[tuple[str, str], float] = {
    ("lung_nodule", "lung_emphysema"): 0.25,
    ("lung_mass", "lung_emphysema"): 0.3,
    ("lung_consolidation", "lung_pleural_effusion"): 0.3,
    ("lung_consolidation", "lung_atelectasis"): 0.25,
    ("lung_pleural_effusion", "heart_cardiomegaly"): 0.3,
    ("lung_mass", "mediastinum_lymphadenopathy"): 0.5,
    ("heart_cardiomegaly", "heart_pericardial_effusion"): 0.25,
    ("heart_cardiomegaly", "great_vessel_atherosclerosis"): 0.25,
    ("lung_emphysema", "great_vessel_atherosclerosis"): 0.2,
}

#: A present key makes the listed labels present too (definitions, not statistics).
IMPLIES: dict[str, tuple[str, ...]] = {
    "lung_nodulegr1cm": ("lung_nodule",),
    "great_vessel_atherosclerosis": ("great_vessel_calcification",),
}

#: Compressive atelectasis usually accompanies an effusion: probability of adding it.
EFFUSION_ATELECTASIS = 0.6

Request = Mapping[str, Any]


def check_labels(names: Any) -> None:
    for name in names:
        if name not in SUPPORTED:
            label_by_name(name)  # raises KeyError for names that are not platform labels at all
            raise ValueError(
                f"the phantom does not draw {name!r}; it draws {', '.join(SUPPORTED)}"
            )


def sample_findings(
    rng: np.random.Generator,
    prevalence: Mapping[str, float] | None = None,
    cooccurrence: Mapping[tuple[str, str], float] | None = None,
) -> dict[str, Any]:
    """Draw which findings a patient has (each mapped to True: random parameters)."""
    prev = dict(DEFAULT_PREVALENCE)
    prev.update(prevalence or {})
    check_labels(prev)
    co = dict(DEFAULT_COOCCURRENCE if cooccurrence is None else cooccurrence)
    check_labels({a for pair in co for a in pair})
    present: set[str] = set()
    for name in SUPPORTED:
        p_absent = 1.0 - prev.get(name, 0.0)
        for (given, then), boost in co.items():
            if then == name and given in present:
                p_absent *= 1.0 - boost
        if rng.random() < 1.0 - p_absent:
            present.add(name)
    if "lung_pleural_effusion" in present and rng.random() < EFFUSION_ATELECTASIS:
        present.add("lung_atelectasis")
    return {name: True for name in SUPPORTED if name in present}


def normalise_request(abnormalities: Request) -> dict[str, list[dict[str, Any]]]:
    """label -> list of parameter dicts (one per lesion), with implied labels resolved.

    `lung_nodulegr1cm` entries become nodules of more than 10 mm; `lung_nodule` entries alone are
    nodules under 10 mm. `great_vessel_atherosclerosis` brings calcified plaques, so
    `great_vessel_calcification` is then reported as well (its mask is the calcified part).
    """
    check_labels(abnormalities)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, spec in abnormalities.items():
        if spec is False or spec is None or spec == 0:
            continue
        if spec is True or spec == 1:
            items: list[dict[str, Any]] = [{}]
        elif isinstance(spec, Mapping):
            items = [dict(spec)]
        elif isinstance(spec, (list, tuple)):
            items = [dict(s) for s in spec]
            if not items:
                continue
        else:
            raise ValueError(f"abnormality {name!r}: expected True, a dict of parameters or a list of dicts, got {spec!r}")
        out[name] = items
    return out


def implied_positive(requested: Mapping[str, Any]) -> set[str]:
    """All labels positive given the requested findings (closing over IMPLIES)."""
    present = set(requested)
    for name in list(present):
        present.update(IMPLIES.get(name, ()))
    return present
