"""The store contract: one Zarr v3 group of arrays plus Parquet tables (see DESIGN.md, "The store").

    STORE/data.zarr/volumes/<id>                 int16 HU [z, y, x], stored orientation (geometry.py)
    STORE/data.zarr/organs/<id>                  uint8 [z, y, x]: labels.ORGAN_CODES, 0 other
    STORE/data.zarr/grids/<geometry>/<id>        bool [V, 3, H, D1, D2]: every variant of one volume
                                                 (attribute `variants` names them), one chunk
    STORE/data.zarr/grids/<geometry>/pack-<n>/<variant>
                                                 bool [N, 3, H, D1, D2]: read-only packed copy for loaders
    STORE/data.zarr/truth/<id>                   uint8..64 [z, y, x]: lesion truth bitfield on the volume's voxels
    STORE/data.zarr/truth_grid/<geometry>/<method>/<id>  the same bits on the feature grid [H, D1, D2]
    STORE/manifest.parquet, labels.parquet, partition.parquet
    STORE/records/<table>/<id>~<time>-<token>.json   per-item table rows not yet folded into the table
    STORE/leases/...                             one-writer leases (ctplatform.lease)

At most three arrays per volume (volume, organ map, grid masks of a geometry; two more for a volume
that came with lesion truth: truth and grid truth). Layout 1 (before
2026-12) kept one array per grid variant at grid/<geometry>/<variant>/<id>: it is still read, and
`ctplatform store migrate` (store_migrate.py) converts it.

Integrity (issue 15):
- One writer per item: every write holds the item's lease (lease.py); a second job fails clearly.
- Invisible until verified: an array is created with `complete: false`, filled (every chunk stored,
  even empty ones), re-read and compared with the sha256 of what was meant to be written, its chunk
  objects counted, and only then published by rewriting its metadata with `complete: true`, the
  checksum and the stored chunk count and bytes (one atomic object write: Zarr's local store
  writes through a temporary file and a rename; object stores put whole objects).
- Resume verifies instead of trusting the flag: `has_*`, `*_ids` compare the recorded chunk count and
  bytes with what is on disk (one listing; `verify(deep=True)` also re-reads and re-hashes).
- Progress survives kill -9 at any instant: the task that finishes an item writes the item's table
  row as its own record object right after publishing; readers fold pending records into the table
  and drivers fold them in (`sync_table`) and delete them, under a short table lease.

Array attributes are restricted to geometry and provenance keys (`ALLOWED_ATTRS`): no patient names,
IDs, dates or report text can enter the store through them. The root may be a local path or an
fsspec URL (e.g. s3://bucket/store, with s3fs installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from ctplatform.lease import LEASE_SECONDS, Lease, LeaseHeldError, LeaseLostError

VOLUMES, ORGANS, GRID, GRIDS = "volumes", "organs", "grid", "grids"
#: Layout version written into the root group's attributes (1: one array per grid variant).
LAYOUT = 2
TRUTH, TRUTH_GRID = "truth", "truth_grid"
#: Name of the truth bit that marks a confounder region (not a lesion); see `write_truth`.
CONFOUNDER = "confounder"
TABLES: dict[str, str] = {
    "manifest": "manifest.parquet",
    "labels": "labels.parquet",
    "partition": "partition.parquet",
}
#: How long a table merge may wait for another driver's merge (they take a second or two), and how
#: long a merge's lease lasts: a driver killed mid-merge on another host blocks merges that long.
TABLE_WAIT_SECONDS = 300.0
TABLE_LEASE_SECONDS = 120.0
ALLOWED_ATTRS: frozenset[str] = frozenset(
    {
        "complete",
        "checksum",  # sha256 of the array's C-order bytes, recorded when it was published
        "stored_chunks",  # chunk objects on disk when published
        "stored_bytes",  # their total size
        "spacing_mm",  # [z, y, x]
        "orientation",  # stored axis codes, e.g. "IPL"
        "original_shape",
        "original_spacing_mm",
        "original_orientation",
        "source_format",
        "source_sha256",
        "hu_range",
        "interpolation",
        "affine",  # 4x4 voxel -> world (RAS+, mm) of the stored array: aligns exports with the source scan
        "method",  # partition method
        "geometry",
        "input_shape",
        "variant",
        "variants",  # names along the first axis of a volume's grid masks
        "organs",
        "qc_flags",
        "fallback",
        "truth_labels",  # truth bitfields: bit k marks truth_labels[k] (a label name, or "confounder")
        "confounder",  # {"kind": ..., "label": ...}: what the confounder region is and which label it tracks
    }
)
_PUBLISH_KEYS = ("complete", "checksum", "stored_chunks", "stored_bytes")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


#: Blosc codecs a volume may be written with: zstd (the default: smallest, cheapest to write), lz4
#: (decodes ~3x faster for ~13% more bytes) or lz4hc (decodes faster still, ~zstd's size, slow to
#: write): the GPU training input path, see benchmarks/loader.py.
VOLUME_CODECS: tuple[str, ...] = ("zstd", "lz4", "lz4hc")
#: How arrays written now name their chunk objects: `c.<i>.<j>...` in the array's own folder.
#: Arrays written before (`c/<i>/<j>/...`) keep their encoding in their metadata and read as before.
CHUNK_KEYS: dict[str, str] = {"name": "default", "separator": "."}
#: A Zarr v3 node's metadata object.
METADATA = "zarr.json"


def _compressor(dtype: np.dtype, codec: str = "zstd") -> BloscCodec:
    # Bit-shuffle suits int16 HU (high bytes are nearly constant); plain shuffle is enough for bytes.
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize > 1 else "shuffle"
    if codec == "lz4":
        # Byte shuffle: lz4 decodes int16 CT ~25% faster after it than after bit-shuffle, for ~3% more bytes.
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    if codec == "lz4hc":
        # lz4's high-compression encoder: the same lz4 decoder runs over fewer, longer matches, so it
        # decodes faster than lz4 (~0.03 vs ~0.05 CPU s a paper volume) at ~zstd's size, for ~4x
        # zstd's encode time at ingest (benchmarks/loader.py, benchmarks/ingest.py).
        return BloscCodec(cname="lz4hc", clevel=5, shuffle="shuffle")
    if codec != "zstd":
        raise ValueError(f"unknown volume codec {codec!r}; choose from {list(VOLUME_CODECS)}")
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


#: Names Zarr itself uses inside a group: an item so named would overwrite the group's metadata.
RESERVED_IDS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def validate_volume_id(volume_id: str) -> str:
    """Volume ids name arrays and files: letters, digits, '.', '_' and '-' only, not starting with '.'.

    The message never quotes a rejected id (it could hold a name or an MRN): it says why.
    """
    if not isinstance(volume_id, str) or not _ID_PATTERN.match(volume_id):
        why = "it is empty" if not volume_id else (
            f"it is {len(volume_id)} characters" if isinstance(volume_id, str) and len(volume_id) > 200
            else "it holds other characters or starts with one of '._-'"
        )
        raise ValueError(
            f"invalid volume id ({why}): use letters, digits, '.', '_' or '-' (max 200), "
            "starting with a letter or digit"
        )
    if volume_id.lower() in RESERVED_IDS:
        raise ValueError(f"invalid volume id: {volume_id!r} is a name Zarr reserves for its own metadata; choose another")
    return volume_id


def checksum(data: np.ndarray) -> str:
    """sha256 of an array's C-order bytes, as recorded in `checksum`."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(data).view(np.uint8).reshape(-1)).hexdigest()


