"""Fast DeLong against the direct O(m n) DeLong (1988) computation; BH against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control, norm
from sklearn.metrics import roc_auc_score

from ctplatform.eval.delong import benjamini_hochberg, delong_test


def _direct_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) from the pairwise kernel psi(X, Y) = 1 if X > Y, 1/2 if equal, 0 otherwise."""
    def comps(s):
        x, yy = s[y], s[~y]
        psi = (x[:, None] > yy[None, :]) + 0.5 * (x[:, None] == yy[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, v10a, v01a = comps(a)
    auc_b, v10b, v01b = comps(b)
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    s = s10 / m + s01 / n
    z = (auc_a - auc_b) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return auc_a, auc_b, 2 * norm.sf(abs(z))


def test_fast_delong_matches_direct_computation():
    rng = np.random.default_rng(0)
    n, L = 150, 80
    y = rng.random((n, L)) < rng.uniform(0.05, 0.6, L)
    base = rng.normal(size=(n, L)) + 1.0 * y
    a = np.round(base + 0.5 * rng.normal(size=(n, L)), 1)  # ties
    b = np.round(base + 1.5 * rng.normal(size=(n, L)), 1)
    res = delong_test(y, a, b)
    for j in range(L):
        if y[:, j].all() or not y[:, j].any():
            assert np.isnan(res["p"][j])
            continue
        auc_a, auc_b, p = _direct_delong(y[:, j], a[:, j], b[:, j])
        assert res["auc_a"][j] == pytest.approx(auc_a, abs=1e-12)
        assert res["auc_a"][j] == pytest.approx(roc_auc_score(y[:, j], a[:, j]), abs=1e-12)
        assert res["auc_b"][j] == pytest.approx(auc_b, abs=1e-12)
        assert res["p"][j] == pytest.approx(p, rel=1e-9, abs=1e-14)


def test_delong_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    n = 400
    y = (rng.random((n, 2)) < 0.4)
    signal = rng.normal(size=(n, 2)) + 1.5 * y
    good = signal
    bad = signal + 3.0 * rng.normal(size=(n, 2))
    res = delong_test(y, good, bad)
    assert np.all(res["p"] < 1e-4)
    same = delong_test(y, good, good)
    assert np.all(same["p"] == 1.0)


def test_one_class_label_gives_nan():
    y = np.zeros((20, 2), bool)
    y[:10, 1] = True
    rng = np.random.default_rng(2)
    res = delong_test(y, rng.random((20, 2)), rng.random((20, 2)))
    assert np.isnan(res["p"][0]) and np.isfinite(res["p"][1])


def test_benjamini_hochberg_matches_scipy_and_skips_nan():
    rng = np.random.default_rng(3)
    p = rng.random(80) ** 3
    assert np.allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    p[[3, 7]] = np.nan
    q = benjamini_hochberg(p)
    assert np.isnan(q[3]) and np.isnan(q[7])
    ok = np.isfinite(p)
    assert np.allclose(q[ok], false_discovery_control(p[ok], method="bh"))
