"""Real scans (../shared/data/ct): adult lungs found and sided, odd volumes flagged, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from ctplatform.config import IngestConfig, load_config
from ctplatform.partition.organs import LEFT_LUNG, RIGHT_LUNG
from ctplatform.partition.volume import partition_array

SPACING = (2.0, 2.0, 2.0)  # coarser than the store's 0.8 mm so the tests stay fast; thresholds scale


def _load(ct_dir, name: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan

    hu, attrs = to_store(read_scan(ct_dir / name), IngestConfig(spacing_mm=SPACING))
    return hu, tuple(attrs["spacing_mm"])


def _run(hu, spacing, method="improved"):
    cfg = load_config(None, [f"partition.method={method}"])
    return partition_array(hu, spacing, cfg.partition, cfg.model.geometry)


@pytest.fixture(scope="module")
def popi(ct_dir):
    return _load(ct_dir, "popi_thorax_256.nii.gz")


@pytest.mark.parametrize("method", ["reference", "improved"])
def test_whole_chest_has_two_adult_lungs_on_the_right_sides(popi, method):
    out = _run(*popi, method=method)
    row = out.row
    assert not out.qc.fallback and row["qc_flags"] == ""
    assert 2000 <= row["total_lung_ml"] <= 8000
    assert row["right_lung_ml"] > 800 and row["left_lung_ml"] > 800
    assert out.qc.left.centroid_x_mm > out.qc.right.centroid_x_mm  # x grows toward the patient's left
    # the heart is on the left: the mediastinum region is centred left of the lungs' middle
    x = np.nonzero(out.organs == 3)[2].mean()
    lungs_x = np.nonzero(np.isin(out.organs, [RIGHT_LUNG, LEFT_LUNG]))[2]
    assert x > (lungs_x.min() + lungs_x.max()) / 2


def test_popi_dicom_series_agrees_with_its_nifti(ct_dir, popi):
    dicom = _run(*_load(ct_dir, "popi_dicom"))
    nifti = _run(*popi)
    assert dicom.row["total_lung_ml"] == pytest.approx(nifti.row["total_lung_ml"], rel=0.05)


@pytest.mark.parametrize("name", ["abdomen_slab_small.nii.gz", "abdomen_pelvis.nii.gz"])
@pytest.mark.parametrize("method", ["reference", "improved"])
def test_abdomen_scans_are_flagged_and_fall_back(ct_dir, name, method):
    out = _run(*_load(ct_dir, name), method=method)
    assert out.qc.fallback and "no_lungs" in out.row["qc_flags"]
    assert out.grids["nearest"][:, :, :, :3].any() and out.grids["nearest"][0, :, :, 3:].sum() == 0


@pytest.mark.parametrize("name", ["chest_crop_aorta.nii.gz", "chest_crop_mediastinum.nii.gz"])
def test_chest_crops_keep_their_lungs_only_with_the_improved_method(ct_dir, name):
    hu, spacing = _load(ct_dir, name)
    ref = _run(hu, spacing, "reference")
    imp = _run(hu, spacing, "improved")
    assert ref.row["total_lung_ml"] == 0 and ref.qc.fallback  # plain clear-border loses both lungs
    assert not imp.qc.fallback and "partial_fov" in imp.row["qc_flags"]
    assert imp.row["right_lung_ml"] > 300 and imp.row["left_lung_ml"] > 300
    assert imp.qc.left.centroid_x_mm > imp.qc.right.centroid_x_mm


def test_one_lung_is_flagged(popi):
    hu, spacing = popi
    first = _run(hu, spacing)
    one = hu.copy()
    one[first.organs == LEFT_LUNG] = 40  # a white-out left lung (e.g. pneumonectomy, collapse)
    out = _run(one, spacing)
    assert "left_lung_missing" in out.row["qc_flags"] and out.qc.fallback
    assert "right_lung_missing" not in out.row["qc_flags"]


@pytest.mark.parametrize("box", [(slice(60, 70), slice(100, 130), slice(60, 90)), (slice(0, 1), slice(0, 2), slice(0, 2))])
def test_tiny_crops_do_not_crash(popi, box):
    hu, spacing = popi
    out = _run(np.ascontiguousarray(hu[box]), spacing)
    assert out.qc.fallback
    assert all(m.shape == (3, 135, 6, 6) for m in out.grids.values())
