from __future__ import annotations

import numpy as np
import pytest
import torch

from ctplatform import labels as L
from ctplatform.model.allowed_regions import allowed_regions


def _grid() -> torch.Tensor:
    g = torch.zeros(1, 3, 2, 3, 3, dtype=torch.bool)
    g[0, 0, :, :, 0] = True  # right lung: x column 0
    g[0, 1, :, :, 2] = True  # left lung: x column 2
    g[0, 2, :, 1, 1] = True  # mediastinum: centre
    return g


def test_union_of_sides_mediastinum_and_forbidden_negatives() -> None:
    rows = [("nodule", "right_lung", 1), ("pleural_effusion", "lung", 1), ("cardiomegaly", "heart", 1)]
    _, bits = L.encode_volume_labels(rows)
    g = allowed_regions(torch.from_numpy(bits)[None], _grid())[0]
    assert g.shape == (80, 2, 3, 3) and g.dtype == torch.bool
    nod, eff, card = (L.label_index(a, loc) for a, loc, _ in rows)
    assert torch.equal(g[nod], _grid()[0, 0])
    assert torch.equal(g[eff], _grid()[0, 0] | _grid()[0, 1])
    assert torch.equal(g[card], _grid()[0, 2])
    others = np.setdiff1d(np.arange(80), [nod, eff, card])
    assert not g[others].any()  # negative labels: the whole volume is forbidden


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="grid masks"):
        allowed_regions(torch.zeros(1, 80, dtype=torch.uint8), torch.zeros(1, 2, 2, 3, 3, dtype=torch.bool))


def test_organ_selector_decodes_the_region_bits_of_labels():
    from ctplatform.model.allowed_regions import organ_selector

    rows = [("nodule", "right_lung", 1), ("nodule", "left_lung", 1), ("cardiomegaly", "heart", 1), ("mass", "lung", 0)]
    _, bits = L.encode_volume_labels(rows)
    organs = organ_selector(torch.from_numpy(bits)).bool()
    i_nod, i_card, i_mass = L.label_index("nodule", "lung"), L.label_index("cardiomegaly", "heart"), L.label_index("mass", "lung")
    assert organs.shape == (80, 3)
    assert organs[i_nod].tolist() == [True, True, False] and organs[i_card].tolist() == [False, False, True]
    assert not organs[i_mass].any()

