"""`ctplatform predict` on real CT (a DICOM series folder and a NIfTI) with a tiny model trained here.

The model: AxialNet at the demo geometry, Adam steps on its head (class loss + HiResCAM mask loss with
the body as the allowed region) over the random backbone's features, logged with model/packaged.py (what training logs), registered and
given the alias `champion`. Checks: every heatmap has exactly the input's shape and affine (NIfTI:
the file's own; DICOM: the series' voxel corners as SimpleITK places them) and its maximum lies in
the body; a bad scan is flagged while the rest go on; a re-run resumes. The slow test loads the
registered model by alias in a fresh virtual environment and reproduces the probabilities to 1e-5.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ctplatform.cli import main
from ctplatform.config import load_config
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.cams import hirescam_from_features
from ctplatform.model.losses import mask_loss
from ctplatform.model.operating_points import choose_operating_points
from ctplatform.model.packaged import log_axialnet_model, model_input, preprocess_scan
from ctplatform.runtime import setup_mlflow
from ctplatform.scans.readers import read_scan

pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[2]
SCANS = {"chest": "chest_crop_mediastinum.nii.gz", "popi": "popi_dicom"}
BODY_HU = -400.0
NAME = "ctp-predict-test"


def _body(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest connected component above BODY_HU, holes (lungs) filled per slice."""
    from scipy import ndimage

    lab, n = ndimage.label(hu > BODY_HU)
    if n == 0:
        return np.zeros(hu.shape, bool)
    big = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return np.stack([ndimage.binary_fill_holes(s) for s in big])


def _link_torch_stack(site: Path) -> bool:
    """Hard-link this environment's installed torch, torchvision and their CUDA wheels (triton,
    nvidia-*, cuda-*: ~5.5 GB of files pip would unpack from the same wheels) into `site`, so a fresh
    venv costs no disk for them. pip then installs everything else the model's requirements name, and
    checks the linked versions against their pins. False (nothing linked) across filesystems."""
    heavy = ("torch", "torchvision", "triton")
    links: list[tuple[Path, Path]] = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"].lower()
        if name in heavy or name.startswith(("nvidia-", "cuda-")):
            for f in dist.files or []:
                if ".." not in f.parts:  # console scripts live outside site-packages
                    links.append((Path(dist.locate_file(f)), site / f))
    try:
        for src, dst in links:
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
    except OSError:  # another filesystem: pip installs the wheels in full instead
        for _, dst in links:
            dst.unlink(missing_ok=True)
        return False
    return True


