"""SARLE step 1: a report's sentences, with their normal and negated parts deleted.

Chunks (chunks.py) and their mentions (scanning.py) make sentences (a header starts one). Each is cut
into clauses (at ";", "but", "however", "except" ...) and clauses into segments (at ",", ":", "and",
"with" ...). Every cue of phrases.yaml deletes a part of its sentence by scope (forward to the end of
its clause, backward to its start, its whole clause, or its segment); the kept mentions are what
SARLE calls the abnormal phrases. Deletion works on mention tokens, so one pass per report suffices
and the result does not depend on the order of rules. Positions are character offsets in the chunk.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from ctplatform.partition.sarle.chunks import chunks, normalize
from ctplatform.partition.sarle.scanning import ABN, ANCHOR, BOUND, CUE, EXCL, HEADER, LOC, PAIR, SIZE, WORD
from ctplatform.partition.sarle.scanning import bound_level, scan, scan_locations
from ctplatform.partition.sarle.vocabulary import CLAUSE, NEGATION_STOP, SEGMENT, Vocabulary

_FINDING_KINDS = frozenset({ABN, PAIR, ANCHOR})


class Sentence:
    """One sentence after step 1: what its cues left, grouped by kind and segment.

    Positions are character offsets in `text` (tokens joined by single spaces, with a space before
    and after); the sentence spans `text[start:end]` and segment s lies in clause
    `segment_clause[s]`. The mention tables hold only what survived deletion (exclusions are kept
    even inside deleted text):
    - abnormalities: segment -> abnormality names of its terms, in order; terms_at: (start, name);
    - pairs: segment -> (name, pair number) -> the pair's halves present;
    - exclusions: segment -> excluded names;
    - anchors (start, end, segment, name), sizes (start, end, segment, largest cm, smallest cm),
      words (start, segment, tag: prior, current, short, interp);
    - locations: segment -> location kinds and side words; deleted_locations: kinds in deleted text.
    The other fields record where segments start and what each cue deletes, so that location
    mentions can be placed after the fact (`add_locations`).
    """

    __slots__ = (
        "text", "start", "end", "section", "segment_clause", "abnormalities", "terms_at", "pairs",
        "exclusions", "anchors", "sizes", "words", "locations", "deleted_locations", "bounds",
        "segment_zone", "first_forward", "last_backward", "dropped_segments", "dropped_clauses",
        "opener", "closer", "deleted_spans",
    )  # fmt: skip

    def __init__(self, text: str, start: int, end: int, section: str, segment_clause: list[int] | None = None) -> None:
        self.text, self.start, self.end, self.section = text, start, end, section
        self.segment_clause: list[int] = [0] if segment_clause is None else segment_clause
        self.abnormalities: dict[int, list[str]] = {}
        self.terms_at: list[tuple[int, str]] = []
        self.pairs: dict[int, dict[tuple[str, int], set[int]]] = {}
        self.exclusions: dict[int, set[str]] = {}
        self.anchors: list[tuple[int, int, int, str]] = []
        self.sizes: list[tuple[int, int, int, float, float]] = []
        self.words: list[tuple[int, int, str]] = []
        self.locations: dict[int, list[str]] = {}
        self.deleted_locations: list[str] = []
        self.bounds: list[tuple] = []  # the boundary mentions: segment s starts after bounds[s - 1]
        self.segment_zone: list[int] = [0]  # negation zone of each segment
        self.first_forward: dict[int, tuple] = {}  # zone -> its first forward cue
        self.last_backward: dict[int, tuple] = {}  # clause -> its last backward cue
        self.dropped_segments: set[int] = set()  # deleted whole by a segment cue
        self.dropped_clauses: set[int] = set()  # deleted whole by a clause cue
        self.opener: tuple | None = None  # the header mention before the sentence, if any
        self.closer: tuple | None = None  # the header mention after it, if any
        self.deleted_spans: list[tuple[int, int]] = []  # filled by explain only

    @property
    def n_segments(self) -> int:
        return len(self.segment_clause)

    def is_deleted(self, item: tuple, seg: int) -> bool:
        """Whether a cue deletes the mention `item` of segment `seg` (mentions order as tuples)."""
        f = self.first_forward.get(self.segment_zone[seg])
        if f is not None and item > f:
            return True
        clause = self.segment_clause[seg]
        b = self.last_backward.get(clause)
        return (b is not None and item < b) or seg in self.dropped_segments or clause in self.dropped_clauses

    def may_state_finding(self) -> bool:
        """False when term_search cannot find anything here: no abnormality term, no co-occurring
        pair with both words in one segment, and no pair word with a measurement and its anchor."""
        if self.abnormalities:
            return True
        for got in self.pairs.values():
            for halves in got.values():
                if len(halves) == 2:
                    return True
        return bool(self.pairs and self.sizes and self.anchors)


def classify_chunk(chunk: str, section: str, vocab: Vocabulary, explain: bool = False) -> tuple[list[Sentence], str]:
    """Step 1 over one sentence chunk that starts in `section`: its sentences (a header inside it
    starts a new one) and the section after it. Sentences without any abnormality term are left
    out unless `explain` is set, as are sentences of `skip` sections (indication, technique ...)."""
    text = f" {chunk} "
    return classify_tokens(text, scan(text, vocab), section, vocab, explain)


def classify_tokens(
    text: str,
    tokens: list[tuple],
    section: str,
    vocab: Vocabulary,
    explain: bool = False,
    start: int = 0,
    end: int | None = None,
) -> tuple[list[Sentence], str]:
    """classify_chunk over the mentions `scan` found in a padded chunk: `text[start:end]` (by
    default all of `text`; a report-wide scan passes each chunk's span)."""
    end = len(text) if end is None else end
    out: list[Sentence] = []
    lo = 0
    has_finding = False
    opener: tuple | None = None
    for i, tok in enumerate(tokens):
        kind = tok[2]
        if kind == HEADER:
            if (has_finding or explain) and section != "skip" and i > lo:
                sent = _classify(text, start, tok[0], end, section, tokens[lo:i], vocab, explain)
                sent.opener, sent.closer = opener, tok
                out.append(sent)
            section = tok[3][0]
            start, lo, has_finding, opener = tok[1], i + 1, False, tok
        elif kind in _FINDING_KINDS:
            has_finding = True
    if (has_finding or explain) and section != "skip" and len(tokens) > lo:
        sent = _classify(text, start, end, end, section, tokens[lo:] if lo else tokens, vocab, explain)
        sent.opener = opener
        out.append(sent)
    return out, section


def may_state_finding(sents: list[Sentence]) -> bool:
    """False when no sentence can state a finding (see Sentence.may_state_finding)."""
    for sent in sents:
        if sent.may_state_finding():
            return True
    return False


def sentences(words: list[str], vocab: Vocabulary, explain: bool = False) -> list[Sentence]:
    """Step 1 over a tokenised report: its sentences, classified (see classify_chunk)."""
    out: list[Sentence] = []
    section = "none"
    for chunk in chunks(words):
        got, section = classify_chunk(chunk, section, vocab, explain)
        out.extend(got)
    return out


def _classify(
    text: str, start: int, end: int, limit: int, section: str, items: list[tuple], vocab: Vocabulary, explain: bool
) -> Sentence:
    """Assign segment/clause ids, apply the cues' scopes, file what is not deleted.

    One pass assigns ids and records each scope's reach (the first forward cue of each negation
    zone, the last backward cue of each clause, the segments and clauses deleted whole); a second
    pass tests each mention against it and files it in the sentence's tables. `items` are in order
    (as tuples, which sort by position); `limit` is the end of the chunk.
    """
    sent = Sentence(text, start, end, section)
    seg = zone = clause = 0
    seg_clause, seg_zone, bounds = sent.segment_clause, sent.segment_zone, sent.bounds
    first_forward, last_backward = sent.first_forward, sent.last_backward
    mentions: list[tuple] = []  # (item, seg) of everything but bounds and cues
    cues: list[tuple[int, str, int, int, int]] = []  # (index, scope, seg, zone, clause), for explain
    levels: list[tuple[int, int, int]] = []  # (start, end, level) of each bound, for explain
    for item in items:
        kind = item[2]
        if kind == BOUND:
            level = bound_level(text, item, limit, vocab)
            seg += 1
            if level >= NEGATION_STOP:
                zone += 1
            if level >= CLAUSE:
                clause += 1
            seg_clause.append(clause)
            seg_zone.append(zone)
            bounds.append(item)
            if explain:
                levels.append((item[0], item[1], level))
        elif kind == CUE:
            scope = item[3][0]
            if scope == "forward":
                if zone not in first_forward:
                    first_forward[zone] = item
            elif scope == "backward":
                last_backward[clause] = item
            elif scope == "segment":
                sent.dropped_segments.add(seg)
            elif scope == "clause":
                sent.dropped_clauses.add(clause)
            else:  # keep
                continue
            if explain:
                cues.append((items.index(item), scope, seg, zone, clause))
        else:
            mentions.append((item, seg))
    deleting = first_forward or last_backward or sent.dropped_segments or sent.dropped_clauses
    abnormalities, locations = sent.abnormalities, sent.locations
    for item, sg in mentions:
        s, e, kind, data = item
        if deleting and kind != EXCL and sent.is_deleted(item, sg):  # exclusions hold even when deleted
            if kind == LOC:
                sent.deleted_locations.append(data[0])
        elif kind == ABN:
            got = abnormalities.get(sg)
            if got is None:
                abnormalities[sg] = [data[0]]
            else:
                got.append(data[0])
            sent.terms_at.append((s, data[0]))
        elif kind == PAIR:
            by_pair = sent.pairs.get(sg)
            if by_pair is None:
                by_pair = sent.pairs[sg] = {}
            halves = by_pair.get((data[0], data[1]))
            if halves is None:
                by_pair[(data[0], data[1])] = {data[2]}
            else:
                halves.add(data[2])
        elif kind == LOC:
            got = locations.get(sg)
            if got is None:
                locations[sg] = [data[0]]
            else:
                got.append(data[0])
        elif kind == EXCL:
            sent.exclusions.setdefault(sg, set()).add(data[0])
        elif kind == ANCHOR:
            sent.anchors.append((s, e, sg, data[0]))
        elif kind == SIZE:
            sent.sizes.append((s, e, sg, data[0], data[1]))
        elif kind == WORD:
            sent.words.append((s, sg, data[0]))
    if explain:
        sent.deleted_spans = _deleted_spans(start, end, items, cues, levels)
    return sent


def plain_sentence(
    text: str, tokens: list[tuple], start: int, end: int, section: str
) -> tuple[Sentence | None, str] | None:
    """classify_tokens for the commonest chunks: no boundary, a header at most at the start. Then
    there is one sentence of one segment, and a cue deletes all of it (segment or clause scope),
    everything after it (forward) or before it (backward): (the sentence or None when nothing can
    be in it, the section after the chunk). None for any other chunk."""
    opener = None
    if tokens[0][2] == HEADER:
        opener = tokens[0]
        section = opener[3][0]
    body = tokens if opener is None else tokens[1:]
    has_finding = dropped = False
    forward = backward = None
    for tok in body:
        kind = tok[2]
        if kind == CUE:
            scope = tok[3][0]
            if scope == "forward":
                if forward is None:
                    forward = tok
            elif scope == "backward":
                backward = tok
            elif scope != "keep":
                dropped = True  # the whole (only) segment is deleted
        elif kind == BOUND or kind == HEADER:
            return None
        elif kind in _FINDING_KINDS:
            has_finding = True
    if dropped or not has_finding or section == "skip":
        return None, section
    sent = Sentence(text, opener[1] if opener else start, end, section)
    sent.opener = opener
    if forward is not None:
        sent.first_forward[0] = forward
    if backward is not None:
        sent.last_backward[0] = backward
    abnormalities = sent.abnormalities
    for item in body:
        s, e, kind, data = item
        if kind == CUE or (
            kind != EXCL and ((forward is not None and item > forward) or (backward is not None and item < backward))
        ):
            continue  # deleted (exclusions hold even when deleted)
        if kind == ABN:
            got = abnormalities.get(0)
            if got is None:
                abnormalities[0] = [data[0]]
            else:
                got.append(data[0])
            sent.terms_at.append((s, data[0]))
        elif kind == PAIR:
            by_pair = sent.pairs.get(0)
            if by_pair is None:
                by_pair = sent.pairs[0] = {}
            halves = by_pair.get((data[0], data[1]))
            if halves is None:
                by_pair[(data[0], data[1])] = {data[2]}
            else:
                halves.add(data[2])
        elif kind == EXCL:
            sent.exclusions.setdefault(0, set()).add(data[0])
        elif kind == ANCHOR:
            sent.anchors.append((s, e, 0, data[0]))
        elif kind == SIZE:
            sent.sizes.append((s, e, 0, data[0], data[1]))
        elif kind == WORD:
            sent.words.append((s, 0, data[0]))
    return sent, section


def place_plain_locations(sent: Sentence, text: str, vocab: Vocabulary) -> None:
    """add_locations for a plain_sentence: the locations of its chunk after its header."""
    opener = sent.opener
    forward, backward = sent.first_forward.get(0), sent.last_backward.get(0)
    kept = []
    for item in scan_locations(text, vocab, sent.start if opener is None else opener[0], sent.end):
        if opener is not None and item < opener:
            continue  # it sorts before the header: it belongs to the (left-out) text before it
        if (forward is not None and item > forward) or (backward is not None and item < backward):
            sent.deleted_locations.append(item[3][0])
        else:
            kept.append(item[3][0])
    if kept:
        sent.locations[0] = kept


def add_locations(sents: list[Sentence], locations: list[tuple]) -> None:
    """Place location mentions (from `scan_locations` over the same chunk) into sentences that were
    classified without them: the same result as classifying with them, since locations neither
    bound nor delete anything. A location in no sentence (a left-out one) is dropped."""
    if not sents or not locations:
        return
    k, n = 0, len(locations)
    for sent in sents:
        # Sentences split at header mentions; a location belongs to a sentence by its order among
        # them as tuples (as when classified together), not by character position alone.
        opener, closer = sent.opener, sent.closer
        while k < n and opener is not None and locations[k] < opener:
            k += 1
        bounds, table = sent.bounds, sent.locations
        while k < n and (closer is None or locations[k] < closer):
            item = locations[k]
            k += 1
            sg = bisect_right(bounds, item) if bounds else 0
            if sent.is_deleted(item, sg):
                sent.deleted_locations.append(item[3][0])
            else:
                got = table.get(sg)
                if got is None:
                    table[sg] = [item[3][0]]
                else:
                    got.append(item[3][0])


def _deleted_spans(
    start: int,
    end: int,
    items: list[tuple],
    cues: list[tuple[int, str, int, int, int]],
    bounds: list[tuple[int, int, int]],
) -> list[tuple[int, int]]:
    """Token spans each cue deletes (for showing the abnormal phrases; not used for labels)."""

    def edges(level: int, pos_start: int, pos_end: int) -> tuple[int, int]:
        left = max([e for s, e, lv in bounds if lv >= level and e <= pos_start], default=start)
        right = min([s for s, e, lv in bounds if lv >= level and s >= pos_end], default=end)
        return left, right

    spans = []
    for ci, scope, _, _, _ in cues:
        s, e = items[ci][0], items[ci][1]
        if scope == "forward":
            spans.append((s, edges(NEGATION_STOP, s, e)[1]))
        elif scope == "backward":
            spans.append((edges(CLAUSE, s, e)[0], e))
        elif scope == "segment":
            spans.append(edges(SEGMENT, s, e))
        else:
            spans.append(edges(CLAUSE, s, e))
    return spans


_SPACE_BEFORE = re.compile(r" ([,;:)])")


def abnormal_phrases(text: str, vocab: Vocabulary) -> list[str]:
    """SARLE step 1 as text: each sentence with its normal and negated parts removed.

    Sentences that end up empty are left out, so a normal report gives []. For showing how a
    report was read (docs, tests, `ctplatform label-reports --explain`).
    """
    out = []
    for sent in sentences(normalize(text), vocab, explain=True):
        kept = "".join(
            ch
            for p, ch in enumerate(sent.text[sent.start : sent.end], sent.start)
            if not any(a <= p < b for a, b in sent.deleted_spans)
        )
        phrase = _SPACE_BEFORE.sub(r"\1", " ".join(kept.split())).replace("( ", "(").strip(" ,;:.")
        if re.search(r"[a-z]", phrase):
            out.append(phrase)
    return out
