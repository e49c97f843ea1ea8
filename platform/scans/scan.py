"""The in-memory scan every reader returns, and the error every reader raises for bad input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ScanError(ValueError):
    """The input is not a usable CT volume; the message says what is wrong and what to do.

    Messages name geometry and file structure only, never header values such as patient names,
    IDs or dates.
    """


@dataclass
class Scan:
    """One CT volume in the store's orientation, before resampling.

    hu: float32 Hounsfield units, [z, y, x] = I-P-L (z toward the feet, y toward the back, x toward
        the patient's left).
    spacing_mm: voxel size along (z, y, x).
    affine: 4x4 voxel (z, y, x) -> world RAS+ mm, consistent with the source file's own geometry.
    original_shape / original_spacing_mm / original_orientation: the source array as stored
        (its own axis order; DICOM: [slice, row, column]) and that order's axis codes, e.g. 'LPS'.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    source_format: str
    original_shape: tuple[int, ...]
    original_orientation: str
    original_spacing_mm: tuple[float, ...] = ()
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]
