"""SARLE step 1: split a report into sentences and delete its normal and negated parts.

A report is cut into word tokens (trie.tokens), scanned once against the phrase trie and the
location trie (vocabulary.py), and cut into sentences at ". ? !", line starts and section headers.
Each sentence is cut into clauses (at ";", "but", "however", "except" ...) and clauses into
segments (at ",", ":", "and", "with" ...). Every cue of phrases.yaml deletes a part of its
sentence by scope (forward to the end of its clause, backward to its start, its whole clause, or its
segment); the kept mentions are what SARLE calls the abnormal phrases. Deletion works on mention
tokens, so one pass per report suffices and the result does not depend on the order of rules.
Positions are token indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ctplatform.partition.sarle.trie import tokens as split_tokens
from ctplatform.partition.sarle.vocabulary import CLAUSE, NEGATION_STOP, SEGMENT, Vocabulary, read_size

_LINE_START = re.compile(r"\n(?=[ \t]*(?:[A-Z0-9]|[-*\u2022]))")
_ABBREVIATIONS = frozenset({"approx", "vs", "e.g", "i.e", "eg", "ie", "dr", "mr", "mrs", "ms", "fig", "cf"})
_SENTENCE_END = 5

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
    deletion (exclusions are kept even inside deleted text); positions index `words`.
    `deleted_locations` are the location kinds of the deleted part; `segment_clause[s]` the clause
    of segment s.
    """

    words: list[str]
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
    parts = (" ".join(words) + " ").split(" . ")
    out: list[str] = []
    for part in parts:
        if out and out[-1].rsplit(" ", 1)[-1] in _ABBREVIATIONS:
            out[-1] = f"{out[-1]} . {part}"
        else:
            out.append(part)
    cleaned = []
    for part in out:
        part = part.strip()
        while part.startswith(". ") or part == ".":  # empty sentences (". ." from a line start)
            part = part[2:]
        if part:
            cleaned.append(part)
    return cleaned


def classify_chunk(chunk: str, section: str, vocab: Vocabulary, explain: bool = False) -> tuple[list[Sentence], str]:
    """Step 1 over one sentence chunk that starts in `section`: its sentences (a header inside it
    starts a new one) and the section after it. Sentences without any abnormality term are left
    out unless `explain` is set, as are sentences of `skip` sections (indication, technique ...)."""
    words = chunk.split()
    out: list[Sentence] = []
    start = 0
    current: list[tuple] = []
    has_finding = False
    n = len(words)
    for tok in scan(words, vocab) + [(n, n, BOUND, (_SENTENCE_END, ""))]:
        kind = tok[2]
        if kind == HEADER or (kind == BOUND and tok[3][0] == _SENTENCE_END):
            if (has_finding or explain) and section != "skip" and current:
                out.append(_classify(words, start, tok[0], section, current, vocab, explain))
            if kind == HEADER:
                section = tok[3][0]
            start, current, has_finding = tok[1], [], False
            continue
        if kind in _FINDING_KINDS:
            has_finding = True
        current.append(tok)
    return out, section


def scan(words: list[str], vocab: Vocabulary) -> list[tuple]:
    """Phrase and location mentions of a token list, in order: (start, end, kind, data)."""
    joined = " " + " ".join(words) + " "
    count = joined.count
    out: list[tuple] = []
    meanings = vocab.meanings
    idx = last = 0
    skip_to = 0
    for m in vocab.phrase_regex.finditer(joined):
        pos = m.start()
        idx += count(" ", last, pos)  # token index: spaces before the match's leading space
        last = pos
        if idx < skip_to:
            continue
        group = m.lastgroup
        if group == "t":
            text = m.group()
            end = idx + text.count(" ")
            for v in meanings(text[1:]):
                kind = _MEANING_KIND.get(v[0], WORD)
                out.append((idx, end, kind, v[1:] if kind != WORD else (v[0],)))
        elif group == "p":
            w = words[idx]
            if w == ".":
                continue  # an abbreviation's full stop (chunks() cut the sentences)
            if w == ";":
                out.append((idx, idx + 1, BOUND, (CLAUSE, w)))
            else:
                out.append((idx, idx + 1, BOUND, (SEGMENT, w)))
        elif group == "s":
            size = read_size(words, idx)
            if size is not None:
                out.append((idx, size[0], SIZE, size[1:]))
                skip_to = size[0]
    locs: list[tuple] = []
    kind_of = vocab.location_kind
    idx = last = 0
    for m in vocab.location_regex.finditer(joined):
        pos = m.start()
        idx += count(" ", last, pos)
        last = pos
        text = m.group()
        locs.append((idx, idx + text.count(" "), LOC, (kind_of(text[1:]),)))
    if locs:
        out.extend(locs)
        out.sort()  # two sorted runs; tuples order by start token first
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
    words: list[str], start: int, end: int, section: str, items: list[tuple], vocab: Vocabulary, explain: bool
) -> Sentence:
    """Assign segment/clause ids, apply the cues' scopes, keep what is not deleted."""
    seg = zone = clause = 0
    ids: list[tuple[int, int, int]] = []
    cues: list[tuple[int, str, int, int, int]] = []  # (index, scope, seg, zone, clause)
    seg_clause = [0]
    bounds: list[tuple[int, int, int]] = []  # (start, end, level), for explain
    n_words = len(words)
    for i, (s, e, kind, data) in enumerate(items):
        if kind == BOUND:
            level, word = data
            after_comma = s > 0 and words[s - 1] == ","
            if word == "and":
                nxt = words[e] if e < n_words else ""
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
    sent = Sentence(words, start, end, section, n_segments=seg + 1, segment_clause=seg_clause)
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
        words = sent.words
        kept = [
            words[p]
            for p in range(sent.start, sent.end)
            if not any(a <= p < b for a, b in sent.deleted_spans)
        ]
        phrase = _SPACE_BEFORE.sub(r"\1", " ".join(kept)).replace("( ", "(").strip(" ,;:.")
        if re.search(r"[a-z]", phrase):
            out.append(phrase)
    return out
