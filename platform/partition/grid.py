"""Grid masks: the organ map summarised on the model's feature grid [H, D1, D2] (paper 7.2.3).

The organ map is first padded (with 0) and centre-cropped to the model's `input_shape` by
`geometry.center_crop_or_pad`, the same function that crops the CT volume for training, so a voxel
lands in the same place in both. Each organ is then downsampled to the grid as the published code
does with `torch.nn.functional.interpolate` (nearest | trilinear | area, align_corners=False) and
thresholded at > 0: "anything that is not zero, round up to 1" (published mask.py), for every
method, so

- nearest: the cell is set when its sample voxel floor(i * in / out) is in the organ;
- trilinear: when any voxel with a positive interpolation weight is in the organ;
- area: when any voxel of the adaptive-average window [floor(i * in / out), ceil((i + 1) * in / out))
  is in the organ.

Because the threshold is > 0 on non-negative weights, each method reduces to index selection and
logical OR along one axis at a time; the three organs travel together as bits of one uint8, so
all six variants of a 405 x 420 x 420 map take a fraction of a second in numpy (a test compares
every method with torch's interpolate, cell for cell). The `-dilated` variants add a 3x3x3 binary
dilation on the grid with zero padding (the published conv3d-with-ones, clamped).

Fallback (QC failed): the paper's heuristic regions on the grid, the cells that overlap the right
half (right lung), the left half (left lung) and the centre half (mediastinum) of the input's x
extent, over every slice group and row; for 6 columns this is the published 0:3, 3:6 and 1:5.
The dilated variants dilate these too, as the published code did.

Lesion truth (store.read_truth, a bitfield on the volume's voxels) takes the organs' path onto the
grid: `truth_on_grid` crops it like the volume and downsamples every bit at once with
`downsample_bits`, so `area` marks a cell when any lesion voxel falls in it. There is no fallback
and no dilation for truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctplatform.config import GRID_METHODS, GRID_VARIANTS
from ctplatform.geometry import ModelGeometry, center_crop_or_pad
from ctplatform.labels import CODE_BITS, ORGAN_BITS, ORGANS

N_ORGANS = len(ORGANS)
#: organ code -> organ bit (labels.CODE_BITS).
_BITS = np.array(CODE_BITS, dtype=np.uint8)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """torch 'nearest' (legacy): min(floor(i * float(n_in) / n_out), n_in - 1), in float32 like torch."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def linear_indices(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """torch 'linear' with align_corners=False: the two source indices with positive weight.

    src = max(scale * (i + 0.5) - 0.5, 0) in float32; i0 = floor(src); the second index is i0 + 1
    when its weight src - i0 is positive and i0 + 1 exists, else i0 again.
    """
    if n_in == n_out:
        i = np.arange(n_out)
        return i, i
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    second = (src - i0.astype(np.float32) > 0) & (i0 < n_in - 1)
    return i0, np.where(second, i0 + 1, i0)


def area_windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """torch adaptive average pooling windows [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    i = np.arange(n_out)
    return (i * n_in) // n_out, ((i + 1) * n_in + n_out - 1) // n_out


def _or_windows(a: np.ndarray, starts: np.ndarray, stops: np.ndarray, axis: int) -> np.ndarray:
    if np.array_equal(stops[:-1], starts[1:]) and starts[0] == 0 and stops[-1] == a.shape[axis]:
        return np.bitwise_or.reduceat(a, starts, axis=axis)  # windows tile the axis
    parts = [np.bitwise_or.reduce(np.take(a, np.arange(s, e), axis=axis), axis=axis, keepdims=True) for s, e in zip(starts, stops)]
    return np.concatenate(parts, axis=axis)


def downsample_bits(bits: np.ndarray, grid: tuple[int, int, int], method: str) -> np.ndarray:
    """Bits [Z, Y, X] (any unsigned dtype) -> [H, D1, D2] of that dtype with each bit set where it is > 0."""
    out = bits
    for axis, n_out in enumerate(grid):
        n_in = out.shape[axis]
        if method == "nearest":
            out = np.take(out, nearest_indices(n_in, n_out), axis=axis)
        elif method == "trilinear":
            i0, i1 = linear_indices(n_in, n_out)
            out = np.take(out, i0, axis=axis) | np.take(out, i1, axis=axis)
        elif method == "area":
            out = _or_windows(out, *area_windows(n_in, n_out), axis=axis)
        else:
            raise ValueError(f"unknown downsampling method {method!r}; choose from {list(GRID_METHODS)}")
    return out


def unpack(bits: np.ndarray) -> np.ndarray:
    """uint8 organ bits [H, D1, D2] -> bool [3, H, D1, D2] (right lung, left lung, mediastinum)."""
    return np.stack([(bits & ORGAN_BITS[name]) != 0 for name in ORGANS])


def dilate(mask: np.ndarray) -> np.ndarray:
    """3x3x3 binary dilation of each organ's grid with zero padding: bool [3, H, D1, D2]."""
    cube = np.ones((3, 3, 3), dtype=bool)
    return np.stack([ndimage.binary_dilation(m, structure=cube) for m in mask])


def heuristic_grid(geometry: ModelGeometry) -> np.ndarray:
    """The paper's fallback regions on the grid (module docstring): bool [3, H, D1, D2]."""
    h, d1, d2 = geometry.grid
    x_in = geometry.input_shape[2]
    j = np.arange(d2)
    lo, hi = j * x_in / d2, (j + 1) * x_in / d2  # each column's x extent in the input

    def overlapping(a: float, b: float) -> np.ndarray:
        return (lo < b) & (hi > a)

    cols = [overlapping(0, x_in / 2), overlapping(x_in / 2, x_in), overlapping(x_in / 4, 3 * x_in / 4)]
    return np.stack([np.broadcast_to(c, (h, d1, d2)) for c in cols]).copy()


def organ_bits_in_input(organs: np.ndarray, geometry: ModelGeometry) -> np.ndarray:
    """The organ map cropped/padded exactly like the training volume, as organ bits uint8 [Z, Y, X]."""
    if organs.dtype != np.uint8 or organs.ndim != 3:
        raise ValueError(f"organ maps are uint8 [z, y, x]; got {organs.dtype} {organs.shape}")
    if organs.max(initial=0) > N_ORGANS:
        raise ValueError(f"organ codes must be 0..{N_ORGANS}; got {int(organs.max())}")
    return _BITS[center_crop_or_pad(organs, geometry.input_shape, fill=0)]


def grid_masks(
    organs: np.ndarray,
    geometry: ModelGeometry,
    variants: list[str] | tuple[str, ...] = GRID_VARIANTS,
    fallback: bool = False,
) -> dict[str, np.ndarray]:
    """Every requested variant's bool [3, H, D1, D2] mask for one organ map."""
    unknown = sorted(set(variants) - set(GRID_VARIANTS))
    if unknown:
        raise ValueError(f"unknown grid variants {unknown}; choose from {list(GRID_VARIANTS)}")
    plain: dict[str, np.ndarray] = {}
    bits = None if fallback else organ_bits_in_input(organs, geometry)
    out: dict[str, np.ndarray] = {}
    for variant in variants:
        method = variant.removesuffix("-dilated")
        if method not in plain:
            plain[method] = heuristic_grid(geometry) if bits is None else unpack(downsample_bits(bits, geometry.grid, method))
        out[variant] = dilate(plain[method]) if variant.endswith("-dilated") else plain[method].copy()
    return out


def truth_on_grid(bits: np.ndarray, geometry: ModelGeometry, methods: tuple[str, ...] = GRID_METHODS) -> dict[str, np.ndarray]:
    """A truth bitfield on the volume's voxels -> the same bits on the feature grid, per method."""
    if not np.issubdtype(bits.dtype, np.unsignedinteger) or bits.ndim != 3:
        raise ValueError(f"truth is an unsigned-integer bitfield [z, y, x]; got {bits.dtype} {bits.shape}")
    cropped = center_crop_or_pad(bits, geometry.input_shape, fill=0)
    return {m: downsample_bits(cropped, geometry.grid, m) for m in methods}
