"""Summary tables of an evaluation (markdown and HTML) and the files behind them.

Nothing here names a scan: tables hold labels and aggregate numbers; per-scan predictions are keyed
by `scan_key(volume_id, salt)`, a keyed hash (HMAC-SHA256 with a secret salt kept on local disk,
`scan_key_salt`), so MLflow artifacts carry no volume ids (which may derive from source file names)
and an MRN-like id cannot be recovered by hashing candidate MRNs.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import os
import secrets
from pathlib import Path

import numpy as np
import pandas as pd

from ctplatform.eval.baselines import CHANCE_LEVELS
from ctplatform.eval.scoring import METHODS, ScanScores
from ctplatform.eval.summary import Evaluation
from ctplatform.labels import GROUPS, label_names

METHOD_NAMES = {"hirescam": "HiResCAM", "gradcam": "Grad-CAM"}


#: Overrides where the scan-key salt is kept (default <workdir>/.scan_key_salt).
SALT_ENV = "CTPLATFORM_SCAN_KEY_SALT_FILE"
SALT_FILE = ".scan_key_salt"


def scan_key_salt(workdir: str | Path) -> bytes:
    """The secret salt of scan keys: read from $CTPLATFORM_SCAN_KEY_SALT_FILE or <workdir>/.scan_key_salt,
    created (32 random bytes, owner-only) on first use. Stable per workdir, so evaluations compare
    by scan_key; never logged."""
    path = Path(os.environ.get(SALT_ENV) or Path(workdir) / SALT_FILE)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another evaluation created it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    salt = path.read_bytes().strip()
    if len(salt) < 16:
        raise ValueError(f"scan-key salt {path} is shorter than 16 bytes; delete it to have a new one made")
    return salt


def scan_key(volume_id: str, salt: bytes) -> str:
    """A stable pseudonymous key of a scan: 16 hex digits of HMAC-SHA256(salt, volume id)."""
    return hmac.new(salt, volume_id.encode(), hashlib.sha256).hexdigest()[:16]


def fmt(v: object, digits: int = 3) -> str:
    """A table cell: numbers rounded, NaN as an en dash."""
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def html_table(df: pd.DataFrame, digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v, digits))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def headline_table(m: dict[str, float]) -> pd.DataFrame:
    """A run's main numbers in paper order: AUROC, OrganIoU per method and group, localization.

    Each localization figure is followed by the levels it is read against (eval/baselines.CHANCE_LEVELS:
    a uniform map, the image-blind prior map) where the evaluation logged them.
    """
    rows: list[tuple[str, str, object, str]] = [
        ("AUROC", "median over labels", m.get("auroc_median"), _ci(m, "auroc_median")),
        ("AUROC", "mean over labels", m.get("auroc_mean"), _ci(m, "auroc_mean")),
        ("AUROC", "labels with both classes", int(m.get("auroc_labels", 0)), f"{int(m.get('scans', 0))} scans"),
    ]
    for meth in METHODS:
        for g in ("overall",) + GROUPS:
            key = f"organ_iou_{meth}_{g}"
            if key in m:
                rows.append(
                    (f"OrganIoU {METHOD_NAMES[meth]}", g.replace("_", " "), m[key], f"n = {m.get(key + '_n', 0)}")
                )
                rows += _levels(m, key)
    for name, title in [
        ("attention_in_allowed", "attention in allowed cells (threshold-free OrganIoU)"),
        ("lesion_iou", "lesion IoU"),
        ("lesion_dice", "lesion Dice"),
        ("pointing_hit_rate", "pointing-game hit rate"),
        ("loc_utility", "Localization Utility (AUPRC)"),
        ("confounder_share", "attention share on confounder"),
    ]:
        for meth in METHODS:
            key = f"{name}_{meth}"
            if key in m:
                rows.append((title, METHOD_NAMES[meth], m[key], ""))
                rows += _levels(m, key)
    if "sanity_rank_corr_mean" in m:
        rows.append(
            (
                "sanity check",
                "Spearman rho, trained vs randomised HiResCAM (mean)",
                m["sanity_rank_corr_mean"],
                f"median {fmt(m.get('sanity_rank_corr_median'))}, n = {m.get('sanity_rank_corr_n')}",
            )
        )
    return pd.DataFrame(rows, columns=["metric", "detail", "value", "note"])


def _levels(m: dict[str, float], key: str) -> list[tuple[str, str, object, str]]:
    """Rows of the chance / prior levels of figure `key` that were logged, beneath it."""
    return [("", f"baseline: {what}", m[metric], metric) for what, metric in CHANCE_LEVELS.get(key, ()) if metric in m]


def _ci(m: dict, key: str) -> str:
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f"95% CI [{fmt(lo)}, {fmt(hi)}]" if lo is not None else ""


def per_label_view(ev: Evaluation) -> pd.DataFrame:
    """The per-label table as shown (labels with positives first, then by prevalence)."""
    df = ev.per_label.copy()
    df = df.sort_values(["positives", "label"], ascending=[False, True], kind="stable")
    return df


def write_summary(ev: Evaluation, out_dir: Path, title: str, context: dict[str, str]) -> dict[str, Path]:
    """summary.md, summary.html, per_label.csv and thresholds.csv in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head = headline_table(ev.metrics)
    labels = per_label_view(ev)
    ctx = "\n".join(f"- {k}: {v}" for k, v in context.items())
    notes = "\n".join(f"- {n}" for n in ev.notes)
    md = (
        f"# {title}\n\n{ctx}\n- OrganIoU thresholds chosen on: {ev.threshold_source}\n"
        + (f"\nNotes:\n{notes}\n" if notes else "")
        + "\n## Headline\n\n"
        + markdown_table(head)
        + "\n\n## Per label\n\n"
        + markdown_table(labels)
        + "\n"
    )
    ctx_html = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in context.items())
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in ev.notes)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee}"
        "td:first-child,td:nth-child(2){text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{ctx_html}"
        f"<li>OrganIoU thresholds chosen on: {html.escape(ev.threshold_source)}</li></ul>"
        + (f"<p>Notes:</p><ul>{notes_html}</ul>" if notes_html else "")
        + "<h2>Headline</h2>"
        + html_table(head)
        + "<h2>Per label</h2>"
        + html_table(labels)
        + "</body></html>"
    )
    paths = {
        "summary.md": out_dir / "summary.md",
        "summary.html": out_dir / "summary.html",
        "per_label.csv": out_dir / "per_label.csv",
        "thresholds.csv": out_dir / "thresholds.csv",
    }
    paths["summary.md"].write_text(md)
    paths["summary.html"].write_text(page)
    ev.per_label.to_csv(paths["per_label.csv"], index=False)
    pd.DataFrame({"label": label_names(), **ev.thresholds}).to_csv(
        paths["thresholds.csv"], index=False
    )
    return paths


def predictions_frame(scans: list[ScanScores], salt: bytes) -> pd.DataFrame:
    """One row per scan: scan_key (salted), split, then y_<label> and p_<label> for the 80 labels."""
    names = label_names()
    prob = np.stack([s.prob for s in scans]) if scans else np.zeros((0, len(names)))
    y = np.stack([s.y for s in scans]) if scans else np.zeros((0, len(names)))
    data = {"scan_key": [scan_key(s.volume_id, salt) for s in scans], "split": [s.split for s in scans]}
    data.update({f"y_{n}": y[:, j].astype(np.uint8) for j, n in enumerate(names)})
    data.update({f"p_{n}": prob[:, j].astype(np.float32) for j, n in enumerate(names)})
    return pd.DataFrame(data)


def predictions_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(y [N, 80], prob [N, 80]) back from predictions_frame's layout."""
    names = label_names()
    return (
        df[[f"y_{n}" for n in names]].to_numpy(dtype=np.float64),
        df[[f"p_{n}" for n in names]].to_numpy(dtype=np.float64),
    )
