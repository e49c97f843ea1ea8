"""The catalog of bad inputs: each kind builds one real bad input and says what the reason must name.

Shared by tests/faults/test_inputs.py (every kind, in the normal test run) and benchmarks/faults.py
(the figures). A kind passes when the platform flags it (a failed/review row, or a refusal
naming the problem), never crashes (an exception where a reason was due, or an "unexpected error"
message), is never silently wrong (accepted as if fine), and never quotes the marker planted in it.

Families: scan (NIfTI, .npz, CT-RATE), dicom (series folders), report (text), csv (reports CSVs),
store (listings, ids and stores around ingest and label-reports).
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.ingest.dicom_writer import write_series

#: Planted in inputs; no reason may quote it.
MARKER = "MRKZQX7741"
GIB = 1 << 30


@dataclass(frozen=True)
class Ingest:
    """Ingest one source (ingest_one, no Ray) into `store` (default tmp/store)."""

    path: Path
    fmt: str = ""
    metadata: Any = None
    store: Path | None = None
    extra: tuple[tuple[str, str], ...] = ()  # more work-row fields (e.g. truth, truth_codes)


@dataclass(frozen=True)
class Listing:
    """Discover a listing or folder (the work rows ingest would run)."""

    path: Path
    key_file: Path | None = None


@dataclass(frozen=True)
class Report:
    text: Any


@dataclass(frozen=True)
class ReportsCSV:
    """Label a reports CSV against a store holding `known` volumes (the driver's path, no Ray)."""

    path: Path
    known: tuple[str, ...] = ("v1", "v2", "v3")


@dataclass(frozen=True)
class Case:
    kind: str
    family: str
    build: Callable[[Path], Any]
    expect: str  # regex the reason must match
    markers: tuple[str, ...] = (MARKER,)


@dataclass
class Outcome:
    kind: str
    family: str
    flagged: bool = False
    reason: str = ""
    crashed: str = ""
    silently_wrong: bool = False
    leaked: list[str] = field(default_factory=list)
    matched: bool = False

    @property
    def good(self) -> bool:
        return self.flagged and self.matched and not self.crashed and not self.silently_wrong and not self.leaked


# ------------------------------------------------------------------------------ builders
def ct_array(shape: tuple[int, int, int] = (20, 24, 24), seed: int = 0) -> np.ndarray:
    """A small CT-like block: air around a soft-tissue body, int16 HU."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, np.int16)
    z, y, x = shape
    my, mx = y // 6, x // 6
    hu[:, my : y - my, mx : x - mx] = rng.normal(40, 20, (z, y - 2 * my, x - 2 * mx))
    return hu


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header: Any) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine)
    for k, v in header.items():
        img.header[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def header_only_nifti(path: Path, shape: tuple[int, ...], dtype: Any = np.int16, pad: int = 600) -> Path:
    """A NIfTI header claiming `shape` followed by `pad` bytes: a tiny file with a huge claim."""
    import nibabel as nib

    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(dtype)
    h.set_qform(np.eye(4), 1)
    h.set_sform(np.eye(4), 1)
    data = h.binaryblock + b"\0" * 4 + b"\0" * pad
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def gzip_bomb(path: Path, shape: tuple[int, int, int] = (512, 512, 1000)) -> Path:
    """A .nii.gz whose header is honest and whose data is zeros: a few hundred KB inflating to 0.5 GB."""
    import nibabel as nib

    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(np.int16)
    h.set_qform(np.eye(4), 1)
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        f.write(co.compress(h.binaryblock + b"\0" * 4))
        for _ in range(int(np.prod(shape)) * 2 // len(zeros)):
            f.write(co.compress(zeros))
        f.write(co.flush())
    return path


def _patch_header(path: Path, offset: int, fmt: str, value: Any) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


def _npz(path: Path, compress: bool = True, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    return path


def npz_claiming(path: Path, shape: tuple[int, ...], dtype: str = "<i2", compress: bool = False) -> Path:
    """An .npz whose ct.npy header claims `shape` but holds a few bytes."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        zf.writestr("ct.npy", buf.getvalue() + b"\0" * 64)
    return path


def npz_bomb(path: Path, shape: tuple[int, int, int] = (1000, 512, 512)) -> Path:
    header = {"descr": "<i2", "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("ct.npy", "w", force_zip64=True) as f:
        f.write(buf.getvalue())
        zeros = b"\0" * (1 << 20)
        for _ in range(int(np.prod(shape)) * 2 // len(zeros)):
            f.write(zeros)
    return path


def _series(tmp: Path, name: str = "series", n: int = 6, **kw: Any) -> Path:
    folder = tmp / name
    write_series(folder, ct_array((n, 16, 16)).astype(np.float32), **kw)
    return folder


def _edit_series(folder: Path, edit: Callable[[Any, int], None]) -> Path:
    import pydicom

    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        edit(ds, k)
        ds.save_as(f, enforce_file_format=True)
    return folder


def _set(**values: Any) -> Callable[[Any, int], None]:
    def edit(ds: Any, k: int) -> None:
        for key, v in values.items():
            if v is None:
                delattr(ds, key)
            else:
                setattr(ds, key, v)

    return edit


def _csv(tmp: Path, text: str | bytes, name: str = "reports.csv") -> Path:
    path = tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _ctrate(tmp: Path, **meta: Any) -> Ingest:
    import nibabel as nib

    img = nib.Nifti1Image((ct_array() + 1024).astype(np.int16), np.eye(4))
    img.header["qform_code"] = 0
    img.header["sform_code"] = 0
    path = tmp / "valid_1_a_1.nii.gz"
    nib.save(img, path)
    row = {"VolumeName": path.name, "RescaleSlope": 1, "RescaleIntercept": -1024, "XYSpacing": "[1.0, 1.0]",
           "ZSpacing": 2.0, **meta}
    return Ingest(path, "ctrate", row)


# ------------------------------------------------------------------------------ the catalog
def _cases() -> list[Case]:
    c: list[Case] = []

    def add(kind: str, family: str, build: Callable[[Path], Any], expect: str) -> None:
        c.append(Case(kind, family, build, expect))

    # --- scans: NIfTI
    add("nifti_claims_128GiB_in_1KB", "scan", lambda t: Ingest(header_only_nifti(t / "claim.nii", (4096, 4096, 4096))),
        r"header claims 4096x4096x4096 int16 = 137 GB")
    add("nifti_gz_claims_128GiB", "scan", lambda t: Ingest(header_only_nifti(t / "claim.nii.gz", (4096, 4096, 4096))),
        r"header claims 4096x4096x4096 int16")
    add("nifti_claims_30000_cubed", "scan", lambda t: Ingest(header_only_nifti(t / "huge.nii", (30000, 30000, 30000))),
        r"header claims 30000x30000x30000 int16 = 54 TB")
    add("nifti_79_bytes_claiming_1024_cubed", "scan",
        lambda t: Ingest(header_only_nifti(t / "small.nii", (1024, 1024, 1024), pad=0)), r"header claims 1024x1024x1024")
    add("nifti_truncated_data", "scan", lambda t: Ingest(header_only_nifti(t / "trunc.nii", (64, 64, 64), pad=1000)),
        r"holds only .* truncated")
    add("nifti_gzip_bomb", "scan", lambda t: Ingest(gzip_bomb(t / "bomb.nii.gz")), r"decompression bomb")
    add("nifti_gzip_stream_cut", "scan", lambda t: Ingest(_cut(_nifti(t / "cut.nii.gz", ct_array()), 0.5)),
        r"truncated or corrupt")
    add("nifti_complex64", "scan", lambda t: Ingest(_nifti(t / "cplx.nii.gz", ct_array().astype(np.complex64))),
        r"complex")
    add("nifti_rgb24", "scan", lambda t: Ingest(_rgb_nifti(t / "rgb.nii.gz")), r"RGB|not greyscale")
    add("nifti_spacing_zero_affine", "scan", lambda t: Ingest(_zero_spacing(t / "sp0.nii")), r"voxel sizes .*zero")
    add("nifti_pixdim_zero_qform", "scan", lambda t: Ingest(_zero_pixdim(t / "pz.nii")), r"voxel sizes .*zero|pixdim")
    add("nifti_nan_affine", "scan", lambda t: Ingest(_nan_affine(t / "nan.nii")), r"voxel sizes|not finite|degenerate")
    add("nifti_no_orientation", "scan", lambda t: Ingest(_no_orientation(t / "noor.nii")), r"no orientation")
    add("nifti_2d_image", "scan", lambda t: Ingest(_nifti(t / "flat.nii.gz", ct_array()[0])), r"2D image")
    add("nifti_4d_series", "scan", lambda t: Ingest(_nifti(t / "t.nii.gz", np.stack([ct_array()] * 3, -1))),
        r"4-dimensional")
    add("nifti_nan_voxels", "scan", lambda t: Ingest(_nifti(t / "nanv.nii.gz", _with_nan(ct_array()))),
        r"NaN or infinite")
    add("nifti_not_ct_values", "scan", lambda t: Ingest(_nifti(t / "mr.nii.gz", (ct_array() + 1200).astype(np.int16))),
        r"does not look like CT")
    add("nifti_absurd_spacing", "scan",
        lambda t: Ingest(_nifti(t / "wide.nii.gz", ct_array(), np.diag([50.0, 50.0, 50.0, 1.0]))), r"absurd voxel spacing")
    add("nifti_negative_dimension", "scan",
        lambda t: Ingest(_patch_header(header_only_nifti(t / "neg.nii", (8, 8, 8)), 42, "<h", -5)), r"negative dimension")
    add("nifti_zero_dimension", "scan",
        lambda t: Ingest(_patch_header(header_only_nifti(t / "zero.nii", (8, 8, 8)), 42, "<h", 0)), r"empty volume")
    add("nifti_random_bytes", "scan", lambda t: Ingest(_bytes(t / "noise.nii.gz", 4096)), r"could not be read|not a readable")
    add("nifti_empty_file", "scan", lambda t: Ingest(_bytes(t / "empty.nii", 0)), r"could not be read|not a readable")
    add("nifti_dangling_symlink", "scan", lambda t: Ingest(_dangling(t / "gone.nii.gz")), r"does not exist")
    # --- scans: RAD-ChestCT .npz
    add("npz_no_ct_key", "scan", lambda t: Ingest(_npz(t / "a.npz", volume=ct_array())), r"no 'ct' array")
    add("npz_object_array", "scan",
        lambda t: Ingest(_npz(t / "o.npz", compress=False, ct=np.array([{"a": 1}, None], dtype=object))),
        r"Python objects|not numbers")
    add("npz_claims_128GiB", "scan", lambda t: Ingest(npz_claiming(t / "c.npz", (4096, 4096, 4096))),
        r"claims 4096x4096x4096 int16")
    add("npz_deflate_bomb", "scan", lambda t: Ingest(npz_bomb(t / "b.npz")), r"decompression bomb")
    add("npz_complex", "scan", lambda t: Ingest(_npz(t / "cx.npz", ct=ct_array().astype(np.complex64))), r"complex")
    add("npz_truncated", "scan", lambda t: Ingest(_cut(_npz(t / "tr.npz", ct=ct_array()), 0.5)), r"truncated or corrupt")
    add("npz_strings", "scan", lambda t: Ingest(_npz(t / "s.npz", ct=np.array(["a", "b"]))), r"expected numbers|not greyscale")
    # --- scans: CT-RATE
    add("ctrate_no_metadata_csv", "scan", lambda t: Ingest(_ctrate(t).path, "ctrate"), r"metadata CSV not found")
    add("ctrate_zero_spacing", "scan", lambda t: _ctrate(t, ZSpacing=0.0), r"voxel sizes .*zero")
    add("ctrate_spacing_not_numbers", "scan", lambda t: _ctrate(t, XYSpacing="[a, b]"), r"XYSpacing is not a list")
    add("truth_mask_claims_128GiB", "scan", lambda t: _truth_claim(t), r"truth mask.*|header claims 4096x4096x4096")
    # --- DICOM series
    add("dicom_mr_modality", "dicom", lambda t: Ingest(_series(t, modality="MR")), r"not CT")
    add("dicom_two_series_in_one_folder", "dicom",
        lambda t: Ingest(_series(t, series_uids=["1.2.3.4"] * 3 + ["1.2.3.5"] * 3)), r"mixed series")
    add("dicom_missing_slice", "dicom",
        lambda t: Ingest(_series(t, positions=[(0.0, 0.0, -z) for z in (0, 2, 4, 8, 10, 12)])), r"uneven slice spacing")
    add("dicom_single_slice", "dicom", lambda t: Ingest(_series(t, n=1)), r"2D image")
    add("dicom_duplicate_positions", "dicom",
        lambda t: Ingest(_series(t, positions=[(0.0, 0.0, -z) for z in (0, 2, 2, 4, 6, 8)])), r"share a position")
    add("dicom_rows_columns_claim_65535", "dicom",
        lambda t: Ingest(_edit_series(_series(t), _set(Rows=65535, Columns=65535))), r"DICOM headers claims 6x65535x65535")
    add("dicom_truncated_pixels", "dicom", lambda t: Ingest(_cut_one(_series(t))),
        r"could not be decoded|truncated|could not be read|malformed")
    add("dicom_garbage_with_preamble", "dicom", lambda t: Ingest(_garbage_dicom(_series(t))),
        r"not a valid DICOM|malformed|could not be read|missing")
    add("dicom_no_orientation", "dicom",
        lambda t: Ingest(_edit_series(_series(t), _set(ImageOrientationPatient=None))), r"ImageOrientationPatient is missing")
    add("dicom_zero_pixel_spacing", "dicom",
        lambda t: Ingest(_edit_series(_series(t), _set(PixelSpacing=[0.0, 0.0]))), r"voxel sizes .*zero")
    add("dicom_multiframe", "dicom", lambda t: Ingest(_edit_series(_series(t), _set(NumberOfFrames=4))), r"multi-frame")
    add("dicom_rgb", "dicom",
        lambda t: Ingest(_edit_series(_series(t), _set(SamplesPerPixel=3, PhotometricInterpretation="RGB"))),
        r"MONOCHROME2")
    add("dicom_mixed_image_sizes", "dicom", lambda t: Ingest(_mixed_sizes(t)), r"different image size")
    add("dicom_folder_without_dicom", "dicom", lambda t: Ingest(_plain_folder(t), "dicom"), r"holds no DICOM files")
    add("dicom_marker_in_patient_tags_and_bad_series", "dicom",
        lambda t: Ingest(_edit_series(_series(t, modality="MR"), _set(PatientName=MARKER, PatientID=MARKER))), r"not CT")
    add("dicom_bits_allocated_12", "dicom", lambda t: Ingest(_edit_series(_series(t), _set(BitsAllocated=12))),
        r"BitsAllocated 12")
    add("dicom_single_file_given", "dicom", lambda t: Ingest(sorted(_series(t).iterdir())[0]), r"single DICOM file")
    # --- reports
    add("report_chinese", "report", lambda t: Report("双肺纹理清晰，未见明显实质性病变。纵隔内未见肿大淋巴结。心脏大小正常。"),
        r"no recognisable clinical English")
    add("report_german", "report",
        lambda t: Report("Keine pathologisch vergrößerten Lymphknoten. Herz normal groß. Kein Pleuraerguss. Lunge frei."),
        r"no recognisable clinical English")
    add("report_french", "report",
        lambda t: Report("Poumons clairs. Pas d'épanchement pleural. Nodule de 5 mm du lobe supérieur droit."),
        r"no recognisable clinical English")
    add("report_lorem_ipsum", "report", lambda t: Report(f"Lorem ipsum dolor sit amet {MARKER}, consectetur adipiscing elit."),
        r"no recognisable clinical English")
    add("report_empty", "report", lambda t: Report(""), r"empty or missing")
    add("report_whitespace", "report", lambda t: Report(" \n\t "), r"empty or missing")
    add("report_missing_cell", "report", lambda t: Report(None), r"empty or missing")
    add("report_binary_noise", "report", lambda t: Report("\x00\x01\ufffd\ufffd ÿþ" * 20), r"no recognisable clinical English")
    add("report_only_numbers", "report", lambda t: Report("12 34 56.7 8/9 2019-01-01"), r"no recognisable clinical English")
    # --- reports CSVs
    add("csv_empty", "csv", lambda t: ReportsCSV(_csv(t, "")), r"is empty")
    add("csv_header_only", "csv", lambda t: ReportsCSV(_csv(t, "volume_id,report\n")), r"header but no rows")
    add("csv_latin1", "csv", lambda t: ReportsCSV(_csv(t, "volume_id,report\nv1,Épanchement pleural\n".encode("latin-1"))),
        r"line 2: byte 0xc9 .* not UTF-8")
    add("csv_unbalanced_quote_merges_rows", "csv",
        lambda t: ReportsCSV(_csv(t, 'volume_id,report\nv1,"Left effusion.\nv2,No findings."\nv3,Clear lungs.\n')),
        r"line 3: .*unbalanced quote")
    add("csv_unbalanced_quote_then_text", "csv",
        lambda t: ReportsCSV(_csv(t, 'volume_id,report\nv1,"Left effusion.\nv2,"No findings."\n')), r"line 3: .*unbalanced")
    add("csv_quote_never_closed", "csv", lambda t: ReportsCSV(_csv(t, 'volume_id,report\nv1,"Left effusion.\nv2,Clear.\n')),
        r"unexpected end of data|unbalanced")
    add("csv_missing_columns", "csv", lambda t: ReportsCSV(_csv(t, "id,text\nv1,Clear lungs.\n")), r"lacks columns")
    add("csv_too_many_cells", "csv", lambda t: ReportsCSV(_csv(t, "volume_id,report\nv1,Left effusion, small,x\n")),
        r"line 2: 4 cells where the header has 2")
    add("csv_nul_bytes", "csv", lambda t: ReportsCSV(_csv(t, b"volume_id,report\nv1,Cl\x00ear\n")), r"line 2: holds a NUL")
    add("csv_is_a_folder", "csv", lambda t: ReportsCSV(_folder(t / "reports.csv")), r"is a folder")
    add("csv_bad_id_cell_with_name_and_mrn", "csv",
        lambda t: ReportsCSV(_csv(t, f'volume_id,report\nv1,Clear lungs.\n"DOE JOHN {MARKER} MRN123",Left effusion.\n')),
        r"line 3: invalid volume id")
    add("csv_duplicate_ids", "csv", lambda t: ReportsCSV(_csv(t, "volume_id,report\nv1,Clear lungs.\nv1,Left effusion.\n")),
        r"appears 2 times")
    add("csv_id_absent_from_store", "csv",
        lambda t: ReportsCSV(_csv(t, f"volume_id,report\nv1,Clear lungs.\n{MARKER}_absent,Left effusion.\n")),
        r"absent from the store")
    add("csv_reserved_id", "csv", lambda t: ReportsCSV(_csv(t, "volume_id,report\nzarr.json,Left effusion.\n")),
        r"Zarr reserves")
    # --- stores, listings and ids
    add("listing_reserved_id_zarr_json", "store",
        lambda t: Listing(_listing(t, [("zarr.json", _nifti(t / "a.nii.gz", ct_array()))])), r"Zarr reserves")
    add("listing_id_with_name_and_mrn", "store",
        lambda t: Listing(_listing(t, [(f"DOE JOHN {MARKER}", _nifti(t / "a.nii.gz", ct_array()))])),
        r"line 2: invalid volume id")
    add("listing_path_traversal_id", "store",
        lambda t: Listing(_listing(t, [("../../etc/passwd", _nifti(t / "a.nii.gz", ct_array()))])), r"invalid volume id")
    add("listing_duplicate_ids", "store",
        lambda t: Listing(_listing(t, [("a", _nifti(t / "a.nii.gz", ct_array())), ("a", t / "b.nii.gz")])),
        r"duplicate volume id")
    add("listing_row_without_path", "store", lambda t: Listing(_listing(t, [("a", "")])), r"no path")
    add("listing_unknown_format", "store", lambda t: Listing(_listing(t, [("a", t / "a.nii.gz")], fmt="jpeg")),
        r"unknown format")
    add("listing_empty_file", "store", lambda t: Listing(_csv(t, "", "listing.csv")), r"could not be read \(it is empty\)")
    add("listing_latin1", "store",
        lambda t: Listing(_csv(t, "volume_id,path\nÉ,a.nii.gz\n".encode("latin-1"), "listing.csv")), r"not UTF-8")
    add("listing_source_missing", "store", lambda t: Ingest(t / "nowhere.nii.gz", "nifti"), r"does not exist")
    add("store_root_is_a_file", "store",
        lambda t: Ingest(_nifti(t / "a.nii.gz", ct_array()), "nifti", store=_bytes(t / "store", 10)),
        r"cannot read or write .*store")
    add("pseudonymised_folder_error_names_no_folder", "store", lambda t: _pseudonymised_bad(t), r"not CT")
    add("pseudonymise_key_inside_store", "store", lambda t: _key_in_store(t), r"inside the store")
    return c


def _truth_claim(tmp: Path) -> Ingest:
    """A good scan whose lesion-truth mask (a listing's truth column) claims 128 GiB in 1 KB."""
    scan = _nifti(tmp / "scan.nii.gz", ct_array((20, 48, 48)))
    mask = header_only_nifti(tmp / "truth" / "mask.nii", (4096, 4096, 4096), dtype=np.uint8)
    (tmp / "truth" / "codes.csv").write_text("label,bit\ngreat_vessel_aneurysm,0\n")
    return Ingest(scan, "nifti", extra=(("truth", str(mask)), ("truth_codes", str(tmp / "truth" / "codes.csv"))))


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _cut_one(folder: Path) -> Path:
    f = sorted(folder.iterdir())[2]
    f.write_bytes(f.read_bytes()[:-200])
    return folder


def _garbage_dicom(folder: Path) -> Path:
    f = sorted(folder.iterdir())[1]
    f.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(1).bytes(3000))
    return folder


def _bytes(path: Path, n: int) -> Path:
    path.write_bytes(np.random.default_rng(2).bytes(n))
    return path


def _dangling(path: Path) -> Path:
    path.symlink_to(path.parent / "target-that-does-not-exist.nii.gz")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _plain_folder(tmp: Path) -> Path:
    folder = tmp / "notdicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a scan")
    return folder


def _rgb_nifti(path: Path) -> Path:
    import nibabel as nib

    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    return path


def _zero_spacing(path: Path) -> Path:
    import nibabel as nib

    a = np.eye(4)
    a[1, 1] = 0
    h = nib.Nifti1Header()
    h.set_data_shape((20, 24, 24))
    h.set_data_dtype(np.int16)
    h.set_sform(a, 1)
    path.write_bytes(h.binaryblock + b"\0" * 4 + ct_array().tobytes(order="F"))
    return path


def _zero_pixdim(path: Path) -> Path:
    """qform only, pixdim[2] = 0 written into the binary header (nibabel's setters refuse it)."""
    header_only_nifti(path, (20, 24, 24), pad=0)
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 254, 0)  # sform_code 0: only the qform (and its pixdim) remains
    struct.pack_into("<f", data, 84, 0.0)  # pixdim[2]
    path.write_bytes(bytes(data) + ct_array().tobytes(order="F"))
    return path


