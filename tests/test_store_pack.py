"""Packed grid masks: one read per batch, never stale, rebuilt incrementally."""

from __future__ import annotations

import numpy as np

from ctplatform.store import Store
from ctplatform.store_pack import current_pack, pack_grids


def _masks(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v: rng.random((3, 2, 2, 2)) > 0.5 for v in ("nearest", "trilinear")}


def test_pack_reads_equal_per_volume_reads_and_never_go_stale(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    for i in range(10):
        s.write_grids("2x2x2", f"v{i}", _masks(i), {"fallback": False})
    pointer = pack_grids(s, "2x2x2", rows_per_chunk=4)
    assert pointer["ids"] == sorted(f"v{i}" for i in range(10)) and pointer["variants"] == ["nearest", "trilinear"]
    ids = ["v7", "v0", "v3", "v7"]
    want = np.stack([s.read_grid("2x2x2", "trilinear", i) for i in ids])
    np.testing.assert_array_equal(Store(s.root).read_grids("2x2x2", "trilinear", ids), want)
    s.write_grids("2x2x2", "v3", _masks(99), {"fallback": True})  # rewritten after packing
    fresh = Store(s.root).read_grids("2x2x2", "trilinear", ["v3"])
    np.testing.assert_array_equal(fresh[0], _masks(99)["trilinear"])
    s.write_grids("2x2x2", "v10", _masks(10), {})
    again = pack_grids(s, "2x2x2", rows_per_chunk=4)
    assert again["pack"] != pointer["pack"] and len(again["ids"]) == 11
    got = Store(s.root).read_grids("2x2x2", "nearest", [f"v{i}" for i in range(11)])
    np.testing.assert_array_equal(got, np.stack([s.read_grid("2x2x2", "nearest", f"v{i}") for i in range(11)]))
    assert pack_grids(s, "2x2x2") == current_pack(s, "2x2x2")  # nothing changed: no new pack
    packs = [p.name for p in (tmp_path / "s" / "data.zarr" / "grids" / "2x2x2").iterdir() if p.name.startswith("pack-")]
    assert sorted(packs) == sorted([pointer["pack"], again["pack"]])  # the previous one kept for readers
