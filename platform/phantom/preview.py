"""A picture of a phantom: axial, coronal and sagittal slices with organ and lesion outlines.

Slices go through the largest lesion when there is one (else through the heart), shown in a lung
window and (axial) a soft-tissue window, at the true aspect ratio of the voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctplatform.phantom.anatomy import ORGAN_CODES

if TYPE_CHECKING:
    from ctplatform.phantom.generate import Phantom

OUTLINES = {  # organ code -> colour
    ORGAN_CODES["right_lung"]: "#4fc3f7",
    ORGAN_CODES["left_lung"]: "#29b6f6",
    ORGAN_CODES["heart"]: "#ffb74d",
    ORGAN_CODES["great_vessels"]: "#e57373",
    ORGAN_CODES["airways"]: "#ba68c8",
    ORGAN_CODES["marker"]: "#ffffff",
}
LESION_COLOUR = "#76ff03"


def _centre(ph: "Phantom") -> tuple[int, int, int]:
    if ph.lesions:
        name = min(ph.lesions, key=lambda k: ph.lesions[k].sum())  # the smallest lesion is the hardest to see
        idx = np.argwhere(ph.lesions[name])
    else:
        idx = np.argwhere(ph.organs == ORGAN_CODES["heart"])
    if len(idx) == 0:
        return tuple(s // 2 for s in ph.hu.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in np.median(idx, axis=0))  # type: ignore[return-value]


def preview_png(ph: "Phantom", path: str | Path, title: str = "") -> Path:
    """Write the preview PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    z, y, x = _centre(ph)
    sz, sy, sx = ph.spacing_mm
    lesion_any = np.zeros(ph.hu.shape, dtype=bool)
    for m in ph.lesions.values():
        lesion_any |= m
    views = [
        ("axial", ph.hu[z], ph.organs[z], lesion_any[z], sy / sx, (-1100, 300)),
        ("axial (soft tissue)", ph.hu[z], ph.organs[z], lesion_any[z], sy / sx, (-160, 240)),
        ("coronal", ph.hu[:, y, :], ph.organs[:, y, :], lesion_any[:, y, :], sz / sx, (-1100, 300)),
        ("sagittal", ph.hu[:, :, x], ph.organs[:, :, x], lesion_any[:, :, x], sz / sy, (-1100, 300)),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(20, 6.2), facecolor="black")
    for ax, (name, img, org, les, aspect, (lo, hi)) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        for code, colour in OUTLINES.items():
            m = org == code
            if m.any() and m.shape[0] > 1 and m.shape[1] > 1:
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.6)
        if les.any():
            ax.contour(les, levels=[0.5], colors=LESION_COLOUR, linewidths=0.9)
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
    head = f"{title}  " if title else ""
    conf = f"  confounder {ph.confounder.kind}={ph.confounder.value:g}" if ph.confounder else ""
    fig.suptitle(
        f"{head}seed {ph.seed}, {ph.size}, {ph.hu.shape[0]}x{ph.hu.shape[1]}x{ph.hu.shape[2]} at "
        f"{sz:.2f}x{sy:.2f}x{sx:.2f} mm, fat {ph.fat_mm:.0f} mm{conf}\n"
        f"positive: {', '.join(ph.positive_labels) or 'none'}   "
        "(outlines: lungs blue, heart orange, great vessels red, airways purple, lesions green)",
        color="white", fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=70, facecolor="black")
    plt.close(fig)
    return path
