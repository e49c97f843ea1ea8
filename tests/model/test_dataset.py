"""The Dataset over the store: crop/pad, normalisation, slice groups, masks, labels, loader processes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctplatform.geometry import ModelGeometry, center_crop_or_pad
from ctplatform.labels import RIGHT_LUNG, label_index
from ctplatform.store import Store
from ctplatform.model.augment import apply_to_grid, apply_to_volume, augmentation_rng, draw_augmentation
from ctplatform.model.dataset import (
    EpochSampler,
    MissingGridMaskError,
    ShardSampler,
    StoreDataset,
    check_grid_masks,
    load_split,
    make_loader,
    normalize_hu,
    read_crop,
)
from tests.train.small_store import build_small_store, grid_masks

GEOM = ModelGeometry((24, 64, 64), custom_conv_padding=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return build_small_store(tmp_path_factory.mktemp("train_ds") / "store", n_train=4, n_valid=2)


def _dataset(store: Store, augment: bool = False, split: str = "train") -> StoreDataset:
    return StoreDataset(store.root, load_split(store, split), GEOM, "nearest", augment=augment, seed=5)


def test_load_split_encodes_labels(store: Store) -> None:
    train, valid = load_split(store, "train"), load_split(store, "valid")
    assert train.ids == ["vol000", "vol001", "vol002", "vol003"] and valid.ids == ["vol004", "vol005"]
    nodule = label_index("nodule", "right_lung")
    assert train.y[0, nodule] == 1 and train.region_bits[0, nodule] == RIGHT_LUNG
    assert train.y[1, nodule] == 0 and train.y[1].sum() == 1  # cardiomegaly only
    assert train.y.shape == (4, 80) and train.y.dtype == np.float32


def test_item_shapes_and_normalisation(store: Store) -> None:
    ds = _dataset(store)
    item = ds[0]
    assert item["x"].shape == (8, 3, 64, 64) and item["x"].dtype == torch.float32
    assert item["grid"].shape == (3, 8, 2, 2) and item["grid"].dtype == torch.bool
    hu = read_crop(store.volume("vol000"), GEOM.input_shape)
    want = normalize_hu(hu, (-1000.0, 800.0), 0.449).reshape(8, 3, 64, 64)
    np.testing.assert_allclose(item["x"].numpy(), want, rtol=0, atol=1e-6)
    assert float(item["x"].min()) >= -0.449 - 1e-6 and float(item["x"].max()) <= 0.551 + 1e-6
    np.testing.assert_array_equal(item["grid"].numpy(), grid_masks((8, 2, 2)))
    # the nodule (HU 300) sits at the volume's centre slice, y centre, x quarter: after the crop
    z, y, x = np.unravel_index(np.argmax(hu), hu.shape)
    assert hu[z, y, x] == 300 and x < 32  # right lung side (low x)


def test_read_crop_reads_only_the_window_yet_matches_the_whole_volume_crop(store: Store) -> None:
    for vid in ("vol000", "vol001"):  # 30x70x70 (crop) and 21x60x66 (pad z and y, crop x)
        arr = store.volume(vid)
        full = arr[...]
        got = read_crop(arr, GEOM.input_shape)
        assert got.shape == GEOM.input_shape
        want = center_crop_or_pad(full, GEOM.input_shape, fill=got.min())
        np.testing.assert_array_equal(got, want)
    padded = read_crop(store.volume("vol001"), GEOM.input_shape)
    assert (padded[0] == padded.min()).all()  # z pad (21 -> 24) uses the minimum


def test_augmented_item_equals_augmenting_by_hand(store: Store) -> None:
    plain, aug = _dataset(store), _dataset(store, augment=True)
    for epoch in range(6):
        a = draw_augmentation(augmentation_rng(5, epoch, 2))
        hu = apply_to_volume(read_crop(store.volume("vol002"), GEOM.input_shape), a)
        item = aug[(epoch, 2)]
        np.testing.assert_allclose(
            item["x"].numpy(), normalize_hu(hu, (-1000.0, 800.0), 0.449).reshape(8, 3, 64, 64), atol=1e-6
        )
        np.testing.assert_array_equal(item["grid"].numpy(), apply_to_grid(plain[2]["grid"].numpy(), a))
        np.testing.assert_array_equal(aug[(epoch, 2)]["x"].numpy(), item["x"].numpy())  # deterministic


def test_missing_and_mismatched_grid_masks_are_clear_errors(tmp_path) -> None:
    store = build_small_store(tmp_path / "s", n_train=2, n_valid=1)
    store.write_grid("8x2x2", "nearest", "vol001", np.zeros((3, 8, 2, 3), bool), {})
    ds = _dataset(store)
    with pytest.raises(ValueError, match="re-run `ctplatform partition`"):
        ds[1]
    with pytest.raises(MissingGridMaskError, match=r"ctplatform partition --store .* 'area'"):
        StoreDataset(store.root, load_split(store, "train"), GEOM, "area")[0]
    with pytest.raises(MissingGridMaskError, match="vol000, vol001"):
        check_grid_masks(store, GEOM, "area", ["vol000", "vol001"])
    check_grid_masks(store, GEOM, "nearest", ["vol000", "vol001"])


def test_split_problems(tmp_path) -> None:
    store = build_small_store(tmp_path / "s", n_train=3, n_valid=1)
    labels = store.read_table("labels")
    store.write_table("labels", labels[labels.volume_id != "vol001"])
    assert load_split(store, "train").ids == ["vol000", "vol002"]  # unlabelled scan skipped
    m = store.read_table("manifest")
    m.loc[m.volume_id == "vol002", "status"] = "failed"
    store.write_table("manifest", m)
    assert load_split(store, "train").ids == ["vol000"]
    with pytest.raises(FileNotFoundError, match="ctplatform ingest"):
        load_split(Store(str(tmp_path / "empty")), "train")
    store.write_table("labels", pd.DataFrame(columns=["volume_id", "abnormality", "location", "value"]))
    assert len(load_split(store, "train")) == 0


def test_samplers_shard_and_carry_the_epoch() -> None:
    s0, s1 = EpochSampler(5, 0, 2, seed=1), EpochSampler(5, 1, 2, seed=1)
    s0.set_epoch(3)
    s1.set_epoch(3)
    a, b = list(s0), list(s1)
    assert len(a) == len(b) == 3 and all(e == 3 for e, _ in a + b)  # padded to equal length for DDP
    assert {i for _, i in a + b} == set(range(5))
    assert list(ShardSampler(5, 1, 2)) == [1, 3]


def test_forkserver_loader_matches_in_process_loading(store: Store) -> None:
    ds = _dataset(store, augment=True)
    sampler = EpochSampler(len(ds), 0, 1, seed=0)
    sampler.set_epoch(1)
    in_process = [b["x"] for b in make_loader(ds, sampler, 2, workers=0)]
    loader = make_loader(ds, sampler, 2, workers=1)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    in_worker = [b["x"] for b in loader]
    assert len(in_worker) == 2 and all(torch.equal(a, b) for a, b in zip(in_process, in_worker))
