"""Per-label operating points: the probability above which a finding is called present.

Chosen on the validation split at the best epoch (the weights that are kept), one per label, by
Youden's J (sensitivity + specificity - 1 is largest; ties go to the higher threshold, fewer false
alarms). A label whose validation split lacks positives or negatives has no operating point: it gets
`fallback` (predict.default_threshold, 0.5 by default) and is marked as such, so users can tell a
measured threshold from a default.
"""

from __future__ import annotations

import numpy as np

#: How a threshold was set: measured on validation, or the documented default.
SOURCE_VALIDATION = "validation_youden"
SOURCE_FALLBACK = "fallback"


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float | None:
    """The probability cut maximising sensitivity + specificity - 1 (None without both classes).

    The cut sits midway between the two neighbouring distinct scores, so a scan scoring exactly the
    validation value of its neighbour is classified as on validation.
    """
    y = np.asarray(y_true) > 0
    p = np.asarray(prob, dtype=np.float64)
    keep = np.isfinite(p)
    y, p = y[keep], p[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    values = np.unique(p)
    # Candidate cuts: below everything, between neighbours, above everything ("positive if p >= cut").
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    best_j, best_cut = -np.inf, 0.5
    for cut in cuts:
        called = p >= cut
        j = (called & y).sum() / n_pos + (~called & ~y).sum() / n_neg - 1.0
        if j >= best_j:  # '>=': ties go to the higher cut
            best_j, best_cut = j, cut
    return float(np.clip(best_cut, 1e-6, 1 - 1e-6))


def choose_operating_points(
    y_true: np.ndarray, logits: np.ndarray, fallback: float = 0.5
) -> tuple[np.ndarray, list[str]]:
    """(thresholds float64 [80], source per label) from validation targets [N, 80] and logits [N, 80]."""
    prob = sigmoid(logits)
    thresholds, sources = [], []
    for m in range(prob.shape[1]):
        t = youden_threshold(y_true[:, m], prob[:, m]) if len(prob) else None
        thresholds.append(fallback if t is None else t)
        sources.append(SOURCE_FALLBACK if t is None else SOURCE_VALIDATION)
    return np.asarray(thresholds, dtype=np.float64), sources
