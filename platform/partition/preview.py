"""A picture a person can check: organ outlines over axial and coronal slices (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctplatform.partition.organs import LEFT_LUNG, MEDIASTINUM, RIGHT_LUNG

#: Drawn in this order: the mediastinum first so the lung outlines stay visible where they meet.
COLOURS = {MEDIASTINUM: ("tab:green", "mediastinum"), RIGHT_LUNG: ("tab:blue", "right lung"), LEFT_LUNG: ("tab:orange", "left lung")}


def _slices_through(organs: np.ndarray) -> tuple[list[int], int]:
    """Three axial slices across the lungs' height and the coronal slice through their middle."""
    lungs = (organs == RIGHT_LUNG) | (organs == LEFT_LUNG)
    if lungs.any():
        zs = np.flatnonzero(lungs.any(axis=(1, 2)))
        ys = np.flatnonzero(lungs.any(axis=(0, 2)))
        z0, z1 = zs[0], zs[-1]
        y_mid = int((ys[0] + ys[-1]) // 2)
    else:
        z0, z1 = 0, organs.shape[0] - 1
        y_mid = organs.shape[1] // 2
    axial = [int(round(z0 + f * (z1 - z0))) for f in (0.25, 0.5, 0.75)]
    return axial, y_mid


def render_preview(
    hu: np.ndarray,
    organs: np.ndarray,
    spacing_mm: tuple[float, float, float],
    out_path: str | Path,
    title: str = "",
) -> Path:
    """Write a PNG: three axial slices and one coronal slice, CT in a lung window, organ outlines.

    Axial images are shown as radiologists read them: the patient's right on the image's left
    (the stored x axis grows toward the patient's left, so no flip is needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    axial, y_mid = _slices_through(organs)
    fig, axes = plt.subplots(1, 4, figsize=(18, 5.2))
    window = dict(cmap="gray", vmin=-1000, vmax=400, interpolation="nearest")
    sz, sy, sx = spacing_mm
    panels = [(hu[z], organs[z], sy / sx, f"axial z={z}") for z in axial]
    panels.append((hu[:, y_mid, :], organs[:, y_mid, :], sz / sx, f"coronal y={y_mid}"))
    for ax, (img, lab, aspect, name) in zip(axes, panels, strict=True):
        ax.imshow(img, aspect=aspect, **window)
        for code, (colour, _) in COLOURS.items():
            m = (lab == code).astype(np.float32)
            if m.any() and not m.all():
                if code != MEDIASTINUM:  # a light tint says which side each lung was given
                    ax.contourf(m, levels=[0.5, 1.5], colors=[colour], alpha=0.25)
                ax.contour(m, levels=[0.5], colors=[colour], linewidths=1.4)
        ax.set_title(name)
        ax.set_xlabel("x (patient's right -> left)")
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([0], [0], color=c, lw=2, label=n) for c, n in COLOURS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
