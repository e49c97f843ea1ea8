"""SARLE against a general clinical NLP baseline: medspaCy's ConText negation with the same target
vocabulary. Accuracy (F1) on the written test sentences, speed in reports per second per core on
generated ~1,500-character reports.

The baseline gets everything SARLE's term search has: the abnormality terms, pair words, exclusions,
size rules, the location vocabulary and the same placement rules; what differs is step 1. ConText
marks each matched term negated / hypothetical / uncertain with its default rules (pyRuSH sentences,
modifier scopes); SARLE deletes normal and negated phrases by clause and segment and places each
finding by its own phrase. Uncertain and historical findings count as present in both (the labels'
convention), negated and hypothetical ones as absent. The baseline places findings per sentence.

Speed is CPU time of this one process (one core), so a busy machine slows it less than wall time.
"SARLE, cold" uses no cache: every sentence that could state a finding is parsed (this is the
figure the 5,000/s target is about). The default path also keeps a per-process cache of those
sentences' findings (their measurements reduced to size classes, which cannot change a label): a Ray
worker labels thousands of reports, and report sentences repeat. It is measured over a corpus of
generated reports from an empty cache (first half, warming up) and after (second half). The
generated reports reuse the test sentences with their numbers redrawn, in the usual section layout;
real corpora repeat sentences too, but how much is not known here, so read the cached figures as an
upper range. The same run also times the labeller as it was before its speed work (git revision
ffc5164, rebuilt from git into a temporary folder) when the repository's history is at hand.

    python benchmarks/sarle.py [--reports 4000] [--baseline-reports 40]

medspaCy is optional (not a dependency of ctplatform): see docs/sarle.md for installing it.
"""

from __future__ import annotations

import argparse
import importlib
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctplatform.partition.sarle.evaluation import Findings, evaluate, read_gold
from ctplatform.partition.sarle.labeler import SentenceCache, label_report
from ctplatform.partition.sarle.term_search import _locate, _place_by_group
from ctplatform.partition.sarle.trie import tokens
from ctplatform.partition.sarle.sizes import read_size
from ctplatform.partition.sarle.vocabulary import Vocabulary, load_vocabulary
from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "sarle.md"
SENTENCES = ROOT / "tests" / "partition" / "sarle" / "sentences.tsv"
HELDOUT = ROOT / "tests" / "partition" / "sarle" / "heldout.tsv"
# Checked in a fresh Python 3.11 venv: medspacy.load() runs. medspaCy 1.3.1 pins spacy<3.8 (which
# would pull numpy<2), hence --no-deps with its runtime dependencies listed.
INSTALL = (
    "pip install spacy==3.8.18 && pip install --no-deps medspacy==1.3.1 PyRuSH==1.0.13 pysbd==0.3.4 "
    "medspacy_quickumls==3.2 medspacy_unqlite==0.9.8 PyFastNER==1.0.10 quicksectx==0.4.1 pysimstring==1.3.0 "
    "loguru==0.7.3 six==1.17.0 nltk==3.10.4 Unidecode==1.4.0 regex==2026.11.15 joblib==1.6.0 "
    "jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0"
)


# ---------------------------------------------------------------------------------- reports
_TECHNIQUE = [
    "Axial images of the chest were obtained without intravenous contrast.",
    "Axial CT images of the chest were obtained following the administration of intravenous contrast.",
    "Coronal and sagittal reformatted images were reviewed.",
]
_SECTIONS = ["LUNGS AND AIRWAYS", "PLEURA", "HEART AND PERICARDIUM", "MEDIASTINUM AND HILA", "VESSELS", "UPPER ABDOMEN", "BONES"]


