"""HiResCAM and 3D Grad-CAM of AxialNet in closed form (paper 000, sections 3.4 and 3.5).

AxialNet's score is s_m = (1/H) sum_h (w_m . z_h) + b_m, so both explanations are one einsum over the
feature tensor Z and the fully connected weights; no backward pass is needed.
"""

from __future__ import annotations

import torch


def hirescam_from_features(z: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """HiResCAM_m = sum_f (w_m / H) * Z_f: [B, 80, H, D1, D2] from Z [B, H, F, D1, D2] and W [80, F*D1*D2]."""
    b, h, f, d1, d2 = z.shape
    w = fc_weight.reshape(-1, f, d1, d2)
    return torch.einsum("mfij,bhfij->bmhij", w, z) / h


def gradcam_from_features(z: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """3D Grad-CAM (paper eqs. 9-10) for AxialNet: alpha_m^f = mean over (H, D1, D2) of d s_m / d Z_f.

    d s_m / d Z_f[h, i, j] = w_m[f, i, j] / H, so alpha_m^f = mean_ij(w_m[f]) / H and the map is
    sum_f alpha_m^f Z_f: [B, 80, H, D1, D2].
    """
    b, h, f, d1, d2 = z.shape
    alpha = fc_weight.reshape(-1, f, d1, d2).mean(dim=(2, 3)) / h  # [80, F]
    return torch.einsum("mf,bhfij->bmhij", alpha, z)
