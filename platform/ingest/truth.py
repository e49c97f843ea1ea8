"""Lesion truth that arrives with a scan: oriented and resampled exactly like its volume, stored beside it.

A scan brings truth through two listing columns (docs/ingest.md):

    truth        a NIfTI label mask in the scan's own voxel grid (the scan's shape and affine)
    truth_codes  a CSV saying what the mask's values mean; default: lesion_codes.csv beside the mask.
                 Columns: `label`, and `bit` (a voxel carries the label when voxel & 2**bit) or
                 `value` (when voxel == value). `label` is one of the 80 label names (labels.py) or
                 `confounder`: a region that is not a lesion (an external marker, body-wall fat),
                 whose row may say `kind` and `target` (the label the confounder was made to track).

The mask goes through the volume's own steps, `orient.to_store_orientation` then `resample.resample`
with nearest neighbour (label values are never mixed), and must then have the stored volume's shape
and affine: that is what makes truth voxel (z, y, x) the volume's voxel (z, y, x). The stored truth
is a bitfield re-packed in the codes' row order: bit k marks `truth_labels[k]` (store.write_truth).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.scans.orient import to_store_orientation, voxel_spacing
from ctplatform.scans.resample import resample, resampled_affine
from ctplatform.scans.scan import ScanError
from ctplatform.labels import label_by_name
from ctplatform.store import CONFOUNDER

#: Default codes file, looked for beside the mask when the listing names none.
DEFAULT_CODES = "lesion_codes.csv"
#: Tolerance (mm) when comparing the truth's affine with the stored volume's (attributes keep 6 decimals).
AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class TruthCodes:
    """What each stored bit means, and how to find it in the source mask."""

    labels: tuple[str, ...]  # stored bit k -> a label name or CONFOUNDER
    selectors: tuple[tuple[str, int], ...]  # per stored bit: ("bit", k) or ("value", v) in the source mask
    confounder: dict[str, str] | None  # {"kind", "label"} of the confounder region, when given

    def as_json(self) -> str:
        return json.dumps([self.labels, self.selectors, self.confounder], sort_keys=True)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def read_codes(path: str | Path) -> TruthCodes:
    """Parse a truth codes CSV (module docstring); raises ScanError naming what is wrong."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ScanError(f"truth codes {path.name} not found (give a truth_codes column, or put {DEFAULT_CODES} beside the mask)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    selector = "bit" if "bit" in df.columns else "value" if "value" in df.columns else None
    if "label" not in df.columns or selector is None:
        raise ScanError(f"truth codes {path.name} need columns `label` and `bit` (or `value`)")
    labels, selectors, confounder = [], [], None
    for rec in df.to_dict("records"):
        name = _text(rec["label"])
        try:
            number = int(_text(rec[selector]))
        except ValueError:
            raise ScanError(f"truth codes {path.name}: {selector} {rec[selector]!r} is not an integer") from None
        if number < 0 or (selector == "bit" and number > 63):
            raise ScanError(f"truth codes {path.name}: {selector} {number} is out of range")
        if name == CONFOUNDER:
            target = _text(rec.get("target"))
            if target:
                label_by_name(target)  # a typo fails here, not in evaluation
            confounder = {"kind": _text(rec.get("kind")), "label": target}
        else:
            try:
                label_by_name(name)
            except (KeyError, ValueError):
                raise ScanError(f"truth codes {path.name}: {name!r} is neither a label name (labels.py) nor {CONFOUNDER!r}") from None
        labels.append(name)
        selectors.append((selector, number))
    if not labels or len(labels) > 64:
        raise ScanError(f"truth codes {path.name} must name between 1 and 64 labels; found {len(labels)}")
    return TruthCodes(tuple(labels), tuple(selectors), confounder)


def truth_source(row: dict[str, Any]) -> tuple[Path, Path] | None:
    """(mask, codes) of a work row (discover.py resolves listing paths), or None when it has no truth."""
    mask = _text(row.get("truth"))
    if not mask:
        return None
    mask_path = Path(mask)
    codes = _text(row.get("truth_codes"))
    codes_path = Path(codes) if codes else mask_path.parent / DEFAULT_CODES
    if not mask_path.is_file():
        raise ScanError(f"truth mask {mask_path.name} does not exist")
    return mask_path, codes_path


def truth_sha256(mask: Path, codes: TruthCodes) -> str:
    """sha256 of the mask file and of what its codes mean."""
    h = hashlib.sha256()
    with open(mask, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    h.update(codes.as_json().encode())
    return h.hexdigest()


def _bit_dtype(n: int) -> np.dtype:
    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64) if 8 * np.dtype(t).itemsize >= n)


