"""The grid truth of eval/truth.py before truth was in the store (commit 1f2bee0), kept as a reference.

It re-ran ingest's orient -> resample, the training crop and PARTITION's downsampling by hand on a
phantom cohort's files. Tests compare the store's grid truth (ingest + partition) with it. The only
change: lesion_codes.csv now also lists the confounder's bit, which this reference skips (it reads the
confounder region from the organ map, as it always did).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from ctplatform.geometry import ModelGeometry, center_crop_or_pad
from ctplatform.ingest.orient import to_store_orientation, voxel_spacing
from ctplatform.ingest.resample import resample, resampled_affine
from ctplatform.labels import N_LABELS, label_by_name
from ctplatform.partition.grid import downsample_bits
from ctplatform.phantom.anatomy import ORGAN_CODES

CONFOUNDER_ORGAN: dict[str, str] = {"fat": "subcutaneous_fat", "marker": "marker"}


@dataclass
class LegacyGridTruth:
    lesions: np.ndarray
    confounder: np.ndarray | None


def cohort_confounder(cohort: str | Path) -> tuple[str, str] | None:
    path = Path(cohort) / "cohort.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text()).get("confounder")
    return (spec["kind"], spec["label"]) if spec else None


def to_stored_grid(path: Path, stored_shape: tuple[int, ...], stored_attrs: Any) -> np.ndarray:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    oriented, aff = to_store_orientation(data, img.affine)
    spacing = voxel_spacing(aff)
    target = tuple(float(s) for s in stored_attrs.get("spacing_mm", spacing))
    out = resample(oriented, spacing, target, order=0)
    aff = resampled_affine(aff, spacing, target)
    want = stored_attrs.get("affine")
    if out.shape != tuple(stored_shape) or (want is not None and not np.allclose(aff, np.asarray(want), atol=1e-3)):
        raise ValueError(f"{path.name} resampled to {out.shape} does not match the stored volume {tuple(stored_shape)}")
    return out


def truth_on_grid(cohort: str | Path, volume_id: str, stored_shape: tuple[int, ...], stored_attrs: Any,
                  geometry: ModelGeometry, method: str = "area") -> LegacyGridTruth:
    cohort = Path(cohort)
    lesion_path, organ_path = cohort / "truth" / f"{volume_id}_lesions.nii.gz", cohort / "truth" / f"{volume_id}.nii.gz"
    codes = pd.read_csv(cohort / "truth" / "lesion_codes.csv")
    codes = codes[codes["label"] != "confounder"]
    bits = to_stored_grid(lesion_path, stored_shape, stored_attrs).astype(np.uint16)
    cells = downsample_bits(center_crop_or_pad(bits, geometry.input_shape, fill=0), geometry.grid, method)
    lesions = np.zeros((N_LABELS, *geometry.grid), dtype=bool)
    for bit, name in zip(codes["bit"], codes["label"]):
        lesions[label_by_name(name).index] |= (cells & np.uint16(1 << int(bit))) > 0
    confounder = None
    spec = cohort_confounder(cohort)
    if spec is not None:
        organs = to_stored_grid(organ_path, stored_shape, stored_attrs)
        region = (organs == ORGAN_CODES[CONFOUNDER_ORGAN[spec[0]]]).astype(np.uint8)
        confounder = downsample_bits(center_crop_or_pad(region, geometry.input_shape, fill=0), geometry.grid, method) > 0
    return LegacyGridTruth(lesions, confounder)
