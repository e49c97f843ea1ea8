"""The MLflow server of deploy/kuberay/mlflow.yaml, run for real with the manifest's arguments (host,
port, database and artifact folder swapped for local ones): the Service's host names are accepted,
any other Host header is refused, and /health answers for the kubelet's probes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy.kuberay.validate import load_documents
from tests.conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _manifest_args() -> list[str]:
    docs = load_documents(REPO / "deploy" / "kuberay" / "mlflow.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    return list(container["args"])


def _local_args(args: list[str], port: int, db: Path, artifacts: Path) -> list[str]:
    """The manifest's arguments with the pod-only values replaced; everything else kept as is."""
    replace = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
        "--backend-store-uri": f"sqlite:///{db}",
        "--artifacts-destination": str(artifacts),
    }
    # basic-auth needs the mlflow[auth] extra of the server's image, not in this environment; the
    # Host checks below come from the server itself and hold with or without it.
    dropped = {"--app-name"}
    out = []
    for a in args:
        key = a.split("=", 1)[0]
        if key not in dropped:
            out.append(f"{key}={replace[key]}" if key in replace else a)
    return out


def _get(port: int, path: str, host: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    args = _local_args(_manifest_args(), port, tmp / "mlflow.db", tmp / "artifacts")
    mlflow_exe = str(Path(sys.executable).with_name("mlflow"))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([mlflow_exe, "server", *args], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=tmp)
    try:
        deadline = time.monotonic() + 300  # a loaded CI machine starts it slowly
        while True:
            try:
                if _get(port, "/health", "127.0.0.1") == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up (exit code {proc.poll()}):\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        # Only the server this fixture started (its own process group: gunicorn/uvicorn workers).
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@pytest.mark.parametrize("host", ["mlflow.ctplatform.svc.cluster.local:5000", "mlflow:5000", "localhost:5000"])
def test_service_names_are_allowed(mlflow_server, host):
    assert _get(mlflow_server, "/api/2.0/mlflow/experiments/search?max_results=1", host) == 200


@pytest.mark.parametrize("host", ["attacker.example:5000", "mlflow.ctplatform.svc.cluster.local.attacker.example"])
def test_other_hosts_are_refused(mlflow_server, host):
    assert _get(mlflow_server, "/api/2.0/mlflow/experiments/search?max_results=1", host) == 403


def test_health_answers_the_probes_whatever_the_host(mlflow_server):
    # The kubelet probes the pod IP, which is not among the allowed hosts.
    assert _get(mlflow_server, "/health", "10.1.2.3:5000") == 200
