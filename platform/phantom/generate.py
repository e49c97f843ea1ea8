"""One synthetic chest CT with exact ground truth: `make_phantom(seed, size, abnormalities, confounder)`.

    from ctplatform.phantom.generate import make_phantom
    ph = make_phantom(7, "demo", {"lung_nodulegr1cm": {"lobe": "RUL", "size_mm": 14}, "lung_pleural_effusion": True})
    ph.hu            # int16 HU [z, y, x] in the store orientation (I-P-L), spacing ph.spacing_mm
    ph.organs        # uint8 organ codes (anatomy.ORGAN_CODES); ph.store_organs() gives the store's 0..3
    ph.lesions       # {"lung_nodule": bool mask, "lung_nodulegr1cm": ..., "lung_pleural_effusion": ...}
    ph.label_rows    # [(abnormality, location, value), ...] for all 80 labels (labels.parquet convention)
    ph.report        # radiology-style text asserting exactly the positive labels

The same seed gives the same patient at every size (anatomy and lesions are placed on a fixed coarse
plan); only the voxel grid and the scanner differ. Rendering runs slab by slab, so paper-size
volumes need memory for a few slabs plus the outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ctplatform.labels import all_labels
from ctplatform.phantom.anatomy import ORGAN_CODES, STORE_ORGAN_FROM_PHANTOM, Patient, sample_patient
from ctplatform.phantom.findings import implied_positive, normalise_request, sample_findings
from ctplatform.phantom.grid import Grid
from ctplatform.phantom.lesions import (
    Lesion,
    PlacementError,
    place_aortic,
    place_atelectasis,
    place_consolidation,
    place_effusion,
    place_emphysema,
    place_groundglass,
    place_mass,
    place_nodes,
    place_nodule,
    place_pneumothorax,
)
from ctplatform.phantom.lesion_drawing import draw_lesions, lesion_footprint
from ctplatform.phantom.paint import render_anatomy
from ctplatform.phantom.planning import Plan, grow_lung_trees, make_plan
from ctplatform.phantom.report import write_report
from ctplatform.phantom.scanner import ScannerModel, apply_scanner, halo_slices, sample_scanner, to_int16

ConfounderKind = Literal["fat", "marker", "zmarker"]
PLACEMENT_ATTEMPTS = 4
#: One random stream per purpose, so e.g. adding a finding never changes the patient's anatomy.
STREAMS: dict[str, int] = {"findings": 0, "anatomy": 1, "lesions": 2, "scan": 3, "report": 4, "heart": 6}


def _stream(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STREAMS[purpose], *extra])


@dataclass(frozen=True)
class SizePreset:
    scale: float  # body size relative to an average adult
    matrix: int  # in-plane pixels
    fov_mm: tuple[float, float]  # range of the reconstruction field of view
    slice_mm: tuple[float, ...]  # slice spacings to choose from
    slab: int  # slices rendered at once


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(0.88, 96, (345.0, 375.0), (5.0,), 64),  # for fast tests: ~3.7 mm in-plane
    "demo": SizePreset(0.88, 224, (335.0, 360.0), (2.5, 2.75, 3.0), 128),  # ~1.5-1.6 mm, ~90-110 slices
    "paper": SizePreset(1.0, 512, (360.0, 420.0), (0.625, 0.8, 1.0), 48),  # ~0.7-0.8 mm, chest-sized
}


@dataclass(frozen=True)
class Confounder:
    """A non-causal feature: subcutaneous fat thickness (mm), an external marker on the chest (1 present,
    0 absent) or a `zmarker` above the lung apices (1 / 0), in slices no organ's allowed region reaches."""

    kind: ConfounderKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("fat", "marker", "zmarker"):
            raise ValueError(f"confounder kind must be 'fat', 'marker' or 'zmarker', got {self.kind!r}")


