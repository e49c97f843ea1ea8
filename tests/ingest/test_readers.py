"""Readers on real scans and on real files written here (DICOM series, reoriented NIfTI, npz, CT-RATE)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctplatform.config import IngestConfig
from ctplatform.ingest.preprocess import to_store
from ctplatform.ingest.readers import RADCHESTCT_SPACING_MM, detect_format, read_scan
from ctplatform.ingest.scan import ScanError
from tests.ingest.dicom_writer import write_series

COARSE = IngestConfig(spacing_mm=(2.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def popi_nifti(ct_dir):
    return read_scan(ct_dir / "popi_thorax_256.nii.gz")


@pytest.fixture(scope="module")
def popi_dicom(ct_dir):
    return read_scan(ct_dir / "popi_dicom")


def test_popi_dicom_and_nifti_agree(popi_dicom, popi_nifti):
    assert popi_dicom.source_format == "dicom" and popi_nifti.source_format == "nifti"
    assert popi_dicom.original_shape == (141, 512, 512)
    a, attrs_a = to_store(popi_dicom, COARSE)
    b, attrs_b = to_store(popi_nifti, COARSE)
    assert a.shape == b.shape == (141, 250, 250)
    assert attrs_a["orientation"] == attrs_b["orientation"] == "IPL"
    # Same orientation: the same world axes, voxel 0 within a source pixel (the NIfTI was downsampled 2x).
    A, B = np.array(attrs_a["affine"]), np.array(attrs_b["affine"])
    np.testing.assert_allclose(A[:3, :3], B[:3, :3], atol=1e-6)
    assert np.abs(A[:3, 3] - B[:3, 3]).max() < 1.0
    r = np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1]
    assert r > 0.97, r
    # A flipped copy would not agree: the correlation measures orientation, not just intensity.
    assert np.corrcoef(a.ravel().astype(np.float64), b[:, :, ::-1].ravel().astype(np.float64))[0, 1] < r - 0.1


def test_stored_affine_maps_source_voxels_to_the_same_world_point(ct_dir, popi_nifti):
    src = nib.load(ct_dir / "popi_thorax_256.nii.gz")
    src_data = np.asanyarray(src.dataobj)
    hu, attrs = to_store(popi_nifti, COARSE)
    stored_affine = np.array(attrs["affine"])
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(5, n - 5, 4000) for n in src.shape], axis=1)
    world = nib.affines.apply_affine(src.affine, ijk)
    zyx = nib.affines.apply_affine(np.linalg.inv(stored_affine), world)
    idx = np.rint(zyx).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(hu.shape)), axis=1)
    assert inside.mean() > 0.99
    # Up to resampling (1.95 -> 2 mm) the stored voxel at the same world point has the source's HU.
    # Only the exact mapping gives this: one voxel off already costs much of the agreement.
    stored = hu[tuple(idx[inside].T)].astype(float)
    source = src_data[tuple(ijk[inside].T)].astype(float)
    assert np.corrcoef(stored, source)[0, 1] > 0.9
    assert np.abs(zyx[inside] - idx[inside]).max() <= 0.5 + 1e-6


def test_nifti_any_orientation_dtype_and_scaling(tmp_path, popi_nifti):
    # Write the same anatomy as RAS, axes permuted, float32 data stored as int32 with scl_slope/inter.
    hu = popi_nifti.hu[::2, ::2, ::2]
    aff = popi_nifti.affine.copy()
    aff[:3, :3] *= 2
    perm = (2, 0, 1)
    data = np.transpose(hu, perm)[::-1, :, ::-1]
    # voxel (i, j, k) of `data` is hu voxel (z, y, x) with x = X-1-i, z = j, y = Y-1-k
    Z, Y, X = hu.shape
    M = np.zeros((4, 4))
    M[2, 0], M[2, 3] = -1, X - 1
    M[0, 1] = 1
    M[1, 2], M[1, 3] = -1, Y - 1
    M[3, 3] = 1
    img = nib.Nifti1Image(((data + 1024) * 2).astype(np.int32), aff @ M)
    img.header.set_slope_inter(0.5, -1024)
    path = tmp_path / "reoriented.nii.gz"
    nib.save(img, path)
    scan = read_scan(path)
    assert scan.original_orientation != "IPL"
    np.testing.assert_allclose(scan.hu, hu, atol=1e-3)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-6)


def test_nifti_without_orientation_is_refused(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, tmp_path / "bare.nii")
    with pytest.raises(ScanError, match="no orientation"):
        read_scan(tmp_path / "bare.nii")


def test_radchestct_npz(tmp_path, popi_nifti):
    hu = np.clip(popi_nifti.hu[:40:4, ::4, ::4], -1024, 3071).astype(np.int16)
    np.savez_compressed(tmp_path / "trn00001.npz", ct=hu)
    assert detect_format(tmp_path / "trn00001.npz") == "npz"
    scan = read_scan(tmp_path / "trn00001.npz")
    np.testing.assert_array_equal(scan.hu, hu)
    assert scan.spacing_mm == (RADCHESTCT_SPACING_MM,) * 3 and scan.original_orientation == "IPL"
    np.savez_compressed(tmp_path / "other.npz", volume=hu)
    with pytest.raises(ScanError, match="no 'ct' array"):
        read_scan(tmp_path / "other.npz")


def test_ctrate_uses_metadata_for_rescale_and_geometry(tmp_path, popi_nifti):
    """A CT-RATE-style file (no header geometry, raw values) read with its metadata row equals the scan."""
    hu = popi_nifti.hu[:, ::2, ::2]
    aff = popi_nifti.affine.copy()
    aff[:3, 1:3] *= 2
    Z = hu.shape[0]
    # CT-RATE array axes: (column, row, slice), slices going up (along cross(row, column) = +S).
    data = np.transpose(hu[::-1], (2, 1, 0))
    raw = np.rint((data + 1024) / 2).astype(np.uint16)  # RescaleSlope 2, RescaleIntercept -1024
    first = aff @ np.array([Z - 1, 0, 0, 1.0])  # the most inferior slice, row 0, column 0 (RAS)
    ipp = [-first[0], -first[1], first[2]]  # LPS
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    folder = tmp_path / "dataset" / "train" / "train_1" / "train_1_a"
    folder.mkdir(parents=True)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, folder / "train_1_a_1.nii.gz")
    (tmp_path / "dataset" / "metadata").mkdir()
    pd.DataFrame(
        {
            "VolumeName": ["train_1_a_1.nii.gz"],
            "PatientSex": ["F"],
            "PatientAge": ["061Y"],
            "RescaleSlope": [2.0],
            "RescaleIntercept": [-1024.0],
            "XYSpacing": [json.dumps([float(spacing[2]), float(spacing[1])])],
            "ZSpacing": [float(spacing[0])],
            "ImagePositionPatient": [json.dumps([float(v) for v in ipp])],
            "ImageOrientationPatient": [json.dumps([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])],
        }
    ).to_csv(tmp_path / "dataset" / "metadata" / "train_metadata.csv", index=False)
    path = folder / "train_1_a_1.nii.gz"
    assert detect_format(path) == "ctrate"
    scan = read_scan(path)  # metadata found above the file, as the dataset lays it out
    np.testing.assert_allclose(scan.hu, np.rint((hu + 1024) / 2) * 2 - 1024, atol=1e-3)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-4)
    other = path.with_name("train_1_a_2.nii.gz")
    other.write_bytes(path.read_bytes())
    with pytest.raises(ScanError, match="no row"):
        read_scan(other)


# ---------------------------------------------------------------------------------------- DICOM
@pytest.fixture(scope="module")
def small_hu(popi_nifti):
    """A real thorax block, 24 slices of 64 x 64, as [slice, row, column] HU."""
    return np.clip(popi_nifti.hu[50:74, 60:188:2, 60:188:2], -1024, 3071)


@pytest.mark.parametrize("syntax", [None, "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"], ids=["raw", "rle", "j2k"])
def test_dicom_series_orders_by_position_and_decodes(tmp_path, small_hu, syntax):
    write_series(tmp_path / "s", small_hu, spacing=(2.0, 0.9, 0.9), transfer_syntax=syntax, shuffle_names=True)
    scan = read_scan(tmp_path / "s")
    # Slices written head to feet with shuffled file names come back in anatomical order.
    np.testing.assert_allclose(scan.hu, np.rint(small_hu)[:, :, :], atol=0.5)
    assert scan.spacing_mm == pytest.approx((2.0, 0.9, 0.9))
    assert scan.original_orientation == "SPL"  # slices sorted along the normal (+S), rows P, columns L


def test_dicom_feet_first_slices_and_lps_to_ras(tmp_path, small_hu):
    write_series(tmp_path / "s", small_hu[::-1], slice_direction=+1.0, origin=(-30.0, -40.0, -100.0))
    scan = read_scan(tmp_path / "s")
    np.testing.assert_allclose(scan.hu, np.rint(small_hu), atol=0.5)
    # Voxel 0 is the most superior slice; world = LPS (-30, -40, -100 + 23 * 2) -> RAS (30, 40, -54).
    np.testing.assert_allclose(scan.affine[:3, 3], (30.0, 40.0, -54.0))


def test_dicom_tolerates_the_popi_header(ct_dir):
    import pydicom

    before = pydicom.config.convert_wrong_length_to_UN
    scan = read_scan(ct_dir / "popi_dicom")
    assert scan.hu.shape == (141, 512, 512)
    assert pydicom.config.convert_wrong_length_to_UN == before  # the tolerance was scoped to the read
    assert -1100 < scan.hu.min() < -900 and scan.hu.max() > 1000


@pytest.mark.parametrize(
    "case, match",
    [
        ("mr", "not CT"),
        ("mixed", "mixed series"),
        ("uneven", "uneven slice spacing"),
        ("single", "2D image"),
        ("duplicate_positions", "share a position"),
    ],
)
def test_dicom_rejections(tmp_path, small_hu, case, match):
    kw: dict = {}
    hu = small_hu[:8]
    if case == "mr":
        kw["modality"] = "MR"
    elif case == "mixed":
        kw["series_uids"] = ["1.2.3.4"] * 4 + ["1.2.3.5"] * 4
    elif case == "uneven":
        kw["positions"] = [(0.0, 0.0, -z) for z in (0, 2, 4, 6, 10, 12, 14, 16)]
    elif case == "single":
        hu = small_hu[:1]
    elif case == "duplicate_positions":
        kw["positions"] = [(0.0, 0.0, -z) for z in (0, 2, 4, 4, 6, 8, 10, 12)]
    write_series(tmp_path / "s", hu, **kw)
    with pytest.raises(ScanError, match=match):
        read_scan(tmp_path / "s")
