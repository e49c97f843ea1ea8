"""Per-task evaluation results kept on the driver's disk, so a killed evaluation resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class ScoreCache:
    """Task results kept on the driver's disk so a killed evaluation resumes where it stopped.

    A file's name hashes everything its scores depend on: the run, the weights, the split, the scans
    and their labels, the sanity flags, the fingerprints of the stored truth and the scoring options that change numbers.
    Files are written atomically (temporary name, then rename) and hold volume ids: they stay local
    (never logged to MLflow; the folder starts with a dot).
    """

    VERSION = 3  # bump when scoring changes what a cached result means (3: baselines per scan)

    def __init__(self, root: Path, run_id: str, state: dict, opts: dict[str, Any]) -> None:
        import hashlib

        self.root = root
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].numpy().tobytes())
        self.base = [self.VERSION, run_id, h.hexdigest(), opts.get("seed"), opts.get("truth_method")]

    def path(self, split: str, ids: list[str], y: np.ndarray, bits: np.ndarray, sanity: np.ndarray,
             truth: dict[str, str | None]) -> Path:
        import hashlib
        import json

        key = json.dumps([*self.base, split, list(ids), np.asarray(y).tolist(), np.asarray(bits).tolist(),
                          np.asarray(sanity).tolist(), [truth.get(v) for v in ids]])
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pkl"

    @staticmethod
    def load(path: Path) -> dict | None:
        import pickle

        if not path.is_file():
            return None
        try:
            return pickle.loads(path.read_bytes())
        except Exception:  # a damaged file is recomputed
            return None

    @staticmethod
    def save(path: Path, result: dict) -> None:
        import pickle

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(pickle.dumps(result))
        tmp.replace(path)
