"""The Ray Data job over a real store: outputs, partition.parquet, bad volumes, resume, overwrite, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from ctplatform.config import GRID_VARIANTS, IngestConfig, load_config
from ctplatform.partition.job import run_partition, volumes_to_do
from ctplatform.store import Store


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, ct_dir):
    from ctplatform.ingest.preprocess import to_store
    from ctplatform.ingest.readers import read_scan
    from ctplatform.phantom.generate import make_phantom

    root = tmp_path_factory.mktemp("partition") / "store"
    store = Store(str(root))
    for seed in range(2):
        ph = make_phantom(seed, "tiny", abnormalities={})
        store.write_volume(f"phantom-{seed}", ph.hu, {"spacing_mm": list(ph.spacing_mm), "orientation": "IPL"})
    for name in ("abdomen_slab_small", "chest_crop_aorta"):
        hu, attrs = to_store(read_scan(ct_dir / f"{name}.nii.gz"), IngestConfig(spacing_mm=(2.0, 2.0, 2.0)))
        store.write_volume(name.replace("_", "-"), hu, attrs)
    store.write_volume("no-spacing", np.zeros((4, 8, 8), np.int16), {})  # a broken volume
    return str(root)


def _cfg(root: str, *extra: str):
    return load_config(
        None, [f"store={root}", "model.input_shape=[96,256,256]", "model.custom_conv_padding=1", *extra]
    )


def test_job_writes_everything_and_resumes(ray_local, store_root):
    cfg = _cfg(store_root)
    geometry = cfg.model.geometry.name
    df = run_partition(cfg)
    assert len(df) == 5
    by_id = df.set_index("volume_id")
    assert by_id.loc["no-spacing", "status"] == "failed" and "spacing_mm" in by_id.loc["no-spacing", "error"]
    store = Store(store_root)
    for vid in ("phantom-0", "phantom-1", "abdomen-slab-small", "chest-crop-aorta"):
        assert by_id.loc[vid, "status"] == "ok", by_id.loc[vid, "error"]
        organs = store.read_organs(vid)
        assert organs.shape == store.volume(vid).shape and organs.dtype == np.uint8
        for variant in GRID_VARIANTS:
            mask = store.read_grid(geometry, variant, vid)
            assert mask.shape == (3, *cfg.model.geometry.grid) and mask.dtype == np.bool_
    assert bool(by_id.loc["abdomen-slab-small", "fallback"]) and "no_lungs" in by_id.loc["abdomen-slab-small", "qc_flags"]
    assert store.array(store.grid_path(geometry, "nearest", "abdomen-slab-small")).attrs["fallback"] is True
    assert not bool(by_id.loc["phantom-0", "fallback"]) and 2000 < by_id.loc["phantom-0", "total_lung_ml"] < 8000
    assert "partial_fov" in by_id.loc["chest-crop-aorta", "qc_flags"]
    table = store.read_table("partition")
    assert sorted(table["volume_id"]) == sorted(df["volume_id"])

    # A re-run redoes only what is unfinished: the broken volume, and a grid "killed" mid-write.
    store.array(store.grid_path(geometry, "area-dilated", "phantom-1")).attrs["complete"] = False
    todo, done = volumes_to_do(store, cfg)
    assert todo == ["no-spacing", "phantom-1"] and len(done) == 3
    again = run_partition(cfg)
    assert sorted(again["volume_id"]) == ["no-spacing", "phantom-1"]
    assert store.has_grid(geometry, "area-dilated", "phantom-1")

    # Another method or --overwrite redoes everything; the table keeps one row per volume.
    assert len(volumes_to_do(store, _cfg(store_root, "partition.method=reference"))[0]) == 5
    assert len(run_partition(cfg, overwrite=True)) == 5
    assert len(store.read_table("partition")) == 5


def test_cli_preview_and_run(ray_local, store_root, tmp_path):
    from ctplatform.cli import main

    args = ["--store", store_root, "--set", "model.input_shape=[96,256,256]", "--set", "model.custom_conv_padding=1"]
    assert main(["partition", *args]) == 0
    png = tmp_path / "preview.png"
    assert main(["partition", *args, "--preview", "chest-crop-aorta", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert main(["partition", *args, "--preview", "not-there", "--out", str(png)]) == 2