@dataclass
class Phantom:
    """A synthetic CT volume with its truth, everything in the store orientation (I-P-L)."""

    seed: int
    size: str
    hu: np.ndarray  # int16 [z, y, x]
    spacing_mm: tuple[float, float, float]
    organs: np.ndarray  # uint8, ORGAN_CODES
    lesions: dict[str, np.ndarray]  # positive label name -> bool mask (absent labels are not keys)
    label_rows: list[tuple[str, str, int]]
    report: str
    confounder: Confounder | None
    fat_mm: float
    marker: bool
    findings: list[Lesion] = field(repr=False, default_factory=list)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # patient-frame mm of voxel (0, 0, 0)

    @property
    def positive_labels(self) -> list[str]:
        return sorted(self.lesions)

    def store_organs(self) -> np.ndarray:
        """Organ map in the store's codes: 1 right lung, 2 left lung, 3 mediastinum (heart, vessels, airways)."""
        lut = np.zeros(256, dtype=np.uint8)
        for k, v in STORE_ORGAN_FROM_PHANTOM.items():
            lut[k] = v
        return lut[self.organs]

    def confounder_mask(self) -> np.ndarray:
        """Voxels of the confounding feature: the subcutaneous fat or the external marker."""
        kind = self.confounder.kind if self.confounder is not None else "fat"
        return self.organs == ORGAN_CODES["subcutaneous_fat" if kind == "fat" else "marker"]


