"""`ctplatform demo` end to end at tiny size: every stage on a local Ray, MLflow runs, the table,
and a second run that reuses every stage (no retraining)."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ctplatform.cli import main
from ctplatform.demo.pipeline import demo_key, training_hash, with_lambda
from ctplatform.tracking import DEMO as DEMO_TAG
from ctplatform.tracking import DEMO_CONFIG_HASH as CONFIG_HASH_TAG
from ctplatform.demo.table import confounder_present, confounder_reliance, summary_table
from tests.conftest import REPO

#: Small and fast: 20 tiny phantoms (train 10, valid 3, test 3, shifted 4), coarse voxels, an
#: 8x2x2 grid ('area' masks: 'nearest' samples one corner voxel per cell of a 2x2 grid), 1 epoch;
#: seed 3, not the configured 0 (the demo must run with any seed).
TINY = [
    "--size", "tiny", "--n", "20", "--epochs", "1", "--seed", "3",
    "--set", "ingest.spacing_mm=[10,5.5,5.5]",
    "--set", "model.input_shape=[24,64,64]",
    "--set", "train.grid_variant=area",
    "--set", "eval.bootstrap=20",
    "--set", "eval.figure_scans=1",
    "--set", "eval.sanity_scans=2",
]


def _run(capsys, workdir, extra=()) -> tuple[int, str]:
    code = main(["demo", "--workdir", str(workdir), *TINY, *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _demo_config(workdir):
    """The configuration the demo command builds from the same arguments."""
    from ctplatform.cli import build_parser, config_from_args
    from ctplatform.demo.command import DEFAULT_CONFIG, apply_flags

    args = build_parser().parse_args(["demo", "--workdir", str(workdir), *TINY])
    return apply_flags(args, config_from_args(args, DEFAULT_CONFIG))


def test_seed_flag_sets_the_cohort_and_training_seed(tmp_path):
    from ctplatform.cli import build_parser, config_from_args
    from ctplatform.demo.command import DEFAULT_CONFIG, apply_flags
    from ctplatform.demo.pipeline import demo_key

    def cfg(*extra: str):
        args = build_parser().parse_args(["demo", "--workdir", str(tmp_path), *TINY, *extra])
        return apply_flags(args, config_from_args(args, DEFAULT_CONFIG))

    default, seven = cfg(), cfg("--seed", "7")
    assert (seven.demo.seed, seven.train.seed) == (7, 7)
    assert default.demo.seed != 7
    assert demo_key(seven) != demo_key(default)  # its own cohort folder: nothing reused across seeds


def test_confounder_reliance():
    rng = np.random.default_rng(0)
    label = np.repeat([0, 1], 40)
    fat = np.tile([False, True], 40)
    # a score driven by fat alone: perfect separation within each class
    assert confounder_reliance(fat + 0.01 * rng.random(80), label, fat) == 1.0
    # a score driven by the label alone, blind to fat: about 0.5
    blind = confounder_reliance(label + 0.5 * rng.random(80), label, fat)
    assert 0.3 < blind < 0.7
    # no scan with the confounder in either class: undefined
    assert math.isnan(confounder_reliance(rng.random(10), np.zeros(10), np.zeros(10, bool)))
    assert list(confounder_present("fat", np.array([4.0, 11.9, 24.0, 33.0]))) == [False, False, True, True]
    with pytest.raises(ValueError):
        confounder_reliance(np.zeros(3), np.zeros(4), np.zeros(3, bool))


def test_summary_table_rows_follow_the_splits():
    m = {
        "A": {"test": {"auroc_median": 0.6, "auroc/x": 0.9}, "shifted": {"auroc/x": 0.5, "confounder_reliance_auroc": 0.9}},
        "B": {"test": {"auroc_median": 0.7, "auroc/x": 0.8}, "shifted": {"auroc/x": 0.7, "confounder_reliance_auroc": 0.6}},
    }
    t = summary_table(m, ["test", "shifted"], "x")
    assert list(t.columns) == ["metric", "split", "A", "B", "better"]
    rows = {(r.metric, r.split): (r.A, r.B) for r in t.itertuples()}
    assert rows[("AUROC x", "shifted")] == (0.5, 0.7)
    assert rows[("confounder reliance of the x score", "shifted")] == (0.9, 0.6)
    assert not any("OrganIoU" in k[0] for k in rows)  # not measured: no row
    only_test = summary_table(m, ["test"], "x")
    assert set(only_test["split"]) == {"test"}


def test_demo_end_to_end_and_reuse(ray_local, tmp_path, capsys):
    work = tmp_path / "work"
    code, out = _run(capsys, work)
    assert code == 0, out
    for stage in ("phantom", "ingest", "partition", "label-reports", "train lambda=0", "train lambda=0.333",
                  "evaluate", "compare test", "compare shifted", "total"):
        assert f"| {stage}" in out, stage
    assert "| AUROC great_vessel_atherosclerosis | shifted |" in out
    assert "| confounder reliance of the great_vessel_atherosclerosis score | shifted |" in out
    assert "| attention share on confounder, great_vessel_atherosclerosis | test |" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out

    # MLflow: two finished training runs tagged with their configuration hash, each evaluated on
    # test and shifted, and two comparisons.
    cfg = _demo_config(work)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{DEMO_TAG}` = '{demo_key(cfg)}'")
    by_stage = pd.Series([r.data.tags.get("ctplatform.stage") for r in runs]).value_counts().to_dict()
    assert by_stage == {"train": 2, "evaluate": 4, "compare": 2}, by_stage
    train_runs = [r for r in runs if r.data.tags.get("ctplatform.stage") == "train"]
    hashes = {r.data.tags[CONFIG_HASH_TAG] for r in train_runs}
    assert hashes == {training_hash(with_lambda(cfg, 0.0)), training_hash(with_lambda(cfg, cfg.train.lambda_mask))}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["lambda_mask"] for r in train_runs} == {"0.0", str(cfg.train.lambda_mask)}
    evals = [r for r in runs if r.data.tags.get("ctplatform.stage") == "evaluate"]
    assert any("shifted_confounder_reliance_auroc" in r.data.metrics for r in evals)

    # benchmarks/faithfulness.py's analysis of the same two models: every figure beside its prior,
    # the prior being the one `ctplatform evaluate` scores (eval/prior.py), the same for both models
    _faithfulness_table_of_the_two_models(cfg, train_runs)

    # A second run reuses every stage: nothing is retrained, re-evaluated or re-compared.
    code, out2 = _run(capsys, work)
    assert code == 0, out2
    for stage in ("phantom", "ingest", "partition", "label-reports", "train lambda=0 ", "train lambda=0.333"):
        line = next(ln for ln in out2.splitlines() if ln.startswith(f"| {stage}"))
        assert "reused" in line, line
    assert "training completed" not in out2 and "epoch 1/1" not in out2
    again = client.search_runs([exp.experiment_id], filter_string=f"tags.`{DEMO_TAG}` = '{demo_key(cfg)}'")
    assert len(again) == len(runs)  # no new MLflow runs
    # the printed table is the same numbers
    table1 = [ln for ln in out.splitlines() if ln.startswith("| AUROC")]
    table2 = [ln for ln in out2.splitlines() if ln.startswith("| AUROC")]
    assert table1 == table2


def _faithfulness_table_of_the_two_models(cfg, train_runs) -> None:
    from ctplatform.demo import faithfulness as fx
    from ctplatform.demo.pipeline import demo_config

    dcfg = demo_config(cfg)
    cohort = Path(dcfg.store_path).parent / "cohort"
    by_lambda = {float(r.data.params["lambda_mask"]): r.info.run_id for r in train_runs}
    runs = {fx.CLASS_ONLY: by_lambda[0.0], fx.MASK_LOSS: by_lambda[cfg.train.lambda_mask]}
    analysis = fx.analyse_models(dcfg, runs, cohort, echo=lambda _: None)
    values = fx.seed_values(analysis)
    for key in ("test:organ_iou_prior", "test:attention_in_allowed_prior"):
        a, b = values[fx.CLASS_ONLY][key], values[fx.MASK_LOSS][key]
        assert 0.0 <= a <= 1.0 and a == b, (key, a, b)  # image-blind: the same for both models
    assert math.isfinite(values[fx.MASK_LOSS]["test:organ_iou_hirescam"])
    text = fx.format_table(fx.report({3: analysis}, n_boot=20))
    assert "image-blind prior map" in text and f"| {fx.CLASS_ONLY} | {fx.MASK_LOSS} |" in text


def test_demo_config_is_valid():
    from ctplatform.config import load_config

    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.demo.confounder.startswith("fat")
    assert cfg.model.geometry.grid[0] == cfg.model.input_shape[0] // 3


def test_the_stage_order_names_cli_commands():
    from ctplatform.cli import COMMANDS
    from ctplatform.demo.stages import DEPLOY_DEFAULT, DEPLOY_OPTIONAL, ORDER

    commands = {name for name, _ in COMMANDS}
    assert set(ORDER) <= commands and set(DEPLOY_DEFAULT + DEPLOY_OPTIONAL) <= set(ORDER)
    assert list(DEPLOY_DEFAULT) == sorted(DEPLOY_DEFAULT, key=ORDER.index)