def _body_grid(crop: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """bool [H, D1, D2]: cells at least half body."""
    body = _body(crop).astype(np.float32)
    h, d1, d2 = grid
    z, y, x = body.shape
    cells = body.reshape(h, z // h, d1, y // d1, d2, x // d2).mean(axis=(1, 3, 5))
    return cells >= 0.5


@pytest.fixture(scope="module")
def trained(ct_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"workdir={root / 'work'}", "ray.num_cpus=2",
                                                        "predict.min_maps=2", "predict.max_maps=2"])
    g = cfg.model.geometry
    xs, forbidden = [], []
    for name in SCANS.values():
        crop, _, _ = preprocess_scan(read_scan(ct_dir / name), cfg)
        xs.append(model_input(crop, cfg))
        forbidden.append(~_body_grid(crop, g.grid))
    x = torch.from_numpy(np.stack(xs))
    y = torch.zeros(2, 80)
    y[0, [0, 1]] = 1
    y[1, [2, 3]] = 1
    forb = torch.from_numpy(np.stack(forbidden))[:, None].expand(-1, 80, -1, -1, -1)
    torch.manual_seed(0)
    model = AxialNet(g)
    model.eval()
    # A few steps on the head's weights only (the random backbone's features computed once: seconds on
    # CPU): positives up-weighted in the class loss, a strong mask loss (the paper's sum form), until
    # each positive label's map peaks inside the body.
    with torch.no_grad():
        z = model.forward_features(x)
    torch.nn.init.zeros_(model.fc.bias)
    opt = torch.optim.Adam([model.fc.weight], lr=1e-2)
    pos_weight = torch.full((80,), 40.0)
    for _ in range(300):
        logits, _ = model.head(z)
        cam = hirescam_from_features(z, model.fc.weight)
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight) + 10 * mask_loss(cam, forb, "sum_neglog")
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            cam = hirescam_from_features(z, model.fc.weight)
            body_max = torch.where(forb, -1e9, cam).amax(dim=(2, 3, 4))
            margin = body_max - torch.where(forb, cam, -1e9).amax(dim=(2, 3, 4))
            learned = bool((margin[y > 0] > 0).all() and (body_max[y > 0] > 0).all())
        if learned:
            break
    assert learned, "the tiny model did not learn to attend inside the body"
    with torch.no_grad():
        logits = model(x, cam=False).logits.numpy()
    th, sources = choose_operating_points(y.numpy(), logits, cfg.predict.default_threshold)
    setup_mlflow(cfg)
    with mlflow.start_run() as run:
        pass
    info = log_axialnet_model(model.state_dict(), cfg, th, sources, run.info.run_id, NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", info.registered_model_version)
    return cfg, root


@pytest.fixture(scope="module")
def predicted(trained, ct_dir, ray_local):
    cfg, root = trained
    bad = root / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    listing = root / "listing.csv"
    rows = [f"{vid},{ct_dir / f}" for vid, f in SCANS.items()] + [f"broken,{bad}"]
    listing.write_text("volume_id,path\n" + "\n".join(rows) + "\n")
    out = root / "out"
    args = ["predict", "--model", f"models:/{NAME}@champion", "--input", str(listing), "--out", str(out),
            "--config", str(REPO / "configs" / "demo.yaml"), "--workdir", str(cfg.workdir),
            "--set", "predict.min_maps=2", "--set", "predict.max_maps=2"]
    assert main(args) == 0  # one bad scan of three does not fail the run
    return cfg, out, args


def _world_corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    pts = (affine @ idx.T).T[:, :3]
    return pts[np.lexsort(pts.T[::-1])]


def _dicom_corners(folder: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    size = img.GetSize()
    pts = []
    for i in (0, size[0] - 1):
        for j in (0, size[1] - 1):
            for k in (0, size[2] - 1):
                x, y, z = img.TransformIndexToPhysicalPoint((i, j, k))
                pts.append((-x, -y, z))  # LPS -> RAS
    pts = np.array(pts)
    return pts[np.lexsort(pts.T[::-1])], size


def test_heatmaps_have_the_inputs_grid_and_peak_in_the_body(predicted, ct_dir):
    cfg, out, _ = predicted
    table = pd.read_parquet(out / "predictions.parquet")
    assert list(table["volume_id"]) == ["broken", "chest", "popi"]
    assert set(table.loc[table.volume_id != "broken", "status"]) == {"ok"}
    assert table.loc[table.volume_id == "broken", "status"].item() == "failed"
    assert "broken.nii.gz" in table.loc[table.volume_id == "broken", "error"].item()
    csv = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(csv.iloc[:, 5:].to_numpy(float)[1:], table.iloc[:, 5:].to_numpy(float)[1:], atol=1e-7)
    for vid, name in SCANS.items():
        folder = out / "scans" / vid
        rec = json.loads((folder / "probabilities.json").read_text())
        assert len(rec["maps"]) == 2  # the two top labels: this scan's positives
        row = table[table.volume_id == vid].iloc[0]
        assert np.allclose([rec["probabilities"][k] for k in table.columns[5:]], row.iloc[5:].to_numpy(float))
        scores = pd.read_csv(folder / "slice_scores.csv")
        assert scores.shape == (cfg.model.geometry.grid[0], 81)
        assert (folder / "summary.png").stat().st_size > 10_000
        scan = read_scan(ct_dir / name)
        body = _body(scan.hu)
        for rel in rec["maps"]:
            img = nib.load(folder / rel)
            if name.endswith(".nii.gz"):
                src = nib.load(ct_dir / name)
                assert img.shape == src.shape
                np.testing.assert_allclose(img.affine, src.affine, atol=1e-4)
            else:
                corners, size = _dicom_corners(ct_dir / name)
                assert sorted(img.shape) == sorted(size)
                np.testing.assert_allclose(_world_corners(img.affine, img.shape), corners, atol=1e-2)
            data = np.asarray(img.dataobj)
            assert data.max() > 0
            peak = np.unravel_index(int(np.argmax(data)), data.shape)
            world = img.affine @ np.append(peak, 1.0)
            stored = np.rint(np.linalg.solve(scan.affine, world)[:3]).astype(int)
            assert body[tuple(stored)], f"{vid} {rel}: peak at {peak} outside the body"


def test_a_rerun_resumes_without_redoing_finished_scans(predicted):
    _, out, args = predicted
    before = {p: p.stat().st_mtime_ns for p in (out / "scans").rglob("*") if p.is_file()}
    first = pd.read_parquet(out / "predictions.parquet")
    assert main(args) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "scans").rglob("*") if p.is_file()}
    assert before == after
    again = pd.read_parquet(out / "predictions.parquet")
    pd.testing.assert_frame_equal(first.drop(columns="error"), again.drop(columns="error"))
    assert not [p for p in (out / "scans").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
def test_a_fresh_environment_loads_the_model_by_alias_and_reproduces_predict(predicted, ct_dir, tmp_path):
    cfg, out, _ = predicted
    uri = f"models:/{NAME}@champion"
    mlflow.set_tracking_uri(cfg.tracking_uri)
    reqs = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/requirements.txt", dst_path=str(tmp_path)))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    try:
        _fresh_venv_predicts(cfg, out, ct_dir, tmp_path, reqs, py)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~0.5 GB, or ~6 GB where torch could not be hard-linked


def _fresh_venv_predicts(cfg, out: Path, ct_dir: Path, tmp_path: Path, reqs: Path, py: Path) -> None:
    uri = f"models:/{NAME}@champion"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the linked wheels satisfy imports whatever the file says: it must name them itself
    lines = reqs.read_text().splitlines()
    named = {re.split(r"[<>=!~ ;\[]", line.strip(), maxsplit=1)[0].lower() for line in lines}
    assert {"torch", "torchvision"} <= named, sorted(named)
    linked = _link_torch_stack(site)
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(reqs)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    if linked:  # pip kept the linked torch: the requirement's pin matched what is installed
        assert (site / "torch" / "__init__.py").stat().st_nlink > 1, "pip replaced the linked torch"
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "m = mlflow.pyfunc.load_model(sys.argv[2])\n"
        "df = m.predict(pd.DataFrame({'path': sys.argv[3:]}))\n"
        "import ctplatform.labels; print(json.dumps({'file': ctplatform.labels.__file__, 'p': df.to_numpy().tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    paths = [str(ct_dir / f) for f in SCANS.values()]
    run = subprocess.run([str(py), "-c", code, cfg.tracking_uri, uri, *paths], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert str(tmp_path) in got["file"] or "/code/ctplatform/" in got["file"]  # the package shipped with the model
    table = pd.read_parquet(out / "predictions.parquet").set_index("volume_id")
    want = table.loc[list(SCANS), table.columns[4:]].to_numpy(float)
    np.testing.assert_allclose(np.array(got["p"]), want, atol=1e-5)
