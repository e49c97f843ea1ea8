"""Volume and model geometry: the one source of truth shared by ingest, PARTITION, training and evaluation.

Stored orientation: array axes [z, y, x] with z toward the feet, y toward the patient's back and x
toward the patient's left (nibabel axis codes `I`, `P`, `L`). Slice 0 is nearest the head.

Model geometry: the volume is padded (with its minimum) and centre-cropped to `input_shape`
[Z, Y, X]; three consecutive axial slices make one slice group, so H = Z / 3. ResNet-18 without its
last two children divides each in-plane size by 32 (rounding up; by 8 or 16 when cut after layer2 or
layer3, `backbone_layers`, so a small CPU input keeps a grid fine enough to localise on), then the custom convolutions
(3x3, four of them) shrink it by 2 each when unpadded (the paper: 420 -> 14 -> 6) or keep it when
padded (used by the small CPU geometries). The resulting grid [H, D1, D2] is where HiResCAM maps
live and where PARTITION's grid masks are built; a grid mask's cell (h, i, j) summarises the
cropped input block z in [3h, 3h+3), y in [i*Y/D1, (i+1)*Y/D1), x in [j*X/D2, (j+1)*X/D2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: nibabel axis codes of the stored arrays: axis 0 -> Inferior, 1 -> Posterior, 2 -> Left.
STORE_AXCODES: tuple[str, str, str] = ("I", "P", "L")
STORE_ORIENTATION = "".join(STORE_AXCODES)

#: ResNet-18's stride-2 stages before its last two children (conv1, maxpool, layer2, layer3, layer4).
RESNET18_STRIDE2_STAGES = 5
CUSTOM_CONV_LAYERS = 4
#: Output channels of ResNet-18 cut after layer1..layer4 (the paper keeps all four: 512).
RESNET18_LAYER_CHANNELS: dict[int, int] = {1: 64, 2: 128, 3: 256, 4: 512}


def resnet18_stride2_stages(backbone_layers: int = 4) -> int:
    """Stride-2 stages of ResNet-18 cut after layer `backbone_layers`: conv1, maxpool, then layer2.. each."""
    if backbone_layers not in RESNET18_LAYER_CHANNELS:
        raise ValueError(f"backbone_layers must be one of {sorted(RESNET18_LAYER_CHANNELS)}, got {backbone_layers}")
    return 2 + max(0, backbone_layers - 1)


def resnet18_feature_size(n: int, backbone_layers: int = 4) -> int:
    """Spatial size after ResNet-18's convolutional body (cut after layer `backbone_layers`) for size n."""
    for _ in range(resnet18_stride2_stages(backbone_layers)):
        n = (n - 1) // 2 + 1
    return n


@dataclass(frozen=True)
class ModelGeometry:
    """Input crop and the feature grid AxialNet produces from it."""

    input_shape: tuple[int, int, int]  # [Z, Y, X] voxels after pad/centre-crop
    slices_per_group: int = 3
    custom_conv_padding: int = 0  # 0: the paper's valid 3x3 convs; 1: size-preserving
    backbone_layers: int = 4  # ResNet-18 cut after layer2 (stride 8) or layer3 (stride 16); 4 = the paper

    def __post_init__(self) -> None:
        z, y, x = self.input_shape
        if z % self.slices_per_group:
            raise ValueError(
                f"input depth {z} is not a multiple of slices_per_group={self.slices_per_group}"
            )
        resnet18_stride2_stages(self.backbone_layers)  # raises on an unknown depth
        if min(self.grid) < 1:
            raise ValueError(f"input_shape {self.input_shape} is too small: feature grid {self.grid}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Feature grid [H, D1, D2]."""
        z, y, x = self.input_shape
        shrink = CUSTOM_CONV_LAYERS * 2 * (1 - self.custom_conv_padding)
        return (
            z // self.slices_per_group,
            resnet18_feature_size(y, self.backbone_layers) - shrink,
            resnet18_feature_size(x, self.backbone_layers) - shrink,
        )

    @property
    def backbone_channels(self) -> int:
        """Channels the cut ResNet-18 hands to the custom convolutions."""
        return RESNET18_LAYER_CHANNELS[self.backbone_layers]

    def cell_block(self, h: int, i: int, j: int) -> tuple[slice, slice, slice]:
        """The cropped-input block [z, y, x] that grid cell (h, i, j) summarises (see the module docstring)."""
        z, y, x = self.input_shape
        _, d1, d2 = self.grid
        s = self.slices_per_group
        return (
            slice(s * h, s * (h + 1)),
            slice(i * y // d1, (i + 1) * y // d1),
            slice(j * x // d2, (j + 1) * x // d2),
        )

    @property
    def name(self) -> str:
        """Store key of this geometry's grid masks, e.g. `135x6x6`."""
        return "x".join(str(n) for n in self.grid)


def crop_or_pad_slices(shape: tuple[int, ...], target: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Per axis: (source start, source stop, destination start, destination stop) of a centre crop/pad."""
    out = []
    for n, t in zip(shape, target, strict=True):
        if n >= t:
            s = (n - t) // 2
            out.append((s, s + t, 0, t))
        else:
            d = (t - n) // 2
            out.append((0, n, d, d + n))
    return out


def center_crop_or_pad(array: np.ndarray, target: tuple[int, ...], fill: float | int | None = None) -> np.ndarray:
    """Centre-crop or pad the last len(target) axes of `array` to `target`.

    `fill` defaults to the array's minimum (the published code pads CT volumes with the minimum).
    The same function crops volumes for training and organ masks for PARTITION, so a voxel lands in
    the same place in both.
    """
    lead = array.shape[: array.ndim - len(target)]
    spatial = array.shape[array.ndim - len(target) :]
    if fill is None:
        fill = array.min() if array.size else 0
    out = np.full(lead + tuple(target), fill, dtype=array.dtype)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for a, b, c, d in crop_or_pad_slices(spatial, target):
        src.append(slice(a, b))
        dst.append(slice(c, d))
    out[tuple(dst)] = array[tuple(src)]
    return out
