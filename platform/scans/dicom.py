"""DICOM series reader: one folder holding the single-frame slices of one CT series.

Only geometry, rescale and pixel-module elements are parsed (`specific_tags`), so patient names,
IDs, dates and private elements are never decoded, let alone copied; a malformed element elsewhere
in the header (the POPI series has one) cannot break the read. The tolerant setting pydicom needs
for malformed lengths is switched on only for the duration of one read.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ctplatform.scans.orient import LPS_TO_RAS, axis_codes, to_store_orientation, voxel_spacing
from ctplatform.scans.scan import Scan, ScanError
from ctplatform.scans.sizing import ReadLimits, check_claim, check_spacing

#: Elements read from each file; nothing else is parsed.
_TAGS = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "PixelData",
]
#: The header pass reads everything but the pixels.
_HEADER_TAGS = [t for t in _TAGS if t != "PixelData"]
#: Relative deviation from the median slice gap that counts as uneven spacing (a missing slice gives 100%).
UNEVEN_TOLERANCE = 0.1
_ORIENTATION_TOLERANCE = 1e-3


@contextlib.contextmanager
def tolerant_dicom() -> Iterator[None]:
    """Read malformed element lengths as UN instead of failing, for this block only."""
    from pydicom import config

    previous = config.convert_wrong_length_to_UN
    config.convert_wrong_length_to_UN = True
    # pydicom's own warnings can quote element values; they never reach our logs.
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.convert_wrong_length_to_UN = previous
        logger.setLevel(level)


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble ('DICM' at byte 128) or a .dcm suffix."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def series_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside `folder`, sorted by name (other files are ignored)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def _floats(value: object, n: int, what: str, name: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ScanError(f"{name}: {what} is missing or not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ScanError(f"{name}: {what} must hold {n} finite numbers")
    return arr


def _read(path: Path, tags: list[str], stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = path.name
    try:
        return pydicom.dcmread(path, specific_tags=tags, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise ScanError(f"{name} is not a valid DICOM file (remove it from the series folder)") from None
    except (OSError, EOFError) as e:
        raise ScanError(f"{name} could not be read ({type(e).__name__}); the file may be truncated") from None
    except Exception as e:  # malformed headers raise many types; their messages may quote values
        raise ScanError(f"{name}: the DICOM header is malformed ({type(e).__name__})") from None


def _int(ds: object, tag: str, default: int, name: str) -> int:
    try:
        return int(ds.get(tag, default) or default)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ScanError(f"{name}: {tag} is not an integer") from None


def _header(ds: object, name: str) -> dict:
    """Checks one slice's header and returns its geometry (nothing but geometry is kept)."""
    modality = str(ds.get("Modality", "")).strip().upper()  # type: ignore[attr-defined]
    if modality != "CT":
        raise ScanError(f"{name}: modality is {modality[:8] or 'missing'!r}, not CT; only CT series can be ingested")
    frames = _int(ds, "NumberOfFrames", 1, name)
    if frames > 1:
        raise ScanError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; export single-frame slices")
    if _int(ds, "SamplesPerPixel", 1, name) != 1 or str(ds.get("PhotometricInterpretation", "")) not in (  # type: ignore[attr-defined]
        "MONOCHROME2",
        "",
    ):
        raise ScanError(f"{name}: not a greyscale MONOCHROME2 image, not a CT slice")
    rows, cols = _int(ds, "Rows", 0, name), _int(ds, "Columns", 0, name)
    if rows < 1 or cols < 1:
        raise ScanError(f"{name}: Rows/Columns are missing or zero ({rows}x{cols}); not an image")
    bits = _int(ds, "BitsAllocated", 16, name)
    if bits not in (8, 16, 32):
        raise ScanError(f"{name}: BitsAllocated {bits} is not 8, 16 or 32; not a CT slice")
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", name)  # type: ignore[attr-defined]
    check_spacing(name, spacing, "PixelSpacing")
    return {
        "orientation": _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", name),  # type: ignore[attr-defined]
        "pixel_spacing": spacing,
        "size": (rows, cols),
        "bytes": bits // 8,
        "position": _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", name),  # type: ignore[attr-defined]
        "series": str(ds.get("SeriesInstanceUID", "")),  # type: ignore[attr-defined]
    }


