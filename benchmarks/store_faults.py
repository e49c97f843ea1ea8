"""Store integrity under faults (issue 15): concurrent writers, kill -9 of the drivers, killed workers.

With one local Ray (2 CPUs) that every `ctplatform` command below joins (RAY_ADDRESS), on small real
scans (the POPI thorax at ~4 mm, varied per id):
  1. two `ctplatform ingest` runs at once on one store: same ids from different sources, overlapping
     ids, the same listing twice. Counted: collisions (rows refused because the other run held the
     volume), corrupt items (deep verification: checksum re-read), manifest rows that disagree with
     their arrays (source sha256 or shape), refusals that do not name the holder;
  2. `ctplatform ingest` killed with SIGKILL (its whole process group) at --instants random instants,
     resuming each time, then run to the end; 3. the same for `ctplatform partition`. Counted: items
     finished before a kill that were lost (not finished after it, or without a table row after the
     next run), corrupt items, finished items redone (their metadata rewritten by a later run);
  4. Ray worker processes running ingest and partition tasks killed mid-task: items that completed
     on retry vs items that did not.

    python benchmarks/store_faults.py [--instants 10] [--scans 24] [--seed 15] [--workdir DIR]

Prints the figures and writes benchmarks/results/store_faults.json (and .md) with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from machine_info import machine  # noqa: E402

from ctplatform.store import Store  # noqa: E402

CT = Path(os.environ.get("CTPLATFORM_SHARED", REPO.parent / "shared")) / "data" / "ct" / "popi_thorax_256.nii.gz"
INGEST_SET = ["--set", "ingest.spacing_mm=[4,4,4]", "--set", "ingest.max_tasks_in_flight=2"]
PARTITION_SET = ["--set", "model.input_shape=[96,256,256]", "--set", "model.custom_conv_padding=1",
                 "--set", "partition.max_concurrent_tasks=2"]


def make_scans(folder: Path, n: int, tag: str) -> list[Path]:
    """n distinct small real scans (the POPI thorax at ~4 mm, rolled and offset per index)."""
    img = nib.load(CT)
    data = np.asanyarray(img.dataobj)[::2, ::2, ::2].astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        shift = (i * 3 + (17 if tag == "B" else 0)) % data.shape[2]
        vol = np.roll(data, shift, axis=2)
        p = folder / f"{tag}{i}.nii.gz"
        nib.save(nib.Nifti1Image(vol, affine), p)
        out.append(p)
    return out


def listing(path: Path, ids: list[str], scans: list[Path]) -> Path:
    pd.DataFrame({"volume_id": ids, "path": [str(s) for s in scans]}).to_csv(path, index=False)
    return path


def cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctplatform.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def check_ingest_store(store: Store) -> tuple[int, int]:
    """(corrupt items, manifest rows that disagree with their arrays)."""
    corrupt = sum(store.verify(store.volume_path(v), deep=True) is not None for v in store.volume_ids())
    table = store.read_table("manifest")
    disagree = 0
    if table is not None:
        for row in table[table["status"] == "ok"].itertuples():
            try:
                arr = store.volume(row.volume_id)
            except KeyError:
                disagree += 1
                continue
            if arr.attrs.get("source_sha256") != row.sha256 or list(arr.shape) != [int(n) for n in row.shape]:
                disagree += 1
    return corrupt, disagree


def concurrency(work: Path, scans_a: list[Path], scans_b: list[Path], env: dict[str, str]) -> dict:
    n = len(scans_a) // 2
    cases = {
        "same ids, different sources": ([f"v{i}" for i in range(n)], scans_a[:n], [f"v{i}" for i in range(n)], scans_b[:n]),
        "overlapping ids": ([f"v{i}" for i in range(n)], scans_a[:n],
                            [f"v{i}" for i in range(n // 2, n + n // 2)], scans_b[:n]),
        "same listing twice": ([f"v{i}" for i in range(n)], scans_a[:n], [f"v{i}" for i in range(n)], scans_a[:n]),
    }
    out = {}
    for name, (ids1, src1, ids2, src2) in cases.items():
        root = work / f"concurrent-{len(out)}"
        l1 = listing(work / f"c{len(out)}a.csv", ids1, src1)
        l2 = listing(work / f"c{len(out)}b.csv", ids2, src2)
        procs = [cli(["ingest", "--input", str(lst), "--store", str(root), *INGEST_SET], env) for lst in (l1, l2)]
        texts = [p.communicate(timeout=1800)[0] for p in procs]
        refused = sum(t.count("is being written by another job") for t in texts)
        store = Store(str(root))
        corrupt, disagree = check_ingest_store(store)
        out[name] = {"ids": len(set(ids1) | set(ids2)), "finished": len(store.volume_ids()),
                     "refused_naming_holder": refused,
                     "corrupt": corrupt, "manifest_rows_disagreeing": disagree,
                     "exit_codes": [p.returncode for p in procs]}
        print(f"  {name}: {out[name]}", flush=True)
    return out


def stamps(root: Path, groups: list[str], ids: list[str]) -> dict[str, int]:
    """zarr.json mtime (ns) of each published item: a redone item gets a new one."""
    out = {}
    for g in groups:
        for vid in ids:
            p = root / "data.zarr" / g / vid / "zarr.json"
            if p.exists():
                out[f"{g}/{vid}"] = p.stat().st_mtime_ns
    return out


def kill_series(kind: str, root: Path, args: list[str], env: dict[str, str], instants: int, rng: random.Random,
                finished_items, table: str, refill, progress) -> dict:
    """Kill the driver at `instants` random instants, resume, then finish; count lost/corrupt/redone."""
    seen: dict[str, int] = {}  # item -> stamp when first seen finished
    lost = corrupt = 0
    completed_before_kill = 0
    delays = []
    for k in range(instants):
        if progress() >= refill.total - 2:
            refill(rng, seen)  # keep work to do: forget some finished items (not counted as redone)
        # A random instant of the run's working life: after a random number of items finished
        # (0 .. half of what is left), plus a random fraction of a typical item's time.
        base = progress()
        wait_for = base + rng.randint(0, max(0, (refill.total - base) // 2))
        proc = cli(args, env)
        start = time.monotonic()
        while proc.poll() is None and progress() < wait_for and time.monotonic() - start < 600:
            time.sleep(0.3)
        time.sleep(rng.uniform(0.0, 3.0))
        delay = time.monotonic() - start
        delays.append(round(delay, 1))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            completed_before_kill += 1
        proc.communicate()
        time.sleep(1.0)
        now = finished_items()
        lost += sum(1 for item in seen if item not in now)
        corrupt += now.get("__corrupt__", 0)
        for item, stamp in now.items():
            if item == "__corrupt__":
                continue
            if item in seen and seen[item] != stamp:
                pass  # counted below as redone
            seen.setdefault(item, stamp)
        print(f"  {kind} kill {k + 1}/{instants} after {delay:.1f} s: {len(now) - 1} finished", flush=True)
    final = cli([a for a in args], env)
    text = final.communicate(timeout=3600)[0]
    now = finished_items()
    lost += sum(1 for item in seen if item not in now)
    redone = sum(1 for item, stamp in seen.items() if item in now and now[item] != stamp)
    corrupt += now.get("__corrupt__", 0)
    rows = Store(str(root)).read_table(table)
    without_row = sum(1 for item in now if item != "__corrupt__" and item.split("/")[-1] not in set(rows["volume_id"]))
    return {"instants": instants, "delays_s": delays, "runs_that_finished_before_the_kill": completed_before_kill,
            "items_finished_before_some_kill": len(seen), "lost": lost, "corrupt": corrupt, "redone": redone,
            "finished_without_table_row": without_row, "final_exit": final.returncode,
            "final_finished": len(now) - 1, "final_tail": text.strip().splitlines()[-3:]}


class Refill:
    """Forget finished items by deleting them, so a later instant still has work (not counted as redone)."""

    def __init__(self, root: Path, groups: list[str], ids: list[str]) -> None:
        self.root, self.groups, self.ids, self.total = root, groups, ids, len(ids)

    def __call__(self, rng: random.Random, seen: dict[str, int]) -> None:
        for vid in rng.sample(self.ids, max(3, len(self.ids) // 3)):
            for g in self.groups:
                shutil.rmtree(self.root / "data.zarr" / g / vid, ignore_errors=True)
                seen.pop(f"{g}/{vid}", None)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def running_task_workers(title: str) -> list[int]:
    """Our Ray cluster's worker processes whose title shows a running map task."""
    out = []
    for p in descendants(os.getpid()):
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and title in cmd:
            out.append(p)
    return out


