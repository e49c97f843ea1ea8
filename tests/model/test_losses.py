"""L_class and the three forms of L_mask on hand-computed cases; the audit's scale and dilution points."""

from __future__ import annotations

import math

import pytest
import torch

from ctplatform.labels import RIGHT_LUNG, label_index
from ctplatform.model.losses import (
    class_loss,
    forbidden_cells,
    mask_loss,
    sum_form_attention,
    total_loss,
)

RAW = torch.tensor([[0.5, -1.0], [2.0, 0.0]]).reshape(1, 1, 1, 2, 2)
FORBIDDEN = torch.tensor([[True, True], [False, True]]).reshape(1, 1, 1, 2, 2)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_published_by_hand() -> None:
    # H = 1 here, so the published scale (sum_f w Z = H * HiResCAM) equals the map itself
    want = (softplus(0.5) + softplus(-1.0) + softplus(0.0)) / 3
    assert float(mask_loss(RAW, FORBIDDEN, "published")) == pytest.approx(want, rel=1e-6)
    assert float(mask_loss(RAW, FORBIDDEN, "mean_softplus")) == pytest.approx(want, rel=1e-6)  # old name


def test_sum_neglog_by_hand() -> None:
    # attention a = 1 - exp(-relu(raw)): forbidden cells 0.5 -> 1 - e^-0.5, -1 -> 0, 0 -> 0
    a = sum_form_attention(RAW)
    assert float(a[0, 0, 0, 0, 1]) == 0.0 and float(a[0, 0, 0, 1, 1]) == 0.0
    want = -math.log(1 - float(a[0, 0, 0, 0, 0]))  # = 0.5
    assert want == pytest.approx(0.5)
    assert float(mask_loss(RAW, FORBIDDEN, "paper_eq11")) == pytest.approx(want, rel=1e-6)
    assert ((0 <= a) & (a < 1)).all()


def test_sum_form_is_zero_without_attention_on_forbidden_cells() -> None:
    raw = torch.tensor([[-0.3, -2.0], [5.0, 0.0]]).reshape(1, 1, 1, 2, 2)  # only the allowed cell attends
    assert float(mask_loss(raw, FORBIDDEN, "paper_eq11")) == 0.0
    assert float(sum_form_attention(raw)[FORBIDDEN].max()) == 0.0
    # the published form still charges log 2 per cell at raw = 0: never exactly zero
    assert float(mask_loss(raw, FORBIDDEN, "published")) > 0


def test_sum_form_sums_per_scan_and_averages_scans() -> None:
    raw = torch.stack([RAW[0], RAW[0] * 3])  # per-scan sums 0.5 and 1.5
    forbidden = torch.cat([FORBIDDEN, FORBIDDEN])
    assert float(mask_loss(raw, forbidden, "paper_eq11")) == pytest.approx(1.0)


@pytest.mark.parametrize("form", ["published", "paper_eq11", "positive_pairs"])
def test_gradients_push_forbidden_cells_down_and_leave_allowed_cells(form: str) -> None:
    raw = RAW.clone().requires_grad_(True)
    mask_loss(raw, FORBIDDEN, form).backward()
    g = raw.grad
    assert float(g[~FORBIDDEN].abs().max()) == 0.0  # the allowed cell (raw 2.0) gets nothing
    assert float(g[0, 0, 0, 0, 0]) > 0  # a forbidden cell with attention: gradient descent lowers it
    if form == "published":
        assert (g[FORBIDDEN] > 0).all()  # every forbidden cell is pushed down
    else:
        assert float(g[0, 0, 0, 0, 1]) == 0.0  # a = 0 already: nothing to push


def test_no_forbidden_cells_gives_zero_with_a_graph() -> None:
    raw = RAW.clone().requires_grad_(True)
    none = torch.zeros_like(FORBIDDEN)
    for form in ("mean_softplus", "paper_eq11"):
        loss = mask_loss(raw, none, form)
        assert loss.item() == 0.0
        loss.backward()


def test_class_loss_is_mean_bce() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    sig = torch.sigmoid(logits)
    want = -(y * sig.log() + (1 - y) * (1 - sig).log()).mean()
    assert float(class_loss(logits, y)) == pytest.approx(float(want), rel=1e-6)


def test_total_loss_uses_g_true_and_lambda() -> None:
    h, d1, d2 = 2, 1, 2
    grid = torch.zeros(1, 3, h, d1, d2, dtype=torch.bool)
    grid[0, 0, :, :, 0] = True  # right lung: x cell 0
    grid[0, 1, :, :, 1] = True  # left lung: x cell 1
    nodule = label_index("nodule", "right_lung")
    bits = torch.zeros(1, 80, dtype=torch.uint8)
    bits[0, nodule] = RIGHT_LUNG
    y = torch.zeros(1, 80)
    y[0, nodule] = 1
    cam = torch.full((1, 80, h, d1, d2), -1.0)
    cam[0, nodule, :, :, 0] = 2.0  # attention only inside the allowed right lung
    logits = torch.zeros(1, 80)
    terms = total_loss(logits, cam, y, bits, grid, 1 / 3, "paper_eq11")
    assert float(terms.mask) == 0.0 and float(terms.total) == pytest.approx(float(terms.cls))
    cam[0, nodule, 1, 0, 1] = 1.5  # now some on the left lung, forbidden for a right-lung nodule
    terms = total_loss(logits, cam, y, bits, grid, 1 / 3, "paper_eq11")
    assert float(terms.mask) == pytest.approx(1.5)
    assert float(terms.total) == pytest.approx(float(terms.cls) + 0.5)
    # a negative label forbids every cell
    assert forbidden_cells(bits, grid)[0, label_index("mass", "lung")].all()


