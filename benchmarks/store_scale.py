"""The store at archive scale (issue 18): layout 1 (one array per grid variant) vs layout 2, same run.

A synthetic store of N entries (default 36,316, RAD-ChestCT's size) with tiny volumes and organ maps
and grid masks at the paper's feature grid (3 x 135 x 6 x 6, six variants) is built for each layout:
one volume is written by that layout's own Store code, and its files (byte for byte what Zarr wrote)
are replicated under every id, so both stores hold what the code would have written. Then:
  1. objects per volume: Zarr arrays and files;
  2. resume planning: what `ctplatform partition` does before its first task (finished volumes,
     organ maps and every grid variant; layout 2 also verifies each array's chunk objects), with the
     page cache dropped first (cold, when run as root) and again right after (warm); layout 2 is
     measured with chunk keys as written before (c/0/0/0: one folder per axis) and now (c.0.0.0);
  3. a full manifest scan: read_table("manifest"), also with every row still a pending record
     (a driver killed before its first fold);
  4. one epoch's grid-mask reads in batches (shuffled): layout 1 one read per volume; layout 2
     `read_grids` per batch from the pack (its build time reported too). Store requests are counted
     by wrapping zarr's LocalStore.get.

    python benchmarks/store_scale.py [--volumes 36316] [--batch 8] [--workdir DIR] [--keep]

Prints the table and writes benchmarks/results/store_scale.json (and .md) with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import zarr.storage  # noqa: E402
from machine_info import machine  # noqa: E402

from ctplatform import store as store_module  # noqa: E402
from ctplatform.store import Store  # noqa: E402
from ctplatform.store_pack import pack_grids  # noqa: E402
from tests import store_layout1  # noqa: E402

GEOMETRY, GRID = "135x6x6", (3, 135, 6, 6)
VARIANTS = ["nearest", "trilinear", "area", "nearest-dilated", "trilinear-dilated", "area-dilated"]
TEMPLATE_ID = "tmpl0"

FLAT_KEYS = store_module.CHUNK_KEYS
_requests = {"n": 0}
_get = zarr.storage.LocalStore.get


async def _counting_get(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _requests["n"] += 1
    return await _get(self, *args, **kwargs)


zarr.storage.LocalStore.get = _counting_get  # count every object read, metadata and chunks alike
_cat, _sizes = Store._cat, Store._sizes


def _counting_cat(self, paths):  # type: ignore[no-untyped-def]
    _requests["n"] += len(paths)  # layout 2 reads metadata objects itself when planning
    return _cat(self, paths)


def _counting_sizes(self, base):  # type: ignore[no-untyped-def]
    _requests["n"] += 1  # one recursive listing (paginated on object stores)
    return _sizes(self, base)


Store._cat, Store._sizes = _counting_cat, _counting_sizes


def _template(store_cls: type, root: Path, new_layout: bool, nested_keys: bool = False) -> None:
    rng = np.random.default_rng(0)
    s = store_cls(str(root))
    if nested_keys:  # layout 2 as written before flat chunk keys: c/0/0/0 (one folder per axis)
        store_module.CHUNK_KEYS = {"name": "default", "separator": "/"}
    s.write_volume(TEMPLATE_ID, rng.integers(-1000, 1000, (6, 4, 4), dtype=np.int16), {"spacing_mm": [1, 1, 1]})
    s.write_organs(TEMPLATE_ID, np.ones((6, 4, 4), np.uint8), {"method": "improved"})
    masks = {v: rng.random(GRID) > 0.5 for v in VARIANTS}
    if new_layout:
        s.write_grids(GEOMETRY, TEMPLATE_ID, masks, {"fallback": False})
    else:
        for v, m in masks.items():
            s.write_grid(GEOMETRY, v, TEMPLATE_ID, m, {"variant": v, "fallback": False})
    store_module.CHUNK_KEYS = FLAT_KEYS


def build(store_cls: type, root: Path, ids: list[str], new_layout: bool, nested_keys: bool = False) -> float:
    """The template volume's files replicated under every id; returns seconds."""
    t0 = time.perf_counter()
    _template(store_cls, root, new_layout, nested_keys)
    per_item = [p for p in root.rglob("*") if p.is_file() and TEMPLATE_ID in p.parts]
    blobs = [(p.relative_to(root).parts, p.read_bytes()) for p in per_item]
    for vid in ids:
        for parts, blob in blobs:
            target = root.joinpath(*[vid if x == TEMPLATE_ID else x for x in parts])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
    shutil.rmtree(root / "data.zarr" / "volumes" / TEMPLATE_ID)
    shutil.rmtree(root / "data.zarr" / "organs" / TEMPLATE_ID)
    for p in list((root / "data.zarr").rglob(TEMPLATE_ID)):
        shutil.rmtree(p)
    manifest = pd.DataFrame({"volume_id": ids, "status": "ok", "split": "train", "sha256": "0" * 64,
                             "shape": [[6, 4, 4]] * len(ids), "source": "synthetic"})
    partition = pd.DataFrame({"volume_id": ids, "status": "ok", "method": "improved", "geometry": GEOMETRY})
    store_cls(str(root)).write_table("manifest", manifest)
    store_cls(str(root)).write_table("partition", partition)
    return time.perf_counter() - t0


