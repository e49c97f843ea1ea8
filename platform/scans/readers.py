"""Readers: every supported input becomes a `Scan` in the store's orientation (I-P-L, HU float32).

    scan = read_scan("ct/popi_dicom")                       # DICOM series folder
    scan = read_scan("ct/popi_thorax_256.nii.gz")           # NIfTI, any orientation and dtype
    scan = read_scan("trn00001.npz")                        # RAD-ChestCT
    scan = read_scan("train_1_a_1.nii.gz", "ctrate", metadata="train_metadata.csv")

Formats: `nifti` (.nii/.nii.gz: orientation from the affine, scl_slope/scl_inter honoured),
`dicom` (a folder holding one series, see dicom.py), `npz` (RAD-ChestCT: key `ct`, int16 HU,
0.8 mm, [slices, rows, cols] as published, already I-P-L), `ctrate` (CT-RATE NIfTI, whose header
carries no geometry or rescale: those come from the dataset's metadata CSV).
"""

from __future__ import annotations

import ast
import functools
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.scans.dicom import read_dicom_series
from ctplatform.scans.orient import LPS_TO_RAS, axis_codes, to_store_orientation, voxel_spacing
from ctplatform.scans.scan import Scan, ScanError
from ctplatform.scans.sizing import ReadLimits, check_claim, check_dtype, check_spacing

FORMATS: tuple[str, ...] = ("nifti", "dicom", "npz", "ctrate")
#: RAD-ChestCT volumes are published at 0.8 mm isotropic.
RADCHESTCT_SPACING_MM = 0.8
#: CT-RATE volume names: {train|valid}_<patient>_<scan letter>_<reconstruction>.nii.gz
CTRATE_NAME = re.compile(r"^(train|valid)_\d+_[a-z]+_\d+\.nii(\.gz)?$")
#: Columns of CT-RATE's metadata CSV (dataset card) that the reader uses; nothing else is read.
CTRATE_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
CTRATE_GEOMETRY_COLUMNS = ("ImagePositionPatient", "ImageOrientationPatient")


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def detect_format(path: str | Path) -> str:
    """Format from the path: a folder is a DICOM series; otherwise by file name."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if is_nifti(path):
        return "ctrate" if CTRATE_NAME.match(path.name) else "nifti"
    if name.endswith(".dcm"):
        raise ScanError(f"{path.name} is a single DICOM file: give the folder that holds the whole series")
    raise ScanError(
        f"cannot tell the format of {path.name}: expected .nii/.nii.gz, .npz or a DICOM series folder "
        f"(or give the format explicitly: one of {', '.join(FORMATS)})"
    )


def read_scan(
    path: str | Path,
    fmt: str | None = None,
    metadata: str | Path | Mapping[str, Any] | None = None,
    limits: ReadLimits | None = None,
) -> Scan:
    """Read one scan. `fmt=None` detects it from the path; `metadata` is for `ctrate` only
    (its metadata CSV, or that CSV's row as a mapping; default: found beside the dataset).

    Every format is sized from its header first and refused when it exceeds `limits` (default:
    `ReadLimits()`, a 4 GB budget), so no voxel data is read for a volume that cannot fit."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ScanError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ScanError(f"{path} does not exist")
    if fmt == "dicom":
        return read_dicom_series(path, limits)
    if path.is_dir():
        raise ScanError(f"{path} is a folder, but format {fmt!r} needs a file")
    if fmt == "nifti":
        return read_nifti(path, limits)
    if fmt == "npz":
        return read_radchestct_npz(path, limits)
    return read_ctrate(path, metadata, limits)


# ----------------------------------------------------------------------------- NIfTI
def _open_nifti(path: Path) -> Any:
    """The lazily loaded image (header only; raises ScanError for unreadable headers)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        return nib.load(path)
    except (EOFError, zlib.error, OSError) as e:
        raise ScanError(
            f"{path.name} could not be read: file truncated or corrupt ({type(e).__name__}); re-copy or re-export it"
        ) from None
    except (ImageFileError, ValueError) as e:
        raise ScanError(f"{path.name} is not a readable NIfTI image ({type(e).__name__}: {str(e)[:200]})") from None


def _raw_header_checks(path: Path, hdr: Any) -> None:
    """Checks on the header as written: nibabel's loader silently repairs some faults (a zero
    pixdim becomes 1 mm), which would place the volume with a made-up voxel size."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as f:
            raw = type(hdr).from_fileobj(f, check=False)
    except Exception as e:  # nibabel raises several types for nonsense headers
        raise ScanError(f"{path.name}: the NIfTI header is corrupt ({type(e).__name__})") from None
    if int(raw["sform_code"]) == 0 and int(raw["qform_code"]) != 0:
        ndim = min(max(int(raw["dim"][0]), 0), 7)
        pixdim = [float(v) for v in raw["pixdim"][1 : 1 + min(ndim, 3)]]
        check_spacing(path.name, pixdim, "header's pixdim")


