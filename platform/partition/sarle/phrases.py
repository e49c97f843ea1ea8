"""SARLE step 1: split a report into sentences and delete its normal and negated parts.

A report is cut into word tokens (trie.tokens), scanned once against the phrase trie and the
location trie (vocabulary.py), and cut into sentences at ". ? !", line starts and section headers.
Each sentence is cut into clauses (at ";", "but", "however", "except" ...) and clauses into
segments (at ",", ":", "and", "with" ...). Every cue of phrases.yaml deletes a part of its
sentence by scope (forward to the end of its clause, backward to its start, its whole clause, or its
segment); the kept mentions are what SARLE calls the abnormal phrases. Deletion works on mention
tokens, so one pass per report suffices and the result does not depend on the order of rules.
Positions are character offsets in the sentence chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ctplatform.partition.sarle.trie import tokens as split_tokens
from ctplatform.partition.sarle.sizes import read_size
from ctplatform.partition.sarle.vocabulary import CLAUSE, NEGATION_STOP, SEGMENT, Vocabulary

_LINE_START = re.compile(r"\n(?=[ \t]*(?:[A-Z0-9]|[-*\u2022]))")
_ABBREVIATIONS = frozenset({"approx", "vs", "e.g", "i.e", "eg", "ie", "dr", "mr", "mrs", "ms", "fig", "cf"})
_SENTENCE_END = 5
_ABBREVIATION_STOP = re.compile(r" (?:" + "|".join(re.escape(a) for a in sorted(_ABBREVIATIONS)) + r") \. ")

# Token kinds.
BOUND, CUE, HEADER = "b", "c", "h"
ABN, PAIR, EXCL, ANCHOR, SIZE, WORD, LOC = "a", "p", "x", "n", "s", "w", "l"
_FINDING_KINDS = frozenset({ABN, PAIR, ANCHOR})
_MEANING_KIND = {"abn": ABN, "pair": PAIR, "cue": CUE, "bound": BOUND, "excl": EXCL, "anchor": ANCHOR, "header": HEADER}


def normalize(text: str) -> list[str]:
    """Word tokens of a report. A line that starts with a capital, digit or bullet starts a sentence."""
    return split_tokens(_LINE_START.sub(" . ", text).lower())


@dataclass(slots=True)
class Sentence:
    """One sentence after step 1.

    `kept` holds (start, end, kind, data, segment, clause) for every mention that survived
    deletion (exclusions are kept even inside deleted text); positions are character offsets in
    `text` (the sentence's tokens joined by single spaces, with a space before and after).
    `deleted_locations` are the location kinds of the deleted part; `segment_clause[s]` the clause
    of segment s.
    """

    text: str
    start: int
    end: int
    section: str
    kept: list[tuple] = field(default_factory=list)
    deleted_locations: list[str] = field(default_factory=list)
    n_segments: int = 1
    segment_clause: list[int] = field(default_factory=list)
    deleted_spans: list[tuple[int, int]] = field(default_factory=list)  # filled by explain only


def chunks(words: list[str]) -> list[str]:
    """The report's sentences as space-joined token strings (split at "." but not "approx.")."""
    joined = " " + " ".join(words) + " "
    parts = joined.split(" . ")
    if _ABBREVIATION_STOP.search(joined) is not None:  # rare: glue "approx ." back to its sentence
        glued: list[str] = []
        for part in parts:
            if glued and glued[-1].rsplit(" ", 1)[-1] in _ABBREVIATIONS:
                glued[-1] = f"{glued[-1]} . {part}"
            else:
                glued.append(part)
        parts = glued
    out = []
    for part in parts:
        part = part.strip()
        if part and part != ".":
            while part[:2] == ". ":  # empty sentences (". ." from a line start)
                part = part[2:]
            out.append(part)
    return out


def classify_chunk(chunk: str, section: str, vocab: Vocabulary, explain: bool = False) -> tuple[list[Sentence], str]:
    """Step 1 over one sentence chunk that starts in `section`: its sentences (a header inside it
    starts a new one) and the section after it. Sentences without any abnormality term are left
    out unless `explain` is set, as are sentences of `skip` sections (indication, technique ...)."""
    text = f" {chunk} "
    out: list[Sentence] = []
    start = 0
    current: list[tuple] = []
    has_finding = False
    tokens = scan(text, vocab)
    tokens.append((len(text), len(text), BOUND, (_SENTENCE_END, "")))
    for tok in tokens:
        kind = tok[2]
        if kind == HEADER or (kind == BOUND and tok[3][0] == _SENTENCE_END):
            if (has_finding or explain) and section != "skip" and current:
                out.append(_classify(text, start, tok[0], section, current, vocab, explain))
            if kind == HEADER:
                section = tok[3][0]
            start, current, has_finding = tok[1], [], False
            continue
        if kind in _FINDING_KINDS:
            has_finding = True
        current.append(tok)
    return out, section


def _templates(vocab: Vocabulary, text: str) -> tuple:
    """(kind, data) tokens a matched phrase term stands for (cached per spelling)."""
    got = vocab.token_cache.get(text)
    if got is None:
        out = []
        for v in vocab.meanings(text[1:]):
            kind = _MEANING_KIND.get(v[0], WORD)
            out.append((kind, v[1:] if kind != WORD else (v[0],)))
        got = vocab.token_cache[text] = tuple(out)
    return got


def scan(text: str, vocab: Vocabulary) -> list[tuple]:
    """Phrase and location mentions of a space-padded chunk, in order: (start, end, kind, data),
    with character positions (a mention starts at the space before it)."""
    out: list[tuple] = []
    append = out.append
    cache = vocab.token_cache
    skip_to = 0
    words: list[str] | None = None
    for m in vocab.phrase_regex.finditer(text):
        s = m.start()
        if s < skip_to:
            continue
        group = m.lastindex
        if group == 1:
            term = m.group()
            got = cache.get(term)
            if got is None:
                got = _templates(vocab, term)
            e = m.end()
            for kind, data in got:
                append((s, e, kind, data))
        elif group == 3:
            ch = text[s + 1]
            if ch == ";":
                append((s, s + 2, BOUND, (CLAUSE, ch)))
            elif ch != ".":  # a full stop left inside a chunk ends an abbreviation
                append((s, s + 2, BOUND, (SEGMENT, ch)))
        elif group == 2:
            if words is None:
                words = text.split()
            i = text.count(" ", 0, s)
            size = read_size(words, i)
            if size is not None:
                e = s + 1 + len(" ".join(words[i : size[0]]))
                append((s, e, SIZE, size[1:]))
                skip_to = e
    kind_of = vocab.location_kind
    locs = [(m.start(), m.end(), LOC, (kind_of(m.group()[1:]),)) for m in vocab.location_regex.finditer(text)]
    if locs:
        out.extend(locs)
        out.sort()  # two sorted runs; tuples order by start first
    return out


def sentences(words: list[str], vocab: Vocabulary, explain: bool = False) -> list[Sentence]:
    """Step 1 over a tokenised report: its sentences, classified (see classify_chunk)."""
    out: list[Sentence] = []
    section = "none"
    for chunk in chunks(words):
        got, section = classify_chunk(chunk, section, vocab, explain)
        out.extend(got)
    return out


def _classify(
    text: str, start: int, end: int, section: str, items: list[tuple], vocab: Vocabulary, explain: bool
) -> Sentence:
    """Assign segment/clause ids, apply the cues' scopes, keep what is not deleted."""
    seg = zone = clause = 0
    ids: list[tuple[int, int, int]] = []
    cues: list[tuple[int, str, int, int, int]] = []  # (index, scope, seg, zone, clause)
    seg_clause = [0]
    bounds: list[tuple[int, int, int]] = []  # (start, end, level), for explain
    for i, (s, e, kind, data) in enumerate(items):
        if kind == BOUND:
            level, word = data
            after_comma = text[s - 1] == ","  # tokens are one space apart: the previous token ends at s - 1
            if word == "and":
                nxt = text[e + 1 : text.find(" ", e + 1)] if e + 1 < len(text) else ""
                if vocab.clause_starters.keys_for(nxt) and (after_comma or nxt == "there"):
                    level = CLAUSE
            elif after_comma and word in vocab.negation_stop_after_comma:
                level = NEGATION_STOP
            seg += 1
            if level >= NEGATION_STOP:
                zone += 1
            if level >= CLAUSE:
                clause += 1
            seg_clause.append(clause)
            if explain:
                bounds.append((s, e, level))
        elif kind == CUE and data[0] != "keep":
            cues.append((i, data[0], seg, zone, clause))
        ids.append((seg, zone, clause))
    sent = Sentence(text, start, end, section, n_segments=seg + 1, segment_clause=seg_clause)
    kept = sent.kept
    for i, (s, e, kind, data) in enumerate(items):
        if kind == BOUND or kind == CUE:
            continue
        sg, zn, cl = ids[i]
        deleted = False
        for ci, scope, csg, czn, ccl in cues:
            if scope == "forward":
                deleted = i > ci and zn == czn
            elif scope == "segment":
                deleted = sg == csg
            elif scope == "backward":
                deleted = i < ci and cl == ccl
            else:  # clause
                deleted = cl == ccl
            if deleted:
                break
        if not deleted or kind == EXCL:  # exclusions hold even inside deleted text
            kept.append((s, e, kind, data, sg, cl))
        elif kind == LOC:
            sent.deleted_locations.append(data[0])
    if explain:
        sent.deleted_spans = _deleted_spans(start, end, items, cues, bounds)
    return sent


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
