"""The store contract, and its integrity under damage, concurrent writers and kill -9 (issue 15)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctplatform.store import IncompleteItemError, LeaseHeldError, Store, checksum
from tests.conftest import REPO
from tests.store_writer import source_sha, volume_for


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


# ---------------------------------------------------------------------------------------- integrity


def _chunk_files(root: Path, path: str) -> list[Path]:
    return sorted(p for p in (root / "data.zarr" / path).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_publish_records_checksum_and_every_chunk(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    s.write_volume("z", np.zeros((50, 8, 8), np.int16), {}, chunk_slices=24)  # all-zero chunks are stored too
    attrs = s.volume("z").attrs
    assert attrs["complete"] and attrs["checksum"] == checksum(np.zeros((50, 8, 8), np.int16))
    assert attrs["stored_chunks"] == 3 == len(_chunk_files(tmp_path / "s", "volumes/z"))
    assert s.verify("volumes/z", deep=True) is None


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_items_are_not_finished_and_are_redone(tmp_path, damage) -> None:
    root = tmp_path / "s"
    s = Store(str(root))
    v = np.random.default_rng(1).integers(-1000, 1000, (30, 16, 16), dtype=np.int16)
    s.write_volume("a", v, {"source_sha256": "x"}, chunk_slices=6)
    chunk = _chunk_files(root, "volumes/a")[2]
    if damage == "delete":
        chunk.unlink()
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:-7])
    else:  # same size, other bytes: only the deep check sees it
        raw = bytearray(chunk.read_bytes())
        raw[-1] ^= 0xFF
        chunk.write_bytes(bytes(raw))
    if damage == "flip":
        assert s.has_volume("a") and "checksum" in s.verify("volumes/a", deep=True)
    else:
        assert not s.has_volume("a", "x") and s.volume_ids() == []
        assert "chunk" in s.verify("volumes/a")
    s.write_volume("a", v, {"source_sha256": "x"}, chunk_slices=6)  # a re-run redoes it
    assert s.verify("volumes/a", deep=True) is None and s.volume_ids() == ["a"]


def test_second_writer_of_an_item_fails_clearly(tmp_path) -> None:
    s1, s2 = Store(str(tmp_path / "s")), Store(str(tmp_path / "s"))
    with s1.lease(s1.volume_path("a")):
        with pytest.raises(LeaseHeldError, match=r"volumes/a is being written by another job \(host .*pid"):
            s2.write_volume("a", np.zeros((3, 4, 4), np.int16), {})
        s1.write_volume("a", np.ones((3, 4, 4), np.int16), {})  # re-entrant for its holder
    assert not list((tmp_path / "s" / "leases").rglob("*.lease"))
    np.testing.assert_array_equal(s2.read_volume("a"), 1)


def test_records_make_rows_visible_at_once_and_fold_into_the_table(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    s.write_record("manifest", {"volume_id": "b", "status": "failed", "shape": []})
    s.write_record("manifest", {"volume_id": "a", "status": "ok", "shape": [1, 2, 3]})
    s.write_record("manifest", {"volume_id": "b", "status": "ok", "shape": [4, 5, 6]})  # newer wins
    assert not (tmp_path / "s" / "manifest.parquet").exists()  # a killed driver never wrote the file
    t = s.read_table("manifest")
    assert t["volume_id"].tolist() == ["a", "b"] and t["status"].tolist() == ["ok", "ok"]
    s.sync_table("manifest")
    assert not list((tmp_path / "s" / "records").rglob("*.json"))
    assert s.read_table("manifest")["shape"].map(list).tolist() == [[1, 2, 3], [4, 5, 6]]
    s.write_record("manifest", {"volume_id": "a", "status": "failed", "shape": []})
    out = s.upsert_table("manifest", pd.DataFrame({"volume_id": ["a", "c"], "status": ["ok", "ok"], "shape": [[], []]}))
    assert out["status"].tolist() == ["failed", "ok", "ok"]  # the item's own record is newer than driver rows


def _writer(store: Path, source: str, n: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_writer", str(store), source, str(n), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _check_store(store: Store, sources: set[str], rows_required: bool = True) -> dict[str, str]:
    """Every published volume intact and wholly one writer's; its manifest row agrees. -> id: source

    Right after a kill, a volume may be published before its row was recorded (the re-run records it).
    """
    table = store.read_table("manifest")
    table = (table if table is not None else pd.DataFrame({"volume_id": [], "sha256": []})).set_index("volume_id")
    owner = {}
    for vid in store.volume_ids():
        assert store.verify(store.volume_path(vid), deep=True) is None
        data = store.read_volume(vid)
        match = [src for src in sources if np.array_equal(data, volume_for(src))]
        assert len(match) == 1, f"{vid} is not wholly one writer's volume"
        assert source_sha(match[0]) == store.volume(vid).attrs["source_sha256"]
        if rows_required or vid in table.index:
            assert table.loc[vid, "sha256"] == source_sha(match[0])
        owner[vid] = match[0]
    return owner


@pytest.mark.parametrize("case", ["same ids", "overlapping ids", "same listing twice"])
def test_concurrent_writers_never_corrupt(tmp_path, case) -> None:
    root = tmp_path / "s"
    Store(str(root)).group
    second = {"same ids": ("B", "12"), "overlapping ids": ("B", "18", "--start", "6", "--reverse"),
              "same listing twice": ("A", "12")}[case]
    at = str(time.time() + 15.0)  # both writers must be imported and waiting (slow imports on a busy machine)
    a = _writer(root, "A", "12", "--hold", "0.2", "--at", at)
    b = _writer(root, second[0], second[1], "--hold", "0.2", "--at", at, *second[2:])
    outs = [p.communicate(timeout=180) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, [o[1][-2000:] for o in outs]
    lines = [ln.split(" ", 2) for o in outs for ln in o[0].splitlines()]
    refused = [ln for ln in lines if ln[0] == "refused"]
    # Writers that start on the same item must collide; overlapping ones, running towards each other,
    # may legitimately cross without meeting (each finds the other's item finished and skips it).
    assert refused or case == "overlapping ids", "the writers never collided: the test proves nothing"
    assert all("by another job (" in ln[2] for ln in refused), refused  # the holder is named
    store = Store(str(root))
    owner = _check_store(store, {"A", "B"})
    n = 18 if case == "overlapping ids" else 12
    written = {ln[1] for ln in lines if ln[0] in ("wrote", "skipped")}
    assert set(owner) == written and len(written) <= n
    assert not list((root / "leases").rglob("*.lease"))


def test_kill_9_of_a_writer_loses_nothing_corrupts_nothing_redoes_nothing(tmp_path) -> None:
    rng = random.Random(15)
    root = tmp_path / "s"
    Store(str(root)).group
    for attempt in range(3):
        proc = _writer(root, "A", "40", "--hold", "0.01")
        time.sleep(rng.uniform(0.5, 3.0))
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        store = Store(str(root))
        before = {ln.split()[1] for ln in out.splitlines() if ln.startswith(("wrote", "skipped"))}
        published = set(store.volume_ids())
        assert before <= published  # 0 lost
        table = store.read_table("manifest")
        assert before <= (set() if table is None else set(table["volume_id"]))
        _check_store(store, {"A"}, rows_required=False)  # 0 corrupt
        stamps = {v: (root / "data.zarr" / "volumes" / v / "zarr.json").stat().st_mtime_ns for v in published}
        again = _writer(root, "A", "40")
        out2, err2 = again.communicate(timeout=180)
        assert again.returncode == 0, err2[-2000:]
        redone = {ln.split()[1] for ln in out2.splitlines() if ln.startswith("wrote")} & published
        assert not redone  # 0 finished items redone
        assert all((root / "data.zarr" / "volumes" / v / "zarr.json").stat().st_mtime_ns == t for v, t in stamps.items())
        assert Store(str(root)).volume_ids() == sorted(f"item-{i}" for i in range(40))
        _check_store(Store(str(root)), {"A"})
        if attempt < 2:
            for v in rng.sample([f"item-{i}" for i in range(40)], 5):  # the next round has items to do
                (root / "data.zarr" / "volumes" / v / "zarr.json").unlink()


def _killed_mid_write(store_root: str, marker: str) -> int:
    """A Ray task whose first attempt dies (SIGKILL) holding the lease with half an array written."""
    from ctplatform.store import Store

    store = Store(store_root)
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        with store.lease(store.volume_path("w")):
            arr = store.group.create_array("volumes/w", shape=(12, 4, 4), dtype="int16", chunks=(3, 4, 4),
                                           attributes={"complete": False}, overwrite=True)
            arr[:3] = 7
            os.kill(os.getpid(), signal.SIGKILL)
    store.write_volume("w", np.full((12, 4, 4), 7, np.int16), {}, chunk_slices=3)
    return os.getpid()


def test_worker_killed_mid_task_completes_on_retry(tmp_path, ray_local) -> None:
    ray = ray_local
    root = str(tmp_path / "s")
    Store(root).group
    marker = str(tmp_path / "attempt")
    task = ray.remote(max_retries=2)(_killed_mid_write)
    second_pid = ray.get(task.remote(root, marker), timeout=120)
    assert second_pid != int(Path(marker).read_text())  # a retry in another worker process took over
    store = Store(root)
    assert store.volume_ids() == ["w"] and store.verify("volumes/w", deep=True) is None