def size_nifti(img: Any, path: Path, limits: ReadLimits | None) -> None:
    """Refuse, from the header alone, a volume that cannot fit, is truncated or is a gzip bomb."""
    hdr = img.header
    _raw_header_checks(path, hdr)
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        dtype = hdr.get_data_dtype()
        offset = int(hdr.get_data_offset())
    except Exception as e:  # nibabel raises several types for nonsense headers
        raise ScanError(f"{path.name}: the NIfTI header is corrupt ({type(e).__name__})") from None
    check_dtype(path.name, dtype)
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    check_claim(path.name, shape, dtype, limits, stored_bytes=size if compressed else max(size - offset, 0),
                compressed=compressed)


def _load_nifti(path: Path, limits: ReadLimits | None = None, img: Any = None) -> tuple[Any, np.ndarray]:
    """The image header object and its unscaled data (raises ScanError for unreadable files).

    The header is sized first (`size_nifti`): only then is voxel data read, and nibabel reads
    exactly the claimed bytes, so a compressed stream never inflates beyond the checked claim.
    """
    img = img if img is not None else _open_nifti(path)
    size_nifti(img, path, limits)
    try:
        raw = np.asanyarray(img.dataobj.get_unscaled())
    except (EOFError, zlib.error, OSError) as e:
        raise ScanError(
            f"{path.name} could not be read: file truncated or corrupt ({type(e).__name__}); re-copy or re-export it"
        ) from None
    except ValueError as e:
        raise ScanError(f"{path.name} is not a readable NIfTI image ({type(e).__name__}: {str(e)[:200]})") from None
    return img, raw


def _squeeze_to_3d(raw: np.ndarray, name: str) -> np.ndarray:
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        what = "a 2D image" if raw.ndim == 2 else f"{raw.ndim}-dimensional"
        raise ScanError(f"{name} is {what} (shape {raw.shape}), not a 3D CT volume")
    if min(raw.shape) < 2:
        raise ScanError(f"{name} is a 2D image (shape {raw.shape}), not a 3D CT volume (need at least 2 slices)")
    return raw


