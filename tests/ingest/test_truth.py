"""Lesion truth travels with its scan: same reorientation and resampling as the volume, onto its voxels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctplatform.config import load_config
from ctplatform.ingest.discover import discover
from ctplatform.ingest.job import ingest_one
from ctplatform.phantom.cohort import generate_cohort
from ctplatform.store import Store


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("truth_cohort") / "c"
    listing = generate_cohort(out, n=3, seed=5, size="tiny", confounder="marker:lung_nodule:1.0", workers=1, progress=False)
    return out, listing


def _cfg(tmp_path, interpolation="nearest"):
    return load_config(None, [f"store={tmp_path / 'store'}", "ingest.spacing_mm=[3,3,3]",
                              f"ingest.interpolation={interpolation}"])


def _world_nearest(source: nib.Nifti1Image, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Sample `source` at the world position of every stored voxel (nearest voxel; no ingest code)."""
    ijk = np.indices(shape).reshape(3, -1)
    world = np.asarray(affine) @ np.vstack([ijk, np.ones(ijk.shape[1])])
    src = np.floor((np.linalg.inv(source.affine) @ world)[:3] + 0.5).astype(int)
    src = np.clip(src, 0, np.array(source.shape)[:, None] - 1)
    data = np.asanyarray(source.dataobj)
    return data[src[0], src[1], src[2]].reshape(shape)


def test_truth_lands_on_the_volume_voxels_of_a_reoriented_scan(cohort, tmp_path):
    out, listing = cohort
    cfg = _cfg(tmp_path)
    store = Store(cfg.store_path)
    rows = discover(out / "scans.csv")
    assert all(r["truth"].endswith("_lesions.nii.gz") and r["truth_codes"].endswith("lesion_codes.csv") for r in rows)
    checked = 0
    for row, rec in zip(rows, listing.itertuples()):
        if rec.orientation == "IPL":
            continue  # only non-canonical orientations prove the reorientation
        res = ingest_one(row, cfg.store_path, cfg.ingest.model_dump(mode="json"))
        assert res["status"] == "ok", res
        vol, truth = store.volume(row["volume_id"]), store.truth(row["volume_id"])
        assert truth.shape == vol.shape and truth.attrs["affine"] == vol.attrs["affine"]
        # independent of ingest's code: both the nearest-neighbour volume and the truth are the source
        # files sampled at the stored voxels' world positions
        src_hu = nib.load(out / rec.path)
        src_truth = nib.load(out / "truth" / f"{row['volume_id']}_lesions.nii.gz")
        np.testing.assert_array_equal(vol[...], _world_nearest(src_hu, vol.shape, vol.attrs["affine"]))
        expected = _world_nearest(src_truth, vol.shape, vol.attrs["affine"])
        names = list(truth.attrs["truth_labels"])
        codes = pd.read_csv(out / "truth" / "lesion_codes.csv").set_index("label")
        stored = truth[...]
        for k, name in enumerate(names):  # stored bit k is the source bit the codes give that name
            np.testing.assert_array_equal((stored >> k) & 1, (expected >> int(codes.loc[name, "bit"])) & 1, err_msg=name)
        assert truth.attrs["confounder"] == {"kind": "marker", "label": "lung_nodule"}
        assert stored.any()
        checked += 1
    assert checked > 0


def test_truth_added_to_an_existing_volume_and_removed_with_its_column(cohort, tmp_path):
    """A store ingested without truth gets it by re-running ingest with the listing (no re-read of the scan)."""
    out, _ = cohort
    cfg = _cfg(tmp_path, "trilinear")
    store = Store(cfg.store_path)
    row = discover(out / "scans.csv")[0]
    vid = row["volume_id"]
    opts = cfg.ingest.model_dump(mode="json")
    assert ingest_one({**row, "truth": "", "truth_codes": ""}, cfg.store_path, opts)["status"] == "ok"
    assert not store.has_truth(vid)
    res = ingest_one(row, cfg.store_path, opts)
    assert res["status"] == "ok" and res["skipped"] and store.has_truth(vid)
    assert store.truth(vid).shape == store.volume(vid).shape
    sha = store.truth(vid).attrs["source_sha256"]
    assert ingest_one(row, cfg.store_path, opts)["skipped"] and store.truth(vid).attrs["source_sha256"] == sha
    ingest_one({**row, "truth": ""}, cfg.store_path, opts)
    assert not store.has_truth(vid)


def test_a_user_mask_by_value_with_its_codes(cohort, tmp_path):
    """The documented convention: a listing's truth column, and codes by value rather than by bit."""
    out, listing = cohort
    vid = listing["volume_id"].iloc[0]
    src = nib.load(out / "truth" / f"{vid}_lesions.nii.gz")
    bits = np.asanyarray(src.dataobj)
    codes = pd.read_csv(out / "truth" / "lesion_codes.csv").set_index("label")
    effusion = (bits & (1 << int(codes.loc["lung_pleural_effusion", "bit"]))) > 0
    nodule = (bits & (1 << int(codes.loc["lung_nodule", "bit"]))) > 0
    user = np.where(nodule, 2, np.where(effusion, 1, 0)).astype(np.uint8)
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(user, src.affine), masks / "m.nii.gz")
    pd.DataFrame({"value": [1, 2], "label": ["lung_pleural_effusion", "lung_nodule"]}).to_csv(masks / "codes.csv", index=False)
    shifted = src.affine.copy()
    shifted[:3, 3] += 7.0
    nib.save(nib.Nifti1Image(user, shifted), masks / "shifted.nii.gz")
    pd.DataFrame({"volume_id": ["u1", "u2"], "path": [str(out / "scans" / f"{vid}.nii.gz")] * 2,
                  "truth": ["masks/m.nii.gz", "masks/shifted.nii.gz"], "truth_codes": ["masks/codes.csv"] * 2}
                 ).to_csv(tmp_path / "list.csv", index=False)
    cfg = _cfg(tmp_path)
    store = Store(cfg.store_path)
    good, bad = (ingest_one(r, cfg.store_path, cfg.ingest.model_dump(mode="json")) for r in discover(tmp_path / "list.csv"))
    assert good["status"] == "ok", good
    truth = store.truth("u1")
    assert truth.dtype == np.uint8 and list(truth.attrs["truth_labels"]) == ["lung_pleural_effusion", "lung_nodule"]
    assert "confounder" not in truth.attrs
    expected = _world_nearest(nib.Nifti1Image(user, src.affine), truth.shape, store.volume("u1").attrs["affine"])
    np.testing.assert_array_equal(truth[...], np.where(expected == 2, 2, np.where(expected == 1, 1, 0)))
    # a mask that does not lie on the scan's voxels fails its row, and nothing reaches the store
    assert bad["status"] == "failed" and "does not lie on the scan's voxels" in bad["error"]
    assert not store.has_volume("u2") and not store.has_truth("u2")