def worker_kills(args: list[str], env: dict[str, str], kills: int, title: str, ok_items) -> dict:
    proc = cli(args, env)
    killed, deadline = 0, time.monotonic() + 1200
    while killed < kills and proc.poll() is None and time.monotonic() < deadline:
        pids = running_task_workers(title)
        if pids:
            time.sleep(random.uniform(0.2, 1.5))  # somewhere inside the task
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
            # The next kill only after the job made progress: each kill should hit another item
            # (ingest retries a task twice; a third death fails that scan by design).
            done = ok_items()[0]
            while proc.poll() is None and ok_items()[0] <= done and time.monotonic() < deadline:
                time.sleep(0.3)
        else:
            time.sleep(0.2)
    text = proc.communicate(timeout=3600)[0]
    ok, total = ok_items()
    return {"workers_killed": killed, "items": total, "completed": ok, "not_completed": total - ok,
            "exit": proc.returncode, "tail": text.strip().splitlines()[-2:]}


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instants", type=int, default=10)
    ap.add_argument("--scans", type=int, default=24)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    random.seed(a.seed)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="store_faults-"))
    work.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)
    for attempt in range(4):  # on a loaded machine the raylet may miss Ray's fixed 30 s start window
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     object_store_memory=500_000_000)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for it
            ray.shutdown()
            if attempt == 3:
                raise
            time.sleep(10)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    res: dict = {"machine": machine(), "scans": a.scans}
    try:
        scans_a = make_scans(work / "scans", a.scans, "A")
        scans_b = make_scans(work / "scans", a.scans, "B")
        print("1. concurrent ingest runs", flush=True)
        res["concurrent"] = concurrency(work, scans_a, scans_b, env)

        ids = [f"k{i}" for i in range(a.scans)]
        root = work / "killed"
        lst = listing(work / "killed.csv", ids, scans_a)
        ingest_args = ["ingest", "--input", str(lst), "--store", str(root), *INGEST_SET]

        def finished_volumes() -> dict:
            s = Store(str(root))
            if not s.exists():
                return {"__corrupt__": 0}
            done = s.volume_ids()
            out = stamps(root, ["volumes"], done)
            out["__corrupt__"] = check_ingest_store(s)[0]
            return out

        print(f"2. kill -9 of the ingest driver at {a.instants} instants", flush=True)
        res["ingest_kill9"] = kill_series("ingest", root, ingest_args, env, a.instants, rng, finished_volumes,
                                          "manifest", Refill(root, ["volumes"], ids),
                                          lambda: len(Store(str(root)).volume_ids()) if Store(str(root)).exists() else 0)
        print(f"  {res['ingest_kill9']}", flush=True)

        part_args = ["partition", "--store", str(root), *PARTITION_SET]
        geometry_dir = None

        def finished_partition() -> dict:
            nonlocal geometry_dir
            s = Store(str(root))
            grids = root / "data.zarr" / "grids"
            if geometry_dir is None and grids.exists():
                dirs = [d.name for d in grids.iterdir() if d.is_dir()]
                geometry_dir = dirs[0] if dirs else None
            organs = set(s.organ_ids())
            out = stamps(root, ["organs"], sorted(organs))
            corrupt = sum(s.verify(s.organs_path(v), deep=True) is not None for v in organs)
            if geometry_dir:
                gids = s.finished_grid_ids(geometry_dir, [])
                out.update(stamps(root, [f"grids/{geometry_dir}"], gids))
                corrupt += sum(s.verify(s.grid_path(geometry_dir, "", v), deep=True) is not None for v in gids)
            out["__corrupt__"] = corrupt
            return out

        class PartitionRefill(Refill):
            def __call__(self, rng: random.Random, seen: dict[str, int]) -> None:
                self.groups = ["organs"] + ([f"grids/{geometry_dir}"] if geometry_dir else [])
                super().__call__(rng, seen)

        print(f"3. kill -9 of the partition driver at {a.instants} instants", flush=True)
        res["partition_kill9"] = kill_series("partition", root, part_args, env, a.instants, rng, finished_partition,
                                             "partition", PartitionRefill(root, ["organs"], ids),
                                             lambda: len(Store(str(root)).organ_ids()))
        print(f"  {res['partition_kill9']}", flush=True)

        print("4. Ray workers killed mid-task", flush=True)
        wroot = work / "workers"
        wlst = listing(work / "workers.csv", ids, scans_b)

        def ingest_ok() -> tuple[int, int]:
            t = Store(str(wroot)).read_table("manifest") if Store(str(wroot)).exists() else None
            return (0 if t is None else int((t["status"] == "ok").sum())), len(ids)

        res["ingest_worker_kills"] = worker_kills(["ingest", "--input", str(wlst), "--store", str(wroot), *INGEST_SET],
                                                  env, 3, "ingest_one", ingest_ok)
        print(f"  ingest: {res['ingest_worker_kills']}", flush=True)

        def partition_ok() -> tuple[int, int]:
            s = Store(str(wroot))
            t = s.read_table("partition")
            return (0 if t is None else int((t["status"] == "ok").sum())), len(s.volume_ids())

        res["partition_worker_kills"] = worker_kills(["partition", "--store", str(wroot), *PARTITION_SET],
                                                     env, 3, "_task", partition_ok)
        print(f"  partition: {res['partition_worker_kills']}", flush=True)
    finally:
        ray.shutdown()
    lines = ["| figure | measured | target |", "|---|---|---|"]
    for name, c in res["concurrent"].items():
        lines.append(f"| concurrent ingest, {name} ({c['ids']} ids) | {c['corrupt']} corrupt, "
                     f"{c['manifest_rows_disagreeing']} rows disagreeing, {c['refused_naming_holder']} refusals naming "
                     f"the holder | 0, 0, loser fails clearly |")
    for kind in ("ingest", "partition"):
        r = res[f"{kind}_kill9"]
        lines.append(f"| kill -9 of the {kind} driver at {r['instants']} instants ({r['items_finished_before_some_kill']} "
                     f"items finished before a kill) | {r['lost']} lost, {r['corrupt']} corrupt, {r['redone']} redone, "
                     f"{r['finished_without_table_row']} without a table row | 0, 0, 0 |")
        w = res[f"{kind}_worker_kills"]
        lines.append(f"| {kind} workers killed mid-task ({w['workers_killed']}) | {w['completed']}/{w['items']} items "
                     f"completed | every item |")
    table = "\n".join(lines)
    print(table)
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "store_faults.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "store_faults.md").write_text(f"{res['machine']}\n\n{table}\n")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
