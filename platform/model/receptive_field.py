"""Is a feature-grid cell an image region? Each cell's own-block input-gradient mass vs uniform.

HiResCAM is exactly faithful to AxialNet's feature grid and exactly local along z (slice group h
feeds only feature row h), but in-plane a cell (i, j) is the block of the input it is named after
only if the network makes it so: a deep ResNet on a small input sees the whole slice from every cell.
For each cell this measures the share of |d sum_f Z[h, f, i, j] / d x| that falls inside the cell's
own input block (`ModelGeometry.cell_block`). A share near the uniform level (block area / slice area)
means the cell sees the whole slice; a share near 1 means the cell is its block.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ctplatform.model.axialnet import AxialNet


class ReceptiveFieldReport(NamedTuple):
    own_block_mass: np.ndarray  # [D1, D2] share of the input-gradient mass inside the cell's own block
    uniform: float  # the share a cell that weighs every pixel alike would have (mean block area share)

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.own_block_mass))

    def as_metrics(self, prefix: str = "rf") -> dict[str, float]:
        """Flat figures for MLflow: mean, min, max own-block mass and the uniform level."""
        m = self.own_block_mass
        return {
            f"{prefix}_own_block_mass_mean": self.mean,
            f"{prefix}_own_block_mass_min": float(np.nanmin(m)),
            f"{prefix}_own_block_mass_max": float(np.nanmax(m)),
            f"{prefix}_own_block_mass_uniform": self.uniform,
        }


def own_block_gradient_mass(model: AxialNet, x: torch.Tensor, group: int | None = None) -> ReceptiveFieldReport:
    """Own-block input-gradient mass of every in-plane cell of slice group `group` (middle by default).

    x: one scan's slice groups [1, H, 3, Y, X] (a real scan: the gradient depends on the input). The
    model is run in eval mode (BatchNorm running statistics) and left in the mode it was in.
    """
    geometry = model.geometry
    h_total, d1, d2 = geometry.grid
    h = h_total // 2 if group is None else group
    was_training = model.training
    model.eval()
    try:
        inp = x[:, h : h + 1].detach().clone().float().requires_grad_(True)  # slice group h alone
        z = model.forward_features(inp)[0, 0]  # [F, D1, D2]
        y_size, x_size = inp.shape[-2:]
        share = np.full((d1, d2), np.nan)
        areas = np.zeros((d1, d2))
        for i in range(d1):
            for j in range(d2):
                (g,) = torch.autograd.grad(z[:, i, j].sum(), inp, retain_graph=True)
                mass = g[0, 0].abs().sum(dim=0)  # [Y, X] over the 3 slices
                _, ys, xs = geometry.cell_block(h, i, j)
                areas[i, j] = (ys.stop - ys.start) * (xs.stop - xs.start) / (y_size * x_size)
                total = float(mass.sum())
                if total > 0:
                    share[i, j] = float(mass[ys, xs].sum()) / total
    finally:
        model.train(was_training)
    return ReceptiveFieldReport(share, float(areas.mean()))
