"""Allowed regions G_true: where each label's attention may fall (paper 000, section 3.7, Figure 2).

One function serves training (the mask loss) and evaluation (OrganIoU). For a scan, a positive
lung label allows the union of the lung masks of the sides its report gives (both lungs when no
side), a positive heart, great-vessel or mediastinal label allows the mediastinum mask, and a
negative label allows nothing (the whole volume is forbidden for it).
"""

from __future__ import annotations

import torch

from ctplatform.labels import ORGAN_BITS, ORGANS


def organ_selector(region_bits: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 80] organ bitmasks (labels.encode_volume_labels) -> float [..., 80, 3]: 1 where the
    label allows the organ channel. The one decoder of region bits."""
    bits = torch.tensor([ORGAN_BITS[name] for name in ORGANS], device=region_bits.device, dtype=region_bits.dtype)
    return ((region_bits.unsqueeze(-1) & bits) != 0).float()


def allowed_regions(region_bits: torch.Tensor, grid_masks: torch.Tensor) -> torch.Tensor:
    """G_true: bool [B, 80, H, D1, D2] from label bitmasks [B, 80] and grid masks bool [B, 3, H, D1, D2].

    One batched matrix product over the organ axis, so it runs on the training device per batch at
    negligible cost (a union of organ masks is a sum that is > 0).
    """
    if grid_masks.dim() != 5 or grid_masks.shape[1] != len(ORGANS):
        raise ValueError(f"grid masks must be [B, 3, H, D1, D2]; got {tuple(grid_masks.shape)}")
    if region_bits.shape[0] != grid_masks.shape[0]:
        raise ValueError(f"batch sizes differ: labels {region_bits.shape[0]}, masks {grid_masks.shape[0]}")
    sel = organ_selector(region_bits)
    b, k = grid_masks.shape[:2]
    flat = grid_masks.reshape(b, k, -1).to(sel.dtype)
    g = torch.bmm(sel, flat) > 0
    return g.reshape(b, sel.shape[1], *grid_masks.shape[2:])
