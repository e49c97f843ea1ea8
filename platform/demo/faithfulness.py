"""The faithfulness experiment: class-only vs mask-loss AxialNet on a phantom cohort, per seed, with
every figure beside its chance or prior level and paired bootstrap intervals of mask minus class-only.

Shared by `ctplatform demo` (one seed) and `benchmarks/faithfulness.py` (several seeds): one seed is
    cohort (demo.seed = seed) -> ingest -> partition -> label reports -> train `class-only` (lambda 0)
      and `mask-loss` (lambda > 0), same seed, same selection criterion (train.selection_metric)
      -> both models over valid (thresholds), test (headline) and shifted (confounder reliance).
The figures are in eval/faithfulness.py and eval/baselines.py; this module only chains and tabulates.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ctplatform.config import Config

CLASS_ONLY, MASK_LOSS = "class-only", "mask-loss"

#: (row title, split, figure key, baselines [(name, key)], better, target from issue 14)
ROWS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...], str, str], ...] = (
    ("HiResCAM OrganIoU (val-chosen thresholds)", "test", "organ_iou_hirescam",
     (("image-blind prior map", "organ_iou_prior"),), "higher", ">= +33% relative, interval > 0, above prior"),
    ("Grad-CAM OrganIoU (val-chosen thresholds)", "test", "organ_iou_gradcam", (("image-blind prior map", "organ_iou_prior"),), "higher", ""),
    ("HiResCAM attention in allowed cells (threshold-free OrganIoU)", "test", "attention_in_allowed_hirescam",
     (("uniform map = allowed-cell fraction", "attention_in_allowed_uniform"), ("image-blind prior map", "attention_in_allowed_prior")), "higher", ""),
    ("HiResCAM signed evidence from forbidden cells", "test", "forbidden_evidence_signed_hirescam", (), "closer to 0", ""),
    ("true-lesion Dice, HiResCAM (val-chosen threshold)", "test", "lesion_dice_hirescam", (("image-blind prior map", "lesion_dice_prior"),), "higher", ""),
    ("pointing game, HiResCAM", "test", "pointing_hirescam",
     (("chance = lesion-cell fraction", "pointing_uniform"), ("image-blind prior map", "pointing_prior")), "higher", "mask-loss >= 3x chance"),
    ("pointing game, Grad-CAM", "test", "pointing_gradcam", (("chance = lesion-cell fraction", "pointing_uniform"),), "higher", ""),
    ("attention on fat, {fat}", "test", "confounder_share_fat_hirescam", (("uniform map = fat-cell fraction", "confounder_share_fat_uniform"),), "lower", ""),
    ("attention on the z-marker, {zmarker}", "test", "confounder_share_zmarker_hirescam",
     (("uniform map = marker-cell fraction", "confounder_share_zmarker_uniform"),), "lower", ""),
    ("fat cells inside the {fat} allowed region (grid property)", "test", "confounder_cells_allowed_fat", (), "same", ""),
    ("z-marker cells inside the {zmarker} allowed region (grid property)", "test", "confounder_cells_allowed_zmarker", (), "same", ""),
    ("reliance of the {fat} score on fat (AUROC)", "shifted", "reliance_fat", (("chance", "chance_half"),), "closer to 0.5", ""),
    ("reliance of the {zmarker} score on the z-marker (AUROC)", "shifted", "reliance_zmarker", (("chance", "chance_half"),), "closer to 0.5",
     "<= 0.65 mask-loss, >= 0.9 class-only"),
    ("AUROC {zmarker}", "shifted", "auroc/{zmarker}", (("chance", "chance_half"),), "higher", "mask-loss higher, interval > 0"),
    ("AUROC {fat}", "shifted", "auroc/{fat}", (("chance", "chance_half"),), "higher", ""),
    ("AUROC median over scored labels", "test", "auroc_median", (("chance", "chance_half"),), "higher", "mask-loss not lower by > 0.03"),
)


# ------------------------------------------------------------------------------ truth on the grid
def organ_map_in_store(cohort: Path, volume_id: str, volume_attrs: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The phantom's organ map (truth/<id>.nii.gz) on the stored volume's voxels (ingest's steps, nearest).

    The store's truth marks one confounder region (its `confounder` bit: the cohort's first); the
    others (e.g. the z-marker) are read from the phantom's organ codes here.
    """
    from ctplatform.ingest.orient import to_store_orientation, voxel_spacing
    from ctplatform.ingest.resample import resample
    from ctplatform.ingest.truth import read_mask

    from ctplatform.phantom.layout import CohortLayout

    data, affine = read_mask(CohortLayout(cohort).organs(volume_id))
    oriented, aff = to_store_orientation(data, affine)
    out = resample(oriented, voxel_spacing(aff), tuple(float(x) for x in volume_attrs["spacing_mm"]), order=0)
    if out.shape != tuple(shape):
        raise ValueError(f"organ map of {volume_id} resampled to {out.shape}, the stored volume is {tuple(shape)}")
    return out


