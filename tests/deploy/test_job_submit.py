"""CI proof of the `ray job submit` path, on a real Ray head started with `ray start --head` (with the
dashboard and token authentication, as on the cluster): the ingest job goes through the Job
Submission API, the partition job through the `ray job submit` CLI exactly as docs/deploy.md shows
it, and the pipeline entrypoint re-runs both (resuming: nothing is redone). Both use
deploy/jobs/runtime_env.local.yaml, which uploads nothing: workers import the installed package. Then the store is checked: manifest rows ok, organ maps and
every grid-mask variant present. Input: two real scans from the shared CT folder (read in place).

The head is a separate Ray (not the session's `ray_local`): jobs need a dashboard. It is stopped in
teardown, always, by its own process group and only that (not `ray stop`, which would also end every
other Ray on the machine, the session's included).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.jobs.submit import connect, load_runtime_env, submit, wait_for_job
from tests.conftest import REPO
from tests.deploy.raynodes import free_ports

pytestmark = pytest.mark.timeout(600)

RUNTIME_ENV = REPO / "deploy" / "jobs" / "runtime_env.local.yaml"
VENV_BIN = Path(sys.executable).parent
SCANS = {"chest_med": "chest_crop_mediastinum.nii.gz", "abdomen_slab": "abdomen_slab_small.nii.gz"}
# 1.5 mm keeps the two jobs to seconds on two cores; the default 0.8 mm works the same way.
SETTINGS = ["--set", "ingest.spacing_mm=[1.5,1.5,1.5]"]
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
              "node-manager-port", "object-manager-port")


@dataclass
class Head:
    address: str  # the dashboard (Job Submission API)
    token: str
    env: dict[str, str]  # what a client shell needs: the venv on PATH and the token
    temp_dir: Path


def _stop(proc: subprocess.Popen, temp_dir: Path) -> None:
    """End the head we started: SIGTERM to `ray start --block` (it shuts its node down), then SIGKILL to
    whatever is left of its process group, then to any process still running from its temp dir."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(temp_dir) in args and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = Path(tempfile.mkdtemp(prefix="ctpd", dir="/tmp"))  # short: Ray's unix sockets live under it
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
           "--object-store-memory", str(400 * 2**20)]
    cmd += [a for flag, port in ports.items() for a in (f"--{flag}", str(port))]
    log = open(temp_dir / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connect(address, token)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start failed:\n{(temp_dir / 'ray-start.log').read_text()[-3000:]}")
                time.sleep(1)
        yield Head(address, token, env, temp_dir)
    finally:
        _stop(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_job_api_requires_the_token(ray_head):
    url = f"{ray_head.address}/api/jobs/"
    assert _status(url, None) == 401
    assert _status(url, "not-the-token") == 403
    assert _status(url, ray_head.token) == 200


def _require_commands(*names: str) -> None:
    from ctplatform.cli import COMMANDS

    missing = [n for n in names if n not in {c for c, _ in COMMANDS}]
    if missing:
        pytest.skip(f"ctplatform has no {missing} command yet")


@pytest.fixture(scope="module")
def cohort(ct_dir, tmp_path_factory):
    """A listing of two real scans (paths into the shared folder: nothing is copied) and a work folder."""
    root = tmp_path_factory.mktemp("jobs")
    listing = root / "listing.csv"
    listing.write_text("volume_id,path\n" + "".join(f"{v},{ct_dir / f}\n" for v, f in SCANS.items()))
    return listing, root / "work"


def _check_store(store_root: Path) -> None:
    from ctplatform.config import load_config
    from ctplatform.store import Store

    store = Store(str(store_root))
    manifest = store.read_table("manifest")
    assert manifest is not None, "no manifest.parquet"
    assert sorted(manifest["volume_id"]) == sorted(SCANS)
    assert (manifest["status"] == "ok").all(), manifest[["volume_id", "status", "error"]]
    cfg = load_config(None, ["ingest.spacing_mm=[1.5,1.5,1.5]"])
    geometry = cfg.model.geometry
    for vid in SCANS:
        assert store.has_volume(vid)
        assert store.has_organs(vid)
        for variant in cfg.partition.variants:
            assert store.has_grid(geometry.name, variant, vid), (variant, vid)
            grid = store.read_grid(geometry.name, variant, vid)
            assert grid.shape == (3, *geometry.grid) and grid.dtype == bool
    partition = store.read_table("partition")
    assert (partition.set_index("volume_id").loc[list(SCANS), "status"] == "ok").all()


def test_ingest_and_partition_jobs_on_a_ray_head(ray_head, cohort):
    _require_commands("ingest", "partition")
    listing, work = cohort
    store = work / "store"

    # ingest through the Job Submission API (deploy/jobs/submit.py)
    client = connect(ray_head.address, ray_head.token)
    runtime_env = load_runtime_env(RUNTIME_ENV)
    entry = f"ctplatform ingest --input {listing} --store {store} --workdir {work} " + " ".join(SETTINGS)
    job = submit(client, entry, runtime_env)
    status = wait_for_job(client, job, timeout_s=300, echo=False)
    assert status == "SUCCEEDED", client.get_job_logs(job)[-4000:]
    assert "ingest: 2 ingested" in client.get_job_logs(job)

    # partition through the CLI, as documented (run from the repository root)
    cli = subprocess.run(
        ["ray", "job", "submit", "--address", ray_head.address, "--runtime-env", str(RUNTIME_ENV.relative_to(REPO)),
         "--", "ctplatform", "partition", "--store", str(store), "--workdir", str(work), *SETTINGS],
        cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, (cli.stdout + cli.stderr)[-4000:]
    assert "partition: 2 ok" in cli.stdout
    _check_store(store)


def test_pipeline_entrypoint_resumes_finished_stages(ray_head, cohort):
    _require_commands("ingest", "partition")
    listing, work = cohort
    store = work / "store"
    if not (store / "manifest.parquet").exists():
        pytest.skip("needs the store of test_ingest_and_partition_jobs_on_a_ray_head")
    client = connect(ray_head.address, ray_head.token)
    entry = (f"python {REPO / 'deploy' / 'jobs' / 'pipeline.py'} --stages ingest,partition --input {listing} --store {store} "
             f"--workdir {work} " + " ".join(SETTINGS))
    job = submit(client, entry, load_runtime_env(RUNTIME_ENV))
    status = wait_for_job(client, job, timeout_s=300, echo=False)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "ingest: 0 ingested, 2 skipped" in logs  # the job resumed instead of redoing the scans
    assert "=== pipeline: partition ===" in logs and "pipeline summary:" in logs
    _check_store(store)


def test_a_failing_stage_fails_the_job(ray_head, tmp_path):
    _require_commands("ingest")
    client = connect(ray_head.address, ray_head.token)
    job = submit(client, f"ctplatform ingest --input {tmp_path / 'missing'} --store {tmp_path / 'store'}",
                 load_runtime_env(RUNTIME_ENV))
    assert wait_for_job(client, job, timeout_s=300, echo=False) == "FAILED"


def test_predict_job_on_a_ray_head(ray_head, cohort, tmp_path):
    """`ctplatform predict` under `ray job submit`: a model logged by run id, two real scans, maps out."""
    _require_commands("predict")
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from ctplatform.config import load_config
    from ctplatform.model.axialnet import AxialNet
    from ctplatform.model.packaged import log_axialnet_model
    from ctplatform.runtime import setup_mlflow

    listing, _ = cohort
    work = tmp_path / "work"
    cfg = load_config(None, [f"workdir={work}", "model.input_shape=[24,64,64]", "model.custom_conv_padding=1",
                             "ingest.spacing_mm=[4,4,4]"])
    setup_mlflow(cfg)
    torch.manual_seed(0)
    with mlflow.start_run() as run:
        pass
    log_axialnet_model(AxialNet(cfg.model.geometry).state_dict(), cfg, np.full(80, 0.5), ["fallback"] * 80,
                       run.info.run_id)
    out = tmp_path / "out"
    cli = subprocess.run(
        ["ray", "job", "submit", "--address", ray_head.address, "--runtime-env", str(RUNTIME_ENV.relative_to(REPO)),
         "--", "ctplatform", "predict", "--model", run.info.run_id, "--input", str(listing), "--out", str(out),
         "--workdir", str(work), "--set", "predict.min_maps=1", "--set", "predict.png=false"],
        cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, (cli.stdout + cli.stderr)[-4000:]
    assert "2 scan(s) predicted, 0 failed" in cli.stdout
    table = pd.read_parquet(out / "predictions.parquet")
    assert sorted(table["volume_id"]) == sorted(SCANS) and (table["status"] == "ok").all()
    for vid in SCANS:
        assert list((out / "scans" / vid / "maps").glob("*.nii.gz"))
