"""Comparing two models' AUROCs on the same scans: the DeLong test with FDR correction (paper 000, Table 7).

`delong_test` is the fast DeLong algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21:
1389-1393): the structural components of DeLong et al. (1988) come from mid-ranks instead of the
O(m n) pairwise kernel, so all 80 labels are tested in O(N log N) each, at once.
`benjamini_hochberg` adjusts the 80 p-values for the false discovery rate (Benjamini & Hochberg 1995).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctplatform.model.metrics import as_numpy, quiet_nan_warnings


def _masked_midranks(scores: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Mid-ranks of scores [N, L] within the rows where `member` [N, L] is True (NaN elsewhere)."""
    from scipy.stats import rankdata

    s = np.where(member, scores, np.nan)
    return rankdata(s, axis=0, nan_policy="omit")


def delong_components(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC [L] and structural components V10 [N, L] (on positives), V01 [N, L] (on negatives).

    V10_i = share of negatives a positive i outscores (ties count 1/2); V01_j = share of positives
    that outscore negative j. Entries of the other class are NaN. Sun & Xu: with T_z the mid-rank
    among all scans, T_x among positives only, T_y among negatives only,
        V10 = (T_z - T_x) / n,   V01 = 1 - (T_z - T_y) / m,   AUC = mean(V10).
    """
    from scipy.stats import rankdata

    pos = y_true.astype(bool)
    neg = ~pos
    m = pos.sum(axis=0).astype(np.float64)
    n = neg.sum(axis=0).astype(np.float64)
    tz = rankdata(y_score, axis=0)
    tx = _masked_midranks(y_score, pos)
    ty = _masked_midranks(y_score, neg)
    with np.errstate(invalid="ignore", divide="ignore"), quiet_nan_warnings():
        v10 = np.where(pos, (tz - tx) / n, np.nan)
        v01 = np.where(neg, 1.0 - (tz - ty) / m, np.nan)
        auc = np.nanmean(np.where(pos, v10, np.nan), axis=0) if pos.any() else np.full(y_true.shape[1], np.nan)
    auc = np.where((m > 0) & (n > 0), auc, np.nan)
    return auc, v10, v01


def _cov(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise sample covariance of two [N, L] arrays, NaN rows ignored (same NaN pattern)."""
    k = np.isfinite(a).sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), quiet_nan_warnings():
        da = a - np.nanmean(a, axis=0)
        db = b - np.nanmean(b, axis=0)
        return np.nansum(da * db, axis=0) / (k - 1)


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> dict[str, np.ndarray]:
    """Two-sided DeLong test of AUROC(a) == AUROC(b) per label, both models scored on the same scans.

    y_true [N, L] 0/1; score_a, score_b [N, L]. Returns arrays [L]: `auc_a`, `auc_b`, `var_a`,
    `var_b`, `cov`, `z`, `p` (NaN where a label has one class or both models rank identically).
    """
    from scipy.stats import norm

    y = as_numpy(y_true).astype(bool)
    a = as_numpy(score_a).astype(np.float64)
    b = as_numpy(score_b).astype(np.float64)
    if not (y.shape == a.shape == b.shape) or y.ndim != 2:
        raise ValueError(f"y_true, score_a and score_b must all be [N, L]; got {y.shape}, {a.shape}, {b.shape}")
    m = y.sum(axis=0).astype(np.float64)
    n = (~y).sum(axis=0).astype(np.float64)
    auc_a, v10a, v01a = delong_components(y, a)
    auc_b, v10b, v01b = delong_components(y, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_a = _cov(v10a, v10a) / m + _cov(v01a, v01a) / n
        var_b = _cov(v10b, v10b) / m + _cov(v01b, v01b) / n
        cov_ab = _cov(v10a, v10b) / m + _cov(v01a, v01b) / n
        var_diff = var_a + var_b - 2 * cov_ab
        z = (auc_a - auc_b) / np.sqrt(var_diff)
    # Identical rankings give 0/0: no evidence of a difference, not a test failure.
    z = np.where(np.isfinite(z), z, np.nan)
    z = np.where((var_diff <= 1e-15) & np.isfinite(auc_a) & (auc_a == auc_b), 0.0, z)
    p = 2 * norm.sf(np.abs(z))
    return {"auc_a": auc_a, "auc_b": auc_b, "var_a": var_a, "var_b": var_b, "cov": cov_ab, "z": z, "p": p}


def benjamini_hochberg(p_values: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and do not count as tests."""
    p = as_numpy(p_values).astype(np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    k = int(ok.sum())
    if k == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * k / np.arange(1, k + 1)
    # step-up: the adjusted value of rank i is the minimum over ranks >= i
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    res = np.empty(k)
    res[order] = adjusted
    out[ok] = res
    return out
