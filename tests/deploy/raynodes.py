"""A Ray cluster of several nodes on this machine, for tests: a head and extra nodes, each its own
`ray start --block` process with its own temp dir, ports and resources, joined by the head's
address, with token authentication as on KubeRay. Nodes can be killed the way a lost machine dies
(SIGKILL of its raylet) and new ones added.

Everything started here is stopped here, by its own process group and temp dir: never `ray stop`,
which would end every other Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
              "node-manager-port", "object-manager-port")
NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port", "node-manager-port", "object-manager-port")


#: `ray start`, patient: it gives a new node 30 s (fixed) to appear in the GCS; on a loaded CI
#: machine the GCS answers later than that. The same CLI, waiting up to 5 minutes instead.
PATIENT_RAY_START = """
import sys, time
import ray._private.services as services
from ray.scripts.scripts import main

asked = services.get_node

def get_node(*args, **kwargs):
    deadline = time.monotonic() + 300
    while True:
        try:
            return asked(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)

services.get_node = get_node
sys.argv[0] = "ray"
sys.exit(main())
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes_under(temp_dir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line names this temp dir."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in args:
            found.append((int(cmdline.parent.name), args))
    return found


@dataclass
class Node:
    name: str
    temp_dir: Path
    proc: subprocess.Popen
    log_path: Path
    node_id: str | None = None

    def raylet_pid(self) -> int:
        pids = [pid for pid, args in _processes_under(self.temp_dir) if args.split(" ", 1)[0].endswith("/raylet")]
        if not pids:
            raise RuntimeError(f"no raylet found for node {self.name}")
        return pids[0]

    def kill_raylet(self) -> int:
        """SIGKILL this node's raylet, as when its machine is lost; returns the pid killed."""
        pid = self.raylet_pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pid, _ in _processes_under(self.temp_dir):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@dataclass
class LocalCluster:
    """A head plus worker nodes; `env` is what a client shell needs (venv on PATH, the token)."""

    root: Path
    env: dict[str, str]
    token: str
    gcs_address: str = ""
    dashboard: str = ""
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, extra_env: dict[str, str] | None = None) -> "LocalCluster":
        token = secrets.token_hex(32)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
                   PYTHONUNBUFFERED="1",
                   # a raylet waits this long for its dashboard agent (default 30 s: too short on a
                   # loaded CI machine, where the raylet then aborts)
                   RAY_agent_register_timeout_ms="180000",
                   **(extra_env or {}))
        return cls(root=root, env=env, token=token)

    def _start(self, name: str, args: list[str], ports: tuple[str, ...], attempts: int = 5) -> Node:
        """Start a node; on a loaded machine `ray start` gives up after its fixed 30 s wait for the
        raylet to register, so a failed start is cleaned up and tried again."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(name if attempt == 1 else f"{name}-{attempt}", args, ports)
            except RuntimeError:
                self.nodes.pop().stop()
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, name: str, args: list[str], ports: tuple[str, ...], wait_s: float = 180) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True)
        chosen = dict(zip(ports, free_ports(len(ports))))
        # Ray resolves a loopback node IP to the machine's address: the nodes share that one IP and
        # differ by their ports.
        cmd = [sys.executable, "-c", PATIENT_RAY_START, "start", "--block", "--temp-dir", str(temp_dir),
               "--disable-usage-stats", *args]
        cmd += [a for flag, port in chosen.items() for a in (f"--{flag}", str(port))]
        log_path = temp_dir / "ray-start.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, temp_dir, proc, log_path)
        self.nodes.append(node)
        if name.startswith("head"):
            self.gcs_address = f"127.0.0.1:{chosen['port']}"
            self.dashboard = f"http://127.0.0.1:{chosen['dashboard-port']}"
        before = {n["node_id"] for n in self.alive_nodes()} if not name.startswith("head") else set()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start ({name}) ended:\n{log_path.read_text()[-3000:]}")
            try:
                new = [n for n in self.alive_nodes() if n["node_id"] not in before]
            except (OSError, ValueError, KeyError):
                new = []
            if new:  # only this harness adds nodes to its cluster
                node.node_id = new[0]["node_id"]
                return node
            time.sleep(1)
        raise RuntimeError(f"node {name} did not join within {wait_s:.0f} s:\n{log_path.read_text()[-3000:]}")

    def start_head(self, num_cpus: int, object_store_mb: int = 300) -> Node:
        return self._start("head", ["--head", "--num-cpus", str(num_cpus), "--include-dashboard", "true",
                                    "--dashboard-host", "127.0.0.1", "--object-store-memory",
                                    str(object_store_mb * 2**20)], HEAD_PORTS)

    def add_node(self, name: str, num_cpus: int, object_store_mb: int = 300) -> Node:
        return self._start(name, ["--address", self.gcs_address, "--num-cpus", str(num_cpus),
                                  "--object-store-memory", str(object_store_mb * 2**20)], NODE_PORTS)

    # ------------------------------------------------------------------ the state API, over HTTP
    def state(self, resource: str, filters: dict[str, str] | None = None, detail: bool = True) -> list[dict[str, Any]]:
        """Ray's state API (`ray list <resource>`): tasks, actors, nodes, jobs..."""
        params: list[tuple[str, str]] = [("limit", "10000"), ("detail", "true" if detail else "false"), ("timeout", "30")]
        for k, v in (filters or {}).items():
            params += [("filter_keys", k), ("filter_predicates", "="), ("filter_values", v)]
        url = f"{self.dashboard}/api/v0/{resource}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"state API {resource} {filters}: {e.code} {e.read()[:2000]!r}") from e
        return body["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict[str, Any]]:
        if not self.dashboard:
            return []
        return [n for n in self.state("nodes") if n.get("state") == "ALIVE"]

    def job_id(self, submission_id: str) -> str:
        req = urllib.request.Request(f"{self.dashboard}/api/jobs/{submission_id}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["job_id"]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
