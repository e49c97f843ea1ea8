"""AxialNet: shapes, HiResCAM and Grad-CAM against autograd, geometry agreement, feature-grid orientation."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ctplatform.geometry import ModelGeometry
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.cams import gradcam_from_features, hirescam_from_features

SMALL = ModelGeometry((24, 64, 64), custom_conv_padding=1)  # grid 8x2x2


@pytest.fixture(scope="module")
def model() -> AxialNet:
    torch.manual_seed(0)
    m = AxialNet(SMALL).double().eval()
    # A random-init ResNet plus ReLU leaves many Z cells at 0; make the FC weights non-trivial per label.
    torch.nn.init.normal_(m.fc.weight, std=0.5)
    return m


def _input(b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, SMALL.grid[0], 3, *SMALL.input_shape[1:], generator=g, dtype=torch.float64)


def test_output_shapes_and_mean_over_slices(model: AxialNet) -> None:
    out = model(_input())
    h, d1, d2 = SMALL.grid
    assert out.logits.shape == (2, 80)
    assert out.slice_scores.shape == (2, 80, h)
    assert out.hirescam.shape == (2, 80, h, d1, d2)
    torch.testing.assert_close(out.logits, out.slice_scores.mean(dim=2))
    # HiResCAM sums to the score without its bias (s_m = (1/H) w_m^cat Z + b_m, paper eq. 5)
    torch.testing.assert_close(out.hirescam.sum(dim=(2, 3, 4)), out.logits - model.fc.bias)


def test_hirescam_closed_form_equals_autograd_for_every_label(model: AxialNet) -> None:
    z = model.forward_features(_input()).detach().requires_grad_(True)
    logits, _ = model.head(z)
    closed = hirescam_from_features(z, model.fc.weight).detach()
    for m in range(80):
        (grad,) = torch.autograd.grad(logits[:, m].sum(), z, retain_graph=True)  # scans are independent
        by_autograd = (grad * z).sum(dim=2)  # sum over features F: [B, H, D1, D2]
        torch.testing.assert_close(closed[:, m], by_autograd, rtol=1e-10, atol=1e-12)


def test_gradcam_matches_its_definition(model: AxialNet) -> None:
    z = model.forward_features(_input()).detach().requires_grad_(True)
    logits, _ = model.head(z)
    closed = gradcam_from_features(z, model.fc.weight).detach()
    for m in range(0, 80, 7):
        (grad,) = torch.autograd.grad(logits[:, m].sum(), z, retain_graph=True)
        alpha = grad.mean(dim=(1, 3, 4))  # [B, F]: average over H, D1, D2 (paper eq. 9)
        definition = torch.einsum("bf,bhfij->bhij", alpha, z.detach())  # eq. 10
        torch.testing.assert_close(closed[:, m], definition, rtol=1e-10, atol=1e-12)
    # Grad-CAM differs from HiResCAM in general (it averages the gradient away)
    assert not torch.allclose(closed, hirescam_from_features(z, model.fc.weight).detach())


def test_forward_without_cam_and_model_gradcam_method(model: AxialNet) -> None:
    x = _input(1)
    assert model(x, cam=False).hirescam is None
    torch.testing.assert_close(model.gradcam(x), gradcam_from_features(model.forward_features(x), model.fc.weight))


def test_paper_geometry_grid_and_mismatch_is_an_error() -> None:
    paper = ModelGeometry((405, 420, 420))
    assert AxialNet(paper).measure_grid() == (135, 6, 6)

    class DriftedGeometry(ModelGeometry):  # a geometry.py that disagrees with the network
        @property
        def grid(self) -> tuple[int, int, int]:
            return (8, 3, 3)

    with pytest.raises(ValueError, match="must agree"):
        AxialNet(DriftedGeometry((24, 64, 64), custom_conv_padding=1))


def test_pretrained_weights_from_a_local_file(tmp_path) -> None:
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(ref.state_dict(), path)
    m = AxialNet(SMALL, pretrained_weights=path)
    assert m.pretrained
    torch.testing.assert_close(m.backbone[0].weight, ref.conv1.weight)
    torch.testing.assert_close(m.backbone[7][1].conv2.weight, ref.layer4[1].conv2.weight)
    assert not AxialNet(SMALL).pretrained
    with pytest.raises(FileNotFoundError, match="pretrained backbone weights"):
        AxialNet(SMALL, pretrained_weights=tmp_path / "absent.pt")
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        AxialNet(SMALL, pretrained_weights=tmp_path / "bad.pt")


def test_slice_group_h_feeds_only_feature_row_h() -> None:
    torch.manual_seed(0)
    m = AxialNet(SMALL).eval()
    x = torch.randn(1, SMALL.grid[0], 3, *SMALL.input_shape[1:], requires_grad=True)
    z = m.forward_features(x)
    for h in (0, 3, SMALL.grid[0] - 1):
        x.grad = None
        z[0, h].sum().backward(retain_graph=True)
        touched = x.grad[0].abs().sum(dim=(1, 2, 3)) > 0
        assert touched.tolist() == [k == h for k in range(SMALL.grid[0])]


def _probe(geometry: ModelGeometry) -> AxialNet:
    """AxialNet whose convolutions all average uniformly (BN identity): a probe of the network's spatial
    bookkeeping that does not depend on learned weights (a random init has no reliable locality)."""
    m = AxialNet(geometry)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.constant_(mod.weight, 1.0 / mod.weight[0].numel())
            if mod.bias is not None:
                torch.nn.init.zeros_(mod.bias)
        elif isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_parameters()
    return m.eval()


def _receptive_field(m: AxialNet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell (i, j): input-gradient centroid (y, x) and the centre (y, x) of its peak plateau.

    With constant weights the gradient is flat over a small square: its argmax would be decided by
    floating-point summation order (a tie), so the peak is the plateau's centre, not an argmax."""
    _, y, x = m.geometry.input_shape
    _, d1, d2 = m.geometry.grid
    inp = torch.ones(1, 1, 3, y, x, requires_grad=True)
    z = m.forward_features(inp)
    cy, cx, peak = torch.zeros(d1, d2), torch.zeros(d1, d2), torch.zeros(d1, d2, 2)
    for i in range(d1):
        for j in range(d2):
            inp.grad = None
            z[0, 0, :, i, j].sum().backward(retain_graph=True)
            g = inp.grad[0, 0].sum(0)
            w = g / g.sum()
            cy[i, j] = (w.sum(1) * torch.arange(y)).sum()
            cx[i, j] = (w.sum(0) * torch.arange(x)).sum()
            plateau = (g >= g.max() * (1 - 1e-4)).nonzero().float()
            peak[i, j] = plateau.mean(dim=0)
    return cy, cx, peak