def objects_per_volume(root: Path, n: int) -> dict[str, float]:
    arrays = files = folders = 0
    for p in (root / "data.zarr").rglob("*"):
        if any(x.startswith("pack-") for x in p.parts):
            continue
        if p.is_dir():
            folders += 1  # what a listing on local disk or NFS descends into, one read each
            continue
        files += 1
        if p.name == "zarr.json" and json.loads(p.read_bytes()).get("node_type") == "array":
            arrays += 1
    return {"arrays": arrays / n, "files": files / n, "folders": folders / n}


def drop_page_cache() -> bool:
    """Empty the kernel's page, dentry and inode caches (root only): a 'cold' planning run."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def plan_old(root: Path) -> int:
    """Layout-1 partition resume planning (partition/job.py before this change)."""
    s = store_layout1.Store(str(root))
    ids = s.volume_ids()
    table = s.read_table("partition")
    ok = set(table[(table["status"] == "ok") & (table["method"] == "improved")]["volume_id"])
    finished = set(s.organ_ids())
    for v in VARIANTS:
        finished &= set(s.grid_ids(GEOMETRY, v))
    return len([i for i in ids if i in ok and i in finished])


def plan_new(root: Path) -> int:
    s = Store(str(root))
    ids = s.volume_ids()
    table = s.read_table("partition")
    ok = set(table[(table["status"] == "ok") & (table["method"] == "improved")]["volume_id"])
    finished = set(s.organ_ids()) & set(s.finished_grid_ids(GEOMETRY, VARIANTS))
    return len([i for i in ids if i in ok and i in finished])


def epoch_old(root: Path, order: list[str], batch: int) -> tuple[float, int, int]:
    s = store_layout1.Store(str(root))
    _requests["n"] = 0
    t0 = time.perf_counter()
    batches = 0
    for b in range(0, len(order), batch):
        np.stack([s.read_grid(GEOMETRY, "area-dilated", i) for i in order[b:b + batch]])
        batches += 1
    return time.perf_counter() - t0, _requests["n"], batches


def epoch_new(root: Path, order: list[str], batch: int) -> tuple[float, int, int, float]:
    s = Store(str(root))
    _requests["n"] = 0
    t0 = time.perf_counter()
    s.read_grids(GEOMETRY, "area-dilated", order[:1])  # opens the pack view (one listing per process)
    opened = time.perf_counter() - t0
    batches = 0
    for b in range(0, len(order), batch):
        s.read_grids(GEOMETRY, "area-dilated", order[b:b + batch])
        batches += 1
    return time.perf_counter() - t0, _requests["n"], batches, opened


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=36316)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="use the stores an earlier run left in --workdir")
    ap.add_argument("--plan-layouts", default="new,nested,old",
                    help="which stores resume planning times (new: flat chunk keys, nested: c/0/0 keys, old: layout 1)")
    ap.add_argument("--phases", default="objects,pack,plan,manifest,epoch",
                    help="comma-separated subset of objects,pack,plan,manifest,epoch")
    a = ap.parse_args()
    phases = set(a.phases.split(","))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="store_scale-"))
    ids = [f"vol{i:06d}" for i in range(a.volumes)]
    order = ids[:]
    random.Random(0).shuffle(order)
    res: dict[str, dict] = {"old": {}, "new": {}}
    print(machine(), flush=True)
    old_root, nested_root, new_root = work / "layout1", work / "layout2-nested", work / "layout2"
    res["nested"] = {}
    if not a.reuse:
        for root in (old_root, nested_root, new_root):
            shutil.rmtree(root, ignore_errors=True)
        res["old"]["build_s"] = build(store_layout1.Store, old_root, ids, new_layout=False)
        res["nested"]["build_s"] = build(Store, nested_root, ids, new_layout=True, nested_keys=True)
        res["new"]["build_s"] = build(Store, new_root, ids, new_layout=True)
        print(f"built {a.volumes} volumes: layout 1 {res['old']['build_s']:.0f} s, layout 2 nested keys "
              f"{res['nested']['build_s']:.0f} s, flat keys {res['new']['build_s']:.0f} s", flush=True)
    if "objects" in phases:
        for key, root in (("old", old_root), ("nested", nested_root), ("new", new_root)):
            res[key].update(objects_per_volume(root, a.volumes))
    if "pack" in phases:
        t0 = time.perf_counter()
        res["new"]["pack_s"] = (pack_grids(Store(str(new_root)), GEOMETRY), time.perf_counter() - t0)[1]
        t0 = time.perf_counter()
        assert pack_grids(Store(str(new_root)), GEOMETRY)  # unchanged: only the listing
        res["new"]["repack_unchanged_s"] = time.perf_counter() - t0
    if "plan" not in phases:
        _finish(a, res, phases)
        return
    for key, fn, root in (("new", plan_new, new_root), ("nested", plan_new, nested_root), ("old", plan_old, old_root)):
        if key not in a.plan_layouts.split(","):
            continue
        for cache in ("cold", "warm"):
            if cache == "cold" and not drop_page_cache():
                continue
            _requests["n"] = 0
            t0 = time.perf_counter()
            done = fn(root)
            sec = time.perf_counter() - t0
            res[key][f"resume_planning_{cache}_s"] = sec
            res[key]["resume_planning_requests"] = _requests["n"]
            assert done == a.volumes, (key, done)
            print(f"resume planning {key} ({cache} page cache): {sec:.1f} s", flush=True)
        res[key]["resume_planning_s"] = res[key].get("resume_planning_cold_s", res[key]["resume_planning_warm_s"])

    if "manifest" not in phases:
        _finish(a, res, phases)
        return
    for key, cls, root in (("old", store_layout1.Store, old_root), ("new", Store, new_root)):
        t0 = time.perf_counter()
        assert len(cls(str(root)).read_table("manifest")) == a.volumes
        res[key]["manifest_scan_s"] = time.perf_counter() - t0
    s = Store(str(new_root))
    for row in s.read_table("manifest").head(a.volumes).to_dict("records"):
        s.write_record("manifest", row)
    t0 = time.perf_counter()
    assert len(s.read_table("manifest")) == a.volumes
    res["new"]["manifest_scan_all_pending_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    s.sync_table("manifest")
    res["new"]["fold_all_pending_s"] = time.perf_counter() - t0

    if "epoch" in phases:
        sec, req, nb = epoch_old(old_root, order, a.batch)
        res["old"].update(epoch_s=sec, epoch_requests=req, epoch_batches=nb)
        print(f"epoch old: {sec:.1f} s", flush=True)
        sec, req, nb, opened = epoch_new(new_root, order, a.batch)
        res["new"].update(epoch_s=sec, epoch_requests=req, epoch_batches=nb, epoch_pack_open_s=opened)
    _finish(a, res, phases, work)


def _finish(a: argparse.Namespace, res: dict, phases: set[str], work: Path | None = None) -> None:
    if phases != {"objects", "pack", "plan", "manifest", "epoch"}:  # a partial run: the raw figures only
        print(json.dumps(res, indent=1))
        out = REPO / "benchmarks" / "results"
        (out / f"store_scale-{'-'.join(sorted(phases))}.json").write_text(
            json.dumps({"machine": machine(), "volumes": a.volumes, "phases": sorted(phases), **res}, indent=1))
        return
    o, k, n = res["old"], res["nested"], res["new"]

    def plan(r: dict, cache: str) -> str:
        sec = r.get(f"resume_planning_{cache}_s")
        return "-" if sec is None else f"{sec:.1f}"

    rows = [
        ("arrays per volume", f"{o['arrays']:.2f}", f"{k['arrays']:.2f}", f"{n['arrays']:.2f}", "<= 3"),
        ("files per volume", f"{o['files']:.2f}", f"{k['files']:.2f}", f"{n['files']:.2f}", ""),
        ("folders per volume", f"{o['folders']:.2f}", f"{k['folders']:.2f}", f"{n['folders']:.2f}", "local disk / NFS"),
        ("resume planning, cold cache (s)", plan(o, "cold"), plan(k, "cold"), plan(n, "cold"),
         "<= 30; page cache dropped first ('-': not root)"),
        ("resume planning, warm cache (s)", plan(o, "warm"), plan(k, "warm"), plan(n, "warm"), "<= 30"),
        ("  store requests", f"{o['resume_planning_requests']:,}", f"{k['resume_planning_requests']:,}",
         f"{n['resume_planning_requests']:,}", "object reads + listings (layout 1's listings not counted)"),
        ("manifest scan (s)", f"{o['manifest_scan_s']:.2f}", "", f"{n['manifest_scan_s']:.2f}", ""),
        ("  every row a pending record (s)", "-", "", f"{n['manifest_scan_all_pending_s']:.2f}", "worst case, killed driver"),
        ("  folding them into the table (s)", "-", "", f"{n['fold_all_pending_s']:.2f}", ""),
        ("grid-mask epoch (s)", f"{o['epoch_s']:.1f}", "", f"{n['epoch_s']:.1f}", f"batch {a.batch}"),
        ("  store requests per batch", f"{o['epoch_requests'] / o['epoch_batches']:.1f}", "",
         f"{n['epoch_requests'] / n['epoch_batches']:.1f}", "one call per batch in layout 2"),
        ("  pack build / unchanged re-pack (s)", "-", "", f"{n['pack_s']:.0f} / {n['repack_unchanged_s']:.1f}", ""),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"store at scale: {a.volumes:,} volumes, grid {GEOMETRY} x {len(VARIANTS)} variants", "",
             f"{'figure':<{w}}  {'layout 1':>10}  {'layout 2, c/0/0 keys':>20}  {'layout 2, c.0.0 keys (now)':>26}  target/note"]
    lines += [f"{r[0]:<{w}}  {r[1]:>10}  {r[2]:>20}  {r[3]:>26}  {r[4]}" for r in rows]
    text = "\n".join(lines)
    print(text)
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "store_scale.json").write_text(json.dumps({"machine": machine(), "volumes": a.volumes, **res}, indent=1))
    (out / "store_scale.md").write_text(f"{machine()}\n\n```\n{text}\n```\n")
    if work is not None and not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
