from __future__ import annotations

import numpy as np
import pytest

from ctplatform.geometry import ModelGeometry, center_crop_or_pad, resnet18_feature_size


def test_paper_geometry() -> None:
    g = ModelGeometry((405, 420, 420))
    assert resnet18_feature_size(420) == 14
    assert g.grid == (135, 6, 6) and g.name == "135x6x6"


def test_padded_custom_convs_keep_the_backbone_grid() -> None:
    assert ModelGeometry((72, 168, 168), custom_conv_padding=1).grid == (24, 6, 6)


def test_bad_geometries_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        ModelGeometry((100, 420, 420))
    with pytest.raises(ValueError, match="too small"):
        ModelGeometry((96, 128, 128))


def test_center_crop_or_pad_places_voxels_consistently() -> None:
    a = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    out = center_crop_or_pad(a, (7, 4, 7), fill=-1)
    assert out.shape == (7, 4, 7)
    assert (out[0] == -1).all() and (out[6] == -1).all()
    np.testing.assert_array_equal(out[1:6], a[:, 1:5, :])
    # leading axes (organ channels) are carried along unchanged
    stacked = center_crop_or_pad(np.stack([a, a]), (7, 4, 7), fill=0)
    assert stacked.shape == (2, 7, 4, 7)
    np.testing.assert_array_equal(stacked[1, 1:6], a[:, 1:5, :])
    # default fill is the minimum, as the published code pads CT volumes
    assert center_crop_or_pad(a + 10, (7, 6, 7))[0, 0, 0] == 10
