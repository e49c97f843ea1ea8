"""Bring a store written by earlier versions up to the current layout, and audit a store.

`migrate` (idempotent; a killed migration is re-run):
1. volumes and organ maps published before integrity checks get their checksum, chunk count and
   bytes recorded (each is read once), so resume can verify them from then on;
2. layout 1 grid masks, one array per variant (grid/<geometry>/<variant>/<id>), become one array
   per volume (grids/<geometry>/<id>); the old arrays are removed once every volume is converted;
3. the root group is marked layout 2, pending table records are folded in, and the grid masks are
   packed for loaders (store_pack.py).
`audit` lists what is wrong: items that fail verification, manifest rows that disagree with arrays.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from ctplatform.store import GRID, GRIDS, LAYOUT, ORGANS, TABLES, VOLUMES, Store, checksum
from ctplatform.store_pack import pack_grids

log = logging.getLogger("ctplatform.store")

_LEGACY_ONLY = ("complete", "variant", "checksum", "stored_chunks", "stored_bytes")


def _record_unverified(store: Store, group_path: str) -> int:
    """Record checksum and chunk objects of published arrays that lack them; returns how many."""
    done = 0
    for name, attrs in store._finished(group_path).items():
        if "checksum" in attrs:
            continue
        path = f"{group_path}/{name}"
        with store.lease(path):
            arr = store.array(path)
            files = store._item_files(path)
            arr.attrs.update({"checksum": checksum(arr[...]), "stored_chunks": len(files),
                              "stored_bytes": sum(files.values())})
        done += 1
    return done


def _legacy_grids(store: Store) -> dict[str, dict[str, list[str]]]:
    """geometry -> volume id -> variants with a published layout-1 array."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    base = store._fs_path("data.zarr", GRID)
    if not store.fs.exists(base):
        return {}
    for gpath in store.fs.ls(base, detail=False):
        geometry = gpath.rstrip("/").rsplit("/", 1)[1]
        if geometry == "zarr.json":
            continue
        for vpath in store.fs.ls(gpath, detail=False):
            variant = vpath.rstrip("/").rsplit("/", 1)[1]
            if variant == "zarr.json":
                continue
            for vid in store._finished(f"{GRID}/{geometry}/{variant}"):
                out[geometry][vid].append(variant)
    return out


def migrate(store: Store) -> dict[str, Any]:
    """Migrate `store` in place (module docstring); returns counts of what was done."""
    if not store.exists():
        raise FileNotFoundError(f"no store at {store.root}")
    report: dict[str, Any] = {"layout_before": store.layout}
    with store.lease("store/migrate"):
        report["volumes_recorded"] = _record_unverified(store, VOLUMES)
        report["organs_recorded"] = _record_unverified(store, ORGANS)
        converted = 0
        legacy = _legacy_grids(store)
        for geometry, by_id in legacy.items():
            have = store._finished(f"{GRIDS}/{geometry}")
            for vid, variants in sorted(by_id.items()):
                if vid in have and set(variants) <= set(have[vid].get("variants", [])):
                    continue  # converted by an earlier, killed migration
                masks, attrs = {}, {}
                for v in sorted(variants):
                    arr = store.array(store.legacy_grid_path(geometry, v, vid))
                    masks[v] = arr[...]
                    attrs = {k: val for k, val in arr.attrs.items() if k not in _LEGACY_ONLY}
                store.write_grids(geometry, vid, masks, attrs)
                converted += 1
        report["grid_volumes_converted"] = converted
        if store.fs.exists(store._fs_path("data.zarr", GRID)):
            store.fs.rm(store._fs_path("data.zarr", GRID), recursive=True)
        store.group.require_group(GRIDS)
        store.group.attrs["layout"] = LAYOUT
        for name in TABLES:
            store.sync_table(name)
        packed = {}
        base = store._fs_path("data.zarr", GRIDS)
        for gpath in store.fs.ls(base, detail=False) if store.fs.exists(base) else []:
            geometry = gpath.rstrip("/").rsplit("/", 1)[1]
            if geometry != "zarr.json" and store._finished(f"{GRIDS}/{geometry}"):
                packed[geometry] = len(pack_grids(store, geometry)["ids"])
        report["packed"] = packed
    report["layout_after"] = store.layout
    return report


def audit(store: Store, deep: bool = False) -> list[str]:
    """Problems found: unpublished or damaged items, manifest rows that disagree with arrays."""
    problems: list[str] = []
    base = store._fs_path("data.zarr")
    groups = [VOLUMES, ORGANS]
    gbase = f"{base}/{GRIDS}"
    if store.fs.exists(gbase):
        groups += [f"{GRIDS}/{p.rstrip('/').rsplit('/', 1)[1]}" for p in store.fs.ls(gbase, detail=False)
                   if not p.endswith("zarr.json")]
    for group in groups:
        gpath = f"{base}/{group}"
        if not store.fs.exists(gpath):
            continue
        for p in store.fs.ls(gpath, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[1]
            if name == "zarr.json" or name.startswith("pack-"):
                continue
            problem = store.verify(f"{group}/{name}", deep=deep)
            if problem:
                problems.append(problem)
    manifest = store.read_table("manifest")
    if manifest is not None and len(manifest):
        for row in manifest[manifest["status"] == "ok"].itertuples():
            try:
                arr = store.volume(row.volume_id)
            except KeyError:
                problems.append(f"manifest row {row.volume_id} is ok but its volume is not in the store")
                continue
            if arr.attrs.get("source_sha256") != row.sha256 or list(arr.shape) != [int(n) for n in row.shape]:
                problems.append(f"manifest row {row.volume_id} disagrees with its array (source or shape)")
    return problems
