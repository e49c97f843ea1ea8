"""L_total = L_class + lambda * L_mask (paper 000, eqs. 2 and 11).

L_class is the multi-label binary cross-entropy with logits, averaged over the 80 labels (and the
batch). L_mask penalises HiResCAM attention on the forbidden cells of G_true (the cells outside a
label's allowed region; every cell of a negative label). Two forms:

- `mean_softplus` (the published code, the default): mean over forbidden cells of
  BCE-with-logits(raw, 0) = softplus(raw), where raw is the HiResCAM value. Read as the paper's
  -log(1 - a), this is attention a = sigmoid(raw): never exactly 0, so even a cell that adds
  nothing to the score (raw = 0) costs log 2 and is pushed on toward -infinity.
- `sum_neglog` (the paper's eq. 11): per scan, the sum over forbidden cells of -log(1 - a), with
  attention a = 1 - exp(-ReLU(raw)) in [0, 1). Then -log(1 - a) = ReLU(raw) exactly (computed that
  way, so no log of a number near 0): a cell that does not raise the score (raw <= 0) has a = 0 and
  costs nothing, so the loss is exactly 0 when no attention falls on forbidden cells, and a cell
  that raises the score is pushed down with unit slope. The sums are averaged over the batch.
  Being a sum over up to 80 x H x D1 x D2 cells, its scale grows with the grid; lambda must suit it.

In both forms allowed cells contribute nothing and receive no gradient from L_mask.
lambda = 0 is the class-only baseline: the mask term is skipped (not computed).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from ctplatform.model.allowed_regions import allowed_regions

MaskLossForm = Literal["mean_softplus", "sum_neglog"]


class LossTerms(NamedTuple):
    total: torch.Tensor
    cls: torch.Tensor
    mask: torch.Tensor  # 0 (a constant) when lambda = 0


def class_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE with logits, mean over labels and scans (paper eq. 2)."""
    return F.binary_cross_entropy_with_logits(logits.float(), y.float())


def sum_form_attention(raw: torch.Tensor) -> torch.Tensor:
    """Attention in [0, 1) of the sum form: a = 1 - exp(-ReLU(raw)); 0 exactly where raw <= 0."""
    return -torch.expm1(-F.relu(raw))


def forbidden_cells(region_bits: torch.Tensor, grid_masks: torch.Tensor) -> torch.Tensor:
    """bool [B, 80, H, D1, D2]: cells where G_true = 0 (see partition.allowed_regions)."""
    return ~allowed_regions(region_bits, grid_masks)


def mask_loss_mean_softplus(raw: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Published form: mean over forbidden cells of softplus(raw) (= BCE-with-logits against 0)."""
    n = forbidden.sum()
    if n == 0:
        return raw.sum() * 0.0  # keeps the graph (DDP needs every rank to backward the same ops)
    per_cell = torch.where(forbidden, F.softplus(raw.float()), 0.0)
    return per_cell.sum() / n


def mask_loss_sum_neglog(raw: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Paper form: per scan, sum over forbidden cells of -log(1 - a) = ReLU(raw); mean over scans."""
    per_cell = torch.where(forbidden, F.relu(raw.float()), 0.0)
    return per_cell.flatten(start_dim=1).sum(dim=1).mean()


def mask_loss(raw: torch.Tensor, forbidden: torch.Tensor, form: MaskLossForm = "mean_softplus") -> torch.Tensor:
    """L_mask of raw HiResCAM maps [B, 80, H, D1, D2] over the forbidden cells (same shape, bool)."""
    if raw.shape != forbidden.shape:
        raise ValueError(f"attention {tuple(raw.shape)} and forbidden cells {tuple(forbidden.shape)} differ")
    if form == "mean_softplus":
        return mask_loss_mean_softplus(raw, forbidden)
    if form == "sum_neglog":
        return mask_loss_sum_neglog(raw, forbidden)
    raise ValueError(f"unknown mask-loss form {form!r}: use 'mean_softplus' or 'sum_neglog'")


def total_loss(
    logits: torch.Tensor,
    hirescam: torch.Tensor | None,
    y: torch.Tensor,
    region_bits: torch.Tensor,
    grid_masks: torch.Tensor,
    lambda_mask: float,
    form: MaskLossForm = "mean_softplus",
) -> LossTerms:
    """L_class + lambda * L_mask; with lambda = 0 the mask term is not computed."""
    cls = class_loss(logits, y)
    if lambda_mask == 0:
        zero = torch.zeros((), device=cls.device)
        return LossTerms(cls, cls, zero)
    if hirescam is None:
        raise ValueError("the mask loss needs the HiResCAM maps: call the model with cam=True")
    m = mask_loss(hirescam, forbidden_cells(region_bits, grid_masks), form)
    return LossTerms(cls + lambda_mask * m, cls, m)