def _scaled(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    hu = raw.astype(np.float32)  # always a copy: the caller's buffer is never modified
    if slope != 1.0:
        hu *= np.float32(slope)
    if inter != 0.0:
        hu += np.float32(inter)
    return hu


def read_nifti(path: str | Path, limits: ReadLimits | None = None) -> Scan:
    """A NIfTI volume in any orientation and stored dtype; scl_slope/scl_inter honoured."""
    path = Path(path)
    img = _open_nifti(path)
    hdr = img.header
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        raise ScanError(
            f"{path.name} has no orientation (qform_code and sform_code are both 0), so its axes cannot be "
            "mapped to the patient; write it with an affine, or use format 'ctrate' with its metadata CSV"
        )
    _raw_header_checks(path, hdr)
    affine = np.asarray(img.affine, dtype=np.float64)
    check_spacing(path.name, voxel_spacing(affine), "header's affine")
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    if not (np.isfinite(slope) and np.isfinite(inter)) or slope == 0:
        raise ScanError(f"{path.name}: the header's scl_slope/scl_inter ({slope:g}, {inter:g}) would erase or corrupt every voxel")
    img, raw = _load_nifti(path, limits, img)
    raw = _squeeze_to_3d(raw, path.name)
    hu = _scaled(raw, slope, inter)
    del raw
    return _from_array(hu, affine, "nifti")


def _from_array(array: np.ndarray, affine: np.ndarray, fmt: str) -> Scan:
    original_shape = tuple(int(n) for n in array.shape)
    original_spacing = voxel_spacing(affine)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(
            f"the {fmt} geometry is degenerate (voxel axes {', '.join(f'{s:g}' for s in original_spacing)} mm, "
            "zero, parallel or not finite); fix the header's affine"
        )
    codes = axis_codes(affine)
    hu, store_affine = to_store_orientation(array, affine)
    return Scan(
        hu=hu,
        spacing_mm=voxel_spacing(store_affine),  # type: ignore[arg-type]
        source_format=fmt,
        original_shape=original_shape,
        original_orientation=codes,
        original_spacing_mm=original_spacing,
        affine=store_affine,
    )


# ----------------------------------------------------------------------------- RAD-ChestCT
def radchestct_affine(spacing_mm: float = RADCHESTCT_SPACING_MM) -> np.ndarray:
    """RAS+ affine of an I-P-L array: z toward inferior, y toward posterior, x toward left.

    RAD-ChestCT files carry no origin, so voxel 0 is placed at the world origin.
    """
    affine = np.zeros((4, 4))
    affine[2, 0] = -spacing_mm  # axis 0 -> Inferior = -S
    affine[1, 1] = -spacing_mm  # axis 1 -> Posterior = -A
    affine[0, 2] = -spacing_mm  # axis 2 -> Left = -R
    affine[3, 3] = 1.0
    return affine


def _size_npz_member(npz_path: Path, limits: ReadLimits | None) -> None:
    """Size the `ct` member from its .npy header and zip entry before numpy reads a byte of it."""
    import zipfile

    try:
        with zipfile.ZipFile(npz_path) as zf:
            info = next((i for i in zf.infolist() if i.filename in ("ct.npy", "ct")), None)
            if info is None:
                return  # np.load reports the missing key with the file's keys
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
        raise ScanError(f"{npz_path.name} could not be read: file truncated or corrupt ({type(e).__name__})") from None
    if dtype.hasobject:
        raise ScanError(f"{npz_path.name}: 'ct' holds Python objects, not numbers (refused: loading it would unpickle)")
    compressed = info.compress_type != zipfile.ZIP_STORED
    check_claim(f"{npz_path.name} ('ct')", shape, dtype, limits, stored_bytes=info.compress_size,
                compressed=compressed, what=".npy header")


def read_radchestct_npz(path: str | Path, limits: ReadLimits | None = None) -> Scan:
    """A RAD-ChestCT .npz: key `ct`, HU, 0.8 mm, [slices, rows, cols], already I-P-L."""
    path = Path(path)
    _size_npz_member(path, limits)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "ct" not in npz.files:
                raise ScanError(f"{path.name} has no 'ct' array (keys: {', '.join(npz.files[:10]) or 'none'}); not RAD-ChestCT")
            raw = npz["ct"]
    except ScanError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise ScanError(f"{path.name} could not be read: file truncated or corrupt ({type(e).__name__})") from None
    if not np.issubdtype(raw.dtype, np.number):
        raise ScanError(f"{path.name}: 'ct' has dtype {raw.dtype}, expected numbers (int16 HU)")
    check_dtype(path.name, raw.dtype, "'ct'")
    raw = _squeeze_to_3d(raw, path.name)
    hu = raw.astype(np.float32)
    return Scan(
        hu=hu,
        spacing_mm=(RADCHESTCT_SPACING_MM,) * 3,  # type: ignore[arg-type]
        source_format="npz",
        original_shape=tuple(int(n) for n in raw.shape),
        original_orientation="IPL",
        original_spacing_mm=(RADCHESTCT_SPACING_MM,) * 3,
        affine=radchestct_affine(),
    )


# ----------------------------------------------------------------------------- CT-RATE
@functools.lru_cache(maxsize=4)
def _ctrate_table(csv_path: str, mtime: float) -> dict[str, dict[str, Any]]:
    """VolumeName -> the geometry/rescale columns of CT-RATE's metadata CSV (cached per process).

    Only geometry and rescale columns are loaded: the CSV also holds patient age and sex, which
    never enter the platform.
    """
    import pandas as pd

    wanted = set(CTRATE_COLUMNS) | set(CTRATE_GEOMETRY_COLUMNS)
    df = pd.read_csv(csv_path, usecols=lambda c: c in wanted)
    missing = [c for c in CTRATE_COLUMNS if c not in df.columns]
    if missing:
        raise ScanError(f"CT-RATE metadata {Path(csv_path).name} lacks columns {missing}")
    return {str(r["VolumeName"]): r for r in df.to_dict("records")}


def find_ctrate_metadata(path: Path) -> Path | None:
    """CT-RATE keeps metadata/<split>_metadata.csv a few levels above the volumes; look upward."""
    split = path.name.split("_", 1)[0]
    for parent in list(path.parents)[:6]:
        for candidate in (parent / "metadata" / f"{split}_metadata.csv", parent / f"{split}_metadata.csv"):
            if candidate.is_file():
                return candidate
    return None


def _parse_list(value: Any, n: int, column: str) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ScanError(f"CT-RATE metadata column {column} is not a list of numbers") from None
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1 and n > 1:
        arr = np.repeat(arr, n)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ScanError(f"CT-RATE metadata column {column} must hold {n} finite numbers")
    return arr


def ctrate_affine(meta: Mapping[str, Any]) -> np.ndarray:
    """RAS+ affine of a CT-RATE array from its metadata row.

    The NIfTI array's axes are (column, row, slice) of the original DICOM series (what the
    community fix of the blank headers assumes): XYSpacing = (column step, row step), ZSpacing the
    slice step along cross(row direction, column direction) starting at ImagePositionPatient (LPS).
    Without position/orientation columns an axial head-first series at the origin is assumed.
    """
    sx, sy = _parse_list(meta["XYSpacing"], 2, "XYSpacing")
    sz = float(_parse_list(meta["ZSpacing"], 1, "ZSpacing")[0])
    iop = meta.get("ImageOrientationPatient")
    ipp = meta.get("ImagePositionPatient")
    iop = _parse_list(iop, 6, "ImageOrientationPatient") if _present(iop) else np.array([1.0, 0, 0, 0, 1, 0])
    ipp = _parse_list(ipp, 3, "ImagePositionPatient") if _present(ipp) else np.zeros(3)
    row_cos, col_cos = iop[:3], iop[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * sx
    lps[:3, 1] = col_cos * sy
    lps[:3, 2] = np.cross(row_cos, col_cos) * sz
    lps[:3, 3] = ipp
    return LPS_TO_RAS @ lps


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def ctrate_metadata_row(path: str | Path, metadata: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The geometry/rescale columns of a CT-RATE volume's metadata row.

    `metadata`: the metadata CSV, or the row itself; None looks for metadata/<split>_metadata.csv
    above the file (the dataset's layout).
    """
    path = Path(path)
    if metadata is not None and not isinstance(metadata, (str, Path)):
        row = dict(metadata)
    else:
        csv = Path(metadata) if metadata else find_ctrate_metadata(path)
        if csv is None or not csv.is_file():
            raise ScanError(
                f"{path.name}: CT-RATE metadata CSV not found (looked for metadata/<split>_metadata.csv above "
                "the file); set ingest.ctrate_metadata or a 'metadata' column in the listing"
            )
        found = _ctrate_table(str(csv.resolve()), csv.stat().st_mtime).get(path.name)
        if found is None:
            raise ScanError(f"{path.name} has no row in CT-RATE metadata {csv.name} (column VolumeName)")
        row = dict(found)
    for column in ("RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"):
        if not _present(row.get(column)):
            raise ScanError(f"{path.name}: CT-RATE metadata has no {column}")
    keep = set(CTRATE_COLUMNS) | set(CTRATE_GEOMETRY_COLUMNS)
    return {k: v for k, v in row.items() if k in keep and _present(v)}


def read_ctrate(
    path: str | Path, metadata: str | Path | Mapping[str, Any] | None = None, limits: ReadLimits | None = None
) -> Scan:
    """A CT-RATE volume: raw stored values rescaled and placed with its metadata CSV row."""
    path = Path(path)
    row = ctrate_metadata_row(path, metadata)
    affine = ctrate_affine(row)
    check_spacing(path.name, voxel_spacing(affine), "CT-RATE metadata (XYSpacing, ZSpacing)")
    _, raw = _load_nifti(path, limits)
    raw = _squeeze_to_3d(raw, path.name)
    # The dataset card's values are the DICOM rescale of the stored integers.
    hu = _scaled(raw, float(row["RescaleSlope"]), float(row["RescaleIntercept"]))
    del raw
    return _from_array(hu, affine, "ctrate")