def read_dicom_series(folder: str | Path, limits: ReadLimits | None = None) -> Scan:
    """Read one CT series folder into a Scan (slices ordered along the slice normal).

    Two passes: every header first (no pixel data), so the series is sized (slices x rows x
    columns) and refused before any pixel is decoded when it cannot fit `limits`; then the pixels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanError(f"DICOM series path {folder} is not a folder")
    try:
        files = series_files(folder)
    except PermissionError:
        raise ScanError(f"cannot list folder {folder}: permission denied") from None
    if not files:
        raise ScanError(f"folder {folder} holds no DICOM files (.dcm or 'DICM' preamble)")

    positions: list[np.ndarray] = []
    series: set[str] = set()
    first: dict[str, object] = {}
    with tolerant_dicom():
        for path in files:
            name = path.name
            geom = _header(_read(path, _HEADER_TAGS, True), name)
            series.add(geom["series"])
            if not first:
                first = geom
            else:
                if geom["size"] != first["size"]:
                    raise ScanError(f"mixed series: {name} has a different image size; put one series per folder")
                if not np.allclose(geom["pixel_spacing"], first["pixel_spacing"], atol=1e-4):  # type: ignore[arg-type]
                    raise ScanError(f"mixed series: {name} has a different pixel spacing; put one series per folder")
                if not np.allclose(geom["orientation"], first["orientation"], atol=_ORIENTATION_TOLERANCE):  # type: ignore[arg-type]
                    raise ScanError(f"mixed series: {name} has a different slice orientation; put one series per folder")
            positions.append(geom["position"])  # type: ignore[arg-type]
        if len(series) > 1:
            raise ScanError(
                f"mixed series: folder {folder.name} holds {len(series)} series (different SeriesInstanceUID); "
                "put one series per folder"
            )
        if len(files) < 2:
            raise ScanError(f"folder {folder.name} holds a single 2D image, not a CT volume (need at least 2 slices)")
        rows, cols = first["size"]  # type: ignore[misc]
        check_claim(
            f"series {folder.name} ({len(files)} files)",
            (len(files), rows, cols),
            np.dtype(f"int{8 * int(first['bytes'])}"),  # type: ignore[call-overload]
            limits,
            what="DICOM headers",
        )
        slices: list[np.ndarray] = []
        rescale: list[tuple[float, float]] = []
        for path in files:
            name = path.name
            ds = _read(path, _TAGS, False)
            if _header(ds, name)["size"] != first["size"]:
                raise ScanError(f"{name} changed while it was read; re-run when the folder is complete")
            try:
                pixels = ds.pixel_array
            except Exception as e:  # decoder errors come in many types; the reason is the type name
                raise ScanError(
                    f"{name}: pixel data could not be decoded ({type(e).__name__}); truncated file or "
                    "unsupported compression (pylibjpeg with openjpeg/libjpeg handles JPEG, JPEG-LS, JPEG 2000)"
                ) from None
            if pixels.ndim != 2 or pixels.shape != tuple(first["size"]):  # type: ignore[arg-type]
                raise ScanError(f"{name}: pixel data has shape {pixels.shape}, expected one {rows}x{cols} slice")
            if pixels.dtype.kind not in "iu":
                raise ScanError(f"{name}: pixel data is {pixels.dtype}, not the integers of a CT slice")
            # Raw stored values are kept until the order is known (half the memory of float32 copies).
            slices.append(pixels)
            try:
                slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
                intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            except (TypeError, ValueError):
                raise ScanError(f"{name}: RescaleSlope/RescaleIntercept is not a number") from None
            if not (np.isfinite(slope) and np.isfinite(intercept)):
                raise ScanError(f"{name}: RescaleSlope/RescaleIntercept is not finite")
            rescale.append((slope, intercept))
    return _assemble(slices, rescale, positions, first, folder.name)


def _assemble(
    slices: list[np.ndarray], rescale: list[tuple[float, float]], positions: list[np.ndarray], geom: dict, name: str
) -> Scan:
    iop = geom["orientation"]
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-2:
        raise ScanError(f"{name}: ImageOrientationPatient is not two orthogonal unit vectors")
    pos = np.stack(positions)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    if np.any(gaps < 1e-3):
        raise ScanError(
            f"{name}: {int(np.sum(gaps < 1e-3))} slices share a position; the folder mixes several series "
            "or phases (put one series per folder)"
        )
    gap = float(np.median(gaps))
    deviation = float(np.max(np.abs(gaps - gap)))
    if deviation > UNEVEN_TOLERANCE * gap:
        raise ScanError(
            f"{name}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm between slices): "
            "slices are missing or the series is irregular; re-export a complete series"
        )
    volume = np.empty((len(order), *slices[0].shape), dtype=np.float32)  # [slice, row, column] in HU
    for k, i in enumerate(order):
        slope, intercept = rescale[i]  # per slice: scanners may vary it
        np.multiply(slices[i], np.float32(slope), out=volume[k], casting="unsafe")
        volume[k] += np.float32(intercept)
        slices[i] = None  # type: ignore[call-overload]  # free each raw slice once converted
    # Slice step from the end positions: exact even with gantry tilt (positions not along the normal).
    step = (pos[order[-1]] - pos[order[0]]) / (len(order) - 1)
    row_mm, col_mm = geom["pixel_spacing"]  # DICOM: [between rows, between columns]
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_cos * row_mm  # row index runs along the column direction
    lps[:3, 2] = row_cos * col_mm
    lps[:3, 3] = pos[order[0]]
    affine = LPS_TO_RAS @ lps
    original_spacing = (gap, float(row_mm), float(col_mm))
    hu, store_affine = to_store_orientation(volume, affine)
    return Scan(
        hu=hu,
        spacing_mm=_spacing(store_affine, original_spacing, affine),
        source_format="dicom",
        original_shape=tuple(volume.shape),
        original_orientation=axis_codes(affine),
        original_spacing_mm=original_spacing,
        affine=store_affine,
    )


def _spacing(store_affine: np.ndarray, original_spacing: tuple[float, ...], affine: np.ndarray) -> tuple[float, float, float]:
    """Spacing of the stored axes: the slice gap along the normal, not the (tilted) step length."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)  # source axis i -> world axis ornt[i, 0]
    store_ornt = io_orientation(store_affine)
    out = list(voxel_spacing(store_affine))
    for store_axis in range(3):
        world = store_ornt[store_axis, 0]
        src_axis = int(np.flatnonzero(ornt[:, 0] == world)[0])
        out[store_axis] = float(original_spacing[src_axis])
    return tuple(out)  # type: ignore[return-value]
