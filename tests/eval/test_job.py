"""End to end on real CT scans: ingest (coarse) -> grid masks -> a logged AxialNet -> evaluate
(Ray tasks) -> MLflow evaluation run with pictures and tables -> compare two runs."""

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
from ctplatform.ingest.job import ingest_one
from ctplatform.labels import all_labels, label_index
from ctplatform.partition.grid import grid_masks
from ctplatform.store import Store
from ctplatform.model.axialnet import AxialNet

SCANS = ["popi_thorax_256.nii.gz", "chest_crop_mediastinum.nii.gz", "chest_crop_aorta.nii.gz"]
POSITIVE = [("nodule", "right_lung"), ("emphysema", "lung"), ("cardiomegaly", "heart"), ("atherosclerosis", "great_vessel")]


def _organs(hu: np.ndarray) -> np.ndarray:
    """A crude organ map (test fixture only): air-like voxels inside the body split at the midline."""
    body = hu > -500
    inside = np.zeros_like(body)
    ys, xs = np.nonzero(body.any(axis=0))
    inside[:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    lung = (hu < -500) & inside
    organs = np.zeros(hu.shape, np.uint8)
    mid = hu.shape[2] // 2
    organs[:, :, :mid][lung[:, :, :mid]] = 1  # x toward the patient's left: low x is the right lung
    organs[:, :, mid:][lung[:, :, mid:]] = 2
    organs[(organs == 0) & inside & (hu > -200) & (hu < 300)] = 3
    return organs


@pytest.fixture(scope="module")
def setup(ct_dir, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaljob")
    cfg = load_config(
        None,
        [
            f"workdir={root}",
            "ingest.spacing_mm=[4,4,4]",
            "model.input_shape=[24,64,64]",
            "model.custom_conv_padding=1",
            "train.grid_variant=area",  # 'nearest' samples one corner voxel per cell: empty on a 2x2 grid
            "eval.bootstrap=50",
            "eval.scans_per_task=3",
            "eval.figure_scans=2",
            "eval.sanity_scans=3",
        ],
    )
    store = Store(cfg.store_path)
    geom = cfg.model.geometry
    rng = np.random.default_rng(0)
    manifest, labels = [], []
    n = 0
    for rep in range(3):
        for name in SCANS:
            vid = f"scan{n:02d}"
            # two training scans: the image-blind prior map is their mean allowed region per label
            split = "valid" if n % 3 == 0 else ("train" if n >= 7 else "test")
            # the split travels with the row: ingest records the manifest row itself (store records)
            row = ingest_one({"volume_id": vid, "path": str(ct_dir / name), "format": "nifti", "split": split},
                             cfg.store_path,
                             cfg.ingest.model_dump(mode="json"))
            assert row["status"] == "ok", row
            hu = store.read_volume(vid)
            masks = grid_masks(_organs(hu), geom, ["area"])
            store.write_grid(geom.name, "area", vid, masks["area"], {"geometry": geom.name, "variant": "area"})
            manifest.append({"volume_id": vid, "status": "ok", "split": split, "source": "test", "format": "nifti",
                             "error": "", "sha256": row["sha256"]})
            present = {POSITIVE[k] for k in range(len(POSITIVE)) if rng.random() < 0.5}
            present.add(POSITIVE[n % len(POSITIVE)])
            present_idx = {label_index(a, loc) for a, loc in present}
            for lab in all_labels():
                if lab.index not in present_idx:
                    labels.append({"volume_id": vid, "abnormality": lab.abnormality, "location": lab.group, "value": 0})
            for a, loc in present:
                labels.append({"volume_id": vid, "abnormality": a, "location": loc, "value": 1})
            n += 1
    store.write_table("manifest", pd.DataFrame(manifest))
    store.write_table("labels", pd.DataFrame(labels))

    from ctplatform.runtime import setup_mlflow

    setup_mlflow(cfg)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = AxialNet(geom)
        with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
            mlflow.log_text(cfg.to_yaml(), "config.yaml")
            torch.save(model.state_dict(), Path(tmp) / "model_state.pt")
            mlflow.log_artifact(str(Path(tmp) / "model_state.pt"), "checkpoint")
        runs.append(run.info.run_id)
    return cfg, runs, root


def test_evaluate_logs_metrics_pictures_and_tables(setup):
    cfg, runs, root = setup
    code = main(["evaluate", "--run-id", runs[0], "--workdir", str(root), "--set", "eval.bootstrap=50",
                 "--set", "eval.scans_per_task=3", "--set", "eval.figure_scans=2", "--set", "eval.sanity_scans=3"])
    assert code == 0
    out = root / "eval" / runs[0] / "test"
    md = (out / "summary.md").read_text()
    assert "OrganIoU HiResCAM" in md and "validation split" in md
    per = pd.read_csv(out / "per_label.csv")
    nodule = per[per["label"] == "lung_nodule"].iloc[0]
    assert 0 <= nodule["auroc"] <= 1 and 0 <= nodule["organ_iou_hirescam"] <= 1
    assert (out / "figures" / "slice_scores.png").is_file()
    panels = sorted((out / "figures").glob("explanations_*.png"))
    assert len(panels) == 2
    heat = sorted((out / "heatmaps").glob("*.nii.gz"))
    assert heat, "NIfTI heatmaps are written when the store carries the affine"
    img = nib.load(heat[0])
    vid = pd.read_csv(out / "scan_keys.local.csv").set_index("scan_key")["volume_id"]
    key = heat[0].name.split("_")[0]
    stored = Store(cfg.store_path).volume(vid[key])
    assert img.shape == stored.shape and np.allclose(img.affine, np.asarray(stored.attrs["affine"]))

    client = mlflow.MlflowClient()
    evals = client.search_runs([client.get_run(runs[0]).info.experiment_id],
                               filter_string=f"tags.`ctplatform.evaluated_run` = '{runs[0]}'")
    assert len(evals) == 1
    ev = evals[0]
    assert ev.data.tags["mlflow.parentRunId"] == runs[0]
    assert "test_auroc_median" in ev.data.metrics and "test_organ_iou_hirescam_overall" in ev.data.metrics
    # the image-blind prior map (from the store's training split) scored beside the model's maps
    for name in ("organ_iou_prior_overall", "attention_in_allowed_prior", "allowed_cell_fraction"):
        assert 0 <= ev.data.metrics[f"test_{name}"] <= 1, name
    assert "baseline: image-blind prior map" in md and "organ_iou_prior_overall" in md
    assert -1 <= ev.data.metrics["test_sanity_rank_corr_mean"] <= 1
    assert ev.data.metrics["test_auroc/lung_nodule"] == pytest.approx(nodule["auroc"])
    arts = {a.path for a in client.list_artifacts(ev.info.run_id)} | {
        a.path for a in client.list_artifacts(ev.info.run_id, "figures")}
    assert {"summary.md", "summary.html", "predictions.parquet", "figures/slice_scores.png"} <= arts
    assert "scan_keys.local.csv" not in arts
    # no volume ids leave the machine through MLflow
    with tempfile.TemporaryDirectory() as tmp:
        pred = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=ev.info.run_id,
                                                                   artifact_path="predictions.parquet", dst_path=tmp))
    assert not pred["scan_key"].str.startswith("scan").any()
    assert "test_auroc_median" in client.get_run(runs[0]).data.metrics  # headline copied to the training run


