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
RUNTIME_ENVS = [JOBS / "runtime_env.yaml", JOBS / "runtime_env.local.yaml"]


@pytest.mark.parametrize("path", RUNTIME_ENVS, ids=lambda p: p.name)
def test_runtime_env_is_accepted_by_ray(path):
    from ray.runtime_env import RuntimeEnv

    env = load_runtime_env(path)
    assert Path(env["working_dir"]) == REPO  # relative to the repository, wherever the command runs
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert {".git", ".venv", "ctplatform-work"} <= set(env["excludes"])


def test_cluster_runtime_env_points_at_the_clusters_mlflow():
    env = load_runtime_env(JOBS / "runtime_env.yaml")
    (svc,) = [d for d in load_documents(REPO / "deploy" / "kuberay" / "mlflow.yaml")
              if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"]
    port = svc["spec"]["ports"][0]["port"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == f"http://mlflow.ctplatform.svc.cluster.local:{port}"
    # The local head keeps the default sqlite:///<workdir>/mlflow.db.
    assert "MLFLOW_TRACKING_URI" not in load_runtime_env(JOBS / "runtime_env.local.yaml")["env_vars"]


def test_working_dir_package_is_small_and_holds_configs_and_scripts(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    env = load_runtime_env(JOBS / "runtime_env.local.yaml")
    pkg = tmp_path / "working_dir.zip"
    create_package(env["working_dir"], pkg, include_gitignore=True, excludes=env["excludes"])
    names = zipfile.ZipFile(pkg).namelist()
    assert "deploy/jobs/pipeline.py" in names and "platform/cli.py" in names
    assert not [n for n in names if n.startswith((".venv/", ".git/", "ctplatform-work/")) or "__pycache__" in n]
    assert pkg.stat().st_size < 50 * 2**20  # Ray refuses working_dirs over 500 MiB; this one is a few MiB


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