def _no_orientation(path: Path) -> Path:
    _nifti(path, ct_array())
    data = bytearray(path.read_bytes())
    struct.pack_into("<hh", data, 252, 0, 0)  # qform_code, sform_code
    path.write_bytes(bytes(data))
    return path


def _nan_affine(path: Path) -> Path:
    header_only_nifti(path, (20, 24, 24), pad=0)
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 252, 0)  # qform_code 0
    struct.pack_into("<f", data, 280, float("nan"))  # srow_x[0]
    path.write_bytes(bytes(data) + ct_array().tobytes(order="F"))
    return path


def _with_nan(a: np.ndarray) -> np.ndarray:
    f = a.astype(np.float32)
    f[3, 4, 5] = np.nan
    return f


def _mixed_sizes(tmp: Path) -> Path:
    folder = _series(tmp)
    other = _series(tmp, "other", n=6, origin=(-100.0, -120.0, 38.0))
    big = write_series(tmp / "big", np.zeros((1, 20, 20), np.float32), origin=(-100.0, -120.0, 60.0))
    big[0].rename(folder / "IM9999.dcm")
    del other
    return folder


def _listing(tmp: Path, rows: list[tuple[str, Any]], fmt: str = "") -> Path:
    path = tmp / "listing.csv"
    pd.DataFrame({"volume_id": [r[0] for r in rows], "path": [str(r[1]) for r in rows], "format": fmt}).to_csv(
        path, index=False
    )
    return path


