"""Quality control of an organ map: is each lung there, and is it physically plausible?

The paper (appendix 7.2.2) found outlier thresholds on the lungs' bounding boxes from training-set
histograms and, for the 4% of scans with a missing lung, used a heuristic mask (right lung = right
half, left lung = left half, mediastinum = centre half). The published code's thresholds are in
voxels of one data set (right border > 130, left border < 300 at 0.8 mm); here they are in mL and
mm, so they hold at any spacing and field of view:

fallback flags (the heuristic regions replace the segmentation on the grid; limits in
`PartitionQCConfig`, config section `partition.qc`):
- `no_lungs`: less than `min_lung_ml` of lung in total (abdomen, neck, phantom without air);
- `right_lung_missing` / `left_lung_missing`: that lung is under `min_lung_ml` or shorter than
  `min_lung_height_mm` from apex to base (one-lung scans, a collapsed lung, a failed split);
- `lungs_swapped`: the right lung's centroid is not at smaller x than the left's;
- `lung_volume_high`: more than `max_total_lung_ml` (no adult has > 10 L of lung: outside air or
  bowel gas was taken for lung);
- `lung_density_implausible`: mean lung HU below `min_lung_mean_hu` (pure gas, not parenchyma);
- `lungs_too_narrow`: both lungs together span less than `min_lungs_width_mm` left to right.

informational flags (recorded, no fallback):
- `partial_fov`: a lung touches the volume's side, front or back: a crop or a small field of view.
  Crops hold partial lungs, so the volume limits above are minimums for a lung piece, not for a
  whole lung (a whole adult lung pair is 2-8 L at inspiration);
- `lung_volume_low`: complete lungs (not partial_fov) under `min_complete_lungs_ml` in total;
- `airway_leak`, `split_columns`: how the improved method got there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ctplatform.config import PartitionQCConfig
from ctplatform.partition.organs import LEFT_LUNG, RIGHT_LUNG

FALLBACK_FLAGS: frozenset[str] = frozenset(
    {
        "no_lungs",
        "right_lung_missing",
        "left_lung_missing",
        "lungs_swapped",
        "lung_volume_high",
        "lung_density_implausible",
        "lungs_too_narrow",
    }
)


@dataclass(frozen=True)
class LungStats:
    volume_ml: float
    bbox: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (stop exclusive); zeros when absent
    centroid_x_mm: float
    mean_hu: float

    def extent_mm(self, spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        z0, z1, y0, y1, x0, x1 = self.bbox
        return ((z1 - z0) * spacing_mm[0], (y1 - y0) * spacing_mm[1], (x1 - x0) * spacing_mm[2])


def lung_stats(mask: np.ndarray, hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> LungStats:
    n = int(mask.sum())
    if n == 0:
        return LungStats(0.0, (0, 0, 0, 0, 0, 0), float("nan"), float("nan"))
    bbox: list[int] = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bbox += [int(hit[0]), int(hit[-1]) + 1]
    xs = mask.sum(axis=(0, 1), dtype=np.int64)
    centroid = float((xs * np.arange(xs.size)).sum() / n) * spacing_mm[2]
    return LungStats(
        volume_ml=n * float(np.prod(spacing_mm)) / 1000.0,
        bbox=tuple(bbox),  # type: ignore[arg-type]
        centroid_x_mm=centroid,
        mean_hu=float(hu[mask].mean(dtype=np.float64)),
    )


@dataclass(frozen=True)
class QCResult:
    right: LungStats
    left: LungStats
    flags: tuple[str, ...]

    @property
    def fallback(self) -> bool:
        return any(f in FALLBACK_FLAGS for f in self.flags)

    def row(self, spacing_mm: tuple[float, float, float]) -> dict[str, Any]:
        """Columns for partition.parquet."""
        return {
            "right_lung_ml": round(self.right.volume_ml, 1),
            "left_lung_ml": round(self.left.volume_ml, 1),
            "total_lung_ml": round(self.right.volume_ml + self.left.volume_ml, 1),
            "right_lung_bbox": list(self.right.bbox),
            "left_lung_bbox": list(self.left.bbox),
            "right_lung_extent_mm": [round(v, 1) for v in self.right.extent_mm(spacing_mm)],
            "left_lung_extent_mm": [round(v, 1) for v in self.left.extent_mm(spacing_mm)],
            "qc_flags": ";".join(self.flags),
            "fallback": self.fallback,
        }


def quality_control(
    organs: np.ndarray,
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    thresholds: PartitionQCConfig | None = None,
    notes: tuple[str, ...] = (),
) -> QCResult:
    """Flag missing or implausible lungs (module docstring); `notes` are extra informational flags."""
    right = lung_stats(organs == RIGHT_LUNG, hu, spacing_mm)
    left = lung_stats(organs == LEFT_LUNG, hu, spacing_mm)
    t = thresholds or PartitionQCConfig()
    flags: list[str] = []
    total = right.volume_ml + left.volume_ml
    if total < t.min_lung_ml:
        flags.append("no_lungs")
    else:
        for name, s in (("right", right), ("left", left)):
            if s.volume_ml < t.min_lung_ml or s.extent_mm(spacing_mm)[0] < t.min_lung_height_mm:
                flags.append(f"{name}_lung_missing")
        present = [s for s in (right, left) if s.volume_ml > 0]
        if right.volume_ml > 0 and left.volume_ml > 0 and right.centroid_x_mm >= left.centroid_x_mm:
            flags.append("lungs_swapped")
        if total > t.max_total_lung_ml:
            flags.append("lung_volume_high")
        mean_hu = sum(s.mean_hu * s.volume_ml for s in present) / total
        if mean_hu < t.min_lung_mean_hu:
            flags.append("lung_density_implausible")
        x0 = min(s.bbox[4] for s in present)
        x1 = max(s.bbox[5] for s in present)
        if (x1 - x0) * spacing_mm[2] < t.min_lungs_width_mm:
            flags.append("lungs_too_narrow")
        _, ny, nx = organs.shape
        partial = any(s.bbox[2] == 0 or s.bbox[3] == ny or s.bbox[4] == 0 or s.bbox[5] == nx for s in present)
        if partial:
            flags.append("partial_fov")
        elif total < t.min_complete_lungs_ml:
            flags.append("lung_volume_low")
    flags.extend(n for n in notes if n not in flags)
    return QCResult(right, left, tuple(flags))
