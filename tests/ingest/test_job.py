"""The ingest job on real files with real Ray, Zarr and Parquet: bad input, exit policy, PHI, resume."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctplatform.cli import main as cli_main
from ctplatform.config import Config, IngestConfig, load_config
from ctplatform.ingest.discover import discover
from ctplatform.ingest.job import exit_status, ingest_one, run_ingest
from ctplatform.store import Store
from tests.conftest import REPO
from tests.ingest.dicom_writer import (
    FAKE_BIRTH_DATE,
    FAKE_PATIENT_ID,
    FAKE_PATIENT_NAME,
    FAKE_STUDY_DATE,
    write_series,
)

COARSE = ["ingest.spacing_mm=[4,4,4]"]


def _cfg(store: Path, extra: list[str] | None = None) -> Config:
    return load_config(None, [f"store={store}", *COARSE, *(extra or [])])


@pytest.fixture(scope="module")
def thorax(ct_dir) -> tuple[np.ndarray, np.ndarray]:
    """A real thorax at about 4 mm (int16 HU) and its affine, small enough to write many times."""
    img = nib.load(ct_dir / "popi_thorax_256.nii.gz")
    data = np.asanyarray(img.dataobj)[::2, ::2, ::2]
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    return data.astype(np.int16), affine


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, thorax) -> Path:
    """Good scans, every kind of bad scan and a DICOM series with fake identifiers in its header."""
    data, affine = thorax
    root = tmp_path_factory.mktemp("bad_inputs")
    _nifti(root / "good_a.nii.gz", data, affine)
    _nifti(root / "good_b.nii.gz", data[::-1].copy(), affine)
    blob = (root / "good_a.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    raw = bytearray(gzip.decompress(blob))
    raw[4000:4400] = bytes(400)
    corrupt = bytearray(gzip.compress(bytes(raw)))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(range(64))  # breaks the deflate stream
    (root / "corrupt.nii.gz").write_bytes(bytes(corrupt))
    _nifti(root / "not_ct.nii.gz", (data.astype(np.float32) + 1100).clip(0).astype(np.int16), affine)
    _nifti(root / "flat2d.nii.gz", data[:, :, :1], affine)
    withnan = data.astype(np.float32)
    withnan[10, 10, 10] = np.nan
    withnan[11, 10, 10] = np.inf
    _nifti(root / "nan.nii.gz", withnan, affine)
    absurd = affine.copy()
    absurd[2, 2] = 150.0
    _nifti(root / "absurd_spacing.nii.gz", data, absurd)
    _nifti(root / "dup id.nii.gz", data, affine)
    _nifti(root / "dup_id.nii.gz", data, affine)
    hu = np.transpose(data, (2, 1, 0))[::-1, :, ::-1]  # LPS array -> [slice head-first, row P, column L]
    write_series(root / "mr_series", hu[:12], modality="MR", spacing=(4.0, 3.9, 3.9))
    write_series(root / "phi_series", hu, spacing=(4.0, 3.9, 3.9), transfer_syntax="1.2.840.10008.1.2.5")
    return root


EXPECTED_FAILURES = {
    "truncated": "truncated or corrupt",
    "corrupt": "truncated or corrupt",
    "not_ct": "does not look like CT",
    "flat2d": "2D image",
    "nan": "NaN or infinite",
    "absurd_spacing": "absurd voxel spacing",
    "dup_id": "duplicate volume id",
    "mr_series": "not CT",
}


@pytest.fixture(scope="module")
def bad_run(bad_folder, tmp_path_factory, ray_local):
    store = tmp_path_factory.mktemp("bad_store") / "store"
    df = run_ingest(bad_folder, _cfg(store))
    return store, df


def test_bad_inputs_fail_clearly_and_the_job_goes_on(bad_run):
    store, df = bad_run
    by_id = df.set_index("volume_id")
    assert set(by_id.index) == {"good_a", "good_b", "phi_series", *EXPECTED_FAILURES}
    for vid, fragment in EXPECTED_FAILURES.items():
        assert by_id.loc[vid, "status"] == "failed", vid
        assert fragment in by_id.loc[vid, "error"], (vid, by_id.loc[vid, "error"])
    for vid in ("good_a", "good_b", "phi_series"):
        assert by_id.loc[vid, "status"] == "ok", by_id.loc[vid, "error"]
    s = Store(str(store))
    assert s.volume_ids() == ["good_a", "good_b", "phi_series"]
    manifest = s.read_table("manifest")
    assert len(manifest) == len(df) and set(manifest["status"]) == {"ok", "failed"}
    assert {"volume_id", "source", "format", "status", "error", "shape", "spacing", "sha256", "split"} <= set(manifest)
    ok = manifest.set_index("volume_id").loc["good_a"]
    assert list(ok["shape"]) == list(s.volume("good_a").shape) and list(ok["spacing"]) == [4.0, 4.0, 4.0]


def test_no_header_identifiers_anywhere(bad_run, caplog, capsys):
    store, df = bad_run
    secrets = [FAKE_PATIENT_NAME, "Janet", FAKE_PATIENT_ID, FAKE_BIRTH_DATE, FAKE_STUDY_DATE]
    for path in Path(store).rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in blob, (secret, path)
    text = df.to_json() + json.dumps(dict(Store(str(store)).volume("phi_series").attrs))
    text += caplog.text + "".join(capsys.readouterr())
    for secret in secrets:
        assert secret not in text


def test_exit_policy(bad_run):
    _, df = bad_run
    assert exit_status(df, 1.0) == 0  # a few bad scans do not fail the run
    assert exit_status(df, 0.9) == 0
    assert exit_status(df, 0.5) == 1  # 8 of 11 failed: more than half
    assert exit_status(df[df["status"] == "failed"], 1.0) == 1  # everything failed
    assert exit_status(df[df["status"] == "ok"], 0.0) == 0
    assert exit_status(df.iloc[:0], 1.0) == 1


def test_cli_exit_codes_and_summary(bad_folder, tmp_path, ray_local, capsys):
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    for name in ("truncated.nii.gz", "flat2d.nii.gz"):
        shutil.copy(bad_folder / name, only_bad / name)
    set_args = ["--set", COARSE[0]]
    assert cli_main(["ingest", "--input", str(only_bad), "--store", str(tmp_path / "s1"), *set_args]) == 1
    out = capsys.readouterr()
    assert "0 ingested, 0 skipped (unchanged), 2 failed, of 2 scans" in out.out
    assert "truncated: " in out.out and "flat2d: " in out.out and "failing the run" in out.err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("truncated.nii.gz", "good_a.nii.gz"):
        shutil.copy(bad_folder / name, mixed / name)
    assert cli_main(["ingest", "--input", str(mixed), "--store", str(tmp_path / "s2"), *set_args]) == 0
    assert "1 ingested, 0 skipped (unchanged), 1 failed" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert cli_main(["ingest", "--input", str(tmp_path / "empty"), "--store", str(tmp_path / "s3")]) == 2
    assert cli_main(["ingest", "--input", str(tmp_path / "missing"), "--store", str(tmp_path / "s3")]) == 2


def test_listing_ids_split_and_duplicates(bad_folder, tmp_path):
    listing = tmp_path / "listing.csv"
    pd.DataFrame(
        {
            "volume_id": ["case1", "case2", "case2", "DOE JOHN MRN123"],
            "path": [str(bad_folder / "good_a.nii.gz"), str(bad_folder / "good_b.nii.gz"), "elsewhere.nii.gz",
                     str(bad_folder / "good_a.nii.gz")],
            "split": ["train", "valid", "test", "train"],
        }
    ).to_csv(listing, index=False)
    rows = discover(listing)
    assert [(r["volume_id"], r["split"]) for r in rows] == [
        ("case1", "train"), ("case2", "valid"), ("invalid-listing-row-5", "train")
    ]
    assert rows[0]["error"] == "" and "duplicate volume id: 2 sources" in rows[1]["error"]
    # An author's id that breaks the id rule is refused by line, never renamed or quoted.
    assert rows[2]["error"].startswith("listing line 5: invalid volume id") and "MRN123" not in rows[2]["error"]
    out = ingest_one(rows[0], str(tmp_path / "store"), IngestConfig(spacing_mm=(4, 4, 4)).model_dump(mode="json"))
    assert out["status"] == "ok" and out["split"] == "train"


def test_unreadable_folder(thorax):
    """A folder the ingest cannot list fails with its reason; its siblings are ingested."""
    root = Path(tempfile.mkdtemp(prefix="ctp-unreadable-", dir="/tmp"))
    try:
        os.chmod(root, 0o777)
        (root / "in" / "ok").mkdir(parents=True)
        data, affine = thorax
        _nifti(root / "in" / "ok" / "scan.nii.gz", data, affine)
        locked = root / "in" / "locked"
        write_series(locked, np.zeros((2, 8, 8)))
        for p in (root / "in", root / "in" / "ok"):
            os.chmod(p, 0o777)
        os.chmod(locked, 0)
        # Root reads through permissions: run as 'nobody' then (modules imported before dropping rights).
        script = (
            "import json, os, sys\n"
            "import numpy, pandas, zarr, zarr.codecs, nibabel, nibabel.orientations, pydicom, pyarrow, scipy.ndimage\n"
            "from ctplatform.ingest import discover, job, readers, preprocess, dicom, resample\n"
            "from ctplatform import config, store\n"
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            f"rows = discover.discover({str(root / 'in')!r})\n"
            "cfg = config.IngestConfig(spacing_mm=(4, 4, 4)).model_dump(mode='json')\n"
            f"print(json.dumps([job.ingest_one(r, {str(root / 'store')!r}, cfg) for r in rows]))\n"
        )
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out = {r["volume_id"]: r for r in json.loads(res.stdout.strip().splitlines()[-1])}
        assert out["scan"]["status"] == "ok"
        assert out["locked"]["status"] == "failed"
        assert "cannot read folder locked: permission denied" in out["locked"]["error"]
    finally:
        os.chmod(root / "in" / "locked", 0o755)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------- resume
def test_rerun_skips_unchanged_and_redoes_changed(bad_folder, tmp_path, ray_local):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("good_a.nii.gz", "good_b.nii.gz"):
        shutil.copy(bad_folder / name, src / name)
    store = tmp_path / "store"
    first = run_ingest(src, _cfg(store))
    assert (first["status"] == "ok").all() and not first["skipped"].any()
    again = run_ingest(src, _cfg(store))
    assert again["skipped"].all()
    shutil.copy(bad_folder / "good_a.nii.gz", src / "good_b.nii.gz")  # good_b's source changes
    changed = run_ingest(src, _cfg(store)).set_index("volume_id")
    assert changed.loc["good_a", "skipped"] and not changed.loc["good_b", "skipped"]
    np.testing.assert_array_equal(Store(str(store)).read_volume("good_b"), Store(str(store)).read_volume("good_a"))
    respaced = run_ingest(src, _cfg(store, ["ingest.spacing_mm=[5,5,5]"]))
    assert not respaced["skipped"].any()  # other settings: redone, not skipped
    forced = run_ingest(src, _cfg(store, ["ingest.spacing_mm=[5,5,5]"]), overwrite=True)
    assert not forced["skipped"].any() and (forced["status"] == "ok").all()


def test_killed_job_resumes(ct_dir, tmp_path, ray_local):
    """Kill a running `ctplatform ingest` (joined to the test's Ray), then re-run: it finishes the rest
    and skips what was finished, and a half-written array is redone."""
    n = 8
    listing = tmp_path / "listing.csv"
    pd.DataFrame({"volume_id": [f"popi{i}" for i in range(n)], "path": [str(ct_dir / "popi_dicom")] * n}).to_csv(
        listing, index=False
    )
    store_dir = tmp_path / "store"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    cmd = [
        sys.executable, "-m", "ctplatform.cli", "ingest", "--input", str(listing), "--store", str(store_dir),
        "--set", "ingest.spacing_mm=[1.2,1.2,1.2]", "--set", "ingest.max_tasks_in_flight=1",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    store = Store(str(store_dir))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists() and len(store.volume_ids()) >= 2:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(2.0)  # let Ray reap the dead driver's tasks
    finished = set(store.volume_ids())
    assert 2 <= len(finished) < n, f"kill came too late or too early: {sorted(finished)}"
    # A writer killed mid-item leaves an array marked unfinished: make one explicitly.
    unfinished = sorted({f"popi{i}" for i in range(n)} - finished)[0]
    store.group.create_array(
        f"volumes/{unfinished}", shape=(4, 4, 4), dtype="int16", attributes={"complete": False}, overwrite=True
    )
    df = run_ingest(listing, load_config(None, [f"store={store_dir}", "ingest.spacing_mm=[1.2,1.2,1.2]"]))
    assert (df["status"] == "ok").all(), df["error"].tolist()
    by_id = df.set_index("volume_id")
    assert set(by_id.index[by_id["skipped"]]) == finished
    assert not by_id.loc[unfinished, "skipped"]
    assert store.volume_ids() == sorted(f"popi{i}" for i in range(n))
    assert store.volume(unfinished).shape == store.volume(sorted(finished)[0]).shape
    assert len(store.read_table("manifest")) == n