def test_lambda_zero_is_the_class_only_baseline() -> None:
    logits = torch.randn(2, 80)
    y = (torch.rand(2, 80) > 0.9).float()
    terms = total_loss(logits, None, y, torch.zeros(2, 80, dtype=torch.uint8), torch.zeros(2, 3, 1, 1, 1, dtype=torch.bool), 0.0)
    assert float(terms.total) == float(class_loss(logits, y)) and float(terms.mask) == 0.0
    with pytest.raises(ValueError, match="cam=True"):
        total_loss(logits, None, y, torch.zeros(2, 80, dtype=torch.uint8), torch.zeros(2, 3, 1, 1, 1, dtype=torch.bool), 0.5)


def test_published_form_has_no_one_over_h() -> None:
    """Audit point 1: the published code applies the loss to sum_f w Z = H * HiResCAM."""
    h = 12
    raw = torch.randn(2, 4, h, 3, 3)
    forbidden = torch.rand(2, 4, h, 3, 3) > 0.3
    want = torch.nn.functional.softplus(h * raw)[forbidden].mean()
    assert float(mask_loss(raw, forbidden, "published")) == pytest.approx(float(want), rel=1e-5)
    # at raw ~ 0 its gradient per cell is H / (2 N): H times what the same loss on HiResCAM gives
    zero = torch.zeros(1, 1, h, 3, 3, requires_grad=True)
    every = torch.ones(1, 1, h, 3, 3, dtype=torch.bool)
    mask_loss(zero, every, "published").backward()
    assert float(zero.grad.mean()) == pytest.approx(h / (2 * every.sum().item()), rel=1e-6)


def test_positive_pairs_form_by_hand() -> None:
    # label 0 positive (one allowed cell), label 1 negative (all forbidden, ignored by this form)
    raw = torch.stack([RAW[0, 0], torch.full((1, 2, 2), 5.0)]).unsqueeze(0)  # [1, 2, 1, 2, 2]
    forbidden = torch.stack([FORBIDDEN[0, 0], torch.ones(1, 2, 2, dtype=torch.bool)]).unsqueeze(0)
    assert float(mask_loss(raw, forbidden, "positive_pairs")) == pytest.approx(0.5)  # relu(0.5)+0+0 over 1 pair
    two = torch.cat([raw, raw * 3])  # pair sums 0.5 and 1.5 -> mean 1.0
    assert float(mask_loss(two, torch.cat([forbidden, forbidden]), "positive_pairs")) == pytest.approx(1.0)


def test_dilution_of_the_published_form() -> None:
    """Audit point 2: averaged over every forbidden cell, negative labels own almost all of them.

    80 labels, 3 positive per scan (allowed region a third of the 12x3x3 grid): >= 95% of the
    forbidden cells belong to negative labels, and a positive pair's forbidden cell gets a gradient
    ~470 times smaller under `published` (on the HiResCAM scale) than under `positive_pairs`.
    """
    h, d1, d2, n_labels, n_pos = 12, 3, 3, 80, 3
    forbidden = torch.ones(1, n_labels, h, d1, d2, dtype=torch.bool)
    forbidden[0, :n_pos, :, :, 0] = False  # positives: allowed in one column of cells
    neg_share = float(forbidden[0, n_pos:].sum()) / float(forbidden.sum())
    assert neg_share > 0.95
    grads = {}
    for form in ("published", "positive_pairs"):
        raw = torch.full((1, n_labels, h, d1, d2), 1e-3, requires_grad=True)
        mask_loss(raw, forbidden, form).backward()
        grads[form] = float(raw.grad[0, 0, 0, 0, 1])  # a positive pair's forbidden cell
    # published: H * 0.5 / N = 6 / 8532; positive_pairs: 1 / 3 -> ratio ~474
    assert grads["positive_pairs"] / grads["published"] > 400


def test_label_index_restricts_both_losses() -> None:
    logits = torch.randn(2, 80)
    y = torch.zeros(2, 80)
    y[:, 5] = 1
    idx = torch.tensor([5, 7])
    terms = total_loss(logits, None, y, torch.zeros(2, 80, dtype=torch.uint8), torch.zeros(2, 3, 1, 1, 1, dtype=torch.bool), 0.0, label_index=idx)
    assert float(terms.cls) == pytest.approx(float(class_loss(logits[:, idx], y[:, idx])))
