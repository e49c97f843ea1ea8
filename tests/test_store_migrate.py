"""`ctplatform store migrate` on a store written by the layout-1 code (tests/store_layout1.py), and audit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctplatform.cli import main as cli_main
from ctplatform.store import Store
from ctplatform.store_migrate import audit
from tests import store_layout1

VARIANTS = ("nearest", "area-dilated")


def _layout1_store(root: str) -> dict[str, dict[str, np.ndarray]]:
    old = store_layout1.Store(root)
    rng = np.random.default_rng(3)
    masks: dict[str, dict[str, np.ndarray]] = {}
    for i in range(4):
        vid = f"v{i}"
        hu = rng.integers(-1000, 1000, (30, 8, 8), dtype=np.int16)
        hu[:24] = 0  # an all-zero chunk: layout 1 did not store it
        old.write_volume(vid, hu, {"source_sha256": f"s{i}", "spacing_mm": [1, 1, 1]})
        old.write_organs(vid, (hu > 0).astype(np.uint8), {"method": "improved"})
        masks[vid] = {v: rng.random((3, 2, 3, 3)) > 0.5 for v in VARIANTS}
        for v, m in masks[vid].items():
            old.write_grid("2x3x3", v, vid, m, {"variant": v, "fallback": False})
    old.group.create_array("grid/2x3x3/nearest/v9", shape=(3, 2, 3, 3), dtype=bool,
                           attributes={"complete": False})  # a grid a killed job left unfinished
    old.upsert_table("manifest", pd.DataFrame({"volume_id": [f"v{i}" for i in range(4)], "status": ["ok"] * 4,
                                               "sha256": [f"s{i}" for i in range(4)],
                                               "shape": [[30, 8, 8]] * 4}))
    return masks


def test_migrate_layout1_store(tmp_path, capsys) -> None:
    root = str(tmp_path / "s")
    masks = _layout1_store(root)
    store = Store(root)
    assert store.layout == 1
    assert store.read_grid("2x3x3", "nearest", "v1").shape == (3, 2, 3, 3)  # still readable before migrating
    assert cli_main(["store", "migrate", "--store", root]) == 0
    assert '"grid_volumes_converted": 4' in capsys.readouterr().out
    store = Store(root)
    assert store.layout == 2 and not (tmp_path / "s" / "data.zarr" / "grid").exists()
    for vid, by_variant in masks.items():
        for v, m in by_variant.items():
            np.testing.assert_array_equal(store.read_grid("2x3x3", v, vid), m)
        assert store.verify(store.volume_path(vid), deep=True) is None
        assert store.volume(vid).attrs["checksum"].startswith("sha256:")
    assert store.finished_grid_ids("2x3x3", VARIANTS) == ["v0", "v1", "v2", "v3"]
    arrays = [p for p in (tmp_path / "s" / "data.zarr").rglob("zarr.json")
              if p.parent.parent.name in ("volumes", "organs", "2x3x3") and not p.parent.name.startswith("pack-")]
    assert len(arrays) / 4 == 3  # arrays per volume: volume, organ map, grid masks
    batch = store.read_grids("2x3x3", "area-dilated", ["v3", "v0", "v3"])  # from the pack
    np.testing.assert_array_equal(batch, np.stack([masks["v3"]["area-dilated"], masks["v0"]["area-dilated"],
                                                   masks["v3"]["area-dilated"]]))
    assert audit(store) == []
    assert cli_main(["store", "migrate", "--store", root]) == 0  # idempotent
    assert '"grid_volumes_converted": 0' in capsys.readouterr().out


def test_audit_names_damage_and_disagreeing_rows(tmp_path, capsys) -> None:
    root = tmp_path / "s"
    store = Store(str(root))
    store.write_volume("a", np.ones((6, 4, 4), np.int16), {"source_sha256": "x"}, chunk_slices=3)
    store.write_volume("b", np.ones((6, 4, 4), np.int16), {"source_sha256": "y"}, chunk_slices=3)
    store.write_record("manifest", {"volume_id": "a", "status": "ok", "sha256": "x", "shape": [6, 4, 4]})
    store.write_record("manifest", {"volume_id": "b", "status": "ok", "sha256": "other", "shape": [6, 4, 4]})
    (root / "data.zarr" / "volumes" / "a" / "c.1.0.0").unlink()  # store.CHUNK_KEYS: flat chunk keys
    problems = audit(store)
    assert any("volumes/a" in p and "chunk objects" in p for p in problems)
    assert any("manifest row b disagrees" in p for p in problems)
    assert cli_main(["store", "audit", "--store", str(root)]) == 1