def test_feature_grid_axes_follow_input_axes_padded() -> None:
    """Model half of the grid alignment: D1 runs along y and D2 along x, both in increasing order
    (no transpose, no flip). Non-square input so a transpose would show."""
    cy, cx, _ = _receptive_field(_probe(ModelGeometry((3, 128, 160), custom_conv_padding=1)))  # grid 4x5
    assert (cy[1:] - cy[:-1] > 1).all() and (cy - cy[:, :1]).abs().max() < 0.5
    assert (cx[:, 1:] - cx[:, :-1] > 1).all() and (cx - cx[:1]).abs().max() < 0.5


def test_receptive_field_centres_of_the_papers_valid_convs() -> None:
    """With the paper's unpadded custom convs, cell i is centred on ResNet cell i + 4, i.e. input pixel
    ~32 (i + 4) (see docs/train.md: an offset from the nominal block i * Y / D1 used by grid masks)."""
    _, _, peak = _receptive_field(_probe(ModelGeometry((3, 320, 352))))  # grid 1x2x3
    d1, d2 = peak.shape[:2]
    for i in range(d1):
        for j in range(d2):
            assert abs(peak[i, j, 0] - (32 * (i + 4) - 1)) <= 2
            assert abs(peak[i, j, 1] - (32 * (j + 4) - 1)) <= 2


def test_backbone_depth_gives_a_finer_grid_and_the_model_agrees() -> None:
    for layers, want in ((2, (2, 12, 12)), (3, (2, 6, 6)), (4, (2, 3, 3))):
        g = ModelGeometry((6, 96, 96), custom_conv_padding=1, backbone_layers=layers)
        assert g.grid == want
        m = AxialNet(g)  # measures its own grid and refuses a mismatch
        assert m.measure_grid() == want
        assert m.custom_convs[0].in_channels == g.backbone_channels
    with pytest.raises(ValueError, match="backbone_layers"):
        ModelGeometry((6, 96, 96), backbone_layers=5)


def test_own_block_gradient_mass_is_local_for_a_shallow_probe_and_not_for_a_deep_one() -> None:
    """The receptive-field diagnostic: uniformly averaging convs (a probe of spatial bookkeeping) on a
    96x96 input. Cut after layer2 (12x12 grid) a cell's gradient mass sits mostly in its own block;
    the whole ResNet (3x3 grid, padded custom convs) spreads it over the slice, near the uniform level."""
    from ctplatform.model.receptive_field import own_block_gradient_mass

    x = torch.ones(1, 2, 3, 96, 96)
    shallow = own_block_gradient_mass(_probe(ModelGeometry((6, 96, 96), custom_conv_padding=1, backbone_layers=2)), x)
    deep = own_block_gradient_mass(_probe(ModelGeometry((6, 96, 96), custom_conv_padding=1, backbone_layers=4)), x)
    assert shallow.uniform == pytest.approx(1 / 144) and deep.uniform == pytest.approx(1 / 9)
    assert shallow.mean > 5 * shallow.uniform
    assert deep.mean < 3 * deep.uniform
    assert set(shallow.as_metrics()) == {
        "rf_own_block_mass_mean", "rf_own_block_mass_min", "rf_own_block_mass_max", "rf_own_block_mass_uniform"}