def make_phantom(
    seed: int,
    size: str = "demo",
    abnormalities: Mapping[str, Any] | None = None,
    confounder: Confounder | tuple[str, float] | Sequence[Confounder] | None = None,
    prevalence: Mapping[str, float] | None = None,
    cooccurrence: Mapping[tuple[str, str], float] | None = None,
) -> Phantom:
    """Generate one phantom.

    abnormalities: label name -> True | parameter dict | list of dicts (see findings.py, lesions.py:
        `lobe` RUL/RML/RLL/LUL/LLL, `side` right/left, `size_mm`, ...); `{}` gives a normal scan;
        None samples findings from `prevalence` and `cooccurrence`.
    confounder: Confounder("fat", mm) sets the subcutaneous fat thickness; Confounder("marker", 1)
        places an external marker on the skin, Confounder("zmarker", 1) one above the lung apices; a
        list applies several (e.g. fat and zmarker). None: natural fat thickness, no marker.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {list(SIZES)}")
    preset = SIZES[size]
    if isinstance(confounder, list):
        confounders = [c if isinstance(c, Confounder) else Confounder(*c) for c in confounder]
        confounder = confounders[0] if confounders else None
    else:
        if confounder is not None and not isinstance(confounder, Confounder):
            confounder = Confounder(*confounder)  # type: ignore[misc]
        confounders = [confounder] if confounder is not None else []
    if abnormalities is None:
        abnormalities = sample_findings(_stream(seed, "findings"), prevalence, cooccurrence)
    request = normalise_request(abnormalities)

    r_an = _stream(seed, "anatomy")
    cardio = "heart_cardiomegaly" in request
    r_heart = _stream(seed, "heart")
    heart_scale = float(request["heart_cardiomegaly"][0].get("scale", r_heart.uniform(1.25, 1.38))) if cardio else None
    peri = float(request["heart_pericardial_effusion"][0].get("thickness_mm", r_heart.uniform(7.0, 15.0))) if "heart_pericardial_effusion" in request else 0.0
    by_kind = {c.kind: c.value for c in confounders}
    fat = by_kind.get("fat")
    marker = by_kind.get("marker", 0.0) >= 0.5
    zmarker = by_kind.get("zmarker", 0.0) >= 0.5
    patient = sample_patient(r_an, preset.scale, fat_mm=fat, heart_scale=heart_scale, pericardial_effusion_mm=peri,
                             marker=marker, zmarker=zmarker)
    patient.cardiomegaly = cardio
    plan = make_plan(patient)
    grow_lung_trees(patient, plan, r_an)
    r_scan = _stream(seed, "scan")
    grid = scan_grid(patient, preset, r_scan)
    scanner = sample_scanner(r_scan, grid.spacing, seed)
    expected = implied_positive(request)
    for attempt in range(PLACEMENT_ATTEMPTS):
        # a crowded request can leave no room or hide a lesion under another: place it afresh
        attempt_plan = plan.copy()
        try:
            lesions = place_lesions(patient, attempt_plan, _stream(seed, "lesions", attempt), request)
        except PlacementError:
            if attempt == PLACEMENT_ATTEMPTS - 1:
                raise
            continue
        hu, organs, masks = render(patient, lesions, grid, scanner, preset.slab)
        _ensure_visible(patient, lesions, grid, hu, organs, masks)
        drawn = expected | {lab for les in lesions for lab in les.labels}
        missing = drawn - set(masks)
        if not missing:
            break
    else:
        raise RuntimeError(f"seed {seed}: findings {sorted(missing)} have no visible voxels on the {size} grid; "
                           "request fewer findings or another seed")
    report = write_report(lesions, cardio, peri, _stream(seed, "report"))
    return Phantom(
        seed=int(seed), size=size, hu=hu, spacing_mm=grid.spacing, organs=organs, lesions=masks,
        label_rows=label_rows(lesions, cardio, peri > 0), report=report, confounder=confounder,
        fat_mm=patient.fat_mm, marker=marker or zmarker, findings=lesions, origin_mm=grid.origin,
    )


def place_lesions(p: Patient, plan: Plan, rng: np.random.Generator, request: dict[str, list[dict[str, Any]]]) -> list[Lesion]:
    """Place the requested lesions; lung lesions are kept apart (each blocks its footprint on the plan).

    Region findings go first (effusion, atelectasis, pneumothorax), then consolidation, masses and
    nodules, so a nodule never hides inside fluid or consolidation; ground glass and emphysema may
    surround nodules (they stay visible there).
    """
    out: list[Lesion] = []

    def take(les: Lesion) -> Lesion:
        out.append(les)
        if les.labels[0].startswith("lung_"):
            plan.block(lesion_footprint(p, les, plan.grid, plan.organs))
        return les

    effusion = None
    for spec in request.get("lung_pleural_effusion", [])[:1]:
        effusion = take(place_effusion(p, plan, rng, spec))
    for spec in request.get("lung_atelectasis", [])[:1]:
        take(place_atelectasis(p, plan, rng, spec, effusion))
    for spec in request.get("lung_pneumothorax", [])[:1]:
        take(place_pneumothorax(p, plan, rng, spec))
    for spec in request.get("lung_consolidation", []):
        take(place_consolidation(p, plan, rng, spec))
    for spec in request.get("lung_mass", []):
        take(place_mass(p, plan, rng, spec))
    for spec in request.get("lung_nodulegr1cm", []):
        take(place_nodule(p, plan, rng, spec, large=True))
    for spec in request.get("lung_nodule", []):
        if "size_mm" in spec and float(spec["size_mm"]) > 10.0:
            raise ValueError("a lung_nodule over 10 mm is a lung_nodulegr1cm; request that label instead")
        if "lung_nodulegr1cm" in request and spec == {}:
            continue  # implied by the large nodule
        take(place_nodule(p, plan, rng, spec, large=False))
    for spec in request.get("lung_groundglass", []):
        out.append(place_groundglass(p, plan, rng, spec))
    for spec in request.get("lung_emphysema", []):
        out.append(place_emphysema(p, plan, rng, spec))
    if "great_vessel_atherosclerosis" in request:
        out.append(place_aortic(p, rng, request["great_vessel_atherosclerosis"][0], athero=True))
    elif "great_vessel_calcification" in request:
        out.append(place_aortic(p, rng, request["great_vessel_calcification"][0], athero=False))
    for spec in request.get("mediastinum_lymphadenopathy", [])[:1]:
        out.append(place_nodes(p, rng, spec))
    return out


def scan_grid(p: Patient, preset: SizePreset, rng: np.random.Generator) -> Grid:
    """The scanned field: varied field of view, centring, slice spacing and z range."""
    half_w = p.body_half_width() + 8.0
    fov = max(float(rng.uniform(*preset.fov_mm)), 2.0 * half_w)
    sp = fov / preset.matrix
    dz = float(rng.choice(preset.slice_mm))
    top = -float(rng.uniform(20.0, 45.0)) * p.scale
    bottom = p.L + float(rng.uniform(15.0, 45.0)) * p.scale
    nz = int(np.ceil((bottom - top) / dz))
    y_mid = 0.5 * (p.body_anterior() + p.y_table) + 12.0 + float(rng.uniform(-6.0, 6.0))
    x_mid = float(rng.uniform(-6.0, 6.0))
    origin = (top, y_mid - fov / 2 + sp / 2, x_mid - fov / 2 + sp / 2)
    return Grid((nz, preset.matrix, preset.matrix), (dz, sp, sp), origin)


def render(p: Patient, lesions: list[Lesion], grid: Grid, scanner: ScannerModel, slab: int):
    """Render slab by slab (with a halo for the blur): int16 HU, organ codes, lesion masks."""
    nz = grid.shape[0]
    hu = np.empty(grid.shape, dtype=np.int16)
    organs = np.empty(grid.shape, dtype=np.uint8)
    masks: dict[str, np.ndarray] = {}
    halo = halo_slices(scanner, grid.spacing[0])
    for z0 in range(0, nz, slab):
        z1 = min(z0 + slab, nz)
        lo, hi = max(z0 - halo, 0), min(z1 + halo, nz)
        g = grid.slab(lo, hi)
        h, o = render_anatomy(p, g)
        m = draw_lesions(p, lesions, g, h, o)
        h = apply_scanner(h, grid.spacing, scanner, lo)
        keep = slice(z0 - lo, z0 - lo + (z1 - z0))
        hu[z0:z1] = to_int16(h[keep])
        organs[z0:z1] = o[keep]
        for label, mm in m.items():
            part = mm[keep]
            if part.any():
                masks.setdefault(label, np.zeros(grid.shape, dtype=bool))[z0:z1] = part
    return hu, organs, masks


def _ensure_visible(p: Patient, lesions: list[Lesion], grid: Grid, hu, organs, masks) -> None:
    """A lesion smaller than a voxel can miss every voxel centre: give it the nearest voxel of its organ.

    Keeps "positive iff the mask is non-empty" exact on coarse grids (the `tiny` size).
    """
    for les in lesions:
        if not les.blobs or all(lab in masks for lab in les.labels):
            continue
        if les.labels[0].startswith("lung_"):
            allowed = [ORGAN_CODES[f"{s}_lung"] for s in les.sides]
        else:
            allowed = [ORGAN_CODES[k] for k in ("heart", "great_vessels", "mediastinum")]
        c = np.asarray(les.blobs[0][0])
        centre = np.rint((c - np.asarray(grid.origin)) / np.asarray(grid.spacing)).astype(int)
        lo = np.clip(centre - 2, 0, np.asarray(grid.shape) - 1)
        hi = np.clip(centre + 3, 1, np.asarray(grid.shape))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        cand = np.argwhere(np.isin(organs[box], allowed)) + lo
        if len(cand) == 0:
            continue  # reported below as a finding without voxels
        mm = np.asarray(grid.origin) + cand * np.asarray(grid.spacing)
        idx = tuple(int(v) for v in cand[np.argmin(((mm - c) ** 2).sum(axis=1))])
        for lab in les.labels:
            if lab not in masks:
                masks[lab] = np.zeros(grid.shape, dtype=bool)
                masks[lab][idx] = True
        hu[idx] = max(int(hu[idx]), 40)


def label_rows(lesions: list[Lesion], cardiomegaly: bool, pericardial: bool) -> list[tuple[str, str, int]]:
    """All 80 labels in the labels.parquet convention: one row per location found, value 0 when absent."""
    found: dict[str, set[str]] = {}
    for les in lesions:
        for lab in les.labels:
            group = lab.split("_")[0] if not lab.startswith("great_vessel") else "great_vessel"
            if group == "lung":
                side_less = les.kind == "emphysema" and not les.params.get("bilateral_wording")
                locs = {"lung"} if side_less else {f"{s}_lung" for s in les.sides}
            else:
                locs = {group}
            found.setdefault(lab, set()).update(locs)
    if cardiomegaly:
        found["heart_cardiomegaly"] = {"heart"}
    if pericardial:
        found["heart_pericardial_effusion"] = {"heart"}
    rows: list[tuple[str, str, int]] = []
    for lab in all_labels():
        if lab.name in found:
            rows += [(lab.abnormality, loc, 1) for loc in sorted(found[lab.name])]
        else:
            rows.append((lab.abnormality, lab.group, 0))
    return rows
