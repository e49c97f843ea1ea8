"""One-writer leases: a second holder fails clearly; dead or expired holders are taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from ctplatform.lease import Lease, LeaseHeldError, LeaseLostError
from tests.conftest import REPO

HOLD = """
import sys, time, fsspec
from ctplatform.lease import Lease
Lease(fsspec.filesystem("file"), sys.argv[1], "item", float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(path: str, seconds: float = 3600.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ}, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_fails_naming_the_holder(tmp_path) -> None:
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "leases" / "volumes" / "a.lease")
    proc = _holder(path)
    try:
        with pytest.raises(LeaseHeldError, match=r"volumes/a is being written by another job \(host .*, pid \d+, since"):
            Lease(fs, path, "volumes/a").acquire()
    finally:
        proc.kill()
        proc.wait()
    # its pid is dead now: the lease is taken over at once
    lease = Lease(fs, path, "volumes/a").acquire()
    lease.check()
    lease.release()
    assert not os.path.exists(path)


def test_expired_lease_is_taken_over_and_the_old_holder_cannot_publish(tmp_path) -> None:
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "x.lease")
    old = Lease(fs, path, "x", seconds=0.2).acquire()
    with pytest.raises(LeaseHeldError):
        Lease(fs, path, "x").acquire()
    time.sleep(0.3)
    new = Lease(fs, path, "x").acquire()
    with pytest.raises(LeaseLostError, match="taken over"):
        old.check()
    old.release()  # must not remove the new holder's lease
    new.check()
    new.release()


def test_only_one_of_many_racing_takers_wins(tmp_path) -> None:
    """Eight processes race for one stale lease: exactly one holds it."""
    path = str(tmp_path / "race.lease")
    dead = _holder(path)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    race = """
import sys, time, fsspec
from ctplatform.lease import Lease, LeaseHeldError
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    Lease(fsspec.filesystem("file"), sys.argv[1], "item").acquire()
    print("won", flush=True)
    time.sleep(3)
except LeaseHeldError:
    print("lost", flush=True)
"""
    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", race, path, str(start)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(8)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs).count("won") == 1, outs


def test_a_retry_of_the_same_ray_task_takes_over_its_dead_attempt(tmp_path, ray_local) -> None:
    """Attempt 1 holds the lease and dies while its holder still looks alive (its pid rewritten to a
    live one, as while a lost node's worker is still exiting); Ray's retry of the task takes over."""
    import json

    path, marker = str(tmp_path / "t.lease"), tmp_path / "attempt1"
    live_pid = os.getpid()

    @ray_local.remote(max_retries=1)
    def write() -> str:
        from ctplatform.lease import Lease as L

        lease = L(fsspec.filesystem("file"), path, "t").acquire()
        if not marker.exists():
            marker.write_text("")
            with open(path) as f:
                holder = json.load(f)
            holder.update(pid=live_pid, pid_start="")  # a live pid on this host: not stale by pid
            with open(path, "w") as f:
                json.dump(holder, f)
            os._exit(1)  # the worker dies holding the lease
        lease.check()
        lease.release()
        return "second attempt wrote"

    assert ray_local.get(write.remote(), timeout=120) == "second attempt wrote"
    assert marker.exists() and not os.path.exists(path)
    # another task (another task id) must still respect a live holder
    held = Lease(fsspec.filesystem("file"), path, "t").acquire()
    try:
        @ray_local.remote(max_retries=0)
        def other() -> str:
            from ctplatform.lease import Lease as L, LeaseHeldError as Held

            try:
                L(fsspec.filesystem("file"), path, "t").acquire()
                return "took it"
            except Held:
                return "held"

        assert ray_local.get(other.remote(), timeout=60) == "held"
    finally:
        held.release()


DEAD_NODE = """
import json, sys, time, fsspec, ray
from ray.cluster_utils import Cluster
from ctplatform.lease import Lease, LeaseHeldError

path = sys.argv[1]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
node2 = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
node2_id = node2.node_id

def lease_of(node_id):  # a holder on another host, far from expiry, on Ray node `node_id`
    holder = dict(token="t" + node_id[:6], host="another-host", pid=1, pid_start="", since=time.time(),
                  expires=time.time() + 3600, ray_node=node_id, ray_task="")
    with open(path, "w") as f:
        json.dump(holder, f)

lease_of(node2_id)
try:
    Lease(fsspec.filesystem("file"), path, "x").acquire()
    print("alive node: taken")
except LeaseHeldError:
    print("alive node: held")
cluster.remove_node(node2, allow_graceful=False)
deadline = time.time() + 60
while any(n["NodeID"] == node2_id and n["Alive"] for n in ray.nodes()) and time.time() < deadline:
    time.sleep(0.5)
lease = Lease(fsspec.filesystem("file"), path, "x").acquire()
print("dead node: taken")
lease.release()
lease_of("f" * 56)  # a node this cluster never had: not known dead
try:
    Lease(fsspec.filesystem("file"), path, "x").acquire()
    print("unknown node: taken")
except LeaseHeldError:
    print("unknown node: held")
ray.shutdown()
cluster.shutdown()
"""


def test_a_lease_held_on_a_dead_ray_node_is_taken_over_from_another_host(tmp_path) -> None:
    """A lost node's holder would otherwise block its items until expiry (an hour): once the cluster
    marks that node dead, any host takes the lease; a live or unknown node's holder is respected."""
    path = str(tmp_path / "n.lease")
    out = subprocess.run([sys.executable, "-c", DEAD_NODE, path], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in out.stdout.splitlines() if line.split(":")[0] in ("alive node", "dead node", "unknown node")]
    assert said == ["alive node: held", "dead node: taken", "unknown node: held"], out.stdout[-3000:]


def test_a_holder_that_exited_but_was_not_reaped_is_taken_over(tmp_path) -> None:
    """A zombie keeps its pid (kill(pid, 0) succeeds) until reaped; where PID 1 does not reap
    orphans (many containers), a dead Ray worker's pid stays a zombie: its lease is taken over."""
    path = str(tmp_path / "z.lease")
    proc = _holder(path)
    proc.stdout.close()
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # not waited for: it stays a zombie, our child
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        lease = Lease(fsspec.filesystem("file"), path, "z").acquire()
        lease.release()
    finally:
        proc.wait()
