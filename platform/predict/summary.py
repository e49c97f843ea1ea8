"""One PNG page per scan that a clinician can read: top findings, slice-score curves, and three-plane
overlays of the top finding's HiResCAM at its peak (drawn on the model's input crop, in mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOP_FINDINGS = 10
CURVES = 5


def _pretty(label: str) -> str:
    return label.replace("_", " ")


def draw_summary(
    path: str | Path,
    title: str,
    crop: np.ndarray,
    prob: np.ndarray,
    thresholds: np.ndarray,
    labels: list[str],
    slice_scores: np.ndarray,
    picked: list[int],
    grid_maps: list[np.ndarray],
    input_shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctplatform.predict.maps import map_on_crop

    fig = plt.figure(figsize=(14, 9), dpi=90)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.1, 1.0])
    order = np.argsort(-prob, kind="stable")[:TOP_FINDINGS]

    ax = fig.add_subplot(gs[0, 0])
    y = np.arange(len(order))[::-1]
    colors = ["tab:red" if prob[i] >= thresholds[i] else "tab:gray" for i in order]
    ax.barh(y, prob[order], color=colors)
    ax.scatter(thresholds[order], y, marker="|", s=200, color="black", label="threshold")
    ax.set_yticks(y, [_pretty(labels[i]) for i in order], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability (red: above the model's threshold)")
    ax.set_title("top findings")
    ax.legend(loc="lower right", fontsize=7)

    ax = fig.add_subplot(gs[0, 1:])
    dz = spacing_mm[0] * 3  # one slice group: three axial slices of the crop
    h = slice_scores.shape[1]
    z = (np.arange(h) + 0.5) * dz
    for i in order[:CURVES]:
        ax.plot(z, slice_scores[i], label=_pretty(labels[i]))
    ax.set_xlabel("head -> feet within the model's crop (mm)")
    ax.set_ylabel("slice score")
    ax.set_title("per-slice scores of the top findings")
    ax.legend(fontsize=7)

    hu = np.asarray(crop, dtype=np.float32)
    if picked:
        m = map_on_crop(grid_maps[0], input_shape)
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        name = _pretty(labels[picked[0]])
    else:
        m, peak, name = None, tuple(n // 2 for n in hu.shape), "no map above threshold"
    sz, sy, sx = spacing_mm
    planes = [
        ("axial", hu[peak[0]], None if m is None else m[peak[0]], (sx, sy)),
        ("coronal", hu[:, peak[1]], None if m is None else m[:, peak[1]], (sx, sz)),
        ("sagittal", hu[:, :, peak[2]], None if m is None else m[:, :, peak[2]], (sy, sz)),
    ]
    for k, (plane, img, ov, (px_w, px_h)) in enumerate(planes):
        ax = fig.add_subplot(gs[1, k])
        # Radiological convention for axial/coronal: the patient's left (x) on the viewer's right.
        ax.imshow(np.clip(img, -1000, 400), cmap="gray", aspect=px_h / px_w, interpolation="nearest")
        if ov is not None:
            ax.imshow(np.ma.masked_less(ov, 0.2), cmap="jet", alpha=0.45, vmin=0, vmax=1, aspect=px_h / px_w)
        ax.set_title(f"{plane}: {name}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}: AxialNet findings and HiResCAM (research use, not a diagnosis)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
