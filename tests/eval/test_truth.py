"""Phantom truth on the feature grid (checked through world coordinates) and localization end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctplatform.cli import main
from ctplatform.config import load_config
from ctplatform.geometry import crop_or_pad_slices
from ctplatform.ingest.job import ingest_one
from ctplatform.labels import label_by_name
from ctplatform.partition.grid import grid_masks
from ctplatform.phantom.anatomy import STORE_ORGAN_FROM_PHANTOM
from ctplatform.eval.truth import cohort_for, to_stored_grid, truth_on_grid
from ctplatform.phantom.cohort import generate_cohort
from ctplatform.store import Store
from ctplatform.model.axialnet import AxialNet


@pytest.fixture(scope="module")
def cohort(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom_eval")
    out = root / "cohort"
    listing = generate_cohort(out, n=6, seed=3, size="demo", confounder="marker:lung_nodule:1.0", workers=2,
                              progress=False)
    cfg = load_config(None, [f"workdir={root}", "ingest.spacing_mm=[3,3,3]", "model.input_shape=[60,96,96]",
                             "model.custom_conv_padding=1", "train.grid_variant=area"])
    store = Store(cfg.store_path)
    geom = cfg.model.geometry
    manifest = []
    for rec in listing.itertuples():
        row = ingest_one({"volume_id": rec.volume_id, "path": str(out / rec.path), "format": "nifti",
                          "split": rec.split}, cfg.store_path, cfg.ingest.model_dump(mode="json"))
        assert row["status"] == "ok", row
        manifest.append(row)
        vol = store.volume(rec.volume_id)
        organs = to_stored_grid(out / "truth" / f"{rec.volume_id}.nii.gz", tuple(vol.shape), vol.attrs)
        store_codes = np.zeros(256, np.uint8)
        for k, v in STORE_ORGAN_FROM_PHANTOM.items():
            store_codes[k] = v
        mask = grid_masks(store_codes[organs], geom, ["area"])["area"]
        store.write_grid(geom.name, "area", rec.volume_id, mask, {"geometry": geom.name, "variant": "area"})
    store.write_table("manifest", pd.DataFrame(manifest))
    labels = pd.read_csv(out / "labels.csv")[["volume_id", "abnormality", "location", "value"]]
    store.write_table("labels", labels)
    return cfg, out, listing, root


def test_lesion_cells_match_world_coordinates(cohort):
    cfg, out, listing, _ = cohort
    geom = cfg.model.geometry
    store = Store(cfg.store_path)
    checked = 0
    for rec in listing.itertuples():
        vol = store.volume(rec.volume_id)
        truth = truth_on_grid(out, rec.volume_id, tuple(vol.shape), vol.attrs, geom)
        positives = set(filter(None, str(rec.positive_labels).split("|"))) if isinstance(rec.positive_labels, str) else set()
        for name in ("lung_nodule", "great_vessel_atherosclerosis", "lung_pleural_effusion"):
            j = label_by_name(name).index
            assert truth.lesions[j].any() == (name in positives), (rec.volume_id, name)
        # the confounder (external marker) region exists exactly when the scan carries the marker
        assert truth.confounder is not None and truth.confounder.any() == bool(rec.marker)
        # independent path: lesion voxel centres -> world -> stored voxel -> crop -> grid cell
        img = nib.load(out / "truth" / f"{rec.volume_id}_lesions.nii.gz")
        bits = np.asanyarray(img.dataobj)
        inv = np.linalg.inv(np.asarray(vol.attrs["affine"]))
        starts = [c - a for a, _, c, _ in crop_or_pad_slices(tuple(vol.shape), geom.input_shape)]
        for name in positives & {"lung_nodule", "lung_pleural_effusion", "great_vessel_atherosclerosis"}:
            bit = pd.read_csv(out / "truth" / "lesion_codes.csv").set_index("label").loc[name, "bit"]
            ijk = np.argwhere(bits & (1 << int(bit)))
            world = img.affine @ np.c_[ijk, np.ones(len(ijk))].T
            vox = np.rint((inv @ world)[:3].T).astype(int) + np.array(starts)
            inside = np.all((vox >= 0) & (vox < np.array(geom.input_shape)), axis=1)
            vox = vox[inside]
            h, d1, d2 = geom.grid
            cells = {(z // 3, y * d1 // geom.input_shape[1], x * d2 // geom.input_shape[2]) for z, y, x in vox}
            ours = {tuple(c) for c in np.argwhere(truth.lesions[label_by_name(name).index])}
            jaccard = len(cells & ours) / max(1, len(cells | ours))
            assert jaccard > 0.8, (rec.volume_id, name, jaccard)
            checked += 1
    assert checked > 0


def test_cohort_found_from_manifest_source(cohort):
    cfg, out, listing, _ = cohort
    vid = listing["volume_id"].iloc[0]
    assert cohort_for(vid, str(out / "scans" / f"{vid}.nii.gz"), None) == str(out)
    assert cohort_for(vid, "/elsewhere/scans/x.nii.gz", None) is None


def test_evaluate_reports_localization_against_truth(cohort):
    cfg, out, listing, root = cohort
    from ctplatform.runtime import setup_mlflow

    setup_mlflow(cfg)
    torch.manual_seed(0)
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_text(cfg.to_yaml(), "config.yaml")
        torch.save(AxialNet(cfg.model.geometry).state_dict(), Path(tmp) / "model_state.pt")
        mlflow.log_artifact(str(Path(tmp) / "model_state.pt"), "checkpoint")
    assert main(["evaluate", "--run-id", run.info.run_id, "--workdir", str(root), "--split", "train",
                 "--set", "eval.bootstrap=20", "--set", "eval.figure_scans=1", "--set", "eval.sanity_scans=2"]) == 0
    per = pd.read_csv(root / "eval" / run.info.run_id / "train" / "per_label.csv").set_index("label")
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert 0 <= metrics["train_pointing_hit_rate_hirescam"] <= 1
    assert 0 < metrics["train_loc_utility_hirescam"] <= 1
    assert 0 <= metrics["train_confounder_share_hirescam"] <= 1
    nodule_pos = (listing["split"] == "train") & listing["positive_labels"].fillna("").str.contains("lung_nodule")
    if nodule_pos.any():
        assert np.isfinite(per.loc["lung_nodule", "lesion_dice_hirescam"])


def test_heatmap_nifti_lands_on_the_lesion_in_the_source_scan(cohort, tmp_path):
    """A map that is 1 on a label's true lesion cells, exported as NIfTI and resampled by world
    coordinates onto the source scan (written in its own orientation), covers that lesion there."""
    from nibabel.processing import resample_from_to

    from ctplatform.eval.heatmaps import write_heatmap_nifti

    cfg, out, listing, _ = cohort
    geom = cfg.model.geometry
    store = Store(cfg.store_path)
    codes = pd.read_csv(out / "truth" / "lesion_codes.csv").set_index("label")
    checked = 0
    for rec in listing.itertuples():
        vol = store.volume(rec.volume_id)
        truth = truth_on_grid(out, rec.volume_id, tuple(vol.shape), vol.attrs, geom)
        src = nib.load(out / "scans" / f"{rec.volume_id}.nii.gz")
        bits = np.asanyarray(nib.load(out / "truth" / f"{rec.volume_id}_lesions.nii.gz").dataobj)
        for name in ("great_vessel_atherosclerosis", "lung_pleural_effusion", "lung_consolidation"):
            j = label_by_name(name).index
            if not truth.lesions[j].any():
                continue
            path = write_heatmap_nifti(tmp_path / f"{rec.volume_id}_{name}.nii.gz", truth.lesions[j].astype(np.float32),
                                       geom.input_shape, tuple(vol.shape), vol.attrs["affine"])
            heat = resample_from_to(nib.load(path), src, order=0).get_fdata()
            lesion = (bits & (1 << int(codes.loc[name, "bit"]))) > 0
            # inside the crop, the lesion lies where the exported map is high (orientation, crop and
            # affine all agree); elsewhere the map is mostly low
            covered = heat[lesion] > 0.5
            assert covered.mean() > 0.7, (rec.volume_id, rec.orientation, name, covered.mean())
            assert (heat > 0.5).mean() < 0.6
            checked += 1
    assert checked > 0
