"""Lesion truth read from the store (checked through world coordinates and against the old eval-side
computation), localization end to end, and a store without truth."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ctplatform.cli import main
from ctplatform.config import load_config
from ctplatform.eval.scoring import explain, score_outputs
from ctplatform.eval.summary import evaluate_scores
from ctplatform.eval.truth import confounder_label, read_grid_truth, survey
from ctplatform.eval.worker import _dataset, score_volumes, worker_options
from ctplatform.geometry import crop_or_pad_slices
from ctplatform.ingest.discover import discover
from ctplatform.ingest.job import ingest_one
from ctplatform.labels import label_by_name
from ctplatform.model.allowed_regions import allowed_regions
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.dataset import load_split
from ctplatform.partition.grid import grid_masks
from ctplatform.partition.volume import write_grid_truth
from ctplatform.phantom.anatomy import STORE_ORGAN_FROM_PHANTOM
from ctplatform.phantom.cohort import generate_cohort
from ctplatform.store import Store
from tests.eval.legacy_truth import cohort_confounder, to_stored_grid
from tests.eval.legacy_truth import truth_on_grid as legacy_truth_on_grid


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
    for rec, work in zip(listing.itertuples(), discover(out / "scans.csv")):
        row = ingest_one(work, cfg.store_path, cfg.ingest.model_dump(mode="json"))  # carries the truth mask
        assert row["status"] == "ok", row
        manifest.append(row)
        vol = store.volume(rec.volume_id)
        # organ grids from the phantom's exact organs (segmentation is tested elsewhere); truth via PARTITION's code
        organs = to_stored_grid(out / "truth" / f"{rec.volume_id}.nii.gz", tuple(vol.shape), vol.attrs)
        store_codes = np.zeros(256, np.uint8)
        for k, v in STORE_ORGAN_FROM_PHANTOM.items():
            store_codes[k] = v
        mask = grid_masks(store_codes[organs], geom, ["area"])["area"]
        store.write_grid(geom.name, "area", rec.volume_id, mask, {"geometry": geom.name, "variant": "area"})
        assert write_grid_truth(store, rec.volume_id, geom)
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
        truth = read_grid_truth(cfg.store_path, rec.volume_id, geom)
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


def test_store_grid_truth_equals_the_old_computation(cohort):
    """What eval reads from the store is what the old eval/truth.py computed from the phantom's files."""
    cfg, out, listing, _ = cohort
    geom = cfg.model.geometry
    store = Store(cfg.store_path)
    found = survey(store, list(listing["volume_id"]), geom, "area")
    assert found.n_with_truth == len(listing) and found.confounder == cohort_confounder(out) and not found.notes
    lesions = 0
    for vid in listing["volume_id"]:
        vol = store.volume(vid)
        new = read_grid_truth(cfg.store_path, vid, geom, "area")
        old = legacy_truth_on_grid(out, vid, tuple(vol.shape), vol.attrs, geom, "area")
        np.testing.assert_array_equal(new.lesions, old.lesions)
        np.testing.assert_array_equal(new.confounder, old.confounder)
        lesions += int(new.lesions.any(axis=(1, 2, 3)).sum())
    assert lesions > len(listing)  # most scans carry several lesion labels: the comparison has content


def _scores(cfg, state, split, ids, y, bits, truth, legacy_cohort=None):
    """Per-scan scores of a split: through eval's worker (store truth), or with the old truth (same outputs)."""
    opts = {**worker_options(cfg.eval), "threads": 1}
    if legacy_cohort is None:
        return score_volumes(state, cfg.model_dump(mode="json"), cfg.store_path, split, ids, y, bits,
                             np.zeros(len(ids), bool), truth, opts)["scans"]
    geom = cfg.model.geometry
    model = AxialNet(geom, pretrained_weights=None)
    model.load_state_dict(state)
    model.eval()
    store = Store(cfg.store_path)
    dataset = _dataset(cfg, cfg.store_path, ids, y, bits)
    scans = []
    for i, vid in enumerate(ids):
        item = dataset[i]
        outputs = explain(model, item["x"][None], opts["slice_chunk"])
        g_true = allowed_regions(item["region_bits"][None], item["grid"][None]).numpy()
        vol = store.volume(vid)
        old = legacy_truth_on_grid(legacy_cohort, vid, tuple(vol.shape), vol.attrs, geom, "area")
        scans += score_outputs([vid], [split], outputs, item["y"][None].numpy(), g_true,
                               lesions=[old.lesions], confounders=[old.confounder])
    return scans


