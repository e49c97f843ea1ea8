"""Faithfulness figures of one trained model on one split, each beside its chance or prior level.

`collect_split` runs the model over a split of the store once and keeps, per scan, the scores, the
HiResCAM and Grad-CAM maps, the allowed regions, the true lesion and confounder cells (phantom
cohorts) and the deletion drops. `pair_figures` turns that into one value per positive (scan, label)
pair and figure (NaN elsewhere), so a figure over any multiset of scans is a mean over rows: the
paired bootstrap (`paired_bootstrap`) resamples scans and recomputes every figure for both models.

Figures (names say what they are; `*_prior` is the image-blind prior map, `*_uniform` a uniform map):
- organ_iou_{hirescam,gradcam,prior}: OrganIoU at each label's threshold chosen on validation;
- attention_in_allowed_{hirescam,gradcam,prior}: threshold-free OrganIoU (share of positive mass in
  allowed cells); attention_in_allowed_uniform = the allowed-cell fraction;
- forbidden_evidence_signed_hirescam: signed share of the evidence from forbidden cells;
- lesion_dice_{hirescam,prior}: at one threshold chosen on validation (separately from OrganIoU);
- pointing_{hirescam,gradcam,prior}; pointing_uniform = the lesion-cell fraction (chance);
- confounder_share_{kind}_{hirescam,uniform}: attention on the confounder's cells for its target label;
- deletion_{hirescam,gradcam,random}_k{k}: score drop when the top-k cells' features are zeroed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ctplatform.eval.baselines import attention_in_region, cell_fraction, signed_forbidden_evidence
from ctplatform.eval.deletion import DELETION_KS, deletion_drops
from ctplatform.eval.localization import lesion_overlap, pointing_game
from ctplatform.model.allowed_regions import allowed_regions
from ctplatform.model.axialnet import AxialNet
from ctplatform.model.cams import gradcam_from_features, hirescam_from_features
from ctplatform.model.metrics import ORGAN_IOU_THRESHOLDS, auroc_per_label, choose_thresholds, iou_at, organ_iou

#: (scan id) -> (lesion cells bool [80, H, D1, D2] or None, {confounder kind: cells bool [H, D1, D2]})
TruthFn = Callable[[str], tuple[np.ndarray | None, dict[str, np.ndarray]]]


@dataclass
class SplitMaps:
    """One model on one split: everything the figures need, stacked over scans."""

    ids: list[str]
    y: np.ndarray  # float [N, 80]
    logits: np.ndarray  # float [N, 80]
    hirescam: np.ndarray  # float32 [N, 80, H, D1, D2]
    gradcam: np.ndarray  # float32 [N, 80, H, D1, D2]
    allowed: np.ndarray  # bool [N, 80, H, D1, D2]
    lesions: np.ndarray | None  # bool [N, 80, H, D1, D2] (None without truth)
    confounders: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> bool [N, H, D1, D2]
    deletion: dict[str, np.ndarray] = field(default_factory=dict)  # method -> float [N, 80, K] (NaN: not run)
    ks: tuple[int, ...] = DELETION_KS

    @property
    def positive(self) -> np.ndarray:
        """bool [N, 80]: positive pairs with an allowed region (the pairs every map figure is over)."""
        return (self.y > 0.5) & self.allowed.reshape(*self.allowed.shape[:2], -1).any(axis=2)


@torch.no_grad()
def collect_split(
    model: AxialNet,
    dataset: torch.utils.data.Dataset,
    labels: Sequence[int],
    truth: TruthFn | None = None,
    ks: Sequence[int] = DELETION_KS,
    seed: int = 0,
) -> SplitMaps:
    """Run `model` (eval mode) over every item of a model.dataset.StoreDataset (no augmentation).

    labels: the scored label indices (deletion runs for their positive pairs only).
    """
    model.eval()
    rng = torch.Generator().manual_seed(seed)
    out: dict[str, list] = {k: [] for k in ("y", "logits", "hirescam", "gradcam", "allowed", "lesions")}
    conf: dict[str, list] = {}
    dels: dict[str, list] = {"hirescam": [], "gradcam": [], "random": []}
    ids = []
    scored = set(int(m) for m in labels)
    for i in range(len(dataset)):
        item = dataset[i]
        vid = dataset.index.ids[i]
        ids.append(vid)
        z = model.forward_features(item["x"][None].float())
        logits, _ = model.head(z)
        hc = hirescam_from_features(z, model.fc.weight)[0]
        gc = gradcam_from_features(z, model.fc.weight)[0]
        g = allowed_regions(item["region_bits"][None], item["grid"][None])[0]
        y = item["y"].numpy()
        out["y"].append(y)
        out["logits"].append(logits[0].numpy())
        out["hirescam"].append(hc.numpy().astype(np.float32))
        out["gradcam"].append(gc.numpy().astype(np.float32))
        out["allowed"].append(g.numpy())
        per = {m: np.full((y.shape[0], len(ks)), np.nan) for m in dels}
        for m in np.nonzero(y > 0.5)[0] if len(ks) else ():  # ks = (): no deletion check (e.g. validation)
            if int(m) not in scored or not bool(g[m].any()):
                continue
            per["hirescam"][m] = deletion_drops(model, z, int(m), hc[m], ks)
            per["gradcam"][m] = deletion_drops(model, z, int(m), gc[m], ks)
            per["random"][m] = deletion_drops(model, z, int(m), torch.rand(hc[m].shape, generator=rng), ks)
        for m in dels:
            dels[m].append(per[m])
        if truth is not None:
            lesions, regions = truth(vid)
            out["lesions"].append(lesions)
            for kind, cells in regions.items():
                conf.setdefault(kind, []).append(cells)
    lesions = None
    if truth is not None and all(a is not None for a in out["lesions"]) and out["lesions"]:
        lesions = np.stack(out["lesions"])
    return SplitMaps(
        ids=ids,
        y=np.stack(out["y"]),
        logits=np.stack(out["logits"]),
        hirescam=np.stack(out["hirescam"]),
        gradcam=np.stack(out["gradcam"]),
        allowed=np.stack(out["allowed"]),
        lesions=lesions,
        confounders={k: np.stack(v) for k, v in conf.items() if len(v) == len(ids)},
        deletion={m: np.stack(v) for m, v in dels.items()},
        ks=tuple(int(k) for k in ks),
    )


def _pairs(maps: SplitMaps, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(scan, label) indices of the positive pairs of scored labels."""
    pos = maps.positive.copy()
    keep = np.zeros(pos.shape[1], dtype=bool)
    keep[list(labels)] = True
    pos &= keep[None]
    return np.nonzero(pos)


