"""Size an input from its header before reading it, and refuse what cannot fit.

Every reader asks `check_claim` with what the header says (shape, dtype) before a byte of voxel
data is read, so a 1 KB file whose header claims 128 GiB is refused in microseconds with a message
naming the claim ("header claims 30000x30000x30000 int16 = 54 TB"), never by the OOM killer.
Compressed inputs are also held to `ReadLimits.max_compression_ratio`: a gzip bomb (a few hundred
KB that inflate to gigabytes of zeros) is refused from its header and file size, and the bytes
actually inflated are capped at what the header claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctplatform.scans.scan import ScanError

#: Interpreter, libraries and the Zarr writer's chunk buffers (measured: about 0.3 GB).
TASK_OVERHEAD_BYTES = 300_000_000
#: Bytes per source voxel held after the read: the float32 HU copy every reader makes.
WORKING_BYTES_PER_VOXEL = 4
#: Real CT compresses 1.3-2.5x with gzip (the shared scans); zeros-only bombs reach 1000x.
DEFAULT_MAX_COMPRESSION_RATIO = 64.0
#: Label masks are mostly zeros: the phantom's lesion masks gzip 100-220x.
MASK_MAX_COMPRESSION_RATIO = 4096.0
#: Below this a claim cannot hurt, whatever its compression ratio.
BOMB_FLOOR_BYTES = 64_000_000


@dataclass(frozen=True)
class ReadLimits:
    """What one read may take: the task's memory budget and the largest plausible compression."""

    max_bytes: float = 4e9
    max_compression_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO
    budget_name: str = "ingest.memory_per_task_gb"

    @classmethod
    def from_config(cls, cfg: object) -> ReadLimits:
        """Limits from an IngestConfig (memory_per_task_gb, max_compression_ratio)."""
        return cls(
            max_bytes=float(getattr(cfg, "memory_per_task_gb", 4.0)) * 1e9,
            max_compression_ratio=float(getattr(cfg, "max_compression_ratio", DEFAULT_MAX_COMPRESSION_RATIO)),
        )


def human_bytes(n: float) -> str:
    """Decimal units, as disks are sold: 54 TB, 2.1 GB, 261 KB."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def describe(shape: Sequence[int], dtype: np.dtype) -> str:
    """'30000x30000x30000 int16 = 54 TB'."""
    dims = "x".join(str(int(n)) for n in shape)
    return f"{dims} {np.dtype(dtype).name} = {human_bytes(claimed_bytes(shape, dtype))}"


def claimed_bytes(shape: Sequence[int], dtype: np.dtype) -> int:
    """Bytes of the voxel data the header claims (Python ints: no overflow for absurd shapes)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n * np.dtype(dtype).itemsize


def check_dtype(name: str, dtype: np.dtype, what: str = "header") -> None:
    """Refuse dtypes that are not a real-valued greyscale CT (complex, RGB, bool, strings)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ScanError(
            f"{name}: {what} says the voxels are complex ({dtype.name}); a CT holds real HU values "
            "(dropping the imaginary part would be silently wrong)"
        )
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise ScanError(f"{name}: {what} says the voxels are {dtype} (RGB, boolean or text), not greyscale CT numbers")


def check_claim(
    name: str,
    shape: Sequence[int],
    dtype: np.dtype,
    limits: ReadLimits | None,
    *,
    stored_bytes: int | None = None,
    compressed: bool = False,
    what: str = "header",
) -> int:
    """Raise ScanError when the claimed volume cannot be read within `limits`; returns its bytes.

    `stored_bytes`: bytes the file holds for the data (compressed size for gzip/deflate); an
    uncompressed file shorter than the claim is truncated, a compressed one that would inflate
    more than `max_compression_ratio` is a bomb or a corrupt header.
    """
    limits = limits or ReadLimits()
    check_dtype(name, dtype, what)
    if any(int(n) < 0 for n in shape):
        raise ScanError(f"{name}: {what} claims a negative dimension ({'x'.join(str(int(n)) for n in shape)})")
    if any(int(n) == 0 for n in shape):
        raise ScanError(f"{name}: {what} claims an empty volume ({'x'.join(str(int(n)) for n in shape)})")
    raw = claimed_bytes(shape, dtype)
    voxels = raw // np.dtype(dtype).itemsize
    need = raw + WORKING_BYTES_PER_VOXEL * voxels + TASK_OVERHEAD_BYTES
    if need > limits.max_bytes:
        raise ScanError(
            f"{name}: {what} claims {describe(shape, dtype)}; reading it needs about {human_bytes(need)}, over the "
            f"task budget {limits.budget_name}={limits.max_bytes / 1e9:g}; a corrupt header, or raise the budget"
        )
    if stored_bytes is not None:
        if not compressed and stored_bytes < raw:
            raise ScanError(
                f"{name}: {what} claims {describe(shape, dtype)} but the file holds only {human_bytes(stored_bytes)} "
                "of voxel data: truncated or a corrupt header; re-copy or re-export it"
            )
        if compressed and raw > BOMB_FLOOR_BYTES and raw > limits.max_compression_ratio * max(stored_bytes, 1):
            raise ScanError(
                f"{name}: {what} claims {describe(shape, dtype)} from {human_bytes(stored_bytes)} compressed "
                f"(ratio {raw / max(stored_bytes, 1):.0f}:1, over the plausible {limits.max_compression_ratio:g}:1 "
                "for CT): a decompression bomb or a corrupt header"
            )
    return raw


def check_spacing(name: str, spacing: Sequence[float], what: str = "affine") -> None:
    """Refuse zero, negative or non-finite voxel sizes with a message naming them."""
    arr = np.asarray(spacing, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        shown = ", ".join(f"{float(s):g}" for s in arr)
        raise ScanError(
            f"{name}: the {what} gives voxel sizes ({shown}) mm: a size is zero or not finite, so the "
            "volume has no usable geometry; fix the header's voxel sizes (pixdim/srow)"
        )