def test_compare_two_runs(setup, capsys):
    cfg, runs, root = setup
    common = ["--workdir", str(root), "--set", "eval.bootstrap=20", "--set", "eval.figure_scans=0",
              "--set", "eval.sanity_scans=0"]
    if not list((root / "eval" / runs[0] / "test").glob("summary.md")):
        assert main(["evaluate", "--run-id", runs[0], *common]) == 0
    assert main(["evaluate", "--run-id", runs[1], *common]) == 0
    capsys.readouterr()
    assert main(["compare", runs[0], runs[1], "--workdir", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "delong_p" in printed and "auroc_median" in printed
    out = root / "eval" / "compare" / f"{runs[0]}_vs_{runs[1]}" / "test"
    table = pd.read_csv(out / "compare.csv")
    lines = (out / "compare.md").read_text().splitlines()
    at = next(k for k, line in enumerate(lines) if line.startswith("| organ_iou_hirescam_overall |"))
    assert [line.split("|")[1].strip() for line in lines[at + 1 : at + 3]] == [
        "baseline: uniform map = allowed-cell fraction (allowed_cell_fraction)",
        "baseline: image-blind prior map (organ_iou_prior_overall)",
    ]
    assert len(table) == 80
    tested = table["delong_p"].notna()
    assert tested.any() and ((table.loc[tested, "fdr_q"] >= table.loc[tested, "delong_p"] - 1e-12)).all()


def test_rerun_resumes_from_finished_tasks(setup):
    from ctplatform.eval.job import run_evaluation

    cfg, runs, root = setup
    cfg = load_config(None, [f"workdir={root}", "eval.bootstrap=10", "eval.figure_scans=0", "eval.sanity_scans=3",
                             "eval.scans_per_task=3"])
    first = run_evaluation(cfg, runs[0])
    again = run_evaluation(cfg, runs[0])
    assert again.tasks == first.tasks > 1 and again.reused_tasks == again.tasks
    # a job killed after some tasks: only the missing task results are recomputed
    cache = sorted((first.out_dir / ".scores").glob("*.npz"))
    assert len(cache) == first.tasks
    cache[0].unlink()
    resumed = run_evaluation(cfg, runs[0])
    assert resumed.reused_tasks == resumed.tasks - 1
    for key in ("auroc_median", "organ_iou_hirescam_overall", "sanity_rank_corr_mean"):
        assert resumed.metrics[key] == pytest.approx(first.metrics[key], nan_ok=True)
    client = mlflow.MlflowClient()
    ev = client.search_runs([client.get_run(runs[0]).info.experiment_id],
                            filter_string=f"tags.`ctplatform.evaluated_run` = '{runs[0]}'")[0]
    assert not [a for a in client.list_artifacts(ev.info.run_id) if a.path.startswith(".")]