def make_reports(n: int, seed: int = 0, length: int = 1500) -> list[str]:
    """Reports of about `length` characters in the usual layout, findings drawn from the test
    sentences (about one sentence in three abnormal), numbers redrawn so sentences vary."""
    rng = random.Random(seed)
    gold = read_gold(SENTENCES)
    normal = [s for s, f in gold if not f]
    abnormal = [s for s, f in gold if f]

    def sentence(pool: list[str]) -> str:
        s = re.sub(r"\b\d+\b", lambda _: str(rng.randint(2, 25)), rng.choice(pool))
        return s if s.endswith(".") else s + "."

    reports = []
    for _ in range(n):
        parts = [
            "EXAMINATION: CT chest.",
            "TECHNIQUE: " + " ".join(rng.sample(_TECHNIQUE, 2)),
            "COMPARISON: " + rng.choice(["None.", "Prior CT of the chest."]),
            "FINDINGS:",
        ]
        size = sum(len(p) + 1 for p in parts)
        impression: list[str] = []
        while size < length - 200:
            section = rng.choice(_SECTIONS)
            body = [sentence(abnormal if rng.random() < 0.35 else normal) for _ in range(rng.randint(1, 3))]
            impression += [b for b in body if rng.random() < 0.3]
            text = f"{section}: " + " ".join(body)
            parts.append(text)
            size += len(text) + 1
        items = impression[:3] or ["No acute cardiopulmonary abnormality."]
        parts.append("IMPRESSION: " + " ".join(f"{i}. {s}" for i, s in enumerate(items, 1)))
        reports.append("\n".join(parts))
    return reports


# ---------------------------------------------------------------------------------- baseline
def _term_regex(term: str) -> str:
    words = []
    for w in term.split(" "):
        words.append(re.escape(w[:-1]) + "[a-z]*" if w.endswith("*") else re.escape(w))
    return r"\b" + r"[\s\-]+".join(words) + r"\b"


class ContextBaseline:
    """medspaCy target matcher + ConText with SARLE's vocabulary (see module docstring)."""

    def __init__(self, vocab: Vocabulary) -> None:
        import medspacy
        from loguru import logger
        from medspacy.ner import TargetRule

        logger.remove()  # PyRuSH logs every token at DEBUG level to stderr
        self.vocab = vocab
        self.nlp = medspacy.load()
        rules = []

        def add(term: str, category: str) -> None:
            plain = " " not in term and "*" not in term
            rules.append(TargetRule(term, category, pattern=None if plain else _term_regex(term)))

        for name, terms in vocab.abnormality_terms.items():
            for t in terms:
                add(t, f"ABN|{name}")
        for name, pairs in vocab.pair_terms.items():
            for k, (first, second) in enumerate(pairs):
                for side, words in enumerate((first, second)):
                    for w in words:
                        add(w, f"PAIR|{name}|{k}|{side}")
        for name, rule in vocab.rules.items():
            if rule.size is not None:
                for a in rule.size.anchors:
                    add(a, f"ANCHOR|{name}")
        self.nlp.get_pipe("medspacy_target_matcher").add(rules)

    def __call__(self, text: str) -> Findings:
        doc = self.nlp(text.lower())
        by_sentence: dict[int, list] = {}
        for ent in doc.ents:
            by_sentence.setdefault(ent.sent.start, []).append(ent)
        out: set[tuple[str, str]] = set()
        for ents in by_sentence.values():
            out |= self._sentence(ents)
        return out

    def _sentence(self, ents: list) -> set[tuple[str, str]]:
        vocab = self.vocab
        sent_text = ents[0].sent.text
        words = tokens(sent_text)
        joined = " " + " ".join(words) + " "
        kinds = [vocab.location_kind(m.group()[1:]) for m in vocab.location_regex.finditer(joined)]
        side_of = {"side_right": "right_lung", "side_left": "left_lung", "side_both": "both"}
        sides: set[str] = set()
        for k in kinds:
            if k in side_of:
                sides |= {"right_lung", "left_lung"} if side_of[k] == "both" else {side_of[k]}
        places = [k for k in kinds if k not in side_of]
        sizes = [read_size(words, i) for i, w in enumerate(words) if w[:1].isdigit()]
        biggest = [s for s in sizes if s is not None]
        names: set[str] = set()
        halves: dict[tuple[str, str], set[str]] = {}
        for ent in ents:
            if ent._.is_negated or ent._.is_hypothetical or ent._.is_family:
                continue
            kind, *rest = ent.label_.split("|")
            if kind == "ABN":
                names.add(rest[0])
            elif kind == "PAIR":
                halves.setdefault((rest[0], rest[1]), set()).add(rest[2])
            elif kind == "ANCHOR":
                rule = vocab.rules[rest[0]].size
                value = [s[2] if rule.axis == "short" else s[1] for s in biggest]
                if value and max(value) > rule.greater_than_cm:
                    names.add(rest[0])
        names |= {name for (name, _), got in halves.items() if len(got) == 2}
        out = set()
        for name in names:
            rule = vocab.rules[name]
            got = _locate(places, sides, rule.groups)
            if not got and "outside_chest" not in places:
                group = next(iter(rule.groups)) if rule.defined else rule.default
                got = _place_by_group(group, sides) if group else []
            for loc in got:
                out.add((name, loc))
                for implied in rule.implies:
                    out.add((implied, loc))
        return {(a, loc) for a, loc in out if _fits(vocab, a, loc)}


