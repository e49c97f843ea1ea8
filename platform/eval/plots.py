"""Pictures of a run: per-slice score curves (paper 000, Figure 3) and HiResCAM vs Grad-CAM slices
(Figure 4). Pure functions from arrays to PNG files (matplotlib's Agg backend, no display needed).

Display convention: a stored axial slice [y, x] has y toward the patient's back and x toward the
patient's left, so drawing it as an image gives the radiological view (anterior up, patient's
right on the viewer's left), as in the paper's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctplatform.labels import all_labels

#: CT display windows (HU low, high): lung (W 1500, L -600) and mediastinal (W 400, L 40).
WINDOWS: dict[str, tuple[float, float]] = {"lung": (-1350.0, 150.0), "mediastinum": (-160.0, 240.0)}
PRESENT_COLOR, ABSENT_COLOR = "tab:orange", "tab:blue"
#: Outline of the true lesion on the CT panel: apart from the white allowed region and the jet maps.
LESION_COLOR = "lime"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and normal-approximation 95% interval of the mean along `axis` (NaN for no rows)."""
    n = values.shape[axis]
    if n == 0:
        shape = np.delete(values.shape, axis)
        nan = np.full(shape, np.nan)
        return nan, nan, nan
    mean = values.mean(axis=axis)
    sem = values.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, mean - 1.96 * sem, mean + 1.96 * sem


@dataclass(frozen=True)
class SliceCurves:
    """Per-slice score C of one label: mean and 95% interval over scans with and without it."""

    label: str
    n_present: int
    n_absent: int
    present: tuple[np.ndarray, np.ndarray, np.ndarray]  # mean, low, high, each [H]
    absent: tuple[np.ndarray, np.ndarray, np.ndarray]


def slice_score_curves(slice_scores: np.ndarray, y_true: np.ndarray, label_indices: list[int]) -> list[SliceCurves]:
    """Curves for the chosen labels from C [N, 80, H] and y [N, 80] (as in paper 000, Figure 3)."""
    labels = all_labels()
    out = []
    yb = y_true.astype(bool)
    for j in label_indices:
        c = slice_scores[:, j, :].astype(np.float64)
        out.append(
            SliceCurves(
                label=labels[j].name,
                n_present=int(yb[:, j].sum()),
                n_absent=int((~yb[:, j]).sum()),
                present=mean_ci(c[yb[:, j]]),
                absent=mean_ci(c[~yb[:, j]]),
            )
        )
    return out


def choose_curve_labels(n_present: np.ndarray, n_absent: np.ndarray, k: int = 9) -> list[int]:
    """The k labels with the most balanced presence: per label, scans with / without it ([80] each).

    A label needs at least one scan on each side (a 95% band needs two).
    """
    pos, neg = np.asarray(n_present), np.asarray(n_absent)
    ok = np.nonzero((pos >= 1) & (neg >= 1))[0]
    order = ok[np.argsort(-np.minimum(pos[ok], neg[ok]), kind="stable")]
    return [int(i) for i in order[:k]]