def phantom_truth(cohort: Path, store_root: str, geometry: Any, kinds: list[str], method: str = "area"):
    """TruthFn for eval.faithfulness.collect_split: lesion cells (the store's grid truth) and each
    confounder's cells (the phantom's organ map, downsampled as PARTITION does)."""
    from ctplatform.eval.truth import decode
    from ctplatform.geometry import center_crop_or_pad
    from ctplatform.partition.grid import downsample_bits
    from ctplatform.phantom.anatomy import ORGAN_CODES
    from ctplatform.phantom.cohort import CONFOUNDER_ORGAN
    from ctplatform.store import Store

    store = Store(store_root)

    @functools.lru_cache(maxsize=None)  # both models read the same truth: resample it once
    def truth(volume_id: str):
        grid = store.grid_truth(geometry.name, method, volume_id)
        lesions = decode(grid[...], list(grid.attrs["truth_labels"])).lesions
        vol = store.volume(volume_id)
        organs = organ_map_in_store(cohort, volume_id, vol.attrs, tuple(vol.shape))
        regions = {}
        for k in kinds:
            mask = (organs == ORGAN_CODES[CONFOUNDER_ORGAN[k]]).astype(np.uint8)
            regions[k] = downsample_bits(center_crop_or_pad(mask, geometry.input_shape, fill=0), geometry.grid, method) > 0
        return lesions, regions

    return truth


def cohort_confounders(cohort: Path) -> dict[str, str]:
    """kind -> target label of the cohort's confounders (cohort.json holds one spec or a list)."""
    from ctplatform.phantom.layout import CohortLayout

    spec = json.loads(CohortLayout(cohort).params.read_text()).get("confounder")
    specs = spec if isinstance(spec, list) else ([spec] if spec else [])
    return {s["kind"]: s["label"] for s in specs}


def confounder_values(cohort: Path, kind: str) -> dict[str, float]:
    import pandas as pd

    from ctplatform.phantom.layout import CohortLayout

    listing = pd.read_csv(CohortLayout(cohort).listing, keep_default_na=False)
    col = f"confounder_{kind}" if f"confounder_{kind}" in listing.columns else "confounder_value"
    return dict(zip(listing["volume_id"].astype(str), listing[col].astype(float)))


def lesion_contrast(store_root: str, ids: list[str], shell_voxels: int = 2) -> dict[str, dict[str, float]]:
    """Per label, after ingest: median over scans of |mean HU in the lesion - mean HU in a shell around it|.

    The lesion is the store's truth (on the stored voxels); the shell is the lesion dilated by
    `shell_voxels` voxels, minus the lesion: the tissue a lesion must stand out from at the model's
    input resolution. Also the median lesion size in stored voxels.
    """
    from scipy.ndimage import binary_dilation

    from ctplatform.store import CONFOUNDER, Store

    store = Store(store_root)
    found: dict[str, list[tuple[float, int]]] = {}
    for vid in ids:
        if not store.has_truth(vid):
            continue
        hu = np.asarray(store.volume(vid)[...], dtype=np.float32)
        truth = store.truth(vid)
        bits = truth[...]
        for bit, name in enumerate(truth.attrs["truth_labels"]):
            if name == CONFOUNDER:
                continue
            m = (bits & bits.dtype.type(1 << bit)) != 0
            if not m.any():
                continue
            shell = binary_dilation(m, iterations=shell_voxels) & ~m
            if shell.any():
                found.setdefault(str(name), []).append((abs(float(hu[m].mean() - hu[shell].mean())), int(m.sum())))
    return {k: {"contrast_hu_median": float(np.median([c for c, _ in v])), "voxels_median": float(np.median([n for _, n in v])),
                "scans": len(v)} for k, v in sorted(found.items())}


