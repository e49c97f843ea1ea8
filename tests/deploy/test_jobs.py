"""deploy/jobs without a cluster: the runtime_env files (validated by Ray, packed by Ray's own
packager) and the pipeline's stage commands (parsed by the ctplatform command)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from deploy.jobs.pipeline import STAGES, PipelineOptions, check_options, run_pipeline, stage_command
from deploy.jobs.submit import load_runtime_env
from deploy.kuberay.validate import load_documents
from tests.conftest import REPO

JOBS = REPO / "deploy" / "jobs"
RUNTIME_ENVS = [JOBS / "runtime_env.yaml", JOBS / "runtime_env.local.yaml", JOBS / "runtime_env.wheel.yaml"]


@pytest.mark.parametrize("path", RUNTIME_ENVS, ids=lambda p: p.name)
def test_runtime_env_is_accepted_by_ray_and_ships_no_folder(path):
    from ray.runtime_env import RuntimeEnv

    env = load_runtime_env(path)
    # Ray's own validation of every field (a wheel must exist for it: the wheel test builds one)
    RuntimeEnv(**{k: v for k, v in env.items() if k != "py_modules"})
    assert "working_dir" not in env  # the code is the installed package (venv or image)
    assert all(m.endswith(".whl") for m in env.get("py_modules", [])), env["py_modules"]


def test_cluster_runtime_env_points_at_the_clusters_mlflow():
    env = load_runtime_env(JOBS / "runtime_env.yaml")
    (svc,) = [d for d in load_documents(REPO / "deploy" / "kuberay" / "mlflow.yaml")
              if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"]
    port = svc["spec"]["ports"][0]["port"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == f"http://mlflow.ctplatform.svc.cluster.local:{port}"
    # The local head keeps the default sqlite:///<workdir>/mlflow.db.
    assert "MLFLOW_TRACKING_URI" not in load_runtime_env(JOBS / "runtime_env.local.yaml")["env_vars"]


#: What a user's folder holds beside the code when they submit from it (the documented recipe did).
DECOYS = ["scans/patient_0001.nii.gz", "scans/series/IM0001.dcm", "reports.csv",
          "ctplatform-work/store/data.zarr/zarr.json", "ctplatform-work/mlflow.db", "volumes/trn00001.npz"]
DATA_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".npz", ".npy", ".zarr", ".db", ".parquet", ".nrrd", ".mha")


def _uploads(runtime_env: dict, tmp: Path) -> list[Path]:
    """The files Ray's job client would upload for this runtime_env, built with Ray's own code
    (JobSubmissionClient's upload path: a zip per folder, a wheel as it is)."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    uploads: list[Path] = []

    def capture(path, excludes, is_file=False, parent=False):
        if is_file:
            uploads.append(Path(path))
        else:
            pkg = tmp / f"upload{len(uploads)}.zip"
            create_package(path, pkg, include_gitignore=True, include_parent_dir=parent, excludes=excludes)
            uploads.append(pkg)

    env = dict(runtime_env)
    upload_working_dir_if_needed(env, include_gitignore=True, upload_fn=capture)
    upload_py_modules_if_needed(env, include_gitignore=True,
                                upload_fn=lambda p, excludes, is_file=False: capture(p, excludes, is_file, True))
    return uploads


@pytest.mark.parametrize("path", [JOBS / "runtime_env.yaml", JOBS / "runtime_env.local.yaml"], ids=lambda p: p.name)
def test_the_job_runtime_envs_upload_nothing(path, tmp_path):
    assert _uploads(load_runtime_env(path), tmp_path) == []


def test_the_wheel_runtime_env_uploads_the_package_and_no_data(tmp_path):
    """Build the wheel the way runtime_env.wheel.yaml says, from a checkout with a user's scans,
    reports and work folder beside the code; what Ray would upload holds code and package data only."""
    import shutil
    import subprocess
    import sys

    from ray.runtime_env import RuntimeEnv

    src = tmp_path / "checkout"
    shutil.copytree(REPO / "platform", src / "platform", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for decoy in DECOYS:
        (src / decoy).parent.mkdir(parents=True, exist_ok=True)
        (src / decoy).write_bytes(b"patient data")
    env = load_runtime_env(JOBS / "runtime_env.wheel.yaml", repo=src)
    (wheel_path,) = env["py_modules"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(Path(wheel_path).parent), str(src)], check=True, cwd=src, capture_output=True, timeout=600)
    assert Path(wheel_path).is_file(), "the wheel's name changed: update runtime_env.wheel.yaml"
    RuntimeEnv(**env)
    (upload,) = _uploads(env, tmp_path)
    assert upload == Path(wheel_path)
    names = [n for n in zipfile.ZipFile(upload).namelist() if not n.endswith("/")]
    sources = {str(p.relative_to(REPO / "platform")) for p in (REPO / "platform").rglob("*") if p.is_file()}
    code = [n for n in names if n.startswith("ctplatform/")]
    assert "ctplatform/cli.py" in code and "ctplatform/store.py" in code
    assert all(n.startswith(("ctplatform/", "ctplatform-0.1.0.dist-info/")) for n in names), names
    assert all(n.removeprefix("ctplatform/") in sources for n in code)  # each a file of platform/
    decoy_names = {Path(d).name for d in DECOYS} | {"patient data"}
    assert not [n for n in names if n.lower().endswith(DATA_SUFFIXES) or Path(n).name in decoy_names]
    assert upload.stat().st_size < 5 * 2**20


def test_check_options_lists_every_problem():
    problems = check_options(PipelineOptions(input="scans", workdir=None, stages=("ingest", "label-reports", "fly")))
    text = "\n".join(problems)
    assert "unknown stages ['fly']" in text
    assert "--reports" in text and "--workdir" in text
    assert "--input 'scans' is relative" in text
    ok = PipelineOptions(input="/data/scans", reports="s3://bucket/reports.csv", workdir="/work")
    assert check_options(ok) == []


def test_stage_commands_parse_with_the_ctplatform_command():
    from ctplatform.cli import COMMANDS, build_parser

    registered = {name for name, _ in COMMANDS}
    opts = PipelineOptions(input="/in", reports="/r.csv", store="/s", workdir="/w", config="configs/demo.yaml",
                           overrides=["train.epochs=1"], run_name="pipeline-x")
    parser = build_parser()
    checked = 0
    for stage in STAGES + ("tune",):
        cmd = stage_command(stage, opts, run_id="0123abcd" if stage == "evaluate" else None)
        assert cmd[1:3] == ["-m", "ctplatform.cli"] and cmd[3] == stage
        assert cmd[-6:] == ["--config", "configs/demo.yaml", "--workdir", "/w", "--set", "train.epochs=1"]
        if stage in registered:
            args = parser.parse_args(cmd[3:])
            assert args.command == stage and args.store == "/s"
            checked += 1
    assert checked >= 2  # ingest and partition are on main
    with pytest.raises(ValueError):
        stage_command("evaluate", opts)


def test_pipeline_refuses_bad_options_before_running_anything(capsys):
    assert run_pipeline(PipelineOptions(input="relative/scans", workdir="/w", stages=("ingest",))) == 2
    assert "is relative" in capsys.readouterr().err