def plot_slice_scores(curves: list[SliceCurves], path: str | Path, title: str = "") -> Path:
    """A grid of per-slice score plots: orange with the abnormality, blue without, 95% bands."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(curves))
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False, sharex=True)
    for ax in axes.ravel()[len(curves):]:
        ax.set_visible(False)
    for ax, cur in zip(axes.ravel(), curves):
        h = np.arange(len(cur.present[0]) if cur.n_present else len(cur.absent[0]))
        for (mean, lo, hi), color, name, cnt in [
            (cur.absent, ABSENT_COLOR, "absent", cur.n_absent),
            (cur.present, PRESENT_COLOR, "present", cur.n_present),
        ]:
            if cnt == 0:
                continue
            ax.plot(h, mean, color=color, lw=1.6, label=f"{name} (n={cnt})")
            ax.fill_between(h, lo, hi, color=color, alpha=0.25, lw=0)
        ax.set_title(cur.label.replace("_", " "), fontsize=11)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # slice groups are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for c in range(cols):  # label the lowest drawn plot of each column (the grid may be ragged)
        col = [ax for ax in axes[:, c] if ax.get_visible()]
        if col:
            col[-1].xaxis.set_tick_params(labelbottom=True)
            col[-1].set_xlabel("slice group (0 = head end)")
    for ax in axes[:, 0]:
        ax.set_ylabel("per-slice score C")
    fig.suptitle(title or "Per-slice abnormality scores: mean and 95% interval", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


@dataclass(frozen=True)
class ExplanationSlice:
    """One row of the Figure 4 panel: a CT slice with both maps and the allowed region on it."""

    ct: np.ndarray  # [Y, X] HU
    hirescam: np.ndarray  # [Y, X] normalised to [0, 1]
    gradcam: np.ndarray  # [Y, X] normalised to [0, 1]
    allowed: np.ndarray  # [Y, X] bool
    title: str  # label, slice and score; never patient information
    window: str = "lung"
    lesion: np.ndarray | None = None  # [Y, X] bool: the true lesion on this slice, where the store holds truth
    lesion_note: str = ""  # e.g. where the true lesion is when it is not on this slice


def plot_explanations(rows: list[ExplanationSlice], path: str | Path, alpha: float = 0.5, title: str = "") -> Path:
    """CT | HiResCAM over CT | Grad-CAM over CT per row, the allowed region outlined in white, the true
    lesion (where known) outlined in LESION_COLOR on the CT; `title` (e.g. model and split) heads the figure."""
    plt = _pyplot()
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 3, figsize=(11.5, 3.9 * n), squeeze=False)
    for r, row in enumerate(rows):
        lo, hi = WINDOWS.get(row.window, WINDOWS["lung"])
        for c, (name, heat) in enumerate([("CT", None), ("HiResCAM", row.hirescam), ("Grad-CAM", row.gradcam)]):
            ax = axes[r, c]
            ax.imshow(row.ct, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
            if heat is not None:
                # near-zero attention stays transparent so the anatomy under it remains readable
                ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", vmin=0, vmax=1, alpha=alpha,
                          interpolation="bilinear")
                _draw_allowed(ax, row.allowed)
                if heat.max() < 0.05:  # say so, rather than leave the reader guessing
                    ax.text(0.5, 0.04, "no positive attention on this slice", color="yellow", fontsize=8,
                            ha="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name if c else f"{row.title}", fontsize=10, loc="left" if not c else "center")
            if c == 0 and row.lesion is not None and row.lesion.any():
                _outline(ax, row.lesion, LESION_COLOR)
            if c == 0 and row.lesion_note:
                ax.text(0.5, 0.04, row.lesion_note, color=LESION_COLOR, fontsize=7, ha="center", transform=ax.transAxes)
            if c == 0:
                ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=10, va="center")
                ax.text(0.95, 0.5, "L", color="yellow", transform=ax.transAxes, fontsize=10, va="center")
    if rows:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        image = ScalarMappable(norm=Normalize(0, 1), cmap="jet")
        cbar = fig.colorbar(image, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, pad=0.02)
        cbar.set_label("normalised attention (ReLU, min-max over the volume)")
    what = "HiResCAM vs Grad-CAM on each label's top slice with anatomy"
    key = "white outline: allowed region; hatched: forbidden"
    if any(row.lesion is not None or row.lesion_note for row in rows):
        key += f"; {LESION_COLOR} outline: true lesion"
    heading = f"{title}: {what}" if title else what
    fig.suptitle(f"{heading}\n({key})", fontsize=12)
    return _save(fig, path, heading)


def _draw_allowed(ax, allowed: np.ndarray) -> None:
    """Outline the allowed region in white and hatch the forbidden one, so the two cannot be confused."""
    import matplotlib.pyplot as plt

    ny, nx = allowed.shape
    xs, ys = np.arange(nx), np.arange(ny)
    if (~allowed).any():
        with plt.rc_context({"hatch.color": "white", "hatch.linewidth": 0.6}):
            ax.contourf(xs, ys, (~allowed).astype(float), levels=[0.5, 1.5], colors="none", hatches=["///"])
    if allowed.any():
        _outline(ax, allowed, "white")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(ny - 0.5, -0.5)


def _outline(ax, region: np.ndarray, color: str) -> None:
    """Outline a boolean region, keeping the axes on the image."""
    ny, nx = region.shape
    # pad with "outside" so a region touching the image edge is still closed
    padded = np.pad(region.astype(float), 1)
    ax.contour(np.arange(-1, nx + 1), np.arange(-1, ny + 1), padded, levels=[0.5], colors=color, linewidths=1.6)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(ny - 0.5, -0.5)


def _save(fig, path: str | Path, title: str = "") -> Path:
    """Write the figure; `title` also goes into the PNG's Title field (readable without looking)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Title": title} if title else None)
    plt.close(fig)
    return path
