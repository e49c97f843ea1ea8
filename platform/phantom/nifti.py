"""NIfTI files of a phantom: scans in varied orientations with true affines, truth label maps, reading back.

Phantoms are generated in the store orientation I-P-L (see grid.py); a scan is written after
permuting/flipping its axes into another orientation (LPS, RAS, ...), with the affine that states
where every voxel really is, so a reader that honours the affine recovers the same I-P-L array.

Lesion truth is one uint16 NIfTI per scan whose bit k (value 1 << k) marks label k of
`LESION_BITS` (lesions may overlap, e.g. a nodule inside ground glass); `truth/lesion_codes.csv`
lists the bits. In a confounded cohort, bit `CONFOUNDER_BIT` marks the confounder's region (the
body-wall fat, or the external marker) and its row in lesion_codes.csv is labelled `confounder`,
with the confounder's kind and target label: the codes convention ingest reads (ingest/truth.py).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from ctplatform.geometry import STORE_AXCODES
from ctplatform.labels import label_by_name
from ctplatform.phantom.findings import SUPPORTED
from ctplatform.phantom.layout import CohortLayout

#: bit index of each lesion label in `truth/<id>_lesions.nii.gz`.
LESION_BITS: dict[str, int] = {name: k for k, name in enumerate(SUPPORTED)}
#: bit of the confounder region (the top bit of the uint16 mask, clear of the lesion bits).
CONFOUNDER_BIT = 15
assert len(LESION_BITS) < CONFOUNDER_BIT
#: Orientations scans are written in (axis codes of the array's axes, nibabel convention).
ORIENTATIONS: tuple[str, ...] = ("LPS", "RAS", "LAS", "RPI", "SPL", "PLS", "IPL")


def store_affine(origin_mm: tuple[float, float, float], spacing: tuple[float, float, float], table_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel -> RAS+ world (mm) of an I-P-L array whose voxel (0,0,0) is at patient-frame `origin_mm`.

    Patient frame (z toward feet, y toward back, x toward the left) maps to RAS as (R, A, S) =
    (-x, -y, -z); `table_offset` (R, A, S) shifts the world origin as a scanner's table position does.
    """
    sz, sy, sx = spacing
    z0, y0, x0 = origin_mm
    aff = np.zeros((4, 4))
    aff[:3, 0] = (0.0, 0.0, -sz)
    aff[:3, 1] = (0.0, -sy, 0.0)
    aff[:3, 2] = (-sx, 0.0, 0.0)
    aff[:3, 3] = (-x0 + table_offset[0], -y0 + table_offset[1], -z0 + table_offset[2])
    aff[3, 3] = 1.0
    return aff


def reorient(array: np.ndarray, affine: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """An I-P-L array and its affine, re-expressed with axis codes `target` (e.g. 'LPS')."""
    ornt = ornt_transform(axcodes2ornt(STORE_AXCODES), axcodes2ornt(tuple(target)))
    data = apply_orientation(array, ornt)
    new_aff = affine @ inv_ornt_aff(ornt, array.shape)
    return np.ascontiguousarray(data), new_aff


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write atomically (temporary name, then rename) with both qform and sform set to the affine."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if array.dtype == np.int16:
        img.header.set_slope_inter(1.0, 0.0)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)


def lesion_bitmap(lesions: dict[str, np.ndarray], shape: tuple[int, ...], confounder: np.ndarray | None = None) -> np.ndarray:
    """uint16 lesion bits; `confounder` (bool, same shape) sets CONFOUNDER_BIT on its region."""
    out = np.zeros(shape, dtype=np.uint16)
    for name, mask in lesions.items():
        out[mask] |= np.uint16(1 << LESION_BITS[name])
    if confounder is not None:
        out[confounder] |= np.uint16(1 << CONFOUNDER_BIT)
    return out


def lesion_codes_table(confounder: tuple[str, str] | None = None) -> list[dict[str, object]]:
    """Rows of truth/lesion_codes.csv; `confounder` (kind, target label) adds the confounder's row."""
    rows: list[dict[str, object]] = []
    for name, bit in LESION_BITS.items():
        lab = label_by_name(name)
        rows.append({"bit": bit, "value": 1 << bit, "label": name, "abnormality": lab.abnormality, "group": lab.group,
                     "kind": "", "target": ""})
    if confounder is not None:
        rows.append({"bit": CONFOUNDER_BIT, "value": 1 << CONFOUNDER_BIT, "label": "confounder", "abnormality": "",
                     "group": "", "kind": confounder[0], "target": confounder[1]})
    return rows


def load_ipl(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file's array in I-P-L order and the affine of that array."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    src = axcodes2ornt(aff2axcodes(img.affine))
    ornt = ornt_transform(src, axcodes2ornt(STORE_AXCODES))
    return np.ascontiguousarray(apply_orientation(data, ornt)), img.affine @ inv_ornt_aff(ornt, data.shape)


def read_truth(out_dir: str | Path, volume_id: str) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[float, float, float]]:
    """Organ codes, lesion masks (label -> bool) and spacing (z, y, x) of one cohort scan, in I-P-L order."""
    layout = CohortLayout(out_dir)
    organs, aff = load_ipl(layout.organs(volume_id))
    bits, _ = load_ipl(layout.lesions(volume_id))
    bits = bits.astype(np.uint16)
    lesions = {name: (bits & np.uint16(1 << k)) > 0 for name, k in LESION_BITS.items()}
    spacing = tuple(float(v) for v in np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))
    return organs.astype(np.uint8), {k: v for k, v in lesions.items() if v.any()}, spacing  # type: ignore[return-value]