def _fits(vocab: Vocabulary, abnormality: str, location: str) -> bool:
    from ctplatform.labels import LOCATION_GROUP

    return LOCATION_GROUP[location] in vocab.rules[abnormality].groups


# ---------------------------------------------------------------------------------- measuring
def per_second(fn, reports: list[str]) -> float:
    t0 = time.process_time()
    for r in reports:
        fn(r)
    return len(reports) / max(time.process_time() - t0, 1e-9)


PREVIOUS = "ffc5164"  # the labeller before its speed work


def previous_labeller(revision: str = PREVIOUS):
    """label_report of an earlier git revision (its code and vocabularies), loaded from a
    temporary folder under another package name; None without git or that revision."""
    folder = Path(tempfile.mkdtemp(prefix="sarle_prev_"))
    package = folder / "sarle_prev"
    package.mkdir()
    try:
        for sub, target in (("platform/partition/sarle", package), ("platform/data/sarle", package / "data")):
            target.mkdir(exist_ok=True)
            names = subprocess.run(
                ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{revision}:{sub}"],
                check=True, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            for name in names:
                text = subprocess.run(
                    ["git", "-C", str(ROOT), "show", f"{revision}:{sub}/{name}"], check=True, capture_output=True, text=True
                ).stdout
                (target / name).write_text(text.replace("ctplatform.partition.sarle", "sarle_prev"))
    except (OSError, subprocess.CalledProcessError):
        return None
    vocab_py = package / "vocabulary.py"
    vocab_py.write_text(
        vocab_py.read_text().replace(
            'Path(__file__).resolve().parents[2] / "data" / "sarle"', 'Path(__file__).resolve().parent / "data"'
        )
    )
    sys.path.insert(0, str(folder))
    labeler = importlib.import_module("sarle_prev.labeler")
    old_vocab = importlib.import_module("sarle_prev.vocabulary").load_vocabulary()
    return lambda text: labeler.label_report(text, old_vocab, cache=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=4000)
    ap.add_argument("--baseline-reports", type=int, default=40)
    args = ap.parse_args()
    described = machine()  # before the run: the load it reports is the machine's

    vocab = load_vocabulary()
    dev, held = read_gold(SENTENCES), read_gold(HELDOUT)
    try:
        baseline = ContextBaseline(vocab)
    except ImportError:
        baseline = None
        print(f"medspaCy is not installed: the baseline is skipped. Install it with:\n  {INSTALL}\n")

    def sarle(text: str) -> Findings:
        return label_report(text, vocab, cache=None)

    acc_rows = []
    for name, fn in (("SARLE (this platform)", sarle), ("medspaCy ConText, same vocabulary", baseline)):
        if fn is None:
            acc_rows.append((name, None, None))
            continue
        acc_rows.append((name, evaluate(fn, dev), evaluate(fn, held)))

    reports = make_reports(args.reports)
    mean_len = sum(map(len, reports)) / len(reports)
    previous = previous_labeller()
    for r in reports[:20]:
        sarle(r)  # warm the regex and word caches
        if previous is not None:
            previous(r)
    cold = before = 0.0
    for _ in range(3):  # best of three, the two interleaved: a busy machine slows both alike
        cold = max(cold, per_second(sarle, reports[: min(1000, len(reports))]))
        if previous is not None:
            before = max(before, per_second(previous, reports[: min(1000, len(reports))]))
    cache = SentenceCache()
    half = len(reports) // 2
    warming = per_second(lambda r: label_report(r, vocab, cache=cache), reports[:half])
    warm_hits = cache.hits / max(cache.hits + cache.misses, 1)
    cache.hits = cache.misses = 0
    steady = per_second(lambda r: label_report(r, vocab, cache=cache), reports[half:])
    steady_hits = cache.hits / max(cache.hits + cache.misses, 1)
    base_speed = None
    if baseline is not None:
        few = reports[: args.baseline_reports]
        baseline(few[0])
        base_speed = per_second(baseline, few)

    lines = [
        "# SARLE vs medspaCy ConText (same target vocabulary)",
        "",
        f"Machine: {described}. Speed is CPU time of one process "
        "(a busy machine still slows it: compare figures of the same run).",
        "",
        f"## Accuracy (micro F1; written sentences n={len(dev)}, held-out sentences n={len(held)})",
        "",
        "| labeller | abnormality F1 (written) | location F1 (written) | abnormality F1 (held-out) | location F1 (held-out) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, d, h in acc_rows:
        if d is None:
            lines.append(f"| {name} | not installed | | | |")
        else:
            lines.append(
                f"| {name} | {d['abnormality'].f1:.3f} | {d['location'].f1:.3f} | "
                f"{h['abnormality'].f1:.3f} | {h['location'].f1:.3f} |"
            )
    if acc_rows[1][1] is not None:
        d0, d1 = acc_rows[0][1], acc_rows[1][1]
        lines.append(
            f"| ratio (SARLE / baseline) | {d0['abnormality'].f1 / d1['abnormality'].f1:.2f}x | "
            f"{d0['location'].f1 / d1['location'].f1:.2f}x | "
            f"{acc_rows[0][2]['abnormality'].f1 / acc_rows[1][2]['abnormality'].f1:.2f}x | "
            f"{acc_rows[0][2]['location'].f1 / acc_rows[1][2]['location'].f1:.2f}x |"
        )
    lines += [
        "",
        f"## Speed ({len(reports)} generated reports, mean {mean_len:.0f} characters; baseline on the first {args.baseline_reports})",
        "",
        "| labeller | reports / s / core | vs baseline |",
        "|---|---:|---:|",
    ]
    ref = base_speed or float("nan")
    lines.append(f"| SARLE, cold (no cache: every sentence that could state a finding parsed) | {cold:,.0f} | {cold / ref:,.0f}x |")
    if before:
        lines.append(
            f"| SARLE before the speed work (revision {PREVIOUS}), cold | {before:,.0f} | {before / ref:,.0f}x |"
        )
    lines.append(
        f"| SARLE, sentence cache, first {half} reports (hit rate {warm_hits:.0%}) | {warming:,.0f} | {warming / ref:,.0f}x |"
    )
    lines.append(
        f"| SARLE, sentence cache, next {len(reports) - half} reports (hit rate {steady_hits:.0%}) | {steady:,.0f} | {steady / ref:,.0f}x |"
    )
    lines.append(
        f"| medspaCy ConText (baseline) | {base_speed:,.1f} | 1x |" if base_speed else "| medspaCy ConText (baseline) | not installed | |"
    )
    lines += ["", "Target: at least 5,000 reports per second per core, cold."]
    if before:
        lines.append(f"Cold speed now / before the speed work: {cold / before:.2f}x (same run, interleaved).")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
