"""SARLE over one report: free text -> (abnormality, location) findings -> labels.parquet rows.

    findings = label_report("There is a nodule in the right upper lobe. No pleural effusion.")
    # {("nodule", "right_lung")}
    rows = label_rows("vol1", findings)   # 80 label rows in long form (see labels.parquet)

Pure functions over one item, tested without Ray; job.py maps them over a dataset.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from ctplatform.labels import LOCATION_GROUP, all_labels
from ctplatform.partition.sarle.chunks import report_chunks
from ctplatform.partition.sarle.phrases import (
    abnormal_phrases,
    add_locations,
    classify_tokens,
    may_state_finding,
    place_plain_locations,
    plain_sentence,
)
from ctplatform.partition.sarle.scanning import (
    ABN,
    ANCHOR,
    BOUND,
    CUE,
    EXCL,
    HAS_BACKWARD,
    HAS_BOUND,
    HAS_FORWARD,
    HAS_HEADER,
    HAS_PAIR,
    HAS_SIZE,
    HAS_ANCHOR,
    HEADER,
    UNKNOWN_FLAGS,
    PAIR,
    PAIR_SHIFT,
    SIZE,
    _FIRST_HALVES,
    WORD,
    bound_level,
    could_state_finding,
    location_kinds,
    scan_locations,
    scan_phrases,
    scan_report,
)
from ctplatform.partition.sarle.term_search import (
    _NO_SIDES,
    _SIDE_WORDS,
    _measured,
    add_location,
    one_segment_findings,
    segment_findings,
    sentence_findings,
)
from ctplatform.partition.sarle.sizes import canonical_measurements
from ctplatform.partition.sarle.vocabulary import CLAUSE, NEGATION_STOP, Vocabulary, load_vocabulary

LABEL_COLUMNS: tuple[str, ...] = ("volume_id", "abnormality", "location", "value")


class EmptyReportError(ValueError):
    """A report with no text. The message names the volume id only, never report text."""


SENTENCE_CACHE_SIZE = 100_000  # entries; ~40 MB when full


class SentenceCache:
    """Findings per (section, sentence chunk), and the section after it: report sentences repeat
    ("No pleural effusion."). Keyed on the chunk with its measurements reduced to size classes.
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
    great_vessel, mediastinum. A report with no abnormal finding gives an empty set. Sentence
    chunks are cached per process and vocabulary (`cache=None` turns that off: see
    report_findings), with their measurements reduced to size classes first (labels depend on
    sizes only through the 1 cm rules).
    """
    vocab = vocab or load_vocabulary()
    if cache is _OWN_CACHE:
        cache = sentence_cache(vocab)
    if cache is None:
        return report_findings(text, vocab)
    found: set[tuple[str, str]] = set()
    section = "none"
    thresholds = vocab.size_thresholds
    for chunk in report_chunks(text)[1]:
        chunk = canonical_measurements(chunk, thresholds)
        key = (section, chunk)
        got = cache.get(key)
        if got is None:
            got = chunk_findings(chunk, section, vocab)
            cache.put(key, got)
        found.update(got[0])
        section = got[1]
    return found


def report_findings(text: str, vocab: Vocabulary) -> set[tuple[str, str]]:
    """label_report without a cache: the report is scanned once for the phrase vocabulary, and
    only chunks that name an abnormality term (or both words of a pair) are parsed, each in the
    section its last header set (see scanning.scan_report)."""
    joined, parts = report_chunks(text)
    found: set[tuple[str, str]] = set()
    _chunks_findings(joined, scan_report(joined, parts, vocab), vocab, found)
    return found


_NONE: frozenset[tuple[str, str]] = frozenset()


def _chunks_findings(text: str, chunks: list[tuple[int, int, list[tuple], int, str]], vocab: Vocabulary, found: set) -> None:
    """Add the findings of chunks of `text` to `found`: for each chunk `text[start:end]`, its
    phrase mentions `tokens`, `flags` (what its mentions hold: scanning.scan_report; or
    UNKNOWN_FLAGS) and the section it starts in, as (start, end, tokens, flags, section)."""
    for start, end, tokens, flags, section in chunks:
        if flags & HAS_FORWARD and _negated_to_the_end(text, tokens, end, vocab):
            continue
        if flags & HAS_BACKWARD and _negated_from_the_start(tokens):
            continue
        if not flags & HAS_BOUND:
            if _plain_findings(text, tokens, start, end, section, vocab, found, flags):
                continue
            plain = plain_sentence(text, tokens, start, end, section)
        elif _clean_findings(text, tokens, start, end, section, vocab, found, flags):
            continue
        else:
            plain = None  # plain_sentence gives None for a chunk with a boundary
        if plain is not None:  # one sentence of one segment, a cue deleting part of it
            sent = plain[0]
            if sent is not None and sent.may_state_finding():
                place_plain_locations(sent, text, vocab)
                found.update(sentence_findings(sent, vocab))
            continue
        sents, _ = classify_tokens(text, tokens, section, vocab, start=start, end=end)
        if not may_state_finding(sents):
            continue  # every finding term deleted (most normal sentences), so locations do not matter
        add_locations(sents, scan_locations(text, vocab, start, end))
        for sent in sents:
            found.update(sentence_findings(sent, vocab))


_FORWARD = ("forward",)  # the data of a forward cue mention
_DROPPING = frozenset({"segment", "clause"})  # cue scopes that delete a whole segment


def _plain_findings(
    text: str, tokens: list[tuple], start: int, end: int, section: str, vocab: Vocabulary, found: set, flags: int
) -> bool:
    """The commonest chunk that states a finding, in one pass and without a Sentence: one segment
    (no boundary), a header at most at its start, and no cue that deletes anything. Then every
    mention is kept and term_search reduces to `one_segment_findings`; this is plain_sentence,
    place_plain_locations and sentence_findings for such a chunk (checked against the full parse
    in the tests). Adds its findings to `found`; False (nothing done) for any other chunk.
    Pair words are read only when `flags` tell that both halves of a pair occur (else they make
    no finding), the positions of terms only when there are sizes and anchors."""
    opener = tokens[0] if tokens[0][2] == HEADER else None
    if opener is not None:
        section = opener[3][0]
    names: list[str] = []
    terms_at: list[tuple[int, str]] | None = [] if flags & HAS_SIZE and flags & HAS_ANCHOR else None
    read_pairs = (flags >> PAIR_SHIFT) & (flags >> PAIR_SHIFT + 1) & _FIRST_HALVES  # complete_pair(flags)
    pairs: dict[tuple[str, int], set[int]] = {}
    exclusions: set[str] | None = None
    anchors: list[tuple[int, int, int, str]] = []
    sizes: list[tuple[int, int, int, float, float]] = []
    words: list[tuple[int, int, str]] = []
    for tok in tokens:
        kind = tok[2]
        if kind == ABN:
            names.append(tok[3][0])
            if terms_at is not None:
                terms_at.append((tok[0], tok[3][0]))
        elif kind == PAIR:
            if not read_pairs:
                continue
            _add_pair_half(pairs, tok[3])
        elif kind == CUE:
            scope = tok[3][0]
            if scope != "keep":
                # A segment or clause cue deletes the whole (only) segment, if no later header
                # starts another sentence; a forward or backward cue: plain_sentence.
                return scope in _DROPPING and (
                    not flags & HAS_HEADER or all(t[2] != HEADER or t is opener for t in tokens)
                )
        elif kind == SIZE:
            sizes.append((tok[0], tok[1], 0, tok[3][0], tok[3][1]))
        elif kind == ANCHOR:
            anchors.append((tok[0], tok[1], 0, tok[3][0]))
        elif kind == WORD:
            words.append((tok[0], 0, tok[3][0]))
        elif kind == EXCL:
            if exclusions is None:
                exclusions = {tok[3][0]}
            else:
                exclusions.add(tok[3][0])
        elif tok is not opener:  # a boundary or a second header
            return False
    if section == "skip" or not (names or (pairs if read_pairs else flags & HAS_PAIR)):
        return True  # no finding can be stated (term_search needs a term or a pair word)
    if pairs:
        names.extend(name for (name, _), halves in pairs.items() if len(halves) == 2)
    if sizes and anchors and terms_at is not None:
        for _, measured in _measured(sizes, anchors, {0} if terms_at else set(), words, vocab, text, terms_at):
            names.extend(measured)
    if exclusions is not None:
        names = [name for name in names if name not in exclusions]
    if not names:
        return True
    if len(names) > 1:
        names = list(dict.fromkeys(names))
    lo = start if opener is None else opener[0]
    kinds = location_kinds(text, vocab, lo, end, opener)
    if kinds is None:  # it sorts before the header: it belongs to the text before it
        kinds = [item[3][0] for item in scan_locations(text, vocab, lo, end) if opener is None or not item < opener]
    sides: set[str] | frozenset[str] = _NO_SIDES
    if _SIDE_WORDS.keys().isdisjoint(kinds):
        own = kinds
    else:
        own = []
        for kind in kinds:
            side = _SIDE_WORDS.get(kind)
            if side is None:
                own.append(kind)
            else:
                sides = sides.union(side)
    one_segment_findings(names, own, sides, [], section, vocab.rules, found)
    return True


def _clean_findings(
    text: str, tokens: list[tuple], start: int, end: int, section: str, vocab: Vocabulary, found: set, flags: int
) -> bool:
    """_plain_findings for a chunk of several segments: a header at most at its start and no cue
    that deletes anything, so every mention is kept and only the segments and clauses matter (the
    same ids as phrases._classify gives; locations placed as add_locations does). Adds its findings
    to `found`; False (nothing done) for any other chunk. Pair words are read only when both
    halves of a pair occur in the chunk: else no pair can be completed, not even by joining
    segments, and a segment that holds only pair words adds nothing to its neighbour."""
    opener = tokens[0] if tokens[0][2] == HEADER else None
    if opener is not None:
        section = opener[3][0]
    seg = clause = 0
    clause_of = [0]
    bounds: list[tuple] = []
    abnormalities: dict[int, list[str]] = {}
    terms_at: list[tuple[int, str]] = []
    read_pairs = (flags >> PAIR_SHIFT) & (flags >> PAIR_SHIFT + 1) & _FIRST_HALVES  # complete_pair(flags)
    pairs: dict[int, dict[tuple[str, int], set[int]]] = {}
    exclusions: dict[int, set[str]] = {}
    anchors: list[tuple[int, int, int, str]] = []
    sizes: list[tuple[int, int, int, float, float]] = []
    words: list[tuple[int, int, str]] = []
    for tok in tokens:
        kind = tok[2]
        if kind == ABN:
            got = abnormalities.get(seg)
            if got is None:
                abnormalities[seg] = [tok[3][0]]
            else:
                got.append(tok[3][0])
            terms_at.append((tok[0], tok[3][0]))
        elif kind == PAIR:
            if not read_pairs:
                continue
            by_pair = pairs.get(seg)
            if by_pair is None:
                by_pair = pairs[seg] = {}
            _add_pair_half(by_pair, tok[3])
        elif kind == BOUND:
            if bound_level(text, tok, end, vocab) >= CLAUSE:
                clause += 1
            seg += 1
            clause_of.append(clause)
            bounds.append(tok)
        elif kind == CUE:
            if tok[3][0] != "keep":
                return False  # it deletes part of the chunk: the general parse
        elif kind == SIZE:
            sizes.append((tok[0], tok[1], seg, tok[3][0], tok[3][1]))
        elif kind == ANCHOR:
            anchors.append((tok[0], tok[1], seg, tok[3][0]))
        elif kind == WORD:
            words.append((tok[0], seg, tok[3][0]))
        elif kind == EXCL:
            exclusions.setdefault(seg, set()).add(tok[3][0])
        elif tok is not opener:  # a second header
            return False
    if section == "skip" or not (abnormalities or (pairs if read_pairs else flags & HAS_PAIR)):
        return True
    if not abnormalities and not any(len(h) == 2 for by_pair in pairs.values() for h in by_pair.values()):
        if not (sizes and anchors):
            return True  # Sentence.may_state_finding
    locs: dict[int, list[str]] = {}
    sides: dict[int, set[str]] = {}
    for item in scan_locations(text, vocab, start if opener is None else opener[0], end):
        if opener is not None and item < opener:
            continue  # it sorts before the header: it belongs to the text before it
        add_location(locs, sides, bisect_right(bounds, item), item[3][0])
    measures = (sizes, anchors, text, terms_at) if sizes and anchors else None
    segment_findings(abnormalities, pairs, measures, exclusions, words, locs, sides, clause_of, [], section, vocab, found)
    return True


def _negated_to_the_end(text: str, tokens: list[tuple], end: int, vocab: Vocabulary) -> bool:
    """Whether the chunk ending at `end` (its mentions `tokens`) states no finding because a forward
    cue deletes every mention that could make one: before the chunk's first forward cue there is no
    abnormality term, no size anchor and no pair with both its words, and after it no mention that
    ends its scope (a header, or a boundary that ends a negation zone: a clause boundary, ", and"
    before a clause starter, ", with"; other cues delete, never restore). Then the cue deletes
    everything after it and what is left names nothing. "[HEADER:] No X, Y or Z." is the commonest
    such chunk, "The lungs demonstrate no consolidation, nodules or masses." another. Checked
    against the full parse in the tests."""
    halves: dict[tuple[str, int], int] = {}  # pair -> the half seen so far
    for k, tok in enumerate(tokens):
        kind = tok[2]
        if kind == CUE:
            if tok[3] == _FORWARD:
                for after in tokens[k + 1 :]:
                    kind = after[2]
                    if kind == HEADER or (
                        kind == BOUND
                        and (
                            after[3][0] >= NEGATION_STOP
                            or (
                                (after[3][1] == "and" or after[3][1] in vocab.negation_stop_after_comma)
                                and bound_level(text, after, end, vocab) >= NEGATION_STOP
                            )
                        )
                    ):
                        return False
                return True
        elif kind == ABN or kind == ANCHOR:
            return False
        elif kind == PAIR and _completes_pair(halves, tok[3]):
            return False
    return False


def _negated_from_the_start(tokens: list[tuple]) -> bool:
    """Whether the chunk with the mentions `tokens` states no finding because its last backward
    cue deletes every mention that could make one ("The chest tube has been removed."): after the
    cue there is no abnormality term, size anchor, pair with both its words or header, and before
    it no header (but at the start) and no boundary that could end a clause (a clause boundary, or
    "and", which can end one after a comma). The cue deletes everything before it in its clause, so
    what is left names nothing. Checked against the full parse in the tests."""
    halves: dict[tuple[str, int], int] = {}  # pair -> the half seen so far
    for k in range(len(tokens) - 1, -1, -1):
        tok = tokens[k]
        kind = tok[2]
        if kind == CUE:
            if tok[3] == _BACKWARD:
                for before in tokens[1:k]:
                    kind = before[2]
                    if kind == HEADER or (kind == BOUND and (before[3][0] >= CLAUSE or before[3][1] == "and")):
                        return False
                return True
        elif kind == ABN or kind == ANCHOR or kind == HEADER:
            return False
        elif kind == PAIR and _completes_pair(halves, tok[3]):
            return False
    return False


_BACKWARD = ("backward",)  # the data of a backward cue mention


def _add_pair_half(halves_by_pair: dict[tuple[str, int], set[int]], data: tuple) -> None:
    """Records the pair mention `data` (name, n, half): which halves of each pair a segment holds."""
    name, n, half = data
    halves = halves_by_pair.get((name, n))
    if halves is None:
        halves_by_pair[(name, n)] = {half}
    else:
        halves.add(half)


def _completes_pair(halves: dict[tuple[str, int], int], data: tuple) -> bool:
    """Whether the pair mention `data` (name, n, half) brings a pair's other half to `halves`."""
    name, n, half = data
    return halves.setdefault((name, n), half) != half


def chunk_findings(chunk: str, section: str, vocab: Vocabulary) -> tuple[frozenset[tuple[str, str]], str]:
    """Findings of one sentence chunk starting in `section`, and the section after it."""
    padded = f" {chunk} "
    tokens = scan_phrases(padded, vocab)
    after = next((tok[3][0] for tok in reversed(tokens) if tok[2] == HEADER), section)
    if not tokens or not could_state_finding(tokens):
        return _NONE, after
    found: set[tuple[str, str]] = set()
    _chunks_findings(padded, [(0, len(padded), tokens, UNKNOWN_FLAGS, section)], vocab, found)
    return (frozenset(found) if found else _NONE), after


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
