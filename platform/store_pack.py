"""Packed grid masks: every volume's mask of one geometry and variant in ONE array, for loaders.

    STORE/data.zarr/grids/<geometry>/pack-<token>/<variant>   bool [N, 3, H, D1, D2], chunks of PACK_ROWS rows
    STORE/packs/<geometry>.json                               which pack is current: ids (row order),
                                                              the checksum of each volume's grid array

    STORE/packs/<geometry>.changed/<id>~<time>-<token>        a volume's grid array changed after packing

The per-volume arrays grids/<geometry>/<id> stay the source of truth (each written under its own
lease, so concurrent writers never share a chunk); a pack is a read-only copy built by ONE writer
(`pack_grids`, under the lease packs/<geometry>) after partition, written to a fresh folder,
verified, then published by replacing the small pointer object. Readers never see a half-built
pack, and a pack never goes stale silently: `Store.write_grids` drops a "changed" marker BEFORE it
rewrites a volume's array, a reader uses the pack for every volume without a marker (the pointer
plus one listing per process) and reads the rest per volume, and the packer removes a marker only
once the pack holds the checksum the volume's array carries.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from ctplatform.store import CHUNK_KEYS, GRIDS, _compressor, checksum, expected_chunks

if TYPE_CHECKING:
    from ctplatform.store import Store

#: Rows per chunk of a pack: ~0.9 MB of masks at the paper's 135x6x6 grid, a few kB compressed.
PACK_ROWS = 64
#: Packs kept besides the current one (a loader that opened the previous one keeps reading it).
KEEP_OLD = 1


def _pointer_path(store: "Store", geometry: str) -> str:
    return store._fs_path("packs", f"{geometry}.json")


def _changed_dir(store: "Store", geometry: str) -> str:
    return store._fs_path("packs", f"{geometry}.changed")


def mark_changed(store: "Store", geometry: str, volume_id: str) -> None:
    """Say that `volume_id`'s grid array of `geometry` is about to change (see module docstring)."""
    name = f"{volume_id}~{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    store._put_atomic(f"{_changed_dir(store, geometry)}/{name}", b"")


def changed_markers(store: "Store", geometry: str) -> dict[str, str]:
    """marker path -> volume id."""
    base = _changed_dir(store, geometry)
    return {f"{base}/{rel}": rel.split("~", 1)[0] for rel in store._sizes(base) if "~" in rel}


