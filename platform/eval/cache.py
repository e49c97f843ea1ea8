"""Per-task evaluation results kept on the driver's disk, so a killed evaluation resumes.

Results are stored as arrays and JSON (one .npz: the arrays, plus the structure as JSON text),
read back with `allow_pickle=False`: a file dropped into the cache folder can at worst be
recomputed, never run code. Only the result classes of scoring.py are rebuilt.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

_JSON_KEY = "__structure__"


def _classes() -> dict[str, type]:
    from ctplatform.eval.scoring import LesionScores, ScanScores, SliceSums

    return {c.__name__: c for c in (ScanScores, LesionScores, SliceSums)}


def encode(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON-able structure, arrays by name) of a task result."""
    arrays: dict[str, np.ndarray] = {}
    allowed = _classes()

    def enc(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise TypeError("object arrays are not cached")
            name = f"a{len(arrays)}"
            arrays[name] = v
            return {"__array__": name}
        if isinstance(v, np.generic):
            return v.item()
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v).__name__
            if cls not in allowed:
                raise TypeError(f"{cls} is not a cached result class")
            return {"__dataclass__": cls, "fields": {f.name: enc(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        if isinstance(v, dict):
            return {"__dict__": [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        raise TypeError(f"{type(v).__name__} is not cacheable")

    return enc(value), arrays


def decode(structure: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of `encode`; unknown classes or array names raise ValueError."""
    allowed = _classes()

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__array__" in v:
            return arrays[str(v["__array__"])]
        if "__tuple__" in v:
            return tuple(dec(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {dec(k): dec(x) for k, x in v["__dict__"]}
        if "__dataclass__" in v:
            cls = allowed.get(str(v["__dataclass__"]))
            if cls is None:
                raise ValueError("unknown result class in the cache file")
            return cls(**{str(k): dec(x) for k, x in v["fields"].items()})
        raise ValueError("unknown structure in the cache file")

    return dec(structure)


class ScoreCache:
    """Task results kept on the driver's disk so a killed evaluation resumes where it stopped.

    A file's name hashes everything its scores depend on: the run, the weights, the split, the scans
    and their labels, the sanity flags, the fingerprints of the stored truth, the image-blind prior map
    and the scoring options that change numbers.
    Files are written atomically (temporary name, then rename) and hold volume ids: they stay local
    (never logged to MLflow; the folder starts with a dot).
    """

    VERSION = 4  # bump when scoring changes what a cached result means (3: baselines per scan; 4: prior map)

    def __init__(self, root: Path, run_id: str, state: dict, opts: dict[str, Any], prior: np.ndarray | None = None) -> None:
        import hashlib

        self.root = root
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].numpy().tobytes())
        # the image-blind prior map (from the store's training split) changes the `prior` figures
        p = None if prior is None else hashlib.sha256(np.ascontiguousarray(prior, np.float32).tobytes()).hexdigest()
        self.base = [self.VERSION, run_id, h.hexdigest(), opts.get("seed"), opts.get("truth_method"), p]

    def path(self, split: str, ids: list[str], y: np.ndarray, bits: np.ndarray, sanity: np.ndarray,
             truth: dict[str, str | None]) -> Path:
        import hashlib
        import json

        key = json.dumps([*self.base, split, list(ids), np.asarray(y).tolist(), np.asarray(bits).tolist(),
                          np.asarray(sanity).tolist(), [truth.get(v) for v in ids]])
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"

    @staticmethod
    def load(path: Path) -> dict | None:
        """The cached result, or None when absent or unreadable (then it is recomputed)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            structure = json.loads(arrays.pop(_JSON_KEY).tobytes().decode("utf-8"))
            return decode(structure, arrays)
        except Exception:  # a damaged or foreign file is recomputed
            return None

    @staticmethod
    def save(path: Path, result: dict) -> None:
        structure, arrays = encode(result)
        arrays[_JSON_KEY] = np.frombuffer(json.dumps(structure).encode("utf-8"), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
