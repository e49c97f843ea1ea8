"""Scanner model: the point-spread blur of the reconstruction and correlated quantum noise.

Noise is drawn slice by slice from generators seeded by (seed, slice index), so a slab rendered with
a halo of neighbouring slices gets exactly the noise its neighbours get: slab boundaries are seamless
and the result does not depend on the slab size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class ScannerModel:
    blur_mm: tuple[float, float, float]  # Gaussian PSF sigma (z, y, x) in mm
    noise_hu: float  # standard deviation of the noise in a homogeneous region
    noise_corr_vox: float = 0.7  # in-plane correlation of the noise (Gaussian sigma, voxels)
    seed: int = 0


def sample_scanner(rng: np.random.Generator, spacing: tuple[float, float, float], seed: int) -> ScannerModel:
    sz, sy, sx = spacing
    inplane = float(rng.uniform(0.45, 0.65)) * max(sy, 0.8)
    return ScannerModel(
        blur_mm=(0.42 * sz, inplane, inplane),
        noise_hu=float(rng.uniform(12.0, 24.0)),
        seed=seed,
    )


def halo_slices(model: ScannerModel, spacing_z: float) -> int:
    return int(np.ceil(3.0 * model.blur_mm[0] / spacing_z)) + 1


def apply_scanner(hu: np.ndarray, spacing: tuple[float, float, float], model: ScannerModel, z_index0: int) -> np.ndarray:
    """Blur then add noise; `z_index0` is the global index of hu's first slice (seeds its noise)."""
    sigma = [b / s for b, s in zip(model.blur_mm, spacing)]
    out = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest", truncate=3.0)
    noise = np.empty(hu.shape, dtype=np.float32)
    for i in range(hu.shape[0]):
        noise[i] = np.random.default_rng([model.seed, 7919, z_index0 + i]).standard_normal(hu.shape[1:], dtype=np.float32)
    c = model.noise_corr_vox
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, c, c), mode="wrap", truncate=3.0)
    # a Gaussian-filtered white noise keeps a fraction 1/(sqrt(4*pi)*c)^2 of its variance
    noise *= model.noise_hu * (2.0 * np.sqrt(np.pi) * c)
    out += noise
    return out


def to_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
