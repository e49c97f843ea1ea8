"""PARTITION puts lesion truth on the feature grid like the organs; it equals the old eval-side computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctplatform.config import GRID_METHODS, load_config
from ctplatform.geometry import ModelGeometry, center_crop_or_pad
from ctplatform.ingest.discover import discover
from ctplatform.ingest.job import ingest_one
from ctplatform.labels import label_by_name
from ctplatform.partition.grid import downsample_bits, truth_on_grid
from ctplatform.partition.job import volumes_to_do
from ctplatform.partition.volume import grid_truth_current, partition_volume
from ctplatform.phantom.cohort import generate_cohort
from ctplatform.store import Store
from tests.eval.legacy_truth import truth_on_grid as legacy_truth_on_grid


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("partition_truth")
    out = root / "c"
    generate_cohort(out, n=3, seed=7, size="tiny", confounder="fat:great_vessel_atherosclerosis:0.9", workers=1, progress=False)
    cfg = load_config(None, [f"workdir={root}", "ingest.spacing_mm=[3,3,3]", "model.input_shape=[60,96,96]",
                             "model.custom_conv_padding=1", "partition.variants=[area]"])
    for row in discover(out / "scans.csv"):
        assert ingest_one(row, cfg.store_path, cfg.ingest.model_dump(mode="json"))["status"] == "ok"
    return cfg, out


def test_truth_on_grid_is_each_bit_downsampled_alone():
    """Every bit of a wide bitfield takes exactly the path a single organ mask takes (any voxel -> cell, for area)."""
    rng = np.random.default_rng(0)
    geom = ModelGeometry(input_shape=(24, 40, 40), custom_conv_padding=1)
    bits = np.zeros((30, 44, 36), np.uint32)
    for k in (0, 5, 17, 31):
        bits[tuple(rng.integers(0, s, 6) for s in bits.shape)] |= np.uint32(1 << k)
    cells = truth_on_grid(bits, geom)
    assert set(cells) == set(GRID_METHODS)
    for method, grid in cells.items():
        assert grid.dtype == np.uint32 and grid.shape == geom.grid
        for k in (0, 5, 17, 31):
            alone = ((bits >> k) & 1).astype(np.uint8)
            want = downsample_bits(center_crop_or_pad(alone, geom.input_shape, fill=0), geom.grid, method)
            np.testing.assert_array_equal((grid >> k) & 1, want, err_msg=f"{method} bit {k}")
    assert all(((cells["area"] >> k) & 1).sum() >= 1 for k in (0, 5, 17, 31))  # no lesion voxel is lost by area


def test_partition_writes_grid_truth_equal_to_the_old_eval_computation(ingested):
    cfg, out = ingested
    store = Store(cfg.store_path)
    geom = cfg.model.geometry
    nonempty = 0
    for vid in store.volume_ids():
        assert not grid_truth_current(store, vid, geom)
        row = partition_volume(store, vid, cfg)
        assert row["status"] == "ok", row
        assert grid_truth_current(store, vid, geom)
        vol = store.volume(vid)
        for method in GRID_METHODS:
            arr = store.grid_truth(geom.name, method, vid)
            assert arr.shape == geom.grid and arr.attrs["source_sha256"] == store.truth(vid).attrs["source_sha256"]
            names = list(arr.attrs["truth_labels"])
            cells = arr[...]
            old = legacy_truth_on_grid(out, vid, tuple(vol.shape), vol.attrs, geom, method)
            for k, name in enumerate(names):
                got = (cells >> k) & 1 > 0
                want = old.confounder if name == "confounder" else old.lesions[label_by_name(name).index]
                np.testing.assert_array_equal(got, want, err_msg=f"{vid} {method} {name}")
                nonempty += int(got.any())
    assert nonempty > 3  # lesions and the fat region really are on the grid


def test_a_volume_whose_truth_changed_is_partitioned_again(ingested):
    cfg, _ = ingested
    store = Store(cfg.store_path)
    geom = cfg.model.geometry
    vid = store.volume_ids()[0]
    if not store.has_grid_truth(geom.name, "area", vid):
        partition_volume(store, vid, cfg)
    store.upsert_table("partition", pd.DataFrame(
        [{"volume_id": v, "status": "ok", "method": cfg.partition.method, "geometry": geom.name} for v in store.volume_ids()]))
    todo, _ = volumes_to_do(store, cfg)
    assert vid not in todo
    arr = store.truth(vid)
    store.write_truth(vid, arr[...], {**dict(arr.attrs), "source_sha256": "another mask"})
    todo, _ = volumes_to_do(store, cfg)
    assert vid in todo and not grid_truth_current(store, vid, geom)
