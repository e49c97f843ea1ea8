from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctplatform.store import IncompleteItemError, Store


def test_volume_roundtrip_chunks_and_attrs(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    v = np.random.default_rng(0).integers(-1024, 3071, (50, 32, 40), dtype=np.int16)
    s.write_volume("a-1", v, {"spacing_mm": [0.8, 0.8, 0.8], "orientation": "IPL"}, chunk_slices=24)
    arr = s.volume("a-1")
    assert arr.chunks == (24, 32, 40)
    assert arr.attrs["complete"] is True and arr.attrs["orientation"] == "IPL"
    np.testing.assert_array_equal(s.read_volume("a-1"), v)
    assert s.volume_ids() == ["a-1"]


def test_unfinished_items_do_not_count(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    s.group.create_array("volumes/half", shape=(3, 3, 3), dtype="int16", attributes={"complete": False})
    assert s.volume_ids() == [] and not s.has_volume("half")
    with pytest.raises(IncompleteItemError, match="not finished"):
        s.volume("half")
    with pytest.raises(IncompleteItemError, match="not in the store"):
        s.volume("missing")


def test_has_volume_checks_source_hash(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    s.write_volume("a", np.zeros((3, 4, 4), np.int16), {"source_sha256": "abc"})
    assert s.has_volume("a", "abc") and not s.has_volume("a", "def")


def test_no_phi_attributes_and_safe_ids(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="not allowed"):
        s.write_volume("a", np.zeros((3, 4, 4), np.int16), {"PatientName": "X"})
    for bad in ["../x", "a/b", ".hidden", ""]:
        with pytest.raises(ValueError, match="invalid volume id"):
            s.write_volume(bad, np.zeros((3, 4, 4), np.int16), {})


def test_grid_and_organs_contract(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    s.write_organs("a", np.ones((6, 4, 4), np.uint8), {"method": "reference"})
    s.write_grid("2x1x1", "nearest", "a", np.ones((3, 2, 1, 1), bool), {})
    assert s.organ_ids() == ["a"] and s.grid_ids("2x1x1", "nearest") == ["a"]
    with pytest.raises(ValueError, match="bool"):
        s.write_grid("2x1x1", "nearest", "a", np.ones((3, 2, 1, 1), np.uint8), {})


def test_tables_upsert(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    assert s.read_table("manifest") is None
    s.upsert_table("manifest", pd.DataFrame({"volume_id": ["b", "a"], "status": ["ok", "failed"]}))
    out = s.upsert_table("manifest", pd.DataFrame({"volume_id": ["a"], "status": ["ok"]}))
    assert out.to_dict("list") == {"volume_id": ["a", "b"], "status": ["ok", "ok"]}
    assert not list(tmp_path.glob("s/*.tmp-*"))


def test_truth_contract(tmp_path) -> None:
    """Lesion truth beside its volume and on the grid: bitfields whose attrs name every bit."""
    s = Store(str(tmp_path / "s"))
    s.write_volume("a", np.zeros((6, 4, 4), np.int16), {})
    assert s.truth_ids() == [] and not s.has_truth("a") and s.grid_truth_ids("2x1x1", "area") == []
    bits = np.zeros((6, 4, 4), np.uint16)
    bits[2, 1, 1] = 0b101
    attrs = {"truth_labels": ["lung_nodule", "lung_mass", "confounder"], "confounder": {"kind": "marker", "label": "lung_nodule"},
             "source_sha256": "abc"}
    s.write_truth("a", bits, attrs)
    np.testing.assert_array_equal(s.read_truth("a"), bits)
    assert s.truth_ids() == ["a"] and s.truth("a").attrs["confounder"] == {"kind": "marker", "label": "lung_nodule"}
    s.write_grid_truth("2x1x1", "area", "a", np.array([[[5]], [[0]]], np.uint16), attrs)
    assert s.has_grid_truth("2x1x1", "area", "a") and s.grid_truth_ids("2x1x1", "area") == ["a"]
    assert s.read_grid_truth("2x1x1", "area", "a")[0, 0, 0] == 5
    with pytest.raises(ValueError, match="unsigned"):
        s.write_truth("a", bits.astype(np.int16), attrs)
    with pytest.raises(ValueError, match="truth_labels"):
        s.write_truth("a", bits.astype(np.uint8), {"truth_labels": [f"x{k}" for k in range(9)]})
    with pytest.raises(ValueError, match="not allowed"):
        s.write_truth("a", bits, {**attrs, "path": "/data/patient/mask.nii.gz"})
    s.remove_truth("a")
    assert not s.has_truth("a") and s.truth_ids() == []
    s.remove_truth("a")  # nothing to remove: no error


def test_store_without_truth_groups_reads(tmp_path) -> None:
    """A store written before truth existed (no truth/ or truth_grid/ groups) answers 'no truth'."""
    s = Store(str(tmp_path / "s"))
    s.write_volume("a", np.zeros((3, 4, 4), np.int16), {})
    assert "truth" not in s.group
    reopened = Store(str(tmp_path / "s"))
    assert reopened.truth_ids() == [] and not reopened.has_truth("a") and not reopened.has_grid_truth("g", "area", "a")
