"""Chance and prior levels every localization figure is read against (issue 14).

On a coarse grid a map that ignores the image can score high: a label's allowed region may cover
most cells, a lesion may cover many, a confounder (body-wall fat) may lie in most. So each figure is
reported beside what these maps score on the same scans:

- uniform map: every cell alike. Its threshold-free OrganIoU is the allowed-cell fraction, its
  pointing-game hit rate (a random cell) the lesion-cell fraction, its confounder share the
  confounder-cell fraction;
- image-blind prior map: per label, the mean allowed region of the label's positive training scans,
  the same map for every scan (it knows the anatomy of the cohort, not the scan).

Maps here are float [M, H, D1, D2] (or flattened [M, C]) with a boolean region of the same shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctplatform.eval.localization import attention_share, flat_maps
from ctplatform.labels import GROUPS
from ctplatform.model.metrics import as_numpy


def cell_fraction(region: Any) -> np.ndarray:
    """Fraction of cells in `region`, per map: what a uniform map scores (allowed, lesion, confounder)."""
    return flat_maps(region, bool).mean(axis=1)


def attention_in_region(attention: Any, region: Any) -> np.ndarray:
    """Share of positive (ReLU'd) attention mass inside `region`, per map; NaN for a map with none.

    With region = the allowed region this is the threshold-free OrganIoU: allowed / (allowed +
    forbidden) of the paper's definition over the continuous map, no binarisation threshold.
    """
    return attention_share(attention, region)


def signed_forbidden_evidence(attention: Any, forbidden: Any) -> np.ndarray:
    """Signed evidence from forbidden cells: sum of the raw map there over the sum of |map| everywhere.

    A one-sided mask loss only pushes positive attention down; a model can still use a forbidden
    cell as evidence *against* a label (negative values). HiResCAM's cells sum to the score minus
    the bias, so this is the forbidden cells' signed share of the score's evidence, in [-1, 1].
    """
    a = flat_maps(attention, np.float64)
    g = flat_maps(forbidden, bool)
    total = np.abs(a).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * g).sum(axis=1) / total
    out[total <= 0] = np.nan
    return out


def image_blind_prior(allowed: Any, positive: Any) -> np.ndarray:
    """Per label, the mean allowed region over the label's positive scans: float [L, H, D1, D2].

    allowed bool [N, L, H, D1, D2] and positive bool [N, L] of the TRAINING split. A label without a
    positive training scan gets a uniform map (the prior knows nothing about it).
    """
    return prior_from_sums(*prior_sums(allowed, positive))


def prior_sums(allowed: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sum of allowed regions over positive scans [L, H, D1, D2], positive count [L]) of one batch.

    Sums of batches add up, so a large training split is read in batches (`prior_from_sums` ends it).
    """
    g = as_numpy(allowed).astype(np.float64)
    pos = as_numpy(positive).astype(bool)
    return np.einsum("nl,nl...->l...", pos.astype(np.float64), g), pos.sum(axis=0)


def prior_from_sums(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The image-blind prior from `prior_sums` (added over batches); uniform for a label never positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = total / n.reshape(-1, *([1] * (total.ndim - 1)))
    prior[n == 0] = 1.0
    return prior


def pointing_chance(lesion: Any) -> np.ndarray:
    """Pointing-game hit rate of a cell drawn uniformly at random: the lesion-cell fraction (NaN if none)."""
    f = cell_fraction(lesion)
    f[f == 0] = np.nan
    return f


# Logged names (without the split prefix) of the chance levels `ctplatform evaluate` writes
# (scoring.py per pair, summary.py as pair means), and what each one is.
ALLOWED_CELL_FRACTION = ("uniform map = allowed-cell fraction", "allowed_cell_fraction")
LESION_CELL_FRACTION = ("uniform map = lesion-cell fraction", "pointing_chance")
CONFOUNDER_CELL_FRACTION = ("uniform map = confounder-cell fraction", "confounder_cell_fraction")

#: The image-blind prior map is scored like a model's map under this method name: each of its figures
#: is the model's figure with `prior` in place of the method (organ_iou_prior_overall,
#: attention_in_allowed_prior, pointing_hit_rate_prior, ...), thresholds chosen on validation alike.
PRIOR = "prior"
PRIOR_MAP = "image-blind prior map"


def _prior(figure: str, method: str) -> tuple[str, str]:
    """(what, metric) of the prior's level of a model figure: the same name with `prior` for the method."""
    return (PRIOR_MAP, figure.replace(f"_{method}", f"_{PRIOR}", 1))


def _levels(figure: str, method: str, *uniform: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (*uniform, _prior(figure, method))


_MAPS = ("hirescam", "gradcam")

#: Each localization figure an evaluation run logs -> the logged chance levels it is read against
#: ((what, metric) pairs). A uniform map's threshold-free OrganIoU, and its best binarised one over
#: every cell, are the allowed-cell fraction; a random cell's pointing hit rate, the lesion IoU of
#: every cell and the AUPRC (Localization Utility) of a constant map are the lesion-cell fraction.
#: Every figure is also read against the image-blind prior map (logged when the run's store has a
#: training split with grid masks).
CHANCE_LEVELS: dict[str, tuple[tuple[str, str], ...]] = {
    **{f: _levels(f, m, ALLOWED_CELL_FRACTION) for m in _MAPS for f in (f"organ_iou_{m}_overall",)},
    **{f: _levels(f, m) for m in _MAPS for f in (f"organ_iou_{m}_{g}" for g in GROUPS)},
    **{f: _levels(f, m, ALLOWED_CELL_FRACTION) for m in _MAPS for f in (f"attention_in_allowed_{m}",)},
    **{f: _levels(f, m, LESION_CELL_FRACTION) for m in _MAPS
       for f in (f"{fig}_{m}" for fig in ("pointing_hit_rate", "lesion_iou", "loc_utility"))},
    **{f: _levels(f, m) for m in _MAPS for f in (f"lesion_dice_{m}",)},
    **{f: _levels(f, m, CONFOUNDER_CELL_FRACTION) for m in _MAPS
       for f in (f"confounder_share_{m}{t}" for t in ("", "_target"))},
}
