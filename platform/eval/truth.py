"""True lesion masks of phantom cohorts, brought onto the model's feature grid.

A phantom cohort (ctplatform phantom OUT) keeps, per scan, `truth/<id>_lesions.nii.gz` (uint16:
bit k marks label k of `truth/lesion_codes.csv`) and `truth/<id>.nii.gz` (organ codes, including
the confounders: subcutaneous fat, an external marker) in the scan's own voxel grid, and
`cohort.json` naming the confounder. To compare them with attention they follow the scan's path:

1. ingest's path into the store: reorient to I-P-L (`ingest.orient.to_store_orientation`) and
   resample to the stored spacing with nearest neighbour (`ingest.resample.resample`, order 0); the
   result must have the stored volume's shape and `affine` attribute, or the truth is refused;
2. the training crop (`geometry.center_crop_or_pad`, pad 0);
3. PARTITION's downsampling to the grid (`partition.grid.downsample_bits`), on all label bits at
   once; `area` by default: a cell is lesion when any lesion voxel falls in it (small lesions
   survive; `nearest` would keep only those covering a cell's sample voxel).

The scan's cohort folder is `eval.truth_dir` when set, else found from the manifest's source path
(OUT/scans/<id>.nii.gz -> OUT) when OUT/truth/<id>_lesions.nii.gz exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.geometry import ModelGeometry, center_crop_or_pad
from ctplatform.labels import N_LABELS, label_by_name

#: Phantom organ code of each confounder kind (phantom.anatomy.ORGAN_CODES).
CONFOUNDER_ORGAN: dict[str, str] = {"fat": "subcutaneous_fat", "marker": "marker"}


class TruthMismatchError(ValueError):
    """The truth masks do not land on the stored volume's voxels."""


@dataclass
class GridTruth:
    lesions: np.ndarray  # bool [80, H, D1, D2]: true lesion cells of each label (empty for most labels)
    confounder: np.ndarray | None  # bool [H, D1, D2] or None (cohort without a confounder)


def lesion_files(cohort: Path, volume_id: str) -> tuple[Path, Path]:
    return cohort / "truth" / f"{volume_id}_lesions.nii.gz", cohort / "truth" / f"{volume_id}.nii.gz"


def cohort_for(volume_id: str, source: str | None, configured: str | None) -> str | None:
    """The cohort folder holding this scan's truth, or None when it has none."""
    candidates = [Path(configured)] if configured else []
    if source:
        candidates.append(Path(source).parent.parent)
    for c in candidates:
        if lesion_files(c, volume_id)[0].is_file():
            return str(c)
    return None


def cohort_confounder(cohort: str | Path) -> tuple[str, str] | None:
    """(kind, target label) from the cohort's cohort.json, or None."""
    path = Path(cohort) / "cohort.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text()).get("confounder")
    return (spec["kind"], spec["label"]) if spec else None


def to_stored_grid(path: Path, stored_shape: tuple[int, ...], stored_attrs: Any) -> np.ndarray:
    """A label map in a scan's own grid -> the stored volume's voxels (ingest's reorientation + nearest)."""
    import nibabel as nib

    from ctplatform.scans.orient import to_store_orientation, voxel_spacing
    from ctplatform.scans.resample import resample, resampled_affine

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    oriented, aff = to_store_orientation(data, img.affine)
    spacing = voxel_spacing(aff)
    target = tuple(float(s) for s in stored_attrs.get("spacing_mm", spacing))
    out = resample(oriented, spacing, target, order=0)
    aff = resampled_affine(aff, spacing, target)
    want = stored_attrs.get("affine")
    if out.shape != tuple(stored_shape) or (want is not None and not np.allclose(aff, np.asarray(want), atol=1e-3)):
        raise TruthMismatchError(
            f"{path.name} resampled to {out.shape} does not match the stored volume {tuple(stored_shape)} "
            "(or its affine): was the store ingested from this cohort's scans?"
        )
    return out


def truth_on_grid(
    cohort: str | Path,
    volume_id: str,
    stored_shape: tuple[int, ...],
    stored_attrs: Any,
    geometry: ModelGeometry,
    method: str = "area",
) -> GridTruth:
    """Lesion cells per label and the confounder region on the feature grid of one scan."""
    import pandas as pd

    from ctplatform.partition.grid import downsample_bits
    from ctplatform.phantom.anatomy import ORGAN_CODES

    cohort = Path(cohort)
    lesion_path, organ_path = lesion_files(cohort, volume_id)
    codes = pd.read_csv(cohort / "truth" / "lesion_codes.csv")
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
    return GridTruth(lesions, confounder)


class TruthReader:
    """Grid truth for the scans of one task: {volume_id: cohort folder or None}."""

    def __init__(self, cohorts: dict[str, str | None], store_root: str, geometry: ModelGeometry, method: str = "area") -> None:
        from ctplatform.store import Store

        self.cohorts = cohorts
        self.store = Store(store_root)
        self.geometry = geometry
        self.method = method

    def grid_truth(self, volume_id: str) -> GridTruth | None:
        cohort = self.cohorts.get(volume_id)
        if cohort is None:
            return None
        vol = self.store.volume(volume_id)
        return truth_on_grid(cohort, volume_id, tuple(vol.shape), vol.attrs, self.geometry, self.method)
