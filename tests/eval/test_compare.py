"""`ctplatform compare`'s table: every localization figure beside the chance levels its evaluation
logged; and a run id that does not exist is reported in one line by `evaluate` and `compare`."""

from __future__ import annotations

import numpy as np

from ctplatform.cli import main
from ctplatform.eval.baselines import CHANCE_LEVELS
from ctplatform.eval.compare.comparison import BASELINE_ROW, compare_runs
from ctplatform.eval.compare.job import write_comparison
from ctplatform.eval.report import predictions_frame
from ctplatform.eval.scoring import score_outputs
from ctplatform.eval.summary import evaluate_scores

GRID = (4, 3, 3)
TARGET = 7  # the label the confounder tracks


def _evaluation(seed: int):
    """One run's evaluation of the same 12 scans (labels, allowed regions and truth shared; maps differ)."""
    shared = np.random.default_rng(0)
    n = 12
    y = (shared.random((n, 80)) < 0.3).astype(np.float32)
    y[:, TARGET] = 1
    g = np.broadcast_to(shared.random((n, 1) + GRID) < 0.4, (n, 80) + GRID) & (y[..., None, None, None] > 0)
    lesion = np.zeros((80,) + GRID, bool)
    lesion[TARGET, 1, 1, 1] = True
    conf = np.zeros(GRID, bool)
    conf[3] = True
    rng = np.random.default_rng(seed)
    out = {"prob": rng.random((n, 80)).astype(np.float32),
           "slice_scores": rng.normal(size=(n, 80, GRID[0])).astype(np.float32),
           "hirescam": rng.normal(size=(n, 80) + GRID).astype(np.float32),
           "gradcam": rng.normal(size=(n, 80) + GRID).astype(np.float32)}
    prior = shared.random((80,) + GRID).astype(np.float32)  # the same map for every scan (and run)
    scans = score_outputs([f"s{i}" for i in range(n)], ["test"] * n, out, y, g,
                          lesions=[lesion] * n, confounders=[conf] * n, prior=prior)
    ev = evaluate_scores(scans, scans, n_boot=0, confounder_label=TARGET)
    return predictions_frame(scans, b"salt"), ev


def test_every_paired_figure_and_level_is_a_logged_metric():
    _, ev = _evaluation(1)
    for figure, levels in CHANCE_LEVELS.items():
        assert figure in ev.metrics, figure
        assert all(metric in ev.metrics for _, metric in levels), figure


def test_compare_md_shows_each_localization_figure_beside_its_baselines(tmp_path):
    (pa, ea), (pb, eb) = _evaluation(1), _evaluation(2)
    result = compare_runs(pa, pb, ea.per_label, eb.per_label, ea.metrics, eb.metrics, "test")
    names = list(result.headline["metric"])
    for figure, levels in CHANCE_LEVELS.items():
        i = names.index(figure)
        below = names[i + 1 : i + 1 + len(levels)]
        assert below == [f"{BASELINE_ROW}{what} ({metric})" for what, metric in levels], figure
        for what, metric in levels:
            row = result.headline.iloc[i + 1 + [m for _, m in levels].index(metric)]
            # the same scans: both runs measured the same chance level, and it is what the evaluation logged
            assert row["A"] == ea.metrics[metric] and row["B"] == eb.metrics[metric] and row["B - A"] == 0
            assert np.isnan(row["relative"])
    assert "allowed_cell_fraction" not in names  # only beside its figures, not as a figure of its own
    md = write_comparison(result, tmp_path, "class-only-1 (A) vs mask-loss-2 (B) on test")[0].read_text()
    lines = md.splitlines()
    at = next(k for k, line in enumerate(lines) if line.startswith("| attention_in_allowed_hirescam |"))
    assert lines[at + 1].startswith("|   baseline: uniform map = allowed-cell fraction (allowed_cell_fraction) |")
    at = next(k for k, line in enumerate(lines) if line.startswith("| pointing_hit_rate_hirescam |"))
    assert "lesion-cell fraction (pointing_chance)" in lines[at + 1]
    at = next(k for k, line in enumerate(lines) if line.startswith("| organ_iou_hirescam_overall |"))
    assert lines[at + 1].startswith("|   baseline: uniform map = allowed-cell fraction (allowed_cell_fraction) |")
    assert lines[at + 2].startswith("|   baseline: image-blind prior map (organ_iou_prior_overall) |")
    at = next(k for k, line in enumerate(lines) if line.startswith("| pointing_hit_rate_hirescam |"))
    assert lines[at + 2].startswith("|   baseline: image-blind prior map (pointing_hit_rate_prior) |")
    assert not any(line.startswith("| organ_iou_prior") for line in lines)  # a level, never a figure of its own

    # an evaluation that logged no chance levels (an older run): its figures stand alone, nothing invented
    bare = {k: v for k, v in ea.metrics.items() if k not in {m for lv in CHANCE_LEVELS.values() for _, m in lv}}
    result = compare_runs(pa, pb, ea.per_label, eb.per_label, bare, bare, "test")
    assert not any(str(n).startswith(BASELINE_ROW) for n in result.headline["metric"])


def test_a_run_id_that_does_not_exist_is_reported_in_one_line(tmp_path, capsys):
    work = ["--workdir", str(tmp_path)]
    assert main(["evaluate", "--run-id", "NOPE", *work]) == 2
    out = capsys.readouterr()
    assert out.out.strip() == out.out.strip().splitlines()[0]  # one line, no traceback
    assert "there is no MLflow run 'NOPE'" in out.out and "Traceback" not in out.err
    for args in (["NOPE", "ALSO_NOPE"], ["0123456789abcdef0123456789abcdef", "NOPE"]):
        assert main(["compare", *args, *work]) == 2
        out = capsys.readouterr()
        assert len(out.out.strip().splitlines()) == 1 and "Traceback" not in out.err
        assert f"there is no MLflow run '{args[0]}'" in out.out
