"""SARLE over one report: free text -> (abnormality, location) findings -> labels.parquet rows.

    findings = label_report("There is a nodule in the right upper lobe. No pleural effusion.")
    # {("nodule", "right_lung")}
    rows = label_rows("vol1", findings)   # 80 label rows in long form (see labels.parquet)

Pure functions over one item, tested without Ray; job.py maps them over a dataset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ctplatform.labels import LOCATION_GROUP, all_labels
from ctplatform.partition.sarle.phrases import abnormal_phrases, chunks, classify_chunk, normalize
from ctplatform.partition.sarle.term_search import sentence_findings
from ctplatform.partition.sarle.sizes import canonical_measurements
from ctplatform.partition.sarle.vocabulary import Vocabulary, load_vocabulary

LABEL_COLUMNS: tuple[str, ...] = ("volume_id", "abnormality", "location", "value")


class EmptyReportError(ValueError):
    """A report with no text. The message names the volume id only, never report text."""


SENTENCE_CACHE_SIZE = 100_000  # entries; ~40 MB when full


class SentenceCache:
    """Findings per (section, sentence): report sentences repeat a lot ("No pleural effusion.").

    Bounded: emptied when full. `size=0` disables it.
    """

    def __init__(self, size: int = SENTENCE_CACHE_SIZE) -> None:
        self.size = size
        self.data: dict[tuple[str, str], tuple[frozenset[tuple[str, str]], str]] = {}
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str]) -> tuple[frozenset[tuple[str, str]], str] | None:
        got = self.data.get(key)
        if got is None:
            self.misses += 1
        else:
            self.hits += 1
        return got

    def put(self, key: tuple[str, str], value: tuple[frozenset[tuple[str, str]], str]) -> None:
        if self.size <= 0:
            return
        if len(self.data) >= self.size:
            self.data.clear()
        self.data[key] = value


_OWN_CACHE = SentenceCache(0)  # placeholder default: "the vocabulary's own cache"


def sentence_cache(vocab: Vocabulary) -> SentenceCache:
    """The vocabulary's own sentence cache (one per compiled vocabulary, so never shared across
    different vocabularies)."""
    got = vocab.__dict__.get("_sentence_cache")
    if got is None:
        got = vocab.__dict__["_sentence_cache"] = SentenceCache()
    return got


def label_report(
    text: str, vocab: Vocabulary | None = None, cache: SentenceCache | None = _OWN_CACHE
) -> set[tuple[str, str]]:
    """The (abnormality, location) pairs a report states as present.

    Locations are labels.parquet names: right_lung, left_lung, lung (side not stated), heart,
    great_vessel, mediastinum. A report with no abnormal finding gives an empty set. Sentences are
    cached per process and vocabulary (`cache=None` turns that off), with their measurements reduced to size
    classes first (labels depend on sizes only through the 1 cm rules); a sentence with no
    abnormality term and no section header is skipped without being parsed.
    """
    vocab = vocab or load_vocabulary()
    if cache is _OWN_CACHE:
        cache = sentence_cache(vocab)
    found: set[tuple[str, str]] = set()
    section = "none"
    relevant = vocab.relevant_regex.search
    thresholds = vocab.size_thresholds
    for chunk in chunks(normalize(text)):
        chunk = canonical_measurements(chunk, thresholds)
        key = (section, chunk)
        got = cache.get(key) if cache is not None else None
        if got is None:
            got = chunk_findings(chunk, section, vocab) if relevant(f" {chunk} ") else (frozenset(), section)
            if cache is not None:
                cache.put(key, got)
        found.update(got[0])
        section = got[1]
    return found


_NONE: frozenset[tuple[str, str]] = frozenset()


def chunk_findings(chunk: str, section: str, vocab: Vocabulary) -> tuple[frozenset[tuple[str, str]], str]:
    """Findings of one sentence chunk starting in `section`, and the section after it."""
    padded = f" {chunk} "
    start = vocab.negated_start.match(padded)
    if start is not None and vocab.scope_breakers.search(padded, start.start("cue")) is None:
        # "[HEADER:] No X, Y or Z." - the forward cue deletes everything after it and nothing can
        # stop or override it (breakers are searched from the cue itself, so "no change" and
        # "no longer seen" do not count as "no"): no finding. Only the header (if any) matters.
        header = start.group("header")
        if header:
            section = next((m[1] for m in vocab.meanings(header[1:]) if m[0] == "header"), section)
        return _NONE, section
    sents, after = classify_chunk(chunk, section, vocab)
    findings: set[tuple[str, str]] = set()
    for sent in sents:
        findings.update(sentence_findings(sent, vocab))
    return frozenset(findings), after


def label_rows(volume_id: str, findings: Iterable[tuple[str, str]]) -> list[tuple[str, str, str, int]]:
    """Long-form rows for one volume: for each of the 80 labels one row (value 0, location = its
    group) when absent, else one row per location found (value 1)."""
    by_label: dict[tuple[str, str], set[str]] = {}
    for abnormality, location in findings:
        by_label.setdefault((LOCATION_GROUP[location], abnormality), set()).add(location)
    rows = []
    for lab in all_labels():
        locations = by_label.pop((lab.group, lab.abnormality), None)
        if locations:
            rows.extend((volume_id, lab.abnormality, loc, 1) for loc in sorted(locations))
        else:
            rows.append((volume_id, lab.abnormality, lab.group, 0))
    if by_label:
        raise ValueError(f"findings {sorted(by_label)} of volume {volume_id} are not among the 80 labels")
    return rows


def label_volume(volume_id: str, report: object, vocab: Vocabulary | None = None) -> list[tuple[str, str, str, int]]:
    """Label one volume's report; raises EmptyReportError (naming the volume only) when it is empty."""
    if not isinstance(report, str) or not report.strip():
        raise EmptyReportError(f"volume {volume_id}: the report is empty or missing; give the report text for it")
    return label_rows(volume_id, label_report(report, vocab))


@dataclass(frozen=True)
class Explanation:
    """How SARLE read a text: its abnormal phrases (step 1) and findings (steps 2-3)."""

    abnormal_phrases: list[str]
    findings: list[tuple[str, str]]


def explain(text: str, vocab: Vocabulary | None = None) -> Explanation:
    """Step 1 and steps 2-3 for one text, to check or extend the vocabularies."""
    vocab = vocab or load_vocabulary()
    return Explanation(abnormal_phrases(text, vocab), sorted(label_report(text, vocab)))
