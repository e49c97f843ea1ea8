"""A small rule-based reader of phantom reports (SARLE's two steps, reduced to the phantom's vocabulary).

Step 1 drops normal phrases: a sentence stating normality, and any text after a negation
("no", "without"). Step 2 searches what is left for abnormality terms and side words. Independent
of the generator's code, so the tests compare the report with the truth rather than with itself.
"""

from __future__ import annotations

import re

TERMS: dict[str, tuple[str, ...]] = {
    "lung_nodule": ("nodul",),
    "lung_mass": (" mass",),
    "lung_consolidation": ("consolid",),
    "lung_groundglass": ("ground-glass", "ground glass"),
    "lung_emphysema": ("emphysem", "bulla"),
    "lung_atelectasis": ("atelecta",),
    "lung_pleural_effusion": ("pleural effusion",),
    "lung_pneumothorax": ("pneumothora",),
    "heart_cardiomegaly": ("cardiomegaly", "heart is enlarged"),
    "heart_pericardial_effusion": ("pericardial effusion",),
    "great_vessel_atherosclerosis": ("atheroscler",),
    "great_vessel_calcification": ("calcific",),
    "mediastinum_lymphadenopathy": ("lymphadenopathy", "enlarged mediastinal lymph node"),
}
NEGATION = re.compile(r"\b(no|without|negative for)\b")
NORMAL = re.compile(r"\b(normal|unremarkable|clear|patent)\b")
BILATERAL = re.compile(r"\b(bilateral|bibasilar|both|lobes|apices)\b")
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b")
#: Words the phantom must never write: a labeller would find labels the phantom does not draw.
FORBIDDEN = ("opaci", "density", "densities", "plaque", "scatter", "lesion", "linear", "dilat", "disease",
             "pneumonia", "infect", "inflam", "cancer", "tumor", "malignan", "edema", "fibros", "scar", "granuloma")


def sentences(report: str) -> list[str]:
    text = re.sub(r"^\s*\d+\.\s*", "", report, flags=re.M).replace("\n", " ").lower()
    return [s.strip() for s in re.split(r"(?<=[a-z)])\.\s+|\.$|:", text) if s.strip()]


def asserted(report: str) -> set[tuple[str, str]]:
    """(label, location) pairs the report asserts; lung locations are right_lung/left_lung/lung."""
    found: set[tuple[str, str]] = set()
    for s in sentences(report):
        if NORMAL.search(s):
            continue
        m = NEGATION.search(s)
        if m:
            s = s[: m.start()]
        s = " " + s
        for label, terms in TERMS.items():
            if not any(t in s for t in terms):
                continue
            if label == "great_vessel_calcification" and "aort" not in s:
                continue
            if label.startswith("lung_"):
                sides = [w for w in ("right", "left") if re.search(rf"\b{w}\b", s)]
                if BILATERAL.search(s):
                    sides = ["right", "left"]
                locs = [f"{w}_lung" for w in sides] or ["lung"]
            else:
                locs = [label.split("_")[0] if not label.startswith("great_vessel") else "great_vessel"]
            for loc in locs:
                found.add((label, loc))
            if label == "lung_nodule":
                sizes = [float(v) * (10.0 if u == "cm" else 1.0) for v, u in SIZE.findall(s)]
                if sizes and max(sizes) > 10.0:
                    for loc in locs:
                        found.add(("lung_nodulegr1cm", loc))
    return found