def expected_chunks(shape: Iterable[int], chunks: Iterable[int]) -> int:
    return math.prod(math.ceil(s / c) for s, c in zip(shape, chunks)) if all(shape) else 0


class IncompleteItemError(KeyError):
    """The item is absent, was not finished (a killed writer) or does not match what was published."""


class StoreWriteError(RuntimeError):
    """What was written does not read back as what was meant (nothing was published)."""


__all__ = [
    "Store", "IncompleteItemError", "StoreWriteError", "LeaseHeldError", "LeaseLostError",
    "validate_volume_id", "checksum", "ALLOWED_ATTRS", "TABLES", "LAYOUT",
]


class Store:
    """A CT store on a local path or fsspec URL."""

    def __init__(self, root: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self._fs_root = fsspec.core.url_to_fs(self.root)
        self.lease_seconds = lease_seconds
        self._group: zarr.Group | None = None
        self._leases: dict[str, list[Any]] = {}  # key -> [Lease, depth]

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ------------------------------------------------------------------ layout
    @property
    def zarr_url(self) -> str:
        return f"{self.root}/data.zarr"

    def _fs_path(self, *parts: str) -> str:
        return "/".join([self._fs_root, *parts])

    def exists(self) -> bool:
        return self.fs.exists(self._fs_path("data.zarr", "zarr.json"))

    @property
    def group(self) -> zarr.Group:
        """The root group, created with its sub-groups on first use."""
        if self._group is None:
            if not self.exists():
                self.fs.makedirs(self._fs_root, exist_ok=True)
                root = zarr.open_group(self.zarr_url, mode="a", zarr_format=3, attributes={"layout": LAYOUT})
                for name in (VOLUMES, ORGANS, GRIDS):
                    root.require_group(name)
            self._group = zarr.open_group(self.zarr_url, mode="a", zarr_format=3)
        return self._group

    @property
    def layout(self) -> int:
        """1 for stores written before grid masks were stored one array per volume."""
        return int(self.group.attrs.get("layout", 1))

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships Store objects to tasks: reopen lazily there instead of pickling handles.
        return {"root": self.root, "lease_seconds": self.lease_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state.get("lease_seconds", LEASE_SECONDS))

    @staticmethod
    def volume_path(volume_id: str) -> str:
        return f"{VOLUMES}/{validate_volume_id(volume_id)}"

    @staticmethod
    def organs_path(volume_id: str) -> str:
        return f"{ORGANS}/{validate_volume_id(volume_id)}"

    @staticmethod
    def grid_path(geometry: str, variant: str, volume_id: str) -> str:
        """The array holding `variant` (and every other variant) of one volume's grid masks."""
        return f"{GRIDS}/{geometry}/{validate_volume_id(volume_id)}"

    @staticmethod
    def legacy_grid_path(geometry: str, variant: str, volume_id: str) -> str:
        """Layout 1: one array per variant."""
        return f"{GRID}/{geometry}/{variant}/{validate_volume_id(volume_id)}"

    # ------------------------------------------------------------------ leases
    @contextlib.contextmanager
    def lease(self, key: str, wait: float = 0.0, seconds: float | None = None) -> Iterator[Lease]:
        """Hold the one-writer lease of `key` (e.g. an array path); re-entrant within this Store.

        Raises LeaseHeldError ("<key> is being written by another job (host, pid, since)") after
        `wait` seconds of retrying; `seconds` overrides the lease duration (short for table merges).
        """
        held = self._leases.get(key)
        if held is not None:
            held[1] += 1
        else:
            lease = Lease(self.fs, self._fs_path("leases", f"{key}.lease"), key, seconds or self.lease_seconds)
            held = self._leases[key] = [lease.acquire(wait), 1]
        try:
            yield held[0]
        finally:
            held[1] -= 1
            if held[1] == 0:
                del self._leases[key]
                held[0].release()

    def holds(self, key: str) -> bool:
        return key in self._leases

    # ------------------------------------------------------------------ arrays
    def _sizes(self, base: str) -> dict[str, int]:
        """Every object below `base` (path relative to it -> bytes; -1: a metadata object on local disk,
        not measured): one recursive listing."""
        if isinstance(self.fs, LocalFileSystem):
            return _local_sizes(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1:]: int(i["size"]) for p, i in found.items()}

    def _item_files(self, path: str) -> dict[str, int]:
        """Chunk objects of the array at `path` (relative key -> bytes), metadata excluded."""
        found = self._sizes(self._fs_path("data.zarr", path))
        return {p: n for p, n in found.items() if not p.endswith("zarr.json")}

    def write_array(
        self,
        path: str,
        data: np.ndarray,
        attrs: dict[str, Any],
        chunks: tuple[int, ...] | None = None,
        codec: str = "zstd",
    ) -> zarr.Array:
        """Write one item under its lease, verify it, then publish it (module docstring)."""
        bad = sorted(set(attrs) - ALLOWED_ATTRS)
        if bad:
            raise ValueError(f"attributes {bad} are not allowed in the store (geometry/provenance only)")
        chunks = tuple(chunks or data.shape)
        with self.lease(path) as lease:
            meant = checksum(data)
            arr = self.group.create_array(
                path,
                shape=data.shape,
                dtype=data.dtype,
                chunks=chunks,
                compressors=_compressor(data.dtype, codec),
                fill_value=0,
                overwrite=True,
                # Flat chunk keys (c.0.0.0 beside zarr.json, not c/0/0/0): one directory per array
                # instead of one per axis, so resume planning lists one folder per item (issue 18).
                chunk_key_encoding=CHUNK_KEYS,
                # Every chunk is stored, even all-zero ones, so the chunk count can be checked.
                config={"write_empty_chunks": True},
                attributes={**_jsonable({k: v for k, v in attrs.items() if k not in _PUBLISH_KEYS}),
                            "complete": False},
            )
            arr[...] = data
            if checksum(arr[...]) != meant:
                raise StoreWriteError(f"{path}: what was written does not read back (nothing was published)")
            files = self._item_files(path)
            want = expected_chunks(data.shape, chunks)
            if len(files) != want:
                raise StoreWriteError(f"{path}: {len(files)} chunk objects on disk, {want} expected")
            lease.check()
            arr.attrs.update(
                {"checksum": meant, "stored_chunks": want, "stored_bytes": sum(files.values()), "complete": True}
            )
        return arr

    def array(self, path: str) -> zarr.Array:
        """A published array, opened lazily; raises IncompleteItemError when absent or unfinished."""
        try:
            arr = self.group[path]
        except (KeyError, FileNotFoundError):
            raise IncompleteItemError(f"{path} is not in the store {self.root}") from None
        except (ValueError, TypeError) as e:  # unreadable metadata
            raise IncompleteItemError(f"{path} in {self.root} is unreadable ({type(e).__name__})") from None
        if not isinstance(arr, zarr.Array) or not arr.attrs.get("complete", False):
            raise IncompleteItemError(f"{path} in {self.root} was not finished (re-run the stage)")
        return arr

    def verify(self, path: str, deep: bool = False) -> str | None:
        """None when the item is published and intact, else what is wrong.

        Cheap: the recorded chunk count and bytes against the objects on disk (one listing).
        Deep: also re-reads the array and compares its sha256 with the recorded one.
        """
        try:
            arr = self.array(path)
        except IncompleteItemError as e:
            return str(e.args[0])
        problem = _cheap_problem(dict(arr.attrs), self._item_files(path))
        if problem or not deep:
            return problem and f"{path}: {problem}"
        want = arr.attrs.get("checksum")
        try:
            got = checksum(arr[...])
        except Exception as e:  # noqa: BLE001 - a damaged chunk fails in the codec, whichever it is
            return f"{path}: its data do not match the checksum recorded when it was written ({type(e).__name__})"
        if want and got != want:
            return f"{path}: its data do not match the checksum recorded when it was written"
        return None

    def has(self, path: str) -> bool:
        """Published and intact by the cheap check (`verify`)."""
        return self.verify(path) is None

    def _finished(self, group_path: str) -> dict[str, dict[str, Any]]:
        """{name: attributes} of the published, intact arrays directly in `group_path`.

        One recursive listing plus one metadata read per array: what resume planning costs.
        """
        base = self._fs_path("data.zarr", group_path)
        files: dict[str, dict[str, int]] = {}
        metas: list[str] = []
        for rel, size in self._sizes(base).items():
            name, _, rest = rel.partition("/")
            if rest == "zarr.json":
                metas.append(f"{base}/{rel}")
            elif rest:
                files.setdefault(name, {})[rest] = size
        out: dict[str, dict[str, Any]] = {}
        for p, raw in self._cat(metas).items():
            try:
                meta = json.loads(raw)
            except ValueError:
                continue  # torn metadata (not possible with atomic writes, but never trusted)
            attrs = meta.get("attributes", {})
            name = p[len(base) + 1:].partition("/")[0]
            if meta.get("node_type") != "array" or not attrs.get("complete", False):
                continue
            mine = {k: v for k, v in files.get(name, {}).items() if "/zarr.json" not in k}
            if _cheap_problem(attrs, mine) is None:
                out[name] = attrs
        return out

    def _finished_members(self, group_path: str) -> list[str]:
        return sorted(self._finished(group_path))

    # ------------------------------------------------------------------ volumes and organ maps
    def write_volume(
        self, volume_id: str, hu: np.ndarray, attrs: dict[str, Any], chunk_slices: int = 24, codec: str = "zstd"
    ) -> None:
        if hu.dtype != np.int16 or hu.ndim != 3:
            raise ValueError(f"volumes are int16 [z, y, x]; got {hu.dtype} {hu.shape}")
        chunks = (min(chunk_slices, hu.shape[0]), hu.shape[1], hu.shape[2])
        self.write_array(self.volume_path(volume_id), hu, attrs, chunks=chunks, codec=codec)

    def volume(self, volume_id: str) -> zarr.Array:
        return self.array(self.volume_path(volume_id))

    def read_volume(self, volume_id: str) -> np.ndarray:
        return self.volume(volume_id)[...]

    def has_volume(self, volume_id: str, sha256: str | None = None) -> bool:
        """A published, intact volume exists (and, when given, was made from a source with this sha256)."""
        path = self.volume_path(volume_id)
        if not self.has(path):
            return False
        return sha256 is None or self.array(path).attrs.get("source_sha256") == sha256

    def write_organs(self, volume_id: str, organs: np.ndarray, attrs: dict[str, Any], chunk_slices: int = 24) -> None:
        if organs.dtype != np.uint8 or organs.ndim != 3:
            raise ValueError(f"organ maps are uint8 [z, y, x]; got {organs.dtype} {organs.shape}")
        chunks = (min(chunk_slices, organs.shape[0]), organs.shape[1], organs.shape[2])
        self.write_array(self.organs_path(volume_id), organs, attrs, chunks=chunks)

    def read_organs(self, volume_id: str) -> np.ndarray:
        return self.array(self.organs_path(volume_id))[...]

    def has_organs(self, volume_id: str) -> bool:
        return self.has(self.organs_path(volume_id))

    # ------------------------------------------------------------------ truth
    # Lesion truth that arrived with a scan (ingest) and its summary on the feature grid (partition).
    # A truth array is an unsigned-integer bitfield: bit k of a voxel/cell marks attrs["truth_labels"][k],
    # a label name of labels.py or CONFOUNDER; attrs["confounder"] (optional) says which label the
    # confounder region tracks. Its `source_sha256` names the mask it was made from, and a grid truth
    # carries the same value, so a reader can tell a grid truth made from an older mask.
    @staticmethod
    def truth_path(volume_id: str) -> str:
        return f"{TRUTH}/{validate_volume_id(volume_id)}"

    @staticmethod
    def grid_truth_path(geometry: str, method: str, volume_id: str) -> str:
        return f"{TRUTH_GRID}/{geometry}/{method}/{validate_volume_id(volume_id)}"

    @staticmethod
    def _check_truth(bits: np.ndarray, attrs: dict[str, Any], ndim: int) -> None:
        if not np.issubdtype(bits.dtype, np.unsignedinteger) or bits.ndim != ndim:
            raise ValueError(f"truth is an unsigned-integer bitfield with {ndim} axes; got {bits.dtype} {bits.shape}")
        labels = attrs.get("truth_labels")
        if not labels or len(labels) > 8 * bits.dtype.itemsize:
            raise ValueError(f"truth needs attrs['truth_labels'] naming each of its bits (at most {8 * bits.dtype.itemsize})")

    def write_truth(self, volume_id: str, bits: np.ndarray, attrs: dict[str, Any], chunk_slices: int = 24) -> None:
        """Lesion truth on the stored volume's voxels (same shape as the volume)."""
        self._check_truth(bits, attrs, 3)
        chunks = (min(chunk_slices, bits.shape[0]), bits.shape[1], bits.shape[2])
        self.write_array(self.truth_path(volume_id), bits, attrs, chunks=chunks)

    def truth(self, volume_id: str) -> zarr.Array:
        return self.array(self.truth_path(volume_id))

    def read_truth(self, volume_id: str) -> np.ndarray:
        return self.truth(volume_id)[...]

    def has_truth(self, volume_id: str) -> bool:
        return self.has(self.truth_path(volume_id))

    def remove_truth(self, volume_id: str) -> None:
        """Forget a volume's truth (its grid truths then no longer count: see eval/truth.py)."""
        path = self.truth_path(volume_id)
        with self.lease(path):
            if path in self.group:
                del self.group[path]

    def truth_ids(self) -> list[str]:
        return self._finished_members(TRUTH)

    def write_grid_truth(self, geometry: str, method: str, volume_id: str, cells: np.ndarray, attrs: dict[str, Any]) -> None:
        """Lesion truth on the model's feature grid [H, D1, D2], same bits as `write_truth`."""
        self._check_truth(cells, attrs, 3)
        self.write_array(self.grid_truth_path(geometry, method, volume_id), cells, attrs)

    def grid_truth(self, geometry: str, method: str, volume_id: str) -> zarr.Array:
        return self.array(self.grid_truth_path(geometry, method, volume_id))

    def read_grid_truth(self, geometry: str, method: str, volume_id: str) -> np.ndarray:
        return self.grid_truth(geometry, method, volume_id)[...]

    def has_grid_truth(self, geometry: str, method: str, volume_id: str) -> bool:
        return self.has(self.grid_truth_path(geometry, method, volume_id))

    def grid_truth_ids(self, geometry: str, method: str) -> list[str]:
        return self._finished_members(f"{TRUTH_GRID}/{geometry}/{method}")

    def volume_ids(self) -> list[str]:
        """Ids of all published, intact volumes, sorted."""
        return self._finished_members(VOLUMES)

    def organ_ids(self) -> list[str]:
        return self._finished_members(ORGANS)

    # ------------------------------------------------------------------ grid masks
    def write_grids(
        self, geometry: str, volume_id: str, masks: dict[str, np.ndarray], attrs: dict[str, Any]
    ) -> None:
        """Every variant of one volume's grid masks as one array [V, 3, H, D1, D2] (one chunk)."""
        for variant, mask in masks.items():
            if mask.dtype != np.bool_ or mask.ndim != 4 or mask.shape[0] != 3:
                raise ValueError(f"grid masks are bool [3, H, D1, D2]; got {variant} {mask.dtype} {mask.shape}")
        stacked = np.stack(list(masks.values()))
        attrs = {**attrs, "variants": list(masks), "geometry": geometry}
        attrs.pop("variant", None)
        path = self.grid_path(geometry, "", volume_id)
        with self.lease(path):
            # Before the array changes: readers stop trusting the pack's copy of this volume.
            from ctplatform.store_pack import mark_changed

            mark_changed(self, geometry, volume_id)
            self.write_array(path, stacked, attrs)

    def write_grid(self, geometry: str, variant: str, volume_id: str, mask: np.ndarray, attrs: dict[str, Any]) -> None:
        """One variant: added to (or replacing its earlier self in) the volume's grid array."""
        path = self.grid_path(geometry, variant, volume_id)
        with self.lease(path):
            masks: dict[str, np.ndarray] = {}
            if self.has(path):
                arr = self.array(path)
                masks = dict(zip(arr.attrs["variants"], arr[...]))
            masks[variant] = mask
            self.write_grids(geometry, volume_id, masks, attrs)

    def _grid_array(self, geometry: str, variant: str, volume_id: str) -> tuple[zarr.Array, int | None]:
        """(array, index of `variant` along axis 0, or None for a layout-1 array)."""
        try:
            arr = self.array(self.grid_path(geometry, variant, volume_id))
        except IncompleteItemError:
            try:
                return self.array(self.legacy_grid_path(geometry, variant, volume_id)), None
            except IncompleteItemError:
                raise IncompleteItemError(
                    f"grid/{geometry}/{variant}/{volume_id} is not in the store {self.root}"
                ) from None
        variants = list(arr.attrs.get("variants", []))
        if variant not in variants:
            raise IncompleteItemError(f"grid masks of {volume_id} ({geometry}) have no variant {variant!r}")
        return arr, variants.index(variant)

    def read_grid(self, geometry: str, variant: str, volume_id: str) -> np.ndarray:
        arr, k = self._grid_array(geometry, variant, volume_id)
        return arr[...] if k is None else arr[k]

    def read_grids(self, geometry: str, variant: str, volume_ids: list[str]) -> np.ndarray:
        """Grid masks of many volumes [N, 3, H, D1, D2]: from the packed copy where it holds them
        (one read for the whole batch), else one read per volume."""
        from ctplatform.store_pack import read_packed

        return read_packed(self, geometry, variant, volume_ids)

    def has_grid(self, geometry: str, variant: str, volume_id: str) -> bool:
        path = self.grid_path(geometry, variant, volume_id)
        if self.has(path):
            return variant in self.array(path).attrs.get("variants", [])
        return self.layout == 1 and self.has(self.legacy_grid_path(geometry, variant, volume_id))

    def grid_ids(self, geometry: str, variant: str) -> list[str]:
        return self.finished_grid_ids(geometry, [variant])

    def finished_grid_ids(self, geometry: str, variants: Iterable[str]) -> list[str]:
        """Ids whose grid masks of `geometry` are published and intact in every one of `variants`."""
        want = set(variants)
        ids = {vid for vid, a in self._finished(f"{GRIDS}/{geometry}").items() if want <= set(a.get("variants", []))}
        if self.layout == 1:
            legacy = [set(self._finished(f"{GRID}/{geometry}/{v}")) for v in want]
            ids |= set.intersection(*legacy) if legacy else set()
        return sorted(ids)

    # ------------------------------------------------------------------ tables and per-item records
    def table_url(self, name: str) -> str:
        return f"{self.root}/{TABLES[name]}"

    def write_record(self, name: str, row: dict[str, Any]) -> None:
        """One item's table row as its own object (atomic), folded into the table later.

        Written by the task that finished the item, while it holds the item's lease, so the newest
        record of an id describes what is in the store now.
        """
        TABLES[name]  # an unknown table raises KeyError here
        volume_id = validate_volume_id(str(row["volume_id"]))
        body = json.dumps(_jsonable(row), allow_nan=True).encode()
        path = self._fs_path("records", name, f"{volume_id}~{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json")
        self._put_atomic(path, body)

    def _records(self, name: str) -> tuple[list[str], pd.DataFrame | None]:
        """(record paths, newest row per id) of the records not yet folded into the table."""
        base = self._fs_path("records", name)
        try:
            paths = sorted(p for p in self.fs.find(base) if p.endswith(".json"))
        except FileNotFoundError:
            return [], None
        if not paths:
            return [], None
        newest: dict[str, str] = {}
        for p in paths:  # sorted: for each id the latest time comes last
            newest[p.rsplit("/", 1)[1].split("~", 1)[0]] = p
        rows = [json.loads(raw) for raw in self._cat(sorted(newest.values())).values()]
        return paths, pd.DataFrame(rows)

    def _read_base(self, name: str) -> pd.DataFrame | None:
        path = self._fs_path(TABLES[name])
        try:
            with self.fs.open(path, "rb") as f:
                return pd.read_parquet(io.BytesIO(f.read()))
        except FileNotFoundError:
            return None

    def read_table(self, name: str) -> pd.DataFrame | None:
        """The table with every pending record folded in, or None when neither exists."""
        base = self._read_base(name)
        _, records = self._records(name)
        if records is None:
            return base
        return _merge(base, records, ["volume_id"])

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        """Replace a table atomically (temporary file, then rename or whole-object put)."""
        buf = io.BytesIO()
        df.reset_index(drop=True).to_parquet(buf, index=False)
        self._put_atomic(self._fs_path(TABLES[name]), buf.getvalue())

    def sync_table(self, name: str) -> pd.DataFrame | None:
        """Fold pending records into the table file and delete them (drivers call this)."""
        with self.lease(f"tables/{name}", wait=TABLE_WAIT_SECONDS, seconds=TABLE_LEASE_SECONDS) as lease:
            base = self._read_base(name)
            paths, records = self._records(name)
            if records is None:
                return base
            merged = _merge(base, records, ["volume_id"])
            lease.check()  # a merge that outlived its lease must not overwrite a newer one
            self.write_table(name, merged)
            self.fs.rm(paths)  # exactly the records folded: newer ones have other names
            return merged

    def upsert_table(self, name: str, rows: pd.DataFrame, key: Iterable[str] = ("volume_id",)) -> pd.DataFrame:
        """Merge rows into a table: rows whose key matches a new row are replaced. Returns the result.

        Pending per-item records are newer than any driver's rows and win over them.
        """
        key = list(key)
        with self.lease(f"tables/{name}", wait=TABLE_WAIT_SECONDS, seconds=TABLE_LEASE_SECONDS) as lease:
            merged = _merge(self._read_base(name), rows, key)
            paths, records = self._records(name) if key == ["volume_id"] else ([], None)
            if records is not None:
                merged = _merge(merged, records, key)
            lease.check()
            self.write_table(name, merged)
            if paths:
                self.fs.rm(paths)
        return merged

    def _cat(self, paths: list[str]) -> dict[str, bytes]:
        """Contents of many small objects (absent ones left out); concurrent on object stores."""
        if not paths:
            return {}
        if isinstance(self.fs, LocalFileSystem):  # plain reads: fsspec's expansion costs more here
            return _local_cat(paths)
        return self.fs.cat(list(paths), on_error="omit")

    def _put_atomic(self, path: str, body: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as f:
            f.write(body)
        self.fs.mv(tmp, path)


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _local_cat(paths: list[str]) -> dict[str, bytes]:
    found = ((p, _read_or_none(p)) for p in paths)
    return {p: b for p, b in found if b is not None}


def _local_sizes(base: str) -> dict[str, int]:
    """`Store._sizes` on local disk with os.scandir (several times faster than fsspec's find);
    Zarr metadata objects are listed with size -1 (not measured)."""
    out: dict[str, int] = {}
    stack = [("", base)]
    while stack:
        rel, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            key = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                stack.append((key + "/", e.path))
            elif e.name == METADATA:  # no caller needs its size: not stat'ing it spares an inode read a
                out[key] = -1         # array on a cold cache (resume planning, benchmarks/store_scale.py)
            elif not e.name.endswith(".partial"):  # zarr's temporary files while it writes one
                out[key] = e.stat(follow_symlinks=False).st_size
    return out


def _merge(old: pd.DataFrame | None, new: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    if old is not None and len(old):
        keep = ~old.set_index(key).index.isin(new.set_index(key).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    return new.sort_values(key, kind="stable").reset_index(drop=True)


def _cheap_problem(attrs: dict[str, Any], files: dict[str, int]) -> str | None:
    """What the recorded chunk count/bytes say is wrong with the chunk objects on disk (None: fine).

    Arrays written before these checks (no `stored_chunks`) are trusted as before, until
    `ctplatform store migrate` records them.
    """
    if not attrs.get("complete", False):
        return "was not finished (re-run the stage)"
    want = attrs.get("stored_chunks")
    if want is None:
        return None
    if len(files) != want:
        return f"{len(files)} chunk objects on disk, {want} when it was written"
    if sum(files.values()) != attrs.get("stored_bytes"):
        return "its chunk objects changed since it was written"
    return None


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    """Zarr attributes are JSON: turn numpy scalars/arrays and tuples into plain lists and numbers."""

    def conv(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in attrs.items()}


# --- manifest.parquet's columns (the store owns its tables' columns) ------------------------------

#: Each column of manifest.parquet, in order (the store contract's first), with the value of a row
#: that has learnt nothing yet: a scan is `failed` until its ingest says otherwise.
MANIFEST_COLUMNS: dict[str, Any] = {
    "volume_id": "",
    "source": "",
    "format": "",
    "status": "failed",
    "error": "",
    "shape": [],
    "spacing": [],
    "sha256": "",
    "split": "",
    "original_shape": [],
    "original_spacing": [],
    "original_orientation": "",
    "skipped": False,
    "seconds": 0.0,
}


def manifest_row(**fields: Any) -> dict[str, Any]:
    """One manifest row: `fields` over the defaults of MANIFEST_COLUMNS (unknown names refused)."""
    unknown = set(fields) - set(MANIFEST_COLUMNS)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    row = {k: (list(v) if isinstance(v, list) else v) for k, v in MANIFEST_COLUMNS.items()}
    row.update(fields)
    return row