def current_pack(store: "Store", geometry: str) -> dict[str, Any] | None:
    try:
        with store.fs.open(_pointer_path(store, geometry), "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def pack_grids(store: "Store", geometry: str, rows_per_chunk: int = PACK_ROWS) -> dict[str, Any]:
    """(Re)build the pack of `geometry` from the published grid arrays; returns the pointer.

    Rows whose source is unchanged since the previous pack are copied from it (no per-volume read).
    """
    with store.lease(f"packs/{geometry}", wait=600.0) as lease:
        markers = changed_markers(store, geometry)  # listed BEFORE the arrays are read
        finished = store._finished(f"{GRIDS}/{geometry}")
        ids = sorted(finished)
        sums = [finished[i].get("checksum", "") for i in ids]
        old = current_pack(store, geometry)
        if old is not None and old["ids"] == ids and old["checksums"] == sums:
            _clear_markers(store, geometry, markers, old)
            return old
        if not ids:
            raise ValueError(f"no grid masks of geometry {geometry} in {store.root}: nothing to pack")
        variants = sorted(set.intersection(*(set(finished[i].get("variants", [])) for i in ids)))
        if not variants:
            raise ValueError(f"the grid arrays of {geometry} share no variant: nothing to pack")
        name = f"pack-{uuid.uuid4().hex[:12]}"
        first = store.array(store.grid_path(geometry, variants[0], ids[0]))
        row_shape = tuple(first.shape[1:])
        group = store.group.require_group(f"{GRIDS}/{geometry}/{name}")
        arrays = {
            v: group.create_array(
                v, shape=(len(ids), *row_shape), dtype=bool, chunks=(rows_per_chunk, *row_shape),
                compressors=_compressor(np.dtype(bool)), fill_value=False, chunk_key_encoding=CHUNK_KEYS,
                config={"write_empty_chunks": True},
            )
            for v in variants
        }
        reuse = _old_rows(store, geometry, old, variants)
        sums_out: dict[str, str] = {}
        for r0 in range(0, len(ids), rows_per_chunk):
            block_ids = ids[r0:r0 + rows_per_chunk]
            block = {v: np.zeros((len(block_ids), *row_shape), bool) for v in variants}
            copy = [(k, reuse[i][0]) for k, i in enumerate(block_ids)
                    if i in reuse and reuse[i][1] == sums[r0 + k]]
            if copy:
                src = np.array([r for _, r in copy])
                for v in variants:
                    block[v][[k for k, _ in copy]] = reuse["__arrays__"][v].oindex[src]
            copied = {k for k, _ in copy}
            for k, vid in enumerate(block_ids):
                if k in copied:
                    continue
                arr = store.array(store.grid_path(geometry, "", vid))
                data, names = arr[...], list(arr.attrs["variants"])
                if data.shape[1:] != row_shape:
                    raise ValueError(f"grid masks of {vid} have shape {data.shape[1:]}, the pack {row_shape}")
                for v in variants:
                    block[v][k] = data[names.index(v)]
            for v in variants:
                arrays[v][r0:r0 + len(block_ids)] = block[v]
        for v, arr in arrays.items():  # verify before publishing: every chunk there
            sums_out[v] = checksum(arr[...])
            listed = store._item_files(f"{GRIDS}/{geometry}/{name}/{v}")
            if len(listed) != expected_chunks(arr.shape, arr.chunks):
                raise RuntimeError(f"pack {name}/{v}: {len(listed)} chunks on disk, expected more; not published")
        pointer = {"pack": name, "variants": variants, "ids": ids, "checksums": sums, "pack_checksums": sums_out}
        lease.check()
        store._put_atomic(_pointer_path(store, geometry), json.dumps(pointer).encode())
        _clear_markers(store, geometry, markers, pointer)
        _drop_old_packs(store, geometry, keep={name, (old or {}).get("pack", "")})
        return pointer


def _clear_markers(store: "Store", geometry: str, markers: dict[str, str], pointer: dict[str, Any]) -> None:
    """Remove the markers of volumes whose array now carries the checksum the pack holds."""
    packed = dict(zip(pointer["ids"], pointer["checksums"]))
    done = []
    for path, vid in markers.items():
        try:
            now = store.array(store.grid_path(geometry, "", vid)).attrs.get("checksum")
        except KeyError:
            now = None
        if now is not None and packed.get(vid) == now:
            done.append(path)
    if done:
        store.fs.rm(done)


def _old_rows(store: "Store", geometry: str, old: dict[str, Any] | None, variants: list[str]) -> dict[str, Any]:
    """id -> (row, checksum) of the previous pack, with its arrays under '__arrays__'."""
    if old is None or not set(variants) <= set(old.get("variants", [])):
        return {}
    try:
        arrays = {v: store.group[f"{GRIDS}/{geometry}/{old['pack']}/{v}"] for v in variants}
    except KeyError:
        return {}
    out: dict[str, Any] = {i: (r, s) for r, (i, s) in enumerate(zip(old["ids"], old["checksums"]))}
    out["__arrays__"] = arrays
    return out


def _drop_old_packs(store: "Store", geometry: str, keep: set[str]) -> None:
    base = store._fs_path("data.zarr", GRIDS, geometry)
    for path in store.fs.ls(base, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[1]
        if name.startswith("pack-") and name not in keep:
            store.fs.rm(path, recursive=True)


class _PackView:
    """A loader's view of the current pack: valid rows only (checked once against the arrays), and
    the pack chunks read so far kept bit-packed (1/8 of the masks' size), so an epoch reads each
    chunk once: at the paper's grid all 36,316 volumes' masks of one variant take 66 MB."""

    def __init__(self, store: "Store", geometry: str) -> None:
        self.rows: dict[str, int] = {}
        self.arrays: dict[str, Any] = {}
        self.cache: dict[tuple[str, int], np.ndarray] = {}  # (variant, chunk) -> packbits rows
        self.cached_bytes = 0
        # Markers first, then the pointer: a packer publishes its pointer before it clears markers,
        # so a marker this listing misses is covered by the pointer read after it.
        changed = set(changed_markers(store, geometry).values())
        pointer = current_pack(store, geometry)
        if pointer is None:
            return
        try:
            self.arrays = {v: store.group[f"{GRIDS}/{geometry}/{pointer['pack']}/{v}"] for v in pointer["variants"]}
        except KeyError:
            return
        self.rows = {i: r for r, i in enumerate(pointer["ids"]) if i not in changed}


    def fetch(self, variant: str, rows: list[int]) -> list[np.ndarray]:
        """Masks of pack rows: the chunks not cached yet in ONE read, the rest from the cache."""
        arr = self.arrays[variant]
        per = arr.chunks[0]
        shape = arr.shape[1:]
        missing = sorted({r // per for r in rows} - {c for v, c in self.cache if v == variant})
        if missing:
            idx = np.concatenate([np.arange(c * per, min((c + 1) * per, arr.shape[0])) for c in missing])
            block = arr.oindex[idx]  # one call: zarr fetches the chunks concurrently
            at = 0
            for c in missing:
                n = min(per, arr.shape[0] - c * per)
                bits = np.packbits(block[at:at + n].reshape(n, -1), axis=1)
                at += n
                if self.cached_bytes + bits.nbytes > PACK_CACHE_BYTES:  # bounded: forget the oldest
                    while self.cache and self.cached_bytes + bits.nbytes > PACK_CACHE_BYTES:
                        self.cached_bytes -= self.cache.pop(next(iter(self.cache))).nbytes
                self.cache[(variant, c)] = bits
                self.cached_bytes += bits.nbytes
        size = int(np.prod(shape))
        return [np.unpackbits(self.cache[(variant, r // per)][r % per], count=size).astype(bool).reshape(shape)
                for r in rows]


#: Bit-packed pack chunks a reader keeps (per process).
PACK_CACHE_BYTES = 256 << 20


def read_packed(store: "Store", geometry: str, variant: str, volume_ids: list[str]) -> np.ndarray:
    """[N, 3, H, D1, D2] for `volume_ids`: at most one read of the pack for the rows it holds, the
    rest per volume."""
    views: dict[str, _PackView] = store.__dict__.setdefault("_pack_views", {})
    view = views.get(geometry)
    if view is None:
        view = views[geometry] = _PackView(store, geometry)
    arr = view.arrays.get(variant)
    rows = [view.rows.get(i) if arr is not None else None for i in volume_ids]
    out: list[np.ndarray | None] = [None] * len(volume_ids)
    have = [k for k, r in enumerate(rows) if r is not None]
    if have:
        for k, mask in zip(have, view.fetch(variant, [rows[k] for k in have])):
            out[k] = mask
    for k, vid in enumerate(volume_ids):
        if out[k] is None:
            out[k] = store.read_grid(geometry, variant, vid)
    return np.stack(out) if out else np.zeros((0,), bool)