# ------------------------------------------------------------------------------ one seed
def load_model(run_id: str, cfg: Config) -> tuple[Any, Config, dict[str, Any]]:
    """(model, its config, where it came from): an MLflow run id, or `ckpt:<Ray Train checkpoint folder>`
    for a run stopped early (its best epoch so far by the selection criterion; said so in the report)."""
    if not run_id.startswith("ckpt:"):
        from ctplatform.model.checkpoint import load_from_run

        model, run_cfg = load_from_run(run_id)
        return model, run_cfg, {"mlflow_run": run_id}
    from ctplatform.model.axialnet import AxialNet
    from ctplatform.train.state import load_checkpoint

    folder = Path(run_id[len("ckpt:"):])
    model_state, _, best, state = load_checkpoint(folder)
    model = AxialNet(cfg.model.geometry)
    model.load_state_dict(best if best is not None else model_state)
    model.eval()
    return model, cfg, {"checkpoint": folder.name, "epochs_done": state.next_epoch, "best_epoch": state.best_epoch}


def analyse_model(cfg_json: dict[str, Any], title: str, run_id: str, cohort: str, labels: list[int],
                  conf: dict[str, str]) -> dict[str, Any]:
    """One trained model over valid, test and shifted (a top-level function: runs in its own process)."""
    import torch

    from ctplatform.demo.table import confounder_present
    from ctplatform.eval.deletion import DELETION_KS
    from ctplatform.eval.faithfulness import choose_validation_thresholds, collect_split, pair_figures
    from ctplatform.eval.prior import training_prior
    from ctplatform.labels import label_by_name
    from ctplatform.model.dataset import StoreDataset, load_split
    from ctplatform.model.receptive_field import own_block_gradient_mass
    from ctplatform.runtime import setup_mlflow
    from ctplatform.store import Store

    torch.set_num_threads(1)  # one process per model: the two share the machine's cores
    cfg = Config.model_validate(cfg_json)
    setup_mlflow(cfg)
    cohort_path = Path(cohort)
    store = Store(cfg.store_path)
    targets = {k: label_by_name(v).index for k, v in conf.items()}
    model, run_cfg, source = load_model(run_id, cfg)
    truth = phantom_truth(cohort_path, cfg.store_path, run_cfg.model.geometry, list(conf))
    # the image-blind prior of `ctplatform evaluate` (eval/prior.py): the same map, one owner
    made = training_prior(store, cfg.train.splits["train"], run_cfg.model.geometry, run_cfg.train.grid_variant)
    if made.prior is None:
        raise ValueError(f"{title}: {'; '.join(made.notes)}")
    prior = made.prior
    res: dict[str, Any] = {"run_id": run_id, "source": source}
    maps = {}
    for split in ("valid", "test", "shifted"):
        t0 = time.monotonic()
        index = load_split(store, split)
        ks = () if split == "valid" else DELETION_KS  # validation only chooses thresholds
        maps[split] = collect_split(model, StoreDataset.from_config(run_cfg, index, augment=False, preprocess="loader"), labels, truth, ks)
        print(f"  {title}: {split} ({len(index)} scans) analysed in {time.monotonic() - t0:.0f} s", flush=True)
    thr = choose_validation_thresholds(maps["valid"], prior, labels)
    res["figures"] = {s: pair_figures(maps[s], prior, thr, labels, targets) for s in ("test", "shifted")}
    res["scores"] = {s: (maps[s].y, maps[s].logits, maps[s].ids) for s in ("test", "shifted")}
    res["lesion_thresholds"] = thr.lesion
    first = StoreDataset.from_config(run_cfg, load_split(store, "test"), augment=False, preprocess="loader")[0]["x"][None].float()
    rf = own_block_gradient_mass(model, first)
    res["receptive_field"] = {"own_block_mass_mean": rf.mean, "uniform": rf.uniform}
    res["present"] = {
        k: confounder_present("marker" if k == "zmarker" else k,
                              np.array([confounder_values(cohort_path, k)[v] for v in maps["shifted"].ids]))
        for k in conf
    }
    return res


