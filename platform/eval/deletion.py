"""Deletion check of faithfulness: zero the features of the k top-ranked cells by a map, record the drop.

AxialNet's score is linear in its feature grid Z (s_m = sum over cells of HiResCAM_m + b_m), so
zeroing the features of a set S of cells lowers s_m by exactly the sum of HiResCAM_m over S: ranking
cells by HiResCAM is the ranking with the largest drop at every k (HiResCAM >= any other map, e.g.
Grad-CAM, whose cell weights average w_m over positions). The check runs the model's own head on the
edited features, so it measures this rather than assuming it; a random ranking is the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ctplatform.model.axialnet import AxialNet

DELETION_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@torch.no_grad()
def deletion_drops(
    model: AxialNet, z: torch.Tensor, label: int, ranking: torch.Tensor, ks: Sequence[int] = DELETION_KS
) -> np.ndarray:
    """Score drop s_label(Z) - s_label(Z with the top-k cells' features zeroed), for each k: float [K].

    z: one scan's features [1, H, F, D1, D2]; ranking: a map [H, D1, D2] (higher = more important).
    k larger than the number of cells is clipped to it.
    """
    _, h, f, d1, d2 = z.shape
    n_cells = h * d1 * d2
    order = torch.argsort(ranking.reshape(-1).float(), descending=True, stable=True)
    keep = torch.ones(len(ks), n_cells, dtype=z.dtype)
    for row, k in enumerate(ks):
        keep[row, order[: min(int(k), n_cells)]] = 0
    keep = keep.reshape(len(ks), h, 1, d1, d2)
    edited = z.expand(len(ks), -1, -1, -1, -1) * keep
    full, _ = model.head(z)
    deleted, _ = model.head(edited)
    return (full[0, label] - deleted[:, label]).cpu().numpy().astype(np.float64)
