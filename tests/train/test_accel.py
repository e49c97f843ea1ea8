"""GPU code paths on CPU: gradient accumulation, channels_last, torch.compile, bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ctplatform.config import load_config
from ctplatform.geometry import ModelGeometry
from ctplatform.labels import LOCATION_BITS, label_index
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.losses import class_loss
from ctplatform.train.accel import Accumulator, autocast, configure_model
from ctplatform.train.loop import train_one_epoch
from ctplatform.train.state import TrainState

GEOM = ModelGeometry((12, 64, 64), custom_conv_padding=1)


def _model(seed: int = 0) -> AxialNet:
    torch.manual_seed(seed)
    return AxialNet(GEOM)


def _volumes(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    h, d1, d2 = GEOM.grid
    out = []
    for k in range(n):
        y = torch.zeros(1, 80)
        bits = torch.zeros(1, 80, dtype=torch.uint8)
        i = label_index("nodule", "right_lung")
        y[0, i] = float(k % 2)
        bits[0, i] = LOCATION_BITS["right_lung"]
        out.append({
            "x": torch.rand(1, h, 3, 64, 64, generator=g) - 0.449,
            "grid": torch.ones(1, 3, h, d1, d2, dtype=torch.bool),
            "y": y,
            "region_bits": bits,
            "index": torch.tensor([k]),
        })
    return out


def _cat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _without_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm normalises with the statistics of each forward pass (in training, the slice groups
    of the volumes in it), which accumulation cannot and should not reproduce; everything else must match."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.Identity())
        else:
            _without_batchnorm(child)
    return model


def test_accumulating_k_volumes_equals_one_step_on_their_batch(tmp_path) -> None:
    k = 3
    vols = _volumes(2 * k)
    results = {}
    for name, accumulate, batches in (("accumulated", k, vols), ("concatenated", 1, [_cat(vols[:k]), _cat(vols[k:])])):
        cfg = load_config(None, ["train.lambda_mask=0", "train.optimizer=sgd", "train.lr=0.5", "train.momentum=0",
                                 f"train.accumulate_steps={accumulate}", f"workdir={tmp_path}"])
        model = _without_batchnorm(_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0)
        before = copy.deepcopy(model.state_dict())
        result = train_one_epoch(model, batches, opt, cfg, torch.device("cpu"), TrainState())
        assert result.steps == 2 and result.diverged is None
        results[name] = model.state_dict()
    moved = 0
    for key, a in results["accumulated"].items():
        b = results["concatenated"][key]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=key)
        moved += int(not torch.equal(a, before[key]))
    assert moved > 10  # the steps changed the weights, so the comparison means something


def test_a_short_last_group_is_averaged_over_its_own_micro_batches() -> None:
    model = nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    acc = Accumulator(4)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for i in range(2):  # only two micro-batches left in the epoch
        assert acc.is_last(2 - i) == (i == 1)
        (model(x[i : i + 1]).sum() * acc.loss_scale()).backward()
        acc.add()
    w0 = model.weight.detach().clone()
    acc.step(model, opt)
    torch.testing.assert_close(model.weight.detach(), w0 - torch.tensor([[0.5, 0.5]]))  # mean of the two gradients


def test_channels_last_gives_the_same_outputs() -> None:
    cfg = load_config(None, ["train.channels_last=true"])
    ref, model = _model().eval(), _model().eval()
    configure_model(model, cfg.train, torch.device("cpu"), force=True)
    assert model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = _volumes(1)[0]["x"]
    with torch.no_grad():
        a, b = ref(x), model(x)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.hirescam, a.hirescam, rtol=1e-4, atol=1e-5)
    # not applied on a CPU device unless forced (CPU runs keep the default format)
    plain = configure_model(_model(), cfg.train, torch.device("cpu"))
    assert plain.backbone[0].weight.is_contiguous()


def test_compile_flag_compiles_in_place_and_keeps_the_checkpoint_keys() -> None:
    """train.compile uses nn.Module.compile (inductor by default). Here the aot_eager backend: it traces
    forward and backward through dynamo and AOTAutograd like inductor does, without minutes of C++
    compilation on a shared 2-core CI machine."""
    cfg = load_config(None, ["train.compile=true"])
    ref, model = _model(), _model()
    keys = list(model.state_dict())
    model.compile = lambda: nn.Module.compile(model, backend="aot_eager")  # the backend only
    configure_model(model, cfg.train, torch.device("cpu"))
    assert model._compiled_call_impl is not None and list(model.state_dict()) == keys
    b = _volumes(1)[0]
    outs = []
    for m in (ref, model):
        m.eval()
        out = m(b["x"], cam=True)
        class_loss(out.logits, b["y"]).backward()
        outs.append((out.logits.detach(), m.fc.weight.grad.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-5)


def test_bf16_autocast() -> None:
    cfg = load_config(None, [])
    assert cfg.train.amp and not autocast(torch.device("cpu"), cfg.train)._enabled  # CPU default: float32
    model = _model().eval()
    x = _volumes(1)[0]["x"]
    with torch.no_grad():
        ref = model(x).logits
        try:
            with autocast(torch.device("cpu"), cfg.train, cpu_bf16=True):
                out = model(x).logits
        except RuntimeError as e:  # a CPU without bf16 kernels
            pytest.skip(f"CPU bf16 autocast unavailable: {e}")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_an_epoch_and_validation_through_the_device_path(tmp_path) -> None:
    """train_one_epoch and validate fed by a device-mode loader (slots shared by both), accumulating 2."""
    from ctplatform.model.dataset import EpochSampler, ShardSampler, StoreDataset, load_split, make_loader
    from ctplatform.store import Store
    from ctplatform.train.loop import validate
    from tests.train.small_store import build_small_store, small_config

    store = build_small_store(tmp_path / "store", n_train=3, n_valid=2)
    cfg = small_config(tmp_path, tmp_path / "store", ["train.accumulate_steps=2", "train.preprocess=device"])
    train_set = StoreDataset.from_config(cfg, load_split(Store(store.root), "train"), augment=True)
    val_set = StoreDataset.from_config(cfg, load_split(Store(store.root), "valid"), augment=False)
    sampler = EpochSampler(len(train_set), 0, 1, seed=0)
    train_loader = make_loader(train_set, sampler, 1, 0)
    val_loader = make_loader(val_set, ShardSampler(len(val_set), 0, 1), 1, 0, share_slots=train_set.slots)
    assert val_set.slots is train_set.slots and train_set.preprocess == "device"
    torch.manual_seed(0)
    model = AxialNet(cfg.model.geometry)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_one_epoch(model, train_loader, opt, cfg, torch.device("cpu"), TrainState())
    assert result.steps == 2 and result.diverged is None  # 3 volumes: a group of 2, then a group of 1
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    val = validate(model, val_loader, cfg, torch.device("cpu"))
    assert val["val_scans"] == 2 and val["val_loss"] == val["val_loss"]  # finite, not NaN