def _pseudonymised_bad(tmp: Path) -> Listing:
    root = tmp / "in"
    _series(root, f"DOE_JOHN_{MARKER}_ct_chest_1901-02-03", modality="MR")
    key = tmp / "keys" / "pseudonym.key"
    key.parent.mkdir()
    key.write_bytes(b"k" * 32)
    return Listing(root, key)


def _key_in_store(tmp: Path) -> Listing:
    root = tmp / "in"
    _nifti(root / "a.nii.gz", ct_array())
    key = tmp / "store" / "pseudonym.key"
    key.parent.mkdir()
    key.write_bytes(b"k" * 32)
    return Listing(root, key)


CASES: list[Case] = _cases()


# ------------------------------------------------------------------------------ running one case
def run_case(case: Case, tmp: Path) -> Outcome:
    """Build the input in `tmp`, run the platform on it, and judge the outcome."""
    out = Outcome(case.kind, case.family)
    try:
        spec = case.build(tmp)
    except Exception as e:  # the builder itself failed: a bug in the suite, reported as a crash
        out.crashed = f"builder: {type(e).__name__}: {e}"
        return out
    try:
        if isinstance(spec, Ingest):
            _run_ingest(spec, tmp, out)
        elif isinstance(spec, Listing):
            _run_listing(spec, tmp, out)
        elif isinstance(spec, Report):
            _run_report(spec, out)
        elif isinstance(spec, ReportsCSV):
            _run_csv(spec, tmp, out)
        else:
            out.crashed = f"unknown input {type(spec).__name__}"
    except Exception as e:  # anything escaping the platform where a reason was due
        out.crashed = f"{type(e).__name__}: {str(e)[:300]}"
    if out.reason.startswith("unexpected error") or "unexpected error (" in out.reason:
        out.crashed = out.crashed or out.reason
    out.matched = bool(re.search(case.expect, out.reason))
    out.leaked = [m for m in case.markers if m in out.reason]
    return out