def _scatter(shape: tuple[int, int], n: np.ndarray, l: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(shape, np.nan)
    out[n, l] = values
    return out


@dataclass(frozen=True)
class Thresholds:
    """Chosen on validation, separately: OrganIoU per label and map; lesion Dice one per map."""

    organ: dict[str, np.ndarray]  # map name -> threshold index per label [80] (-1: none)
    lesion: dict[str, float]  # map name -> normalised-attention threshold


def map_of(maps: SplitMaps, name: str, prior: np.ndarray) -> np.ndarray:
    """The [N, 80, H, D1, D2] maps of `name` (hirescam, gradcam, or prior broadcast to every scan)."""
    if name == "prior":
        return np.broadcast_to(prior[None], maps.hirescam.shape)
    return getattr(maps, name)


def choose_validation_thresholds(valid: SplitMaps, prior: np.ndarray, labels: Sequence[int]) -> Thresholds:
    """OrganIoU threshold per label (model.metrics.choose_thresholds) and one lesion-Dice threshold per map."""
    organ, lesion = {}, {}
    n, l = _pairs(valid, labels)
    for name in ("hirescam", "gradcam", "prior"):
        a = map_of(valid, name, prior)
        pos = np.zeros(valid.y.shape, dtype=bool)
        pos[n, l] = True
        organ[name] = choose_thresholds(organ_iou(a, valid.allowed, positive=pos))
        if valid.lesions is not None and n.size:
            _, dice = lesion_overlap(a[n, l], valid.lesions[n, l])
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(np.where(np.isfinite(dice), dice, np.nan), axis=0) if np.isfinite(dice).any() else None
            lesion[name] = float(ORGAN_IOU_THRESHOLDS[int(np.nanargmax(mean))]) if mean is not None else 0.5
        else:
            lesion[name] = 0.5
    return Thresholds(organ, lesion)


def pair_figures(
    maps: SplitMaps, prior: np.ndarray, thresholds: Thresholds, labels: Sequence[int],
    confounder_targets: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Every map figure as float [N, 80]: a value per positive pair of a scored label, NaN elsewhere."""
    shape = maps.y.shape
    n, l = _pairs(maps, labels)
    pos = np.zeros(shape, dtype=bool)
    pos[n, l] = True
    figs: dict[str, np.ndarray] = {}
    allowed = maps.allowed[n, l]
    for name in ("hirescam", "gradcam", "prior"):
        a = map_of(maps, name, prior)
        iou = organ_iou(a, maps.allowed, positive=pos)
        figs[f"organ_iou_{name}"] = iou_at(iou, thresholds.organ[name])
        figs[f"attention_in_allowed_{name}"] = _scatter(shape, n, l, attention_in_region(a[n, l], allowed))
        if maps.lesions is not None:
            les = maps.lesions[n, l]
            figs[f"pointing_{name}"] = _scatter(shape, n, l, pointing_game(a[n, l], les))
            if name != "gradcam":
                t = np.array([thresholds.lesion[name]])
                _, dice = lesion_overlap(a[n, l], les, thresholds=t)
                figs[f"lesion_dice_{name}"] = _scatter(shape, n, l, dice[:, 0])
    figs["attention_in_allowed_uniform"] = _scatter(shape, n, l, cell_fraction(allowed))
    figs["forbidden_evidence_signed_hirescam"] = _scatter(shape, n, l, signed_forbidden_evidence(maps.hirescam[n, l], ~allowed))
    if maps.lesions is not None:
        frac = cell_fraction(maps.lesions[n, l])
        figs["pointing_uniform"] = _scatter(shape, n, l, np.where(frac > 0, frac, np.nan))
    for kind, target in (confounder_targets or {}).items():
        cells = maps.confounders.get(kind)
        if cells is None:
            continue
        rows = np.nonzero(pos[:, target])[0]
        region = cells[rows]
        figs[f"confounder_share_{kind}_hirescam"] = _scatter(shape, rows, np.full(rows.size, target), attention_in_region(maps.hirescam[rows, target], region))
        figs[f"confounder_share_{kind}_uniform"] = _scatter(shape, rows, np.full(rows.size, target), cell_fraction(region))
        # can the grid separate it? the share of the confounder's cells inside the target's allowed region
        inside = (region & maps.allowed[rows, target]).reshape(rows.size, -1).sum(axis=1)
        total = region.reshape(rows.size, -1).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, inside / total, np.nan)
        figs[f"confounder_cells_allowed_{kind}"] = _scatter(shape, rows, np.full(rows.size, target), share)
    for method, drops in maps.deletion.items():
        for j, k in enumerate(maps.ks):
            figs[f"deletion_{method}_k{k}"] = np.where(pos, drops[..., j], np.nan)
    return figs


def mean_over(figs: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> dict[str, float]:
    """Mean of each figure over its pairs in the given scan rows (a multiset; all rows when None)."""
    out = {}
    for k, v in figs.items():
        sel = v if rows is None else v[rows]
        vals = sel[np.isfinite(sel)]
        out[k] = float(vals.mean()) if vals.size else math.nan
    return out


def auroc_figures(y: np.ndarray, logits: np.ndarray, labels: Sequence[int], named: Mapping[str, int]) -> dict[str, float]:
    """auroc_median over the scored labels with both classes; auroc/<name> for the named labels."""
    lab = np.asarray(list(labels))
    auc = auroc_per_label(y[:, lab], logits[:, lab])
    ok = auc[np.isfinite(auc)]
    out = {"auroc_median": float(np.median(ok)) if ok.size else math.nan}
    for name, idx in named.items():
        out[f"auroc/{name}"] = float(auroc_per_label(y[:, [idx]], logits[:, [idx]])[0])
    return out


def paired_bootstrap(
    per_seed: Sequence[Callable[[np.ndarray], dict[str, float]]],
    n_scans: Sequence[int],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile interval of the mean over seeds of (mask - class-only) differences, scans resampled.

    per_seed[s](rows) -> {figure: mask minus class-only value on those scan rows} for seed s, whose
    split has n_scans[s] scans (the same scans for both models: paired). NaN replicates are dropped.
    """
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {}
    for _ in range(n_boot):
        sums: dict[str, list[float]] = {}
        for fn, n in zip(per_seed, n_scans):
            for k, v in fn(rng.integers(0, n, n)).items():
                sums.setdefault(k, []).append(v)
        for k, vs in sums.items():
            reps.setdefault(k, []).append(float(np.mean(vs)) if all(np.isfinite(vs)) else math.nan)
    out = {}
    for k, vs in reps.items():
        a = np.asarray(vs)
        a = a[np.isfinite(a)]
        out[k] = (float(np.quantile(a, alpha / 2)), float(np.quantile(a, 1 - alpha / 2))) if a.size >= 10 else (math.nan, math.nan)
    return out
