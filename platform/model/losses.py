"""L_total = L_class + lambda * L_mask (paper 000, eqs. 2 and 11).

L_class is the multi-label binary cross-entropy with logits, averaged over the scored labels (all 80,
or those a run trains on, see `label_index`) and the batch. L_mask penalises HiResCAM attention on
the forbidden cells of G_true (cells outside a positive label's allowed region; every cell of a
negative label). Three forms, named for what they are (`MASK_LOSS_FORMS`). `raw` below is the
HiResCAM map as the platform computes it, sum_f (w_m / H) Z_f (paper eq. 8, correct for explaining).

- `published` (the published code exactly): mean over ALL forbidden cells of softplus(H * raw), i.e.
  BCE-with-logits(sum_f w Z, 0): the published code applies the loss to sum_f w Z without the 1/H.
  Gradient per forbidden cell: H * sigmoid(H raw) / N_forbidden, about H / (2 N) at raw = 0, where
  N ~ B * L * H * D1 * D2 is dominated by negative labels (every cell of a negative label is
  forbidden), so a positive pair's forbidden cell gets ~1 / (2 B L D1 D2) per unit of raw.
- `paper_eq11` (the paper's eq. 11, per scan): sum over forbidden cells of -log(1 - a) with attention
  a = 1 - exp(-ReLU(raw)) in [0, 1), so -log(1 - a) = ReLU(raw) exactly (computed that way); mean
  over scans. Gradient per forbidden cell with raw > 0: 1 / B; 0 where raw <= 0 (a cell that does not
  raise the score costs nothing). Scale grows with L * H * D1 * D2: lambda must suit the grid.
- `positive_pairs`: mean over the batch's positive (scan, label) pairs of the sum of ReLU(raw) over
  that pair's forbidden cells. Negative labels (no allowed cell) contribute nothing: their attention
  is the class loss's business, and a form that averages over them dilutes the positive pairs'
  gradient (~96% of the forbidden cells in the demo belong to negative labels). Gradient per
  forbidden cell of a positive pair with raw > 0: 1 / P (P positive pairs in the batch).

The class gradient at a label's score is (sigmoid(s) - y) / (B * L) and reaches every cell of that
label's map with the same weight (s = sum of the map's cells + bias), which is the scale the mask
gradient competes with (`docs/train.md`, "Mask-loss forms"). In every form allowed cells contribute
nothing and receive no gradient from L_mask. lambda = 0 is the class-only baseline: the mask term is
skipped (not computed). The old names `mean_softplus` and `sum_neglog` read as `published` and
`paper_eq11`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from ctplatform.model.allowed_regions import allowed_regions

MaskLossForm = Literal["published", "paper_eq11", "positive_pairs"]
MASK_LOSS_FORMS: tuple[str, ...] = ("published", "paper_eq11", "positive_pairs")
#: Earlier names of two forms (configs written before the forms were named for what they are).
FORM_ALIASES: dict[str, str] = {"mean_softplus": "published", "sum_neglog": "paper_eq11"}


class LossTerms(NamedTuple):
    total: torch.Tensor
    cls: torch.Tensor
    mask: torch.Tensor  # 0 (a constant) when lambda = 0


def canonical_form(form: str) -> str:
    """The form's name in MASK_LOSS_FORMS (aliases resolved); ValueError for an unknown one."""
    name = FORM_ALIASES.get(form, form)
    if name not in MASK_LOSS_FORMS:
        raise ValueError(f"unknown mask-loss form {form!r}: use one of {list(MASK_LOSS_FORMS)}")
    return name


def class_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE with logits, mean over labels and scans (paper eq. 2)."""
    return F.binary_cross_entropy_with_logits(logits.float(), y.float())


def sum_form_attention(raw: torch.Tensor) -> torch.Tensor:
    """Attention in [0, 1) of the sum forms: a = 1 - exp(-ReLU(raw)); 0 exactly where raw <= 0."""
    return -torch.expm1(-F.relu(raw))


def forbidden_cells(region_bits: torch.Tensor, grid_masks: torch.Tensor) -> torch.Tensor:
    """bool [B, L, H, D1, D2]: cells where G_true = 0 (see model.allowed_regions)."""
    return ~allowed_regions(region_bits, grid_masks)


def positive_pairs(forbidden: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: (scan, label) pairs with at least one allowed cell, i.e. positive labels.

    A negative label forbids every cell, so this reads positivity off G_true itself (a positive label
    whose organ is absent from the grid has no allowed cell and counts as negative, as G_true does).
    """
    return (~forbidden).flatten(start_dim=2).any(dim=2)


def mask_loss_published(raw: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Published code: mean over forbidden cells of softplus(H * raw) (= BCE-with-logits on sum_f w Z)."""
    n = forbidden.sum()
    if n == 0:
        return raw.sum() * 0.0  # keeps the graph (DDP needs every rank to backward the same ops)
    h = raw.shape[2]
    per_cell = torch.where(forbidden, F.softplus(h * raw.float()), 0.0)
    return per_cell.sum() / n


def mask_loss_paper_eq11(raw: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Paper eq. 11: per scan, sum over forbidden cells of -log(1 - a) = ReLU(raw); mean over scans."""
    per_cell = torch.where(forbidden, F.relu(raw.float()), 0.0)
    return per_cell.flatten(start_dim=1).sum(dim=1).mean()


def mask_loss_positive_pairs(raw: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Mean over positive (scan, label) pairs of the sum of ReLU(raw) over the pair's forbidden cells."""
    pos = positive_pairs(forbidden)
    per_cell = torch.where(forbidden & pos[:, :, None, None, None], F.relu(raw.float()), 0.0)
    n = pos.sum()
    if n == 0:
        return per_cell.sum() * 0.0
    return per_cell.sum() / n


def mask_loss(raw: torch.Tensor, forbidden: torch.Tensor, form: str = "published") -> torch.Tensor:
    """L_mask of raw HiResCAM maps [B, L, H, D1, D2] over the forbidden cells (same shape, bool)."""
    if raw.shape != forbidden.shape:
        raise ValueError(f"attention {tuple(raw.shape)} and forbidden cells {tuple(forbidden.shape)} differ")
    name = canonical_form(form)
    if name == "published":
        return mask_loss_published(raw, forbidden)
    if name == "paper_eq11":
        return mask_loss_paper_eq11(raw, forbidden)
    return mask_loss_positive_pairs(raw, forbidden)


def total_loss(
    logits: torch.Tensor,
    hirescam: torch.Tensor | None,
    y: torch.Tensor,
    region_bits: torch.Tensor,
    grid_masks: torch.Tensor,
    lambda_mask: float,
    form: str = "published",
    label_index: torch.Tensor | None = None,
) -> LossTerms:
    """L_class + lambda * L_mask over the labels in `label_index` (all when None); lambda 0: class only.

    `label_index` (long [L]) is the run's scored labels (`train.labels: present`: those with positives
    in the training split), so labels that are never positive weigh in neither loss.
    """
    if label_index is not None:
        logits, y, region_bits = logits[:, label_index], y[:, label_index], region_bits[:, label_index]
        hirescam = hirescam[:, label_index] if hirescam is not None else None
    cls = class_loss(logits, y)
    if lambda_mask == 0:
        zero = torch.zeros((), device=cls.device)
        return LossTerms(cls, cls, zero)
    if hirescam is None:
        raise ValueError("the mask loss needs the HiResCAM maps: call the model with cam=True")
    m = mask_loss(hirescam, forbidden_cells(region_bits, grid_masks), form)
    return LossTerms(cls + lambda_mask * m, cls, m)