def analyse_models(cfg: Config, runs: dict[str, str], cohort: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Both trained models (one process each) over valid, test and shifted: per-pair figures, scores, diagnostics."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from ctplatform.model.dataset import load_split, scored_labels
    from ctplatform.store import Store

    store = Store(cfg.store_path)
    conf = cohort_confounders(cohort)
    train_index = load_split(store, cfg.train.splits["train"])
    labels = scored_labels(train_index, "present")  # both models are scored on the same labels
    out: dict[str, Any] = {"labels": labels, "targets": conf, "models": {}}
    test_ids = load_split(store, "test").ids
    out["lesion_contrast"] = lesion_contrast(cfg.store_path, test_ids)
    cfg_json = cfg.model_dump(mode="json")
    # no fork: the caller may hold threads (Ray, MLflow); each model's analysis is independent
    with ProcessPoolExecutor(max_workers=len(runs), mp_context=get_context("forkserver")) as pool:
        futures = {t: pool.submit(analyse_model, cfg_json, t, r, str(cohort), [int(i) for i in labels], conf)
                   for t, r in runs.items()}
        for title, fut in futures.items():
            out["models"][title] = fut.result()
            echo(f"  {title}: analysed")
    return out


def seed_values(analysis: dict[str, Any], rows: dict[str, np.ndarray | None] | None = None) -> dict[str, dict[str, float]]:
    """model -> figure -> value (on all scans, or on the given scan rows per split) for one seed."""
    from ctplatform.demo.table import confounder_reliance
    from ctplatform.eval.faithfulness import auroc_figures, mean_over
    from ctplatform.labels import label_by_name

    rows = rows or {}
    conf = analysis["targets"]
    named = {v: label_by_name(v).index for v in conf.values()}
    out = {}
    for title, res in analysis["models"].items():
        vals: dict[str, float] = {}
        for split in ("test", "shifted"):
            r = rows.get(split)
            figs = mean_over(res["figures"][split], r)
            y, logits, _ = res["scores"][split]
            if r is not None:
                y, logits = y[r], logits[r]
            auc = auroc_figures(y, logits, analysis["labels"], named)
            for k, v in {**figs, **auc}.items():
                vals[f"{split}:{k}"] = v
        y, logits, _ = res["scores"]["shifted"]
        r = rows.get("shifted")
        for kind, target in conf.items():
            idx = label_by_name(target).index
            present = res["present"][kind]
            sel = slice(None) if r is None else r
            vals[f"shifted:reliance_{kind}"] = confounder_reliance(logits[sel, idx], y[sel, idx], present[sel])
        vals["test:chance_half"] = vals["shifted:chance_half"] = 0.5
        out[title] = vals
    return out


# ------------------------------------------------------------------------------ several seeds
def report(analyses: dict[int, dict[str, Any]], n_boot: int = 1000, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready: per seed every figure of both models and its baselines; paired differences with 95% CIs."""
    from ctplatform.eval.faithfulness import paired_bootstrap

    from ctplatform.labels import all_labels

    names = [lab.name for lab in all_labels()]

    def label_name(i: int) -> str:
        return names[i]

    per_seed = {s: seed_values(a) for s, a in analyses.items()}
    fns, sizes = [], []
    for a in analyses.values():
        n_test = len(a["models"][CLASS_ONLY]["scores"]["test"][2])
        n_shift = len(a["models"][CLASS_ONLY]["scores"]["shifted"][2])

        def diff(rows: np.ndarray, a: dict[str, Any] = a, n_test: int = n_test, n_shift: int = n_shift) -> dict[str, float]:
            # test and shifted scans are resampled independently; one draw of `rows` seeds both
            rng = np.random.default_rng(int(rows.sum()) + len(rows))
            v = seed_values(a, {"test": rows % n_test, "shifted": rng.integers(0, n_shift, n_shift)})
            return {k: v[MASK_LOSS][k] - v[CLASS_ONLY][k] for k in v[MASK_LOSS]}

        fns.append(diff)
        sizes.append(n_test)
    ci = paired_bootstrap(fns, sizes, n_boot=n_boot)
    keys = sorted(next(iter(per_seed.values()))[CLASS_ONLY])
    mean = {m: {k: float(np.nanmean([per_seed[s][m][k] for s in per_seed])) for k in keys} for m in (CLASS_ONLY, MASK_LOSS)}
    first = next(iter(analyses.values()))
    return {
        "meta": meta or {},
        "seeds": sorted(analyses),
        "confounders": first["targets"],
        "scored_labels": {str(s): len(a["labels"]) for s, a in analyses.items()},
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "mean_over_seeds": mean,
        "mask_minus_class_only": {k: mean[MASK_LOSS][k] - mean[CLASS_ONLY][k] for k in keys},
        "mask_minus_class_only_ci95": {k: list(ci.get(k, (math.nan, math.nan))) for k in keys},
        "receptive_field": {str(s): {m: a["models"][m]["receptive_field"] for m in a["models"]} for s, a in analyses.items()},
        "model_sources": {str(s): {m: a["models"][m].get("source", {}) for m in a["models"]} for s, a in analyses.items()},
        "lesion_contrast_after_ingest": {str(s): a.get("lesion_contrast", {}) for s, a in analyses.items()},
        "scored_label_names": {str(s): [label_name(int(i)) for i in a["labels"]] for s, a in analyses.items()},
        "deletion_ks": list(_ks(first)),
    }


def _ks(analysis: dict[str, Any]) -> list[int]:
    keys = analysis["models"][CLASS_ONLY]["figures"]["test"]
    return sorted({int(k.rsplit("_k", 1)[1]) for k in keys if k.startswith("deletion_hirescam_k")})


def _num(v: Any) -> float:
    """A figure from a report or its JSON (where NaN was written as null)."""
    return math.nan if v is None else float(v)


def _fmt(v: Any) -> str:
    v = _num(v)
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def winner(diff: float, lo: float, hi: float, better: str, values: tuple[float, float] | None = None) -> str:
    """Which model won the row: by the paired interval (spanning 0: no winner).

    For 'closer to X' rows the interval is of the signed difference, so the winner is read from the
    two values' distances to X and marked as such (no interval of the distance).
    """
    diff, lo, hi = _num(diff), _num(lo), _num(hi)
    if better.startswith("closer to") and values is not None:
        target = float(better.split()[-1])
        c, m = (abs(_num(v) - target) for v in values)
        if math.isnan(c) or math.isnan(m) or c == m:
            return "n/a" if math.isnan(c) or math.isnan(m) else "tie"
        return f"{MASK_LOSS if m < c else CLASS_ONLY} (closer; interval above is of the signed difference)"
    if better == "same":
        return ""
    if any(math.isnan(x) for x in (diff, lo, hi)):
        return "n/a"
    if lo <= 0 <= hi:
        return "neither (interval spans 0)"
    if better == "higher":
        return MASK_LOSS if lo > 0 else CLASS_ONLY
    if better == "lower":
        return MASK_LOSS if hi < 0 else CLASS_ONLY
    return "see values"  # 'closer to 0.5' / 'closer to 0': read the two values


def table_rows(rep: dict[str, Any]) -> list[list[str]]:
    conf = rep["confounders"]
    fmt = {"fat": conf.get("fat", "?"), "zmarker": conf.get("zmarker", "?")}
    mean, d, ci = rep["mean_over_seeds"], rep["mask_minus_class_only"], rep["mask_minus_class_only_ci95"]
    rows = []
    for title, split, key, baselines, better, target in ROWS:
        k = f"{split}:{key.format(**fmt)}"
        c, m = _num(mean[CLASS_ONLY].get(k)), _num(mean[MASK_LOSS].get(k))
        if k not in d or (math.isnan(c) and math.isnan(m)):
            continue
        lo, hi = (_num(x) for x in ci[k])
        base = "; ".join(f"{n} {_fmt(mean[CLASS_ONLY].get(f'{split}:{b}'))}" for n, b in baselines)
        rows.append([title.format(**fmt), split, _fmt(c), _fmt(m),
                     f"{_num(d[k]):+.3f} [{lo:+.3f}, {hi:+.3f}]", winner(d[k], lo, hi, better, (c, m)), base, target])
    ks = rep["deletion_ks"]
    curves = {
        (method, model): [_num(mean[model].get(f"test:deletion_{method}_k{k}")) for k in ks]
        for method in ("hirescam", "gradcam", "random") for model in (CLASS_ONLY, MASK_LOSS)
    }
    for method in ("hirescam", "gradcam", "random"):
        rows.append([f"deletion: score drop, top-k cells by {method} zeroed (k = {'/'.join(map(str, ks))})", "test",
                     " / ".join(_fmt(v) for v in curves[method, CLASS_ONLY]),
                     " / ".join(_fmt(v) for v in curves[method, MASK_LOSS]), "", "",
                     "random ranking: last row" if method != "random" else "", "HiResCAM >= Grad-CAM at every k" if method == "hirescam" else ""])
    verdict = []
    for model in (CLASS_ONLY, MASK_LOSS):
        h, g = curves["hirescam", model], curves["gradcam", model]
        ok = all(a >= b for a, b in zip(h, g) if not (math.isnan(a) or math.isnan(b)))
        verdict.append("yes" if ok else "no")
    rows.append(["HiResCAM drop >= Grad-CAM drop at every k", "test", *verdict, "", "", "", "HiResCAM >= Grad-CAM at every k"])
    return rows


def format_table(rep: dict[str, Any]) -> str:
    head = ["figure", "split", CLASS_ONLY, MASK_LOSS, "mask - class [95% CI]", "won", "baseline (image-blind / chance)", "issue target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rep)]
    return "\n".join(lines)


def diagnostics(rep: dict[str, Any]) -> str:
    """Receptive field per model and lesion contrast after ingest, as short lines."""
    lines = []
    for seed, models in rep.get("model_sources", {}).items():
        for m, src in models.items():
            if "checkpoint" in src:
                lines.append(f"seed {seed} {m}: STOPPED EARLY after {src['epochs_done']} epochs; the model is its best "
                             f"epoch so far by the selection criterion (epoch index {src['best_epoch']})")
    for seed, models in rep.get("receptive_field", {}).items():
        for m, rf in models.items():
            lines.append(f"seed {seed} {m}: own-block input-gradient mass {_fmt(rf.get('own_block_mass_mean'))} "
                         f"(uniform {_fmt(rf.get('uniform'))})")
    for seed, labels in rep.get("lesion_contrast_after_ingest", {}).items():
        shown = ", ".join(f"{k} {v['contrast_hu_median']:.0f} HU ({v['voxels_median']:.0f} vx)" for k, v in labels.items())
        lines.append(f"seed {seed} lesion contrast after ingest (median |lesion - 2-voxel shell|, median size): {shown}")
    return "\n".join(lines)


def conclusion(rep: dict[str, Any]) -> str:
    """One sentence from the measured numbers (no adjectives chosen in advance)."""
    d, ci, mean = rep["mask_minus_class_only"], rep["mask_minus_class_only_ci95"], rep["mean_over_seeds"]
    k = "test:organ_iou_hirescam"
    z = "shifted:reliance_zmarker"
    lo, hi = (_num(x) for x in ci[k])
    parts = [f"over {len(rep['seeds'])} seed(s), the mask loss changed HiResCAM OrganIoU by {_num(d[k]):+.3f} "
             f"(95% CI {lo:+.3f} to {hi:+.3f}; image-blind prior {_fmt(mean[CLASS_ONLY].get('test:organ_iou_prior'))})"]
    if z in d:
        parts.append(f"the z-marker reliance from {_fmt(mean[CLASS_ONLY][z])} to {_fmt(mean[MASK_LOSS][z])} (chance 0.5)")
    a = "test:auroc_median"
    lo, hi = (_num(x) for x in ci[a])
    parts.append(f"and median AUROC by {_num(d[a]):+.3f} (95% CI {lo:+.3f} to {hi:+.3f})")
    return "Conclusion: " + ", ".join(parts) + "."


def to_json(rep: dict[str, Any], path: Path) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return None if math.isnan(float(x)) else float(x)
        if isinstance(x, np.integer):
            return int(x)
        return x

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(rep), indent=1))
