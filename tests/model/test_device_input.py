"""The model-ready input path: window decode, shared slots, augmentation and normalisation on the
device give exactly the loader path's tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec

from ctplatform.geometry import ModelGeometry, crop_or_pad_slices
from ctplatform.model.augment import Augmentation, apply_to_grid, apply_to_volume
from ctplatform.model.chunk_read import WindowReader
from ctplatform.model.dataset import EpochSampler, ShardSampler, StoreDataset, load_split, make_loader, read_crop
from ctplatform.model.device_input import (
    DeviceBatches,
    SlotOverwrittenError,
    augment_on_device,
    model_batch,
    normalize_on_device,
    read_crop_into,
)
from ctplatform.model.dataset import normalize_hu
from ctplatform.store import Store
from tests.train.small_store import build_small_store

GEOM = ModelGeometry((24, 64, 64), custom_conv_padding=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return build_small_store(tmp_path_factory.mktemp("device_input") / "store", n_train=6, n_valid=2)


def _dataset(store: Store, preprocess: str, augment: bool = True, split: str = "train") -> StoreDataset:
    return StoreDataset(store.root, load_split(store, split), GEOM, "nearest", augment=augment, seed=5, preprocess=preprocess)


@pytest.mark.parametrize("codec", ["zstd", "lz4", "lz4hc"])
def test_window_reader_matches_zarr_for_every_chunk_layout(tmp_path, codec) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 3000, size=(50, 37, 41), dtype=np.int16)
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w", zarr_format=3)
    layouts = {
        "planes": dict(chunks=(6, 37, 41)),
        "tiles": dict(chunks=(9, 10, 16)),
        "sharded": dict(chunks=(3, 37, 41), shards=(12, 37, 41)),  # not the store's layout: zarr fallback
    }
    reader = WindowReader()
    for name, layout in layouts.items():
        arr = group.create_array(
            name, shape=data.shape, dtype=data.dtype, fill_value=0,
            compressors=BloscCodec(cname=codec, clevel=3, shuffle="shuffle"), **layout,
        )
        arr[:, :, :20] = data[:, :, :20]  # chunks past x=20 partly never written: fill value
        want_all = arr[...]
        for src in [(slice(0, 50), slice(0, 37), slice(0, 41)), (slice(6, 30), slice(3, 30), slice(5, 33)), (slice(12, 18), slice(0, 37), slice(0, 41))]:
            out = np.full([s.stop - s.start for s in src], 7777, np.int16)  # stale contents must vanish
            reader.read(arr, src, out)
            np.testing.assert_array_equal(out, want_all[src], err_msg=f"{name} {src}")
    with pytest.raises(ValueError, match="window"):
        reader.read(arr, (slice(0, 5),) * 3, np.zeros((4, 5, 5), np.int16))


def test_read_crop_into_a_dirty_buffer_equals_read_crop(store: Store) -> None:
    reader = WindowReader()
    for vid in ("vol000", "vol001", "vol002"):  # crop, pad z and y while cropping x, exact fit
        out = np.full(GEOM.input_shape, 1234, np.int16)
        read_crop_into(reader, store.volume(vid), out)
        np.testing.assert_array_equal(out, read_crop(store.volume(vid), GEOM.input_shape))


def test_store_writes_lz4_volumes_that_read_the_same(tmp_path) -> None:
    store = Store(str(tmp_path / "s"))
    hu = np.random.default_rng(1).integers(-1024, 2000, size=(27, 64, 70), dtype=np.int16)
    store.write_volume("a", hu, {}, chunk_slices=9, codec="lz4")
    store.write_volume("b", hu, {}, chunk_slices=9)
    store.write_volume("c", hu, {}, chunk_slices=9, codec="lz4hc")
    assert store.volume("a").metadata.codecs[1].cname.value == "lz4"
    assert store.volume("b").metadata.codecs[1].cname.value == "zstd"
    assert store.volume("c").metadata.codecs[1].cname.value == "lz4hc"
    out = np.zeros(GEOM.input_shape, np.int16)
    read_crop_into(WindowReader(), store.volume("a"), out)
    np.testing.assert_array_equal(out, read_crop(store.volume("b"), GEOM.input_shape))
    read_crop_into(WindowReader(), store.volume("c"), out)
    np.testing.assert_array_equal(out, read_crop(store.volume("b"), GEOM.input_shape))
    with pytest.raises(ValueError, match="unknown volume codec"):
        store.write_volume("d", hu, {}, codec="gzip")


@pytest.mark.parametrize("flip,k", [(f, k) for f in (None, 0, 1, 2) for k in range(4)])
def test_device_augmentation_and_normalisation_equal_the_loader_ops(flip, k) -> None:
    rng = np.random.default_rng(3)
    hu = rng.integers(-1100, 900, size=(24, 64, 64), dtype=np.int16)
    grid = rng.random((3, 8, 2, 2)) > 0.5
    aug = Augmentation(flip, k)
    v, g = augment_on_device(torch.from_numpy(hu), torch.from_numpy(grid), -1 if flip is None else flip, k)
    np.testing.assert_array_equal(v.numpy(), apply_to_volume(hu, aug))
    np.testing.assert_array_equal(g.numpy(), apply_to_grid(grid, aug))
    got = normalize_on_device(v, (-1000.0, 800.0), 0.449)
    want = normalize_hu(apply_to_volume(hu, aug), (-1000.0, 800.0), 0.449)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want))  # bit for bit


@pytest.mark.parametrize("workers", [0, 1])
def test_device_path_feeds_the_model_the_loader_paths_tensors(store: Store, workers: int) -> None:
    """Same seed, same epochs: x, grid masks, labels and order are identical, bit for bit."""
    loader_ds, device_ds = _dataset(store, "loader"), _dataset(store, "device")
    ref_sampler, dev_sampler = EpochSampler(len(loader_ds), 0, 1, seed=2), EpochSampler(len(device_ds), 0, 1, seed=2)
    reference = make_loader(loader_ds, ref_sampler, 2, workers=0)
    device = DeviceBatches(make_loader(device_ds, dev_sampler, 2, workers=workers), torch.device("cpu"))
    assert len(device) == len(reference) == 3
    augmented = 0
    for epoch in range(3):  # three epochs: different draws, persistent loader processes reuse slots
        ref_sampler.set_epoch(epoch)
        dev_sampler.set_epoch(epoch)
        batches = list(zip(reference, device, strict=True))
        assert len(batches) == 3
        for ref, got in batches:
            assert set(got) == {"x", "grid", "y", "region_bits", "index"}
            for key in ("x", "grid", "y", "region_bits", "index"):
                assert got[key].dtype == ref[key].dtype and torch.equal(got[key], ref[key]), (epoch, key)
        augmented += sum(
            not device_ds.augmentation(epoch, i).identity for _, i in dev_sampler
        )
    assert augmented >= 4  # the comparison covered augmented items


def test_validation_loader_in_device_mode(store: Store) -> None:
    ds_l, ds_d = _dataset(store, "loader", augment=False, split="valid"), _dataset(store, "device", augment=False, split="valid")
    ref = list(make_loader(ds_l, ShardSampler(len(ds_l), 0, 1), 1, workers=0))
    got = list(DeviceBatches(make_loader(ds_d, ShardSampler(len(ds_d), 0, 1), 1, workers=0), torch.device("cpu")))
    assert len(ref) == len(got) == 2 and all(torch.equal(a["x"], b["x"]) for a, b in zip(ref, got))


def test_holding_slots_past_the_limit_is_caught(store: Store) -> None:
    ds = _dataset(store, "device")
    loader = make_loader(ds, EpochSampler(len(ds), 0, 1, seed=0), 1, workers=0)
    held = list(loader)  # raw batches held without copying: 6 items through 2 slots
    assert ds.slots.per_worker == 2
    feed = DeviceBatches(loader, torch.device("cpu"))
    with pytest.raises(SlotOverwrittenError, match="overwrote slot"):
        feed._stage(held[0])
    out, _ = feed._stage(held[-1])  # the latest batch is intact
    assert out["x"].shape == (1, 8, 3, 64, 64)


def test_model_batch_shapes() -> None:
    hu = [torch.zeros(24, 64, 64, dtype=torch.int16), torch.full((24, 64, 64), 800, dtype=torch.int16)]
    x, g = model_batch(hu, torch.zeros(2, 3, 8, 2, 2, dtype=torch.bool), torch.tensor([[-1, 0], [0, 1]]), (-1000.0, 800.0), 0.449, 3)
    assert x.shape == (2, 8, 3, 64, 64) and g.shape == (2, 3, 8, 2, 2)
    assert float(x[1].max()) == pytest.approx(0.551)
    assert crop_or_pad_slices((24, 64, 64), (24, 64, 64))[0] == (0, 24, 0, 24)
