"""One writer per item: a lease is a small JSON object created atomically beside the store.

A lease file names its holder (job token, host, pid, the pid's start time, and inside a Ray task its
Ray node and task ids) and when it expires. It is created only if absent, so of two writers exactly
one wins and the other fails with `LeaseHeldError` naming the holder. A lease whose holder is gone is
taken over:
- on the same host when its pid is dead (or now belongs to another process: the start time differs);
- by a retry of the same Ray task (Ray retries a task only once it holds the earlier attempt failed:
  its worker or node died), so a lost node's volumes are redone at once on another node;
- when the holder's Ray node is dead in this cluster (the GCS says so), from any host;
- anywhere once it has expired.
Holders check that they still hold it before they publish, so a holder taken over while it still ran
(a node partitioned from the cluster, not dead) publishes nothing.

What this assumes of the filesystem:
- local disk and NFS (v3 and later): `link(2)` of a fully written temporary file onto the lease path
  fails if the path exists, atomically across clients (the classic NFS-safe lock; O_EXCL alone was
  not atomic on NFSv2). The holder's content is therefore never seen half written.
- object storage (s3:// via fsspec): an exclusive create (`open(path, "xb")`), which s3fs maps to a
  conditional put (If-None-Match: *, honoured by S3 since 2024). A filesystem without conditional
  create cannot give one-writer semantics; leases there fail loudly instead of pretending.
- clocks agree across hosts to well under the lease duration (expiry is compared with local time).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

#: Default lease duration. A holder on another host that died is taken over only after this; on the
#: same host a dead pid is taken over at once (the common case: a killed Ray worker or driver).
LEASE_SECONDS = 3600.0


class LeaseHeldError(RuntimeError):
    """Another live job holds the lease of this item."""


class LeaseLostError(RuntimeError):
    """This job's lease was taken over (it expired) before the write could be published."""


def _stat_fields(pid: int) -> list[bytes]:
    """/proc/<pid>/stat from field 3 (state) on (Linux); [] where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may contain spaces but ends at the last ')'.
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(fields: list[bytes]) -> str:
    """The start time in clock ticks since boot (field 22) of `_stat_fields`' result, '' where unknown."""
    return fields[19].decode() if len(fields) > 19 else ""


def _pid_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    fields = _stat_fields(pid)
    if fields and fields[0] in (b"Z", b"X"):
        # Exited but not reaped: a zombie whose parent died with it (a Ray worker when its raylet is
        # killed) lingers wherever PID 1 does not reap orphans, as in many containers.
        return False
    return not start or not fields or _start_time(fields) == start


def _ray_ids() -> tuple[str, str]:
    """(Ray node id, Ray task id) of this process's current task; '' for each outside one.

    A task id stays the same across Ray's retries of that task (attempts are numbered apart).
    """
    ray = sys.modules.get("ray")  # only a process that runs Ray can be inside a Ray task
    if ray is None or not ray.is_initialized():
        return "", ""
    ctx = ray.get_runtime_context()
    in_worker = getattr(ctx.worker, "mode", None) == 1  # WORKER_MODE; a driver has no task (and Ray warns)
    return ctx.get_node_id() or "", (ctx.get_task_id() or "") if in_worker else ""


def _ray_node_dead(node_id: str) -> bool:
    """True only when this process's Ray cluster lists `node_id` as dead (unknown nodes are not)."""
    ray = sys.modules.get("ray")
    if not node_id or ray is None or not ray.is_initialized():
        return False
    try:
        nodes = ray.nodes()
    except Exception:  # noqa: BLE001 - GCS unreachable: fall back to pid and expiry
        return False
    return any(n.get("NodeID") == node_id and not n.get("Alive", True) for n in nodes)


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    pid_start: str
    since: float
    expires: float
    ray_node: str = ""  # leases written before these fields parse with ''
    ray_task: str = ""

    @classmethod
    def me(cls, seconds: float) -> "Holder":
        now = time.time()
        pid = os.getpid()
        node, task = _ray_ids()
        start = _start_time(_stat_fields(pid))
        return cls(uuid.uuid4().hex, socket.gethostname(), pid, start, now, now + seconds, node, task)

    def stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now > self.expires:
            return True
        if self.host == socket.gethostname() and not _pid_alive(self.pid, self.pid_start):
            return True
        if self.ray_task and self.ray_task == _ray_ids()[1]:
            return True  # an earlier attempt of this very task, which Ray has given up on
        return _ray_node_dead(self.ray_node)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since}"


def _parse(raw: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(raw))
    except (ValueError, TypeError):
        return None


class Lease:
    """The lease of one item at `path` on filesystem `fs` (see module docstring)."""

    def __init__(self, fs: Any, path: str, what: str, seconds: float = LEASE_SECONDS) -> None:
        self.fs, self.path, self.what, self.seconds = fs, path, what, seconds
        self.holder: Holder | None = None
        self.local = isinstance(fs, LocalFileSystem)

    # ---------------------------------------------------------------- primitives
    def _create(self, holder: Holder) -> bool:
        """Create the lease file with `holder` if absent; False when it exists."""
        body = json.dumps(holder.__dict__).encode()
        parent = self.path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            tmp = f"{self.path}.{holder.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(body)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError) as e:
            raise RuntimeError(
                f"{self.fs.protocol} has no exclusive create; one-writer leases need it (see ctplatform.lease)"
            ) from e

    def current(self) -> Holder | None:
        """The holder on disk (None: no lease, or one being created right now)."""
        try:
            with self.fs.open(self.path, "rb") as f:
                return _parse(f.read())
        except FileNotFoundError:
            return None

    def _remove_stale(self, stale: Holder) -> None:
        """Remove the lease only if it is still `stale` (not one a faster taker created meanwhile)."""
        if self.local:
            tomb = f"{self.path}.{uuid.uuid4().hex}.stale"
            try:
                os.rename(self.path, tomb)
            except FileNotFoundError:
                return
            with open(tomb, "rb") as f:
                moved = _parse(f.read())
            if moved is not None and moved.token != stale.token:
                try:  # we moved a fresh lease aside: put it back
                    os.link(tomb, self.path)
                except FileExistsError:
                    pass
            os.unlink(tomb)
        else:
            again = self.current()
            if again is not None and again.token == stale.token:
                self.fs.rm(self.path)

    # ---------------------------------------------------------------- API
    def acquire(self, wait: float = 0.0) -> "Lease":
        """Take the lease or raise LeaseHeldError; `wait` seconds of retrying for short-held leases."""
        deadline = time.monotonic() + wait
        while True:
            me = Holder.me(self.seconds)
            if self._create(me):
                self.holder = me
                return self
            held = self.current()
            if held is not None and held.stale():
                self._remove_stale(held)
                continue
            if time.monotonic() >= deadline:
                if held is None:  # being created or removed this instant
                    held = self.current()
                who = held.describe() if held else "a writer that is starting"
                raise LeaseHeldError(f"{self.what} is being written by another job ({who})")
            time.sleep(0.05)

    def check(self) -> None:
        """Raise LeaseLostError unless this job still holds the lease (called before publishing)."""
        held = self.current()
        if self.holder is None or held is None or held.token != self.holder.token:
            raise LeaseLostError(f"{self.what}: this job's lease expired and was taken over; nothing was published")

    def release(self) -> None:
        if self.holder is None:
            return
        held = self.current()
        if held is not None and held.token == self.holder.token:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass
        self.holder = None

    def __enter__(self) -> "Lease":
        return self if self.holder else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
