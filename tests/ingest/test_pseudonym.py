"""Pseudonymised ids: keyed hashes of the names below the input root, stable, unrevealing."""

from __future__ import annotations

import numpy as np
import pytest

from ctplatform.ingest.discover import discover
from ctplatform.ingest.pseudonym import load_key, pseudonym
from tests.faults.catalog import _nifti, ct_array

PHI = "DOE_JOHN_MRN123_ct_chest_1901-02-03"


def test_folder_names_become_keyed_hashes(tmp_path) -> None:
    _nifti(tmp_path / "in" / PHI / "scan.nii.gz", ct_array())
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef0123")
    key = load_key(str(key_file), str(tmp_path / "store"))
    rows = discover(tmp_path / "in", key)
    assert len(rows) == 1 and rows[0]["volume_id"] == pseudonym(key, f"{PHI}/scan.nii.gz")
    assert "DOE" not in rows[0]["volume_id"] and rows[0]["volume_id"].startswith("p")
    assert discover(tmp_path / "in", key)[0]["volume_id"] == rows[0]["volume_id"]  # stable: resume works
    assert discover(tmp_path / "in", b"another key of 16 bytes")[0]["volume_id"] != rows[0]["volume_id"]
    assert discover(tmp_path / "in")[0]["volume_id"] == "scan"  # off by default


def test_key_rules(tmp_path, monkeypatch) -> None:
    assert load_key(None) is None
    with pytest.raises(ValueError, match="does not exist"):
        load_key(str(tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match="at least 16"):
        load_key(str(short))
    inside = tmp_path / "store" / "k"
    inside.parent.mkdir()
    inside.write_bytes(np.random.default_rng(0).bytes(32))
    with pytest.raises(ValueError, match="inside the store"):
        load_key(str(inside), str(tmp_path / "store"))
    monkeypatch.setenv("CTPLATFORM_PSEUDONYM_KEY_FILE", str(inside))
    assert load_key(None) is not None  # the environment variable sets it too
