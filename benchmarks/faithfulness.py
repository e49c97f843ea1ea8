"""Faithfulness benchmark (issue 14): class-only vs mask-loss AxialNet on a confounded phantom cohort,
per seed, every figure beside its chance / image-blind prior level, paired bootstrap 95% intervals of
mask-loss minus class-only (scans resampled within each seed, differences averaged over seeds).

    python benchmarks/faithfulness.py --seeds 0,1,2 --json OUT.json [--workdir DIR] [--epochs E] [--n N]
    python benchmarks/faithfulness.py --seeds 7 --json OUT.json

A seed sets the cohort (demo.seed) and the training seed of both models. The settings are
configs/demo.yaml plus FAITHFULNESS_SETTINGS below, fixed before any run and the same for every seed
(the phantom is never tuned toward a metric). `--epochs` below EPOCHS (30) is a reduced run and is
recorded as such in the JSON (`meta.reduced`). Finished stages are reused (the demo pipeline's reuse).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Epochs of each model: the benchmark's, fixed before its runs (the demo trains fewer to fit its
#: 20-minute budget; docs/demo.md "Time").
EPOCHS = 30
#: The experiment's settings over configs/demo.yaml (docs/demo.md says why each).
FAITHFULNESS_SETTINGS: list[str] = [
    f"train.epochs={EPOCHS}",
    "model.backbone_layers=3",          # ResNet-18 cut after layer3: 96x96 -> 6x6 cells (grid 12x6x6)
    "train.mask_loss=positive_pairs",   # mean over positive (scan, label) pairs (model/losses.py)
    "train.labels=present",             # train and score the labels with positives in the training split
    "train.selection_metric=val_class_loss",  # the same best-epoch criterion for both models
    "demo.confounder=fat:great_vessel_atherosclerosis:0.9+zmarker:lung_mass:0.9",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (>= 3 for the issue's intervals)")
    p.add_argument("--json", type=Path, required=True, help="where to write the JSON")
    p.add_argument("--workdir", type=Path, default=Path("ctplatform-work"))
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs (a reduced run, recorded)")
    p.add_argument("--n", type=int, default=None, help="override demo.n (cohort size)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    p.add_argument("--table-from", type=Path, default=None, help="only print the table of an earlier JSON")
    p.add_argument("--runs", default=None, metavar="CLASS_ONLY_RUN,MASK_LOSS_RUN",
                   help="one seed: analyse these two finished MLflow training runs (skips the stages)")
    p.add_argument("--only-train", choices=["class-only", "mask-loss"], default=None,
                   help="prepare the cohort and train this one model, then stop (run the two in parallel processes; "
                        "a later run without it reuses both and analyses)")
    args = p.parse_args(argv)
    if args.table_from is not None:
        import json

        from ctplatform.demo import faithfulness as fx

        rep = json.loads(args.table_from.read_text())
        print(fx.format_table(rep) + "\n\n" + fx.diagnostics(rep) + "\n\n" + fx.conclusion(rep))
        return 0

    import ray

    from ctplatform.config import load_config
    from ctplatform.demo import faithfulness as fx
    from ctplatform.demo.pipeline import (
        Stages, demo_config, stage_ingest, stage_labels, stage_partition, stage_phantom, stage_train, with_lambda,
    )
    from ctplatform.runtime import init_ray

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = FAITHFULNESS_SETTINGS + [f"workdir={args.workdir}"] + args.set
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.n is not None:
        overrides.append(f"demo.n={args.n}")
    base = load_config(args.config, overrides)
    t_start = time.monotonic()
    analyses, timings = {}, {}
    for seed in seeds:
        cfg0 = base.model_copy(deep=True)
        cfg0.demo.seed = seed
        cfg0.train.seed = seed
        cfg = demo_config(cfg0)
        cohort = Path(cfg.store_path).parent / "cohort"
        stages = Stages(7, print)
        if args.runs:  # the stages ran before (e.g. --only-train in two processes): analyse only
            from ctplatform.runtime import setup_mlflow

            setup_mlflow(cfg)
            runs = dict(zip((fx.CLASS_ONLY, fx.MASK_LOSS), args.runs.split(",")))
            analyses[seed] = stages.run("analyse", "faithfulness figures of both models",
                                        lambda: (fx.analyse_models(cfg, runs, cohort), "done"))
            timings[seed] = stages.timings
            continue
        stages.run("phantom", f"seed {seed}: phantom cohort ({cfg.demo.n} scans, {cfg.demo.confounder})",
                   lambda: stage_phantom(cfg0, cohort, print))
        init_ray(cfg)
        try:
            stages.run("ingest", "ingest", lambda: stage_ingest(cfg, cohort, print))
            stages.run("partition", f"partition, grid {cfg.model.geometry.name}", lambda: stage_partition(cfg, print))
            stages.run("label-reports", "label the reports", lambda: stage_labels(cfg, cohort, print))
            runs = {}
            for title, lam in ((fx.CLASS_ONLY, 0.0), (fx.MASK_LOSS, cfg.train.lambda_mask)):
                if args.only_train not in (None, title):
                    continue
                c = with_lambda(cfg, lam)
                runs[title] = stages.run(f"train {title}", f"train {title} (lambda {lam:.3g}, {c.train.epochs} epochs)",
                                         lambda c=c: stage_train(c, print))
        finally:
            ray.shutdown()
        if args.only_train is not None:
            continue
        analyses[seed] = stages.run("analyse", "faithfulness figures of both models",
                                    lambda: (fx.analyse_models(cfg, runs, cohort), "done"))
        timings[seed] = stages.timings
    if args.only_train is not None:
        print(f"trained {args.only_train} for seeds {seeds}")
        return 0
    meta = {
        "settings": FAITHFULNESS_SETTINGS + args.set, "config": str(args.config), "epochs": base.train.epochs,
        "reduced": base.train.epochs < EPOCHS, "n": base.demo.n, "lambda_mask": base.train.lambda_mask,
        "timings_s": {str(s): [(n, round(t, 1), o) for n, t, o in ts] for s, ts in timings.items()},
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    rep = fx.report(analyses, n_boot=args.bootstrap, meta=meta)
    fx.to_json(rep, args.json)
    reduced = f" (REDUCED: {base.train.epochs} of {EPOCHS} epochs)" if meta["reduced"] else ""
    print(f"\nseeds {seeds}{reduced}, {meta['wall_s']:.0f} s; JSON: {args.json}\n")
    print(fx.format_table(rep))
    print("\n" + fx.diagnostics(rep))
    print("\n" + fx.conclusion(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
