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
