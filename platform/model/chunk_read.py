"""Read a window of a Zarr v3 array by decoding only the chunks it touches, straight into a buffer.

zarr-python's own read of a volume window decodes each chunk into a fresh buffer, then copies it
into a fresh output array: at the paper's crop (405 x 420 x 420 int16, 143 MB) that machinery costs
more CPU than the Blosc-lz4 decode itself (benchmarks/loader.py). Here each chunk's compressed bytes
are fetched (all of a window's chunks concurrently, which matters on object storage) and
Blosc-decompressed directly into the caller's (reused, possibly shared and pinned) buffer when the
chunk lands on a contiguous part of it, else into one reused scratch chunk and copied from there.

Only the layout the store writes takes the fast path (a regular chunk grid, codecs exactly
bytes + blosc, native byte order); anything else (e.g. a sharded array) falls back to zarr's own
`get_basic_selection(out=...)`, with the same result.
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import blosc
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import NDBuffer
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.sync import sync
from zarr.storage import LocalStore


def _fast_path(arr: zarr.Array) -> bool:
    meta = arr.metadata
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(meta.chunk_grid, RegularChunkGrid):
        return False
    codecs = tuple(meta.codecs)
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], BloscCodec):
        return False
    endian = codecs[0].endian
    native = arr.dtype.itemsize == 1 or endian is None or endian.value == sys.byteorder
    return native and arr.dtype.isnative


class WindowReader:
    """Decodes windows of arrays into caller buffers; keeps one scratch chunk between calls."""

    def __init__(self) -> None:
        self._scratch: dict[tuple[tuple[int, ...], str], np.ndarray] = {}

    def scratch(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in self._scratch:
            self._scratch = {key: np.empty(shape, dtype)}  # one live scratch: chunk shapes rarely change
        return self._scratch[key]

    def read(self, arr: zarr.Array, src: tuple[slice, ...], out: np.ndarray) -> None:
        """out[...] = arr[src] (unit-step slices within bounds; out's shape is the window's)."""
        want = tuple(s.stop - s.start for s in src)
        if out.shape != want or out.dtype != arr.dtype:
            raise ValueError(f"out is {out.dtype} {out.shape}, the window is {arr.dtype} {want}")
        if not _fast_path(arr):
            arr.get_basic_selection(src, out=NDBuffer.from_numpy_array(out))
            return
        chunk = tuple(arr.metadata.chunk_grid.chunk_shape)
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(src, chunk)]
        coords = list(itertools.product(*ranges))
        prefix = arr.store_path.path
        keys = [f"{prefix}/{arr.metadata.encode_chunk_key(c)}" if prefix else arr.metadata.encode_chunk_key(c) for c in coords]
        with _chunk_bytes(arr.store_path.store, keys) as raws:
            self._place(arr, src, chunk, coords, raws, out)

    def _place(
        self, arr: zarr.Array, src: tuple[slice, ...], chunk: tuple[int, ...], coords: list, raws: list, out: np.ndarray
    ) -> None:
        fill = arr.metadata.fill_value
        for c, raw in zip(coords, raws):
            # this chunk's part of the window, in array and in chunk coordinates
            lo = [max(s.start, i * n) for s, i, n in zip(src, c, chunk)]
            hi = [min(s.stop, (i + 1) * n) for s, i, n in zip(src, c, chunk)]
            dst = out[tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, src))]
            if raw is None:  # never written: zarr's fill value
                dst[...] = fill
                continue
            whole = all(a == i * n and b == (i + 1) * n for a, b, i, n in zip(lo, hi, c, chunk))
            if whole and dst.flags.c_contiguous:
                blosc.decompress(raw, dst)  # straight into the caller's buffer
                continue
            tmp = self.scratch(chunk, arr.dtype)
            blosc.decompress(raw, tmp)
            dst[...] = tmp[tuple(slice(a - i * n, b - i * n) for a, b, i, n in zip(lo, hi, c, chunk))]


@contextmanager
def _chunk_bytes(store: Any, keys: list[str]) -> Iterator[list[Any]]:
    """Compressed bytes of each key (None when absent). Local files are memory-mapped: reading them
    into fresh Python bytes costs about as much CPU as decoding them."""
    if not isinstance(store, LocalStore):
        yield sync(_get_all(store, keys))
        return
    maps: list[mmap.mmap | None] = []
    try:
        for k in keys:
            try:
                with open(Path(store.root) / k, "rb") as f:
                    maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            except FileNotFoundError:
                maps.append(None)
        yield maps
    finally:
        for m in maps:
            if m is not None:
                m.close()


async def _get_all(store: Any, keys: list[str]) -> list[np.ndarray | None]:
    proto = default_buffer_prototype()
    bufs = await asyncio.gather(*(store.get(k, prototype=proto) for k in keys))
    return [None if b is None else b.as_numpy_array() for b in bufs]
