"""AxialNet (paper 000, section 3.2) with HiResCAM in closed form (section 3.4) and 3D Grad-CAM (3.5).

    x [B, H, 3, Y, X] --ResNet-18 body + custom convs, per slice group--> Z [B, H, F=16, D1, D2]
      --one fully connected layer shared by all slice groups--> C [B, 80, H] --mean over H--> s [B, 80]

Because s_m = (1/H) sum_h (w_m . z_h) + b_m, the gradient of s_m with respect to Z is w_m / H at
every slice group, so HiResCAM_m = sum_f (w_m / H) * Z (paper eq. 8) is one einsum in the forward
pass, and Grad-CAM's gradient average over (H, D1, D2) is the mean of w_m over (D1, D2) divided by H.
No backward pass is needed for either; `tests/model/test_axialnet.py` checks both against autograd.

The feature grid [H, D1, D2] is `cfg.model.geometry.grid` (ctplatform.geometry is the one source of
truth); the model measures its own grid at construction and refuses a mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torchvision
from torch import nn

from ctplatform.geometry import ModelGeometry
from ctplatform.labels import N_LABELS
from ctplatform.model.cams import gradcam_from_features, hirescam_from_features

if TYPE_CHECKING:
    from ctplatform.config import Config

#: Channels of the paper's custom convolutions after ResNet-18's 512 (appendix: 512->64->32->16->16).
CUSTOM_CONV_CHANNELS: tuple[int, ...] = (512, 64, 32, 16, 16)


class AxialNetOutput(NamedTuple):
    logits: torch.Tensor  # [B, 80] whole-volume scores s
    slice_scores: torch.Tensor  # [B, 80, H] the per-slice score matrix C
    hirescam: torch.Tensor | None  # [B, 80, H, D1, D2] raw HiResCAM maps (None when not asked for)


def resnet18_body(pretrained_weights: Path | str | None = None, layers: int = 4) -> nn.Sequential:
    """torchvision ResNet-18 without its last two children (avgpool, fc), cut after layer `layers`.

    `pretrained_weights` is a local torchvision resnet18 state_dict (e.g. ImageNet weights saved with
    torch.save); nothing is downloaded. None gives random initialisation.
    """
    net = torchvision.models.resnet18(weights=None)
    if pretrained_weights is not None:
        path = Path(pretrained_weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained backbone weights {path} not found; set model.pretrained_weights to a local "
                "torchvision resnet18 state_dict, or to null for random initialisation"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{path} is not a torchvision resnet18 state_dict ({str(e).splitlines()[0]})"
            ) from None
    # children: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc
    return nn.Sequential(*list(net.children())[: 4 + layers])


def custom_convs(padding: int, in_channels: int = CUSTOM_CONV_CHANNELS[0]) -> nn.Sequential:
    """The paper's 3x3 convolutions 512->64->32->16->16 with ReLU after each (padding 0 = paper).

    A backbone cut after layer2 or layer3 hands over 128 or 256 channels; the first conv takes those.
    """
    channels = (in_channels, *CUSTOM_CONV_CHANNELS[1:])
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=padding), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class AxialNet(nn.Module):
    """ResNet-18 body and custom convs per slice group, one shared FC layer, mean over slice groups."""

    def __init__(
        self,
        geometry: ModelGeometry,
        n_labels: int = N_LABELS,
        pretrained_weights: Path | str | None = None,
    ) -> None:
        super().__init__()
        if geometry.slices_per_group != 3:
            raise ValueError("AxialNet's ResNet-18 takes 3-channel slice groups: slices_per_group must be 3")
        self.geometry = geometry
        self.n_labels = n_labels
        self.pretrained = pretrained_weights is not None
        self.backbone = resnet18_body(pretrained_weights, geometry.backbone_layers)
        self.custom_convs = custom_convs(geometry.custom_conv_padding, geometry.backbone_channels)
        h, d1, d2 = geometry.grid
        self.n_features = CUSTOM_CONV_CHANNELS[-1]
        # One linear map of a slice group's flattened [F, D1, D2] representation to the 80 scores,
        # shared by all slice groups (the published code's Conv2d with a D1 x D2 kernel, same maths).
        self.fc = nn.Linear(self.n_features * d1 * d2, n_labels)
        measured = self.measure_grid()
        if measured != geometry.grid:
            raise ValueError(
                f"AxialNet on input {geometry.input_shape} produces the feature grid {measured}, but "
                f"ctplatform.geometry says {geometry.grid}; the two must agree (fix geometry.py)"
            )

    @torch.no_grad()
    def measure_grid(self) -> tuple[int, int, int]:
        """The feature grid [H, D1, D2] this network produces, measured on one zero slice group."""
        _, y, x = self.geometry.input_shape
        was_training = self.training
        self.eval()
        probe = torch.zeros(1, 3, y, x)
        d1, d2 = self.custom_convs(self.backbone(probe)).shape[-2:]
        self.train(was_training)
        return (self.geometry.grid[0], int(d1), int(d2))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Z [B, H, F, D1, D2] from slice groups x [B, H, 3, Y, X]."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"AxialNet input must be [B, H, 3, Y, X]; got {tuple(x.shape)}")
        b, h = x.shape[:2]
        z = self.custom_convs(self.backbone(x.reshape(b * h, *x.shape[2:])))
        return z.reshape(b, h, *z.shape[1:])

    def head(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, 80], slice scores C [B, 80, H]) from Z [B, H, F, D1, D2]."""
        c = self.fc(z.flatten(start_dim=2))  # [B, H, 80]
        return c.mean(dim=1), c.transpose(1, 2)

    def forward(self, x: torch.Tensor, cam: bool = True) -> AxialNetOutput:
        z = self.forward_features(x)
        logits, c = self.head(z)
        maps = hirescam_from_features(z, self.fc.weight) if cam else None
        return AxialNetOutput(logits, c, maps)

    @torch.no_grad()
    def gradcam(self, x: torch.Tensor) -> torch.Tensor:
        """3D Grad-CAM maps [B, 80, H, D1, D2] (for evaluation; see gradcam_from_features)."""
        return gradcam_from_features(self.forward_features(x), self.fc.weight)


def build_model(cfg: "Config") -> AxialNet:
    """AxialNet for the configured geometry, with the configured local backbone weights (if any)."""
    return AxialNet(cfg.model.geometry, pretrained_weights=cfg.model.pretrained_weights)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model