def test_localization_figures_unchanged_from_the_old_truth(cohort):
    """Evaluation with truth from the store gives the figures the old phantom-file truth gave."""
    cfg, out, listing, _ = cohort
    geom = cfg.model.geometry
    store = Store(cfg.store_path)
    torch.manual_seed(1)
    state = AxialNet(geom, pretrained_weights=None).state_dict()
    splits = [s for s in ("train", "valid", "test", "shifted") if (listing["split"] == s).any()]
    new, old = {}, {}
    for split in splits[:2]:
        index = load_split(store, split)
        truth = survey(store, index.ids, geom, "area")
        new[split] = _scores(cfg, state, split, index.ids, index.y, index.region_bits, truth.fingerprints)
        old[split] = _scores(cfg, state, split, index.ids, index.y, index.region_bits, None, legacy_cohort=out)
    test, valid = splits[0], splits[1] if len(splits) > 1 else None
    kw = {"n_boot": 0, "convention": cfg.eval.organ_iou_convention}
    spec = survey(store, list(listing["volume_id"]), geom, "area").confounder  # from the store's truth attrs
    assert spec == cohort_confounder(out)
    ev_new = evaluate_scores(new[test], new.get(valid), confounder_label=confounder_label(spec), **kw)
    ev_old = evaluate_scores(old[test], old.get(valid), confounder_label=label_by_name(cohort_confounder(out)[1]).index, **kw)
    loc = [k for k in ev_old.metrics if k.startswith(("lesion_", "pointing_", "loc_utility", "confounder_share"))]
    assert {"pointing_hit_rate_hirescam", "loc_utility_hirescam", "confounder_share_hirescam"} <= set(loc)
    assert ev_new.metrics.keys() == ev_old.metrics.keys()
    for k in ev_old.metrics:
        assert ev_new.metrics[k] == pytest.approx(ev_old.metrics[k], rel=1e-9, abs=1e-12, nan_ok=True), k
    pd.testing.assert_frame_equal(ev_new.per_label, ev_old.per_label)


def test_a_store_without_truth_evaluates_without_localization(cohort, tmp_path, caplog):
    """A store written before truth was stored: scans are scored, localization metrics are absent and logged."""
    import logging
    import shutil

    cfg, _, listing, _ = cohort
    geom = cfg.model.geometry
    old_root = tmp_path / "old_store"
    shutil.copytree(cfg.store_path, old_root)
    old = Store(str(old_root))
    shutil.rmtree(old_root / "data.zarr" / "truth")
    shutil.rmtree(old_root / "data.zarr" / "truth_grid")
    index = load_split(old, "train")
    with caplog.at_level(logging.INFO, logger="ctplatform.eval"):
        found = survey(old, index.ids, geom, "area")
    assert found.n_with_truth == 0 and found.confounder is None
    assert "no lesion truth in the store" in caplog.text
    c = cfg.model_copy(deep=True)
    c.store = str(old_root)
    state = AxialNet(geom, pretrained_weights=None).state_dict()
    scans = score_volumes(state, c.model_dump(mode="json"), str(old_root), "train", index.ids, index.y,
                          index.region_bits, np.zeros(len(index), bool), found.fingerprints,
                          {**worker_options(cfg.eval), "threads": 1})["scans"]
    assert len(scans) == len(index) and all(s.lesion is None and s.confounder_share is None for s in scans)
    ev = evaluate_scores(scans, None, n_boot=0)
    assert not any(k.startswith(("lesion_", "pointing_", "loc_utility", "confounder_share")) for k in ev.metrics)
    assert "auroc_median" in ev.metrics or any(k.startswith("auroc") for k in ev.metrics)
    # a grid truth left over after its volume's truth was removed does not count
    shutil.copytree(Path(cfg.store_path) / "data.zarr" / "truth_grid", old_root / "data.zarr" / "truth_grid")
    assert survey(Store(str(old_root)), index.ids, geom, "area").n_with_truth == 0


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
    # the panel names the model and the split; its row says how confident the case is
    panels = sorted((root / "eval" / run.info.run_id / "train" / "figures").glob("explanations_*.png"))
    name = mlflow.MlflowClient().get_run(run.info.run_id).info.run_name
    assert panels and Image.open(panels[0]).text["Title"].startswith(f"{name} on train: ")
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
        truth = read_grid_truth(cfg.store_path, rec.volume_id, geom)
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


def test_figure_outlines_the_phantom_lesion_where_the_crop_puts_it(cohort, tmp_path):
    """The lesion drawn on a panel is the store's voxel truth cut like the CT crop: pooled onto the
    feature grid it gives exactly the grid truth evaluation scores against; the panel is drawn with it."""
    from ctplatform.eval.truth import lesion_voxels
    from ctplatform.eval.worker import render_volume

    cfg, _, listing, _ = cohort
    geom = cfg.model.geometry
    store = Store(cfg.store_path)
    z, y, x = geom.input_shape
    h, d1, d2 = geom.grid
    j = label_by_name("lung_nodule").index
    checked = 0
    for vid in listing["volume_id"]:
        vol = store.volume(vid)
        lesions = lesion_voxels(store, vid, tuple(vol.shape), geom.input_shape, [j])
        grid = read_grid_truth(cfg.store_path, vid, geom).lesions[j]
        cells = {(a * h // z, b * d1 // y, c * d2 // x) for a, b, c in np.argwhere(lesions[j])}
        assert cells == {tuple(int(v) for v in c) for c in np.argwhere(grid)}, vid
        checked += bool(cells)
    assert checked > 0
    vid = next(v for v in listing["volume_id"] if read_grid_truth(cfg.store_path, v, geom).lesions[j].any())
    index = next(load_split(store, s) for s in ("train", "valid", "test", "shifted") if vid in load_split(store, s).ids)
    k = index.ids.index(vid)
    state = AxialNet(geom, pretrained_weights=None).state_dict()
    png = render_volume(state, cfg.model_dump(mode="json"), cfg.store_path, vid, index.y[k], index.region_bits[k],
                        [j], str(tmp_path / "panel.png"), None, "key", {**worker_options(cfg.eval), "threads": 1},
                        ["most confident of 2 positives"], "mask-loss-0a1b on train")[0]
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert ((img[..., 1] > 200) & (img[..., 0] < 80) & (img[..., 2] < 80)).sum() > 20  # the lime outline or note
    assert Image.open(png).text["Title"].startswith("mask-loss-0a1b on train")
