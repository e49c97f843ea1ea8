"""A stage's own local Ray (runtime.init_ray) is its own, quietly, on loopback, even with another
Ray running on the machine: Ray's state API called without an address from inside the cluster (as
Ray Train's PlacementGroupCleaner does) finds this Ray, not "multiple active Ray instances"; the
metrics endpoint listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)

OTHER_RAY = textwrap.dedent("""
    import sys, ray
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    print("up", flush=True)
    sys.stdin.read()  # until the test closes stdin
    ray.shutdown()
""")

STAGE = textwrap.dedent("""
    import json, os, ray
    from ctplatform.config import load_config
    from ctplatform.runtime import init_ray

    init_ray(load_config(None, ["ray.num_cpus=1"]))

    @ray.remote(num_cpus=0)
    def state_api_from_a_worker():
        from ray.util.state import list_nodes
        return [n.node_id for n in list_nodes()], os.environ.get("RAY_ADDRESS")

    def listening(port):
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.append(local.rsplit(":", 1)[0])
        return found

    node = ray._private.worker._global_node
    nodes, worker_address = ray.get(state_api_from_a_worker.remote())
    print(json.dumps({"nodes": nodes, "own_node": ray.get_runtime_context().get_node_id(),
                      "gcs": node.gcs_address, "worker_address": worker_address,
                      "driver_address": os.environ.get("RAY_ADDRESS"), "node_ip": node.node_ip_address,
                      "metrics_hosts": listening(node.metrics_export_port)}))
    ray.shutdown()
""")


def test_local_ray_is_its_own_beside_another_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / ".pkgroot") if (REPO / ".pkgroot").is_dir() else None,
                                                      env.get("PYTHONPATH")]))
    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True, cwd=tmp_path)
    try:
        assert other.stdout.readline().strip() == "up", "the other Ray did not start"
        stage = subprocess.run([sys.executable, "-c", STAGE], capture_output=True, text=True, env=env,
                               timeout=420, cwd=tmp_path)
        assert stage.returncode == 0, stage.stderr[-4000:]
        assert "multiple active Ray instances" not in stage.stderr
        out = json.loads(stage.stdout.strip().splitlines()[-1])
        assert out["nodes"] == [out["own_node"]]  # the state API saw this Ray, and only it
        assert out["worker_address"] == out["driver_address"] == out["gcs"]
        assert out["gcs"].startswith("127.0.0.1:") and out["node_ip"] == "127.0.0.1"
        # 0100007F is 127.0.0.1 in /proc/net/tcp; 00000000 would be every interface
        assert out["metrics_hosts"] and set(out["metrics_hosts"]) == {"0100007F"}, out["metrics_hosts"]
    finally:
        other.stdin.close()
        try:
            other.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, signal.SIGKILL)
            other.wait(10)
