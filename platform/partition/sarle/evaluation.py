"""Scoring a labeller against sentences with known findings (tests and benchmarks/sarle.py).

A gold file is tab-separated: `sentence <TAB> abnormality@location ...` (or `-` for none), with
`#` comment lines. Two micro-averaged F1 scores:
- abnormality labels: the 80 labels, i.e. (abnormality, organ group) per sentence;
- locations: (abnormality, location) per sentence, where right_lung, left_lung and lung differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctplatform.labels import LOCATION_GROUP, LOCATIONS, label_index

Findings = set[tuple[str, str]]


@dataclass(frozen=True)
class Scores:
    """Micro precision/recall/F1 for one granularity."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def read_gold(path: str | Path) -> list[tuple[str, Findings]]:
    """Sentences and their findings from a gold file (see module docstring)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'sentence<TAB>findings'")
        sentence, raw = parts
        found: Findings = set()
        if raw.strip() != "-":
            for item in raw.split():
                abnormality, _, location = item.partition("@")
                if location not in LOCATIONS:
                    raise ValueError(f"{path}:{n}: unknown location in {item!r}")
                label_index(abnormality, location)  # raises KeyError for a pair that is no label
                found.add((abnormality, location))
        out.append((sentence, found))
    return out


def _score(pred: Sequence[set], gold: Sequence[set]) -> Scores:
    tp = sum(len(p & g) for p, g in zip(pred, gold))
    fp = sum(len(p - g) for p, g in zip(pred, gold))
    fn = sum(len(g - p) for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, tp, fp, fn)


def score(pred: Sequence[Findings], gold: Sequence[Findings]) -> dict[str, Scores]:
    """{"abnormality": ..., "location": ...} scores of predicted against gold findings."""
    if len(pred) != len(gold):
        raise ValueError("pred and gold must have one set of findings per sentence")

    def labels(fs: Findings) -> set[tuple[str, str]]:
        return {(a, LOCATION_GROUP[loc]) for a, loc in fs}

    return {
        "abnormality": _score([labels(p) for p in pred], [labels(g) for g in gold]),
        "location": _score(list(pred), list(gold)),
    }


def evaluate(labeller: Callable[[str], Findings], gold: list[tuple[str, Findings]]) -> dict[str, Scores]:
    """Run `labeller` over the gold sentences and score it."""
    return score([labeller(s) for s, _ in gold], [g for _, g in gold])


def errors(labeller: Callable[[str], Findings], gold: list[tuple[str, Findings]]) -> list[tuple[str, Findings, Findings]]:
    """(sentence, missed, extra) for every sentence the labeller gets wrong."""
    out = []
    for sentence, g in gold:
        p = labeller(sentence)
        if p != g:
            out.append((sentence, g - p, p - g))
    return out
