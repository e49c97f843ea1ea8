"""Every real chest scan, ingested by the Ray job, is stored in I-P-L: checked on its anatomy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctplatform.config import load_config
from ctplatform.ingest.job import run_ingest
from ctplatform.store import Store
from tests.ingest.anatomy import apex_top_margin, heart_left_margin, spinal_canal, spine_posterior_margin

SPACING = 2.0
CHEST = ["popi_dicom", "popi_thorax_256", "chest_crop_aorta", "chest_crop_mediastinum"]
#: Scans whose field of view holds the spine in most slices (the mediastinum crop stops in front of it;
#: it is checked through the aorta crop of the same scan instead, see the last test).
WITH_SPINE = ["popi_dicom", "popi_thorax_256", "chest_crop_aorta"]


@pytest.fixture(scope="module")
def store(ct_dir, tmp_path_factory, ray_local) -> Store:
    root = tmp_path_factory.mktemp("real") / "store"
    cfg = load_config(None, [f"store={root}", f"ingest.spacing_mm=[{SPACING},{SPACING},{SPACING}]"])
    df = run_ingest(ct_dir, cfg)
    assert (df["status"] == "ok").all(), df[["volume_id", "error"]].to_string()
    assert set(CHEST) <= set(df["volume_id"])
    return Store(str(root))


@pytest.fixture(scope="module")
def volumes(store) -> dict[str, np.ndarray]:
    return {vid: store.read_volume(vid).astype(np.float32) for vid in CHEST}


@pytest.mark.parametrize("vid", WITH_SPINE)
def test_spine_toward_larger_y_and_heart_toward_larger_x(volumes, vid):
    v = volumes[vid]
    canal = spinal_canal(v, SPACING)
    assert len(canal) >= 10, "spinal canal not found"
    assert spine_posterior_margin(v, canal) > 10  # voxels (20 mm) behind the body's centre
    assert heart_left_margin(v, canal, SPACING) > 2  # heart centre at least 4 mm left of the canal
    # The same checks reject the mirrored volumes: they measure orientation.
    flipped_y = v[:, ::-1]
    assert spine_posterior_margin(flipped_y, spinal_canal(flipped_y, SPACING)) < 0
    flipped_x = v[:, :, ::-1]
    assert heart_left_margin(flipped_x, spinal_canal(flipped_x, SPACING), SPACING) < 0


@pytest.mark.parametrize("vid", CHEST)
def test_lung_apices_at_small_z(volumes, vid):
    v = volumes[vid]
    assert apex_top_margin(v) > 3
    assert apex_top_margin(v[::-1]) < 0


def test_crops_of_one_scan_agree_through_their_stored_affines(store):
    """The mediastinum crop lies inside the aorta crop of the same scan: every voxel, mapped through
    the two stored affines, lands on the same HU (so it shares the aorta crop's checked orientation)."""
    small, big = store.volume("chest_crop_mediastinum"), store.volume("chest_crop_aorta")
    a_small, a_big = np.array(small.attrs["affine"]), np.array(big.attrs["affine"])
    zyx = np.stack(np.meshgrid(*(np.arange(2, n - 2, 3) for n in small.shape), indexing="ij"), -1).reshape(-1, 3)
    mapped = nib.affines.apply_affine(np.linalg.inv(a_big) @ a_small, zyx)
    idx = np.rint(mapped).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(big.shape)), axis=1)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(np.linalg.inv(a_big)[:3, :3] @ a_small[:3, :3], np.eye(3), atol=1e-6)
    s, b = small[...], big[...]
    r = np.corrcoef(s[tuple(zyx[inside].T)].astype(float), b[tuple(idx[inside].T)].astype(float))[0, 1]
    assert r > 0.95, r