def encode(mask: np.ndarray, codes: TruthCodes) -> np.ndarray:
    """Source mask values -> the stored bitfield (bit k marks codes.labels[k])."""
    out = np.zeros(mask.shape, dtype=_bit_dtype(len(codes.labels)))
    for k, (kind, number) in enumerate(codes.selectors):
        hit = (mask & (1 << number)) != 0 if kind == "bit" else mask == number
        out[hit] |= out.dtype.type(1 << k)
    return out


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI label mask as non-negative integers, and its affine."""
    import nibabel as nib

    from ctplatform.scans.readers import size_nifti
    from ctplatform.scans.sizing import MASK_MAX_COMPRESSION_RATIO, ReadLimits

    try:
        img = nib.load(str(path))
    except Exception as e:  # unreadable: the message names the file, never its header values
        raise ScanError(f"truth mask {path.name} could not be read ({type(e).__name__})") from None
    # Sized from its header before a voxel is read (sizing.py); masks are mostly zeros, so they
    # may compress far more than CT before they count as a bomb.
    size_nifti(img, Path(path), ReadLimits(max_compression_ratio=MASK_MAX_COMPRESSION_RATIO))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # unreadable: the message names the file, never its header values
        raise ScanError(f"truth mask {path.name} could not be read ({type(e).__name__})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ScanError(f"truth mask {path.name} is not a 3D array (shape {data.shape})")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ScanError(f"truth mask {path.name} holds non-integer values; a label mask holds integers")
        data = data.astype(np.int64)
    if data.min(initial=0) < 0:
        raise ScanError(f"truth mask {path.name} holds negative values")
    return data, np.asarray(img.affine, dtype=np.float64)


def carry_truth(
    mask_path: Path,
    codes: TruthCodes,
    target_spacing_mm: tuple[float, ...],
    stored_shape: tuple[int, ...],
    stored_affine: Any,
) -> np.ndarray:
    """The mask on the stored volume's voxels: the volume's reorientation and resampling (nearest)."""
    data, affine = read_mask(mask_path)
    oriented, aff = to_store_orientation(data, affine)
    spacing = voxel_spacing(aff)
    out = resample(oriented, spacing, target_spacing_mm, order=0)
    aff = resampled_affine(aff, spacing, target_spacing_mm)
    if out.shape != tuple(stored_shape) or (
        stored_affine is not None and not np.allclose(aff, np.asarray(stored_affine), atol=AFFINE_TOLERANCE_MM)
    ):
        raise ScanError(
            f"truth mask {mask_path.name} does not lie on the scan's voxels (resampled to {out.shape}, the volume is "
            f"{tuple(stored_shape)}, or their affines differ): write the mask with the scan's shape and affine"
        )
    return encode(out, codes)


def truth_attrs(codes: TruthCodes, volume_attrs: dict[str, Any], sha: str) -> dict[str, Any]:
    """Attributes of a stored truth: its bits' names and the volume's geometry (no paths, no ids)."""
    attrs = {k: volume_attrs[k] for k in ("spacing_mm", "orientation", "affine") if k in volume_attrs}
    attrs.update(truth_labels=list(codes.labels), source_sha256=sha)
    if codes.confounder is not None:
        attrs["confounder"] = codes.confounder
    return attrs


def store_truth(store: Any, volume_id: str, source: tuple[Path, Path], shape: tuple[int, ...],
                volume_attrs: dict[str, Any], chunk_slices: int) -> None:
    """Carry one scan's truth into the store unless the same truth is already there."""
    mask, codes_path = source
    codes = read_codes(codes_path)
    sha = truth_sha256(mask, codes)
    if store.has_truth(volume_id) and store.truth(volume_id).attrs.get("source_sha256") == sha:
        return
    spacing = tuple(float(s) for s in volume_attrs["spacing_mm"])
    bits = carry_truth(mask, codes, spacing, shape, volume_attrs.get("affine"))
    store.write_truth(volume_id, bits, truth_attrs(codes, volume_attrs, sha), chunk_slices=chunk_slices)


def prepare_truth(source: tuple[Path, Path], shape: tuple[int, ...], volume_attrs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """(bits, attrs) for a volume about to be written: checked before anything reaches the store."""
    mask, codes_path = source
    codes = read_codes(codes_path)
    spacing = tuple(float(s) for s in volume_attrs["spacing_mm"])
    bits = carry_truth(mask, codes, spacing, shape, volume_attrs.get("affine"))
    return bits, truth_attrs(codes, volume_attrs, truth_sha256(mask, codes))
