"""The evaluation cache stores arrays and JSON, never a pickle."""

from __future__ import annotations

import pickle

import numpy as np

from ctplatform.eval.cache import ScoreCache
from ctplatform.eval.scoring import LesionScores, ScanScores, SliceSums


def _result() -> dict:
    lesion = LesionScores(
        labels=np.array([3], np.int16),
        iou={"hirescam": np.ones((1, 4), np.float32)},
        dice={"hirescam": np.zeros((1, 4), np.float32)},
        hit={"hirescam": np.ones(1, np.float32)},
        utility={"hirescam": np.ones(1, np.float32)},
    )
    scan = ScanScores(
        volume_id="v1", split="test", prob=np.linspace(0, 1, 80, dtype=np.float32), y=np.zeros(80, np.uint8),
        positives=np.array([3], np.int16), organ={"hirescam": np.ones((2, 1, 53), np.int16)},
        top_group=np.array([2], np.int16), lesion=lesion, confounder_share=None,
    )
    return {"scans": [scan], "sums": SliceSums.zeros(5), "errors": [("v2", "KeyError: x")]}


def test_round_trip_without_pickle(tmp_path):
    path = tmp_path / "r.npz"
    ScoreCache.save(path, _result())
    back = ScoreCache.load(path)
    assert back["errors"] == [("v2", "KeyError: x")]
    s = back["scans"][0]
    assert isinstance(s, ScanScores) and isinstance(s.lesion, LesionScores) and s.confounder_share is None
    assert np.array_equal(s.prob, _result()["scans"][0].prob) and s.organ["hirescam"].shape == (2, 1, 53)
    assert isinstance(back["sums"], SliceSums) and back["sums"].sum_pos.shape == (80, 5)
    with np.load(path, allow_pickle=False) as npz:  # loads without pickle: no object arrays inside
        assert all(npz[k].dtype != object for k in npz.files)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle ran')",))


def test_a_planted_pickle_is_never_unpickled(tmp_path):
    path = tmp_path / "r.npz"
    path.write_bytes(pickle.dumps(_Boom()))
    assert ScoreCache.load(path) is None  # recomputed, not executed
    np.savez(path, x=np.array([_Boom()], dtype=object))
    assert ScoreCache.load(path) is None
