"""The store contract: one Zarr v3 group of arrays plus Parquet tables (see DESIGN.md, "The store").

    STORE/data.zarr/volumes/<id>                      int16 HU [z, y, x], stored orientation (geometry.py)
    STORE/data.zarr/organs/<id>                       uint8 [z, y, x]: labels.ORGAN_CODES, 0 other
    STORE/data.zarr/grid/<geometry>/<variant>/<id>    bool [3, H, D1, D2]
    STORE/data.zarr/truth/<id>                        uint8..64 [z, y, x]: lesion truth bitfield on the volume's voxels
    STORE/data.zarr/truth_grid/<geometry>/<method>/<id>  the same bits on the feature grid [H, D1, D2]
    STORE/manifest.parquet, labels.parquet, partition.parquet

Writes are atomic per item: an array is created with `complete: false`, filled, then marked
`complete: true` (Zarr's local store replaces each metadata file atomically, and object stores put
whole objects), so a killed job leaves items that read as unfinished and are redone. Tables are
replaced whole through a temporary file. Array attributes are restricted to geometry and provenance
keys (`ALLOWED_ATTRS`): no patient names, IDs, dates or report text can enter the store through them.
The root may be a local path or an fsspec URL (e.g. s3://bucket/store, with s3fs installed).
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterable
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

VOLUMES, ORGANS, GRID = "volumes", "organs", "grid"
TRUTH, TRUTH_GRID = "truth", "truth_grid"
#: Name of the truth bit that marks a confounder region (not a lesion); see `write_truth`.
CONFOUNDER = "confounder"
TABLES: dict[str, str] = {
    "manifest": "manifest.parquet",
    "labels": "labels.parquet",
    "partition": "partition.parquet",
}
ALLOWED_ATTRS: frozenset[str] = frozenset(
    {
        "complete",
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
        "organs",
        "qc_flags",
        "fallback",
        "truth_labels",  # truth bitfields: bit k marks truth_labels[k] (a label name, or "confounder")
        "confounder",  # {"kind": ..., "label": ...}: what the confounder region is and which label it tracks
    }
)
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _compressor(dtype: np.dtype) -> BloscCodec:
    # Bit-shuffle suits int16 HU (high bytes are nearly constant); plain shuffle is enough for bytes.
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize > 1 else "shuffle"
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


class IncompleteItemError(KeyError):
    """The item is absent or was not finished (a killed writer)."""


class Store:
    """A CT store on a local path or fsspec URL."""

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self._fs_root = fsspec.core.url_to_fs(self.root)
        self._group: zarr.Group | None = None

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ------------------------------------------------------------------ layout
    @property
    def zarr_url(self) -> str:
        return f"{self.root}/data.zarr"

    def exists(self) -> bool:
        return self.fs.exists(f"{self._fs_root}/data.zarr/zarr.json")

    @property
    def group(self) -> zarr.Group:
        """The root group, created with its three sub-groups on first use."""
        if self._group is None:
            if not self.exists():
                self.fs.makedirs(self._fs_root, exist_ok=True)
                root = zarr.open_group(self.zarr_url, mode="a", zarr_format=3)
                for name in (VOLUMES, ORGANS, GRID):
                    root.require_group(name)
            self._group = zarr.open_group(self.zarr_url, mode="a", zarr_format=3)
        return self._group

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships Store objects to tasks: reopen lazily there instead of pickling handles.
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])

    @staticmethod
    def volume_path(volume_id: str) -> str:
        return f"{VOLUMES}/{validate_volume_id(volume_id)}"

    @staticmethod
    def organs_path(volume_id: str) -> str:
        return f"{ORGANS}/{validate_volume_id(volume_id)}"

    @staticmethod
    def grid_path(geometry: str, variant: str, volume_id: str) -> str:
        return f"{GRID}/{geometry}/{variant}/{validate_volume_id(volume_id)}"

    # ------------------------------------------------------------------ arrays
    def write_array(
        self,
        path: str,
        data: np.ndarray,
        attrs: dict[str, Any],
        chunks: tuple[int, ...] | None = None,
    ) -> zarr.Array:
        """Write one item atomically (see module docstring); replaces any earlier item at `path`."""
        bad = sorted(set(attrs) - ALLOWED_ATTRS)
        if bad:
            raise ValueError(f"attributes {bad} are not allowed in the store (geometry/provenance only)")
        arr = self.group.create_array(
            path,
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunks or data.shape,
            compressors=_compressor(data.dtype),
            fill_value=0,
            overwrite=True,
            attributes={**_jsonable(attrs), "complete": False},
        )
        arr[...] = data
        arr.attrs["complete"] = True
        return arr

    def array(self, path: str) -> zarr.Array:
        """A finished array, opened lazily; raises IncompleteItemError when absent or unfinished."""
        try:
            arr = self.group[path]
        except (KeyError, FileNotFoundError):
            raise IncompleteItemError(f"{path} is not in the store {self.root}") from None
        if not isinstance(arr, zarr.Array) or not arr.attrs.get("complete", False):
            raise IncompleteItemError(f"{path} in {self.root} was not finished (re-run the stage)")
        return arr

    def has(self, path: str) -> bool:
        try:
            self.array(path)
        except IncompleteItemError:
            return False
        return True

    def write_volume(self, volume_id: str, hu: np.ndarray, attrs: dict[str, Any], chunk_slices: int = 24) -> None:
        if hu.dtype != np.int16 or hu.ndim != 3:
            raise ValueError(f"volumes are int16 [z, y, x]; got {hu.dtype} {hu.shape}")
        chunks = (min(chunk_slices, hu.shape[0]), hu.shape[1], hu.shape[2])
        self.write_array(self.volume_path(volume_id), hu, attrs, chunks=chunks)

    def volume(self, volume_id: str) -> zarr.Array:
        return self.array(self.volume_path(volume_id))

    def read_volume(self, volume_id: str) -> np.ndarray:
        return self.volume(volume_id)[...]

    def has_volume(self, volume_id: str, sha256: str | None = None) -> bool:
        """A finished volume exists (and, when given, was made from a source with this sha256)."""
        try:
            arr = self.volume(volume_id)
        except IncompleteItemError:
            return False
        return sha256 is None or arr.attrs.get("source_sha256") == sha256

    def write_organs(self, volume_id: str, organs: np.ndarray, attrs: dict[str, Any], chunk_slices: int = 24) -> None:
        if organs.dtype != np.uint8 or organs.ndim != 3:
            raise ValueError(f"organ maps are uint8 [z, y, x]; got {organs.dtype} {organs.shape}")
        chunks = (min(chunk_slices, organs.shape[0]), organs.shape[1], organs.shape[2])
        self.write_array(self.organs_path(volume_id), organs, attrs, chunks=chunks)

    def read_organs(self, volume_id: str) -> np.ndarray:
        return self.array(self.organs_path(volume_id))[...]

    def has_organs(self, volume_id: str) -> bool:
        return self.has(self.organs_path(volume_id))

    def write_grid(self, geometry: str, variant: str, volume_id: str, mask: np.ndarray, attrs: dict[str, Any]) -> None:
        if mask.dtype != np.bool_ or mask.ndim != 4 or mask.shape[0] != 3:
            raise ValueError(f"grid masks are bool [3, H, D1, D2]; got {mask.dtype} {mask.shape}")
        self.write_array(self.grid_path(geometry, variant, volume_id), mask, attrs)

    def read_grid(self, geometry: str, variant: str, volume_id: str) -> np.ndarray:
        return self.array(self.grid_path(geometry, variant, volume_id))[...]

    def has_grid(self, geometry: str, variant: str, volume_id: str) -> bool:
        return self.has(self.grid_path(geometry, variant, volume_id))

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
        if self.truth_path(volume_id) in self.group:
            del self.group[self.truth_path(volume_id)]

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

    def _finished_members(self, group_path: str) -> list[str]:
        try:
            grp = self.group[group_path]
        except KeyError:
            return []
        return sorted(
            name for name, arr in grp.arrays() if arr.attrs.get("complete", False)
        )

    def volume_ids(self) -> list[str]:
        """Ids of all finished volumes, sorted."""
        return self._finished_members(VOLUMES)

    def organ_ids(self) -> list[str]:
        return self._finished_members(ORGANS)

    def grid_ids(self, geometry: str, variant: str) -> list[str]:
        return self._finished_members(f"{GRID}/{geometry}/{variant}")

    # ------------------------------------------------------------------ tables
    def table_url(self, name: str) -> str:
        return f"{self.root}/{TABLES[name]}"

    def read_table(self, name: str) -> pd.DataFrame | None:
        """The table, or None when it was never written."""
        path = f"{self._fs_root}/{TABLES[name]}"
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return pd.read_parquet(io.BytesIO(f.read()))

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        """Replace a table atomically (temporary file, then rename or whole-object put)."""
        path = f"{self._fs_root}/{TABLES[name]}"
        self.fs.makedirs(self._fs_root, exist_ok=True)
        buf = io.BytesIO()
        df.reset_index(drop=True).to_parquet(buf, index=False)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as f:
            f.write(buf.getvalue())
        self.fs.mv(tmp, path)

    def upsert_table(self, name: str, rows: pd.DataFrame, key: Iterable[str] = ("volume_id",)) -> pd.DataFrame:
        """Merge rows into a table: rows whose key matches a new row are replaced. Returns the result.

        Only the driver of a stage calls this (tasks return rows), so there is one writer per table.
        """
        key = list(key)
        old = self.read_table(name)
        if old is not None and len(old):
            keep = ~old.set_index(key).index.isin(rows.set_index(key).index)
            rows = pd.concat([old[keep], rows], ignore_index=True)
        rows = rows.sort_values(key, kind="stable").reset_index(drop=True)
        self.write_table(name, rows)
        return rows


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