def _run_ingest(spec: Ingest, tmp: Path, out: Outcome) -> None:
    from ctplatform.config import IngestConfig
    from ctplatform.ingest.job import ingest_one

    store = spec.store or tmp / "store"
    row = {"volume_id": "v1", "path": str(spec.path), "format": spec.fmt, "metadata": spec.metadata, "split": "",
           **dict(spec.extra)}
    res = ingest_one(row, str(store), IngestConfig().model_dump(mode="json"))
    out.reason = str(res["error"])
    out.flagged = res["status"] != "ok" and bool(out.reason)
    out.silently_wrong = res["status"] == "ok"


def _run_listing(spec: Listing, tmp: Path, out: Outcome) -> None:
    from ctplatform.ingest.discover import discover
    from ctplatform.ingest.job import ingest_one
    from ctplatform.ingest.pseudonym import load_key
    from ctplatform.config import IngestConfig

    try:
        key = load_key(str(spec.key_file) if spec.key_file else None, str(tmp / "store"))
        rows = discover(spec.path, key)
    except (ValueError, FileNotFoundError) as e:  # the CLI prints these and exits 2
        out.reason, out.flagged = str(e), True
        return
    cfg = IngestConfig().model_dump(mode="json")
    results = [ingest_one(r, str(tmp / "store"), cfg) for r in rows]
    bad = [r for r in results if r["status"] != "ok"]
    out.reason = " | ".join(str(r["error"]) for r in bad) + " | " + " ".join(str(r["source"]) for r in results)
    out.reason += " | " + " ".join(str(r["volume_id"]) for r in results)
    out.flagged = bool(bad)
    out.silently_wrong = not bad


def _run_report(spec: Report, out: Outcome) -> None:
    from ctplatform.partition.sarle.job import label_batch

    res = label_batch(pd.DataFrame({"volume_id": ["v1"], "report": [spec.text], "line": [2]}))
    out.reason = str(res.loc[0, "error"])
    out.flagged = res.loc[0, "status"] in ("failed", "review") and bool(out.reason)
    out.silently_wrong = res.loc[0, "status"] == "ok"


def _run_csv(spec: ReportsCSV, tmp: Path, out: Outcome) -> None:
    from ctplatform.partition.sarle.job import _finish, label_batch
    from ctplatform.partition.sarle.reports import read_reports_csv
    from ctplatform.store import Store

    try:
        df = read_reports_csv(str(spec.path), known_ids=set(spec.known))
    except (ValueError, FileNotFoundError) as e:
        out.reason, out.flagged = str(e), True
        return
    status = label_batch(df)
    summary = _finish(status, Store(str(tmp / "labels_store")), frozenset(spec.known))
    out.reason = " | ".join(summary.errors) + " | " + summary.table()
    out.flagged = bool(summary.failed or summary.review or summary.absent)
    out.silently_wrong = not out.flagged
