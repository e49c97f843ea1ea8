"""Summary tables: content, PHI-free predictions, round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctplatform.eval.report import (
    markdown_table,
    predictions_arrays,
    predictions_frame,
    scan_key,
    write_summary,
)
from ctplatform.eval.scoring import score_outputs
from ctplatform.eval.summary import evaluate_scores


def _scans(n=12, seed=0):
    rng = np.random.default_rng(seed)
    grid = (3, 2, 2)
    y = (rng.random((n, 80)) < 0.3).astype(np.float32)
    out = {
        "prob": rng.random((n, 80)).astype(np.float32),
        "slice_scores": rng.normal(size=(n, 80, 3)).astype(np.float32),
        "hirescam": rng.normal(size=(n, 80) + grid).astype(np.float32),
        "gradcam": rng.normal(size=(n, 80) + grid).astype(np.float32),
    }
    g = np.broadcast_to(rng.random((n, 1) + grid) < 0.5, (n, 80) + grid)
    return score_outputs([f"patient_Smith_{i}" for i in range(n)], ["test"] * n, out, y, g)


def test_markdown_table_formats_nan_and_numbers():
    md = markdown_table(pd.DataFrame({"a": ["x"], "b": [np.nan], "c": [0.12345], "d": [3]}))
    assert md.splitlines()[2] == "| x | – | 0.123 | 3 |"


def test_summary_files(tmp_path):
    scans = _scans()
    ev = evaluate_scores(scans, scans, n_boot=20)
    paths = write_summary(ev, tmp_path, "Evaluation of run abc on test", {"split": "test"})
    md = paths["summary.md"].read_text()
    assert "OrganIoU HiResCAM" in md and "median over labels" in md and "lung_nodule" in md
    assert "<table>" in paths["summary.html"].read_text()
    assert len(pd.read_csv(paths["per_label.csv"])) == 80
    assert len(pd.read_csv(paths["thresholds.csv"])) == 80


def test_predictions_are_keyed_without_volume_ids(tmp_path):
    import hashlib

    from ctplatform.eval.report import scan_key_salt

    scans = _scans()
    salt = scan_key_salt(tmp_path)
    assert scan_key_salt(tmp_path) == salt and (tmp_path / ".scan_key_salt").stat().st_mode & 0o077 == 0
    df = predictions_frame(scans, salt)
    text = df.to_csv()
    assert "Smith" not in text
    assert df["scan_key"].iloc[0] == scan_key("patient_Smith_0", salt) and len(df["scan_key"].iloc[0]) == 16
    # Salted: the unsalted hash of a guessed id does not find the key, and another salt gives other keys.
    assert df["scan_key"].iloc[0] != hashlib.sha256(b"patient_Smith_0").hexdigest()[:16]
    assert scan_key("patient_Smith_0", b"another salt of 16+ bytes") != df["scan_key"].iloc[0]
    y, p = predictions_arrays(df)
    assert np.array_equal(y, np.stack([s.y for s in scans]))
    assert np.allclose(p, np.stack([s.prob for s in scans]))
