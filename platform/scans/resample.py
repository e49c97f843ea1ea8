"""Resampling a volume to a new voxel spacing: separable trilinear (or nearest) interpolation.

Grid convention (the same as SimpleITK's resampling with the input origin kept, which the reference
pipeline used): output voxel i along an axis sits at input continuous index i * t / s (s the input
spacing, t the target), so voxel 0 keeps its world position and the spacing is exactly t. The output
has round(n * s / t) voxels, so the physical extent is preserved; sample positions that fall past
the last input voxel centre (by less than half an input voxel) take the edge value. The resampled
affine is therefore `affine @ diag(t/s, 1)` (see `resampled_affine`).

Trilinear interpolation is separable: it is one 1-D linear interpolation per axis. Doing the three
passes on slabs of output slices keeps memory at input + output + a few slabs and is several times
faster than scipy.ndimage's general-purpose routines, which visit 8 neighbours per output voxel.
Integer outputs are clipped and rounded to nearest in the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Output slices per slab: small enough to stay in cache-friendly sizes, large enough to amortise calls.
SLAB_SLICES = 8


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """Voxels per axis after resampling: round(n * s / t), at least 1."""
    return tuple(
        max(1, int(np.floor(n * s / t + 0.5))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


def resampled_affine(affine: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float]) -> np.ndarray:
    """Voxel-to-world affine of the resampled grid (voxel 0 keeps its position)."""
    scale = np.diag([*(t / s for s, t in zip(spacing, target_spacing, strict=True)), 1.0])
    return np.asarray(affine, dtype=np.float64) @ scale


def _linear_taps(n_in: int, n_out: int, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper input index and upper weight for each output position i * ratio (edge-clamped)."""
    pos = np.arange(n_out, dtype=np.float64) * ratio
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    return lo, hi, w


def _nearest_taps(n_in: int, n_out: int, ratio: float) -> np.ndarray:
    pos = np.arange(n_out, dtype=np.float64) * ratio
    # floor(x + 0.5) rounds halves up, deterministically (np.rint rounds halves to even).
    return np.clip(np.floor(pos + 0.5), 0, n_in - 1).astype(np.intp)


def _lerp_axis(a: np.ndarray, axis: int, taps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """1-D linear interpolation of float32 `a` along `axis`: a[lo] + (a[hi] - a[lo]) * w."""
    lo, hi, w = taps
    out = np.take(a, lo, axis=axis)
    if not np.any(w):
        return out
    diff = np.take(a, hi, axis=axis)
    diff -= out
    shape = [1] * a.ndim
    shape[axis] = -1
    diff *= w.reshape(shape)
    out += diff
    return out


def _finish(slab: np.ndarray, dtype: np.dtype, clip: tuple[float, float] | None) -> np.ndarray:
    if clip is not None:
        np.clip(slab, clip[0], clip[1], out=slab)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if clip is None:
            np.clip(slab, info.min, info.max, out=slab)
        np.rint(slab, out=slab)
    return slab.astype(dtype, copy=False)


def resample(
    volume: np.ndarray,
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    order: int = 1,
    dtype: np.dtype | type | None = None,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Resample a 3-D `volume` from `spacing` to `target_spacing` (mm, per array axis).

    order: 1 trilinear (images), 0 nearest (label maps: values are never mixed).
    dtype: output dtype; default float32 for trilinear, the input dtype for nearest. Integer outputs
    are rounded to nearest after clipping to `clip` (or to the dtype's range).
    """
    if volume.ndim != 3:
        raise ValueError(f"resample expects a 3-D volume, got shape {volume.shape}")
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (trilinear), got {order}")
    spacing = tuple(float(s) for s in spacing)
    target_spacing = tuple(float(t) for t in target_spacing)
    if min(spacing + target_spacing) <= 0:
        raise ValueError(f"spacings must be positive: {spacing} -> {target_spacing}")
    out_shape = resampled_shape(volume.shape, spacing, target_spacing)
    ratios = [t / s for s, t in zip(spacing, target_spacing)]
    if dtype is None:
        dtype = volume.dtype if order == 0 else np.float32
    dtype = np.dtype(dtype)

    if order == 0:
        iz, iy, ix = (_nearest_taps(n, m, r) for n, m, r in zip(volume.shape, out_shape, ratios))
        out = volume[np.ix_(iz, iy, ix)]
        if clip is not None or out.dtype != dtype:
            out = _finish(out.astype(np.float32), dtype, clip) if clip is not None else out.astype(dtype)
        return out

    taps = [_linear_taps(n, m, r) for n, m, r in zip(volume.shape, out_shape, ratios)]
    identity = [m == n and r == 1.0 for n, m, r in zip(volume.shape, out_shape, ratios)]
    out = np.empty(out_shape, dtype=dtype)
    zlo, zhi, zw = taps[0]
    for start in range(0, out_shape[0], SLAB_SLICES):
        stop = min(start + SLAB_SLICES, out_shape[0])
        # Only the input slices this slab needs are converted to float32.
        if identity[0]:
            slab = volume[start:stop].astype(np.float32)  # a copy: later passes work in place
        else:
            lo, hi, w = zlo[start:stop], zhi[start:stop], zw[start:stop]
            first = int(lo.min())
            src = volume[first : int(hi.max()) + 1].astype(np.float32)
            slab = _lerp_axis(src, 0, (lo - first, hi - first, w))
        if not identity[1]:
            slab = _lerp_axis(slab, 1, taps[1])
        if not identity[2]:
            slab = _lerp_axis(slab, 2, taps[2])
        out[start:stop] = _finish(slab, dtype, clip)
    return out
