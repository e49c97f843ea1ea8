"""Writes BENCHMARKS.md: the hand-kept summary (summary.md) and every benchmark's own section
(<name>.md, written by benchmarks/<name>.py), so each figure has one source.

    python benchmarks/results/collect.py      (`make bench` runs it after the benchmarks)
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent
OUT = RESULTS.parents[1] / "BENCHMARKS.md"
SECTIONS = [
    ("ingest", "Ingest (issue 2)"),
    ("phantom", "Phantom cohorts (issue 3)"),
    ("partition", "PARTITION (issue 4)"),
    ("sarle", "SARLE (issue 5)"),
    ("train_step", "Training step (issue 6)"),
    ("organ_iou", "OrganIoU (issue 7)"),
    ("tune_sweep", "Sweep: Table 5 on a phantom (issue 8)"),
    ("faults", "Fault injection (issue 15)"),
]
HEADER = """# Benchmarks

Every figure is printed by a script in `benchmarks/` beside a baseline measured in the same run
(`python benchmarks/<name>.py`, or `make bench` for all); each script also writes its section below
to `benchmarks/results/<name>.md`, which this file collects (`benchmarks/results/collect.py`).
Machine: the project's 2-core AMD EPYC (no GPU): compare figures within one run, not across runs.
"""


def section(name: str, title: str) -> list[str]:
    lines = (RESULTS / f"{name}.md").read_text().strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]  # the script's own title: replaced by ours
    while lines and not lines[0].strip():
        lines.pop(0)
    body = ["#" + ln if ln.startswith("#") else ln for ln in lines]  # one heading level down
    return [f"## {title}: `benchmarks/{name}.py`", "", *body, ""]


def main() -> None:
    out = [HEADER, (RESULTS / "summary.md").read_text().strip(), ""]
    for name, title in SECTIONS:
        out += section(name, title)
    OUT.write_text("\n".join(out).rstrip() + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
