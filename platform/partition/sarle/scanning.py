"""SARLE step 1, second part: the phrase and location mentions of a chunk or of a whole report.

Text is scanned once against the phrase trie and the location trie (vocabulary.py). A mention is
(start, end, kind, data) with character positions (it starts at the space before it), so mentions
sort by position. scan_report also gives each chunk flags of what its mentions hold, so that chunks
that cannot state a finding skip classification (phrases.py).
"""

from __future__ import annotations

import re

from ctplatform.partition.sarle.sizes import read_size_at
from ctplatform.partition.sarle.vocabulary import CLAUSE, NEGATION_STOP, SEGMENT, Vocabulary

# Token kinds.
BOUND, CUE, HEADER = "b", "c", "h"
ABN, PAIR, EXCL, ANCHOR, SIZE, WORD, LOC = "a", "p", "x", "n", "s", "w", "l"
_MEANING_KIND = {"abn": ABN, "pair": PAIR, "cue": CUE, "bound": BOUND, "excl": EXCL, "anchor": ANCHOR, "header": HEADER}


_MEASUREMENT: tuple = ((SIZE, None),)  # a number: read_size reads the measurement that starts there


TERM, NUMBER, PUNCTUATION, NON = 1, 2, 3, 4  # what a text matched by the phrase regex is


def mention_kind(vocab: Vocabulary, text: str) -> int:
    """Which alternative of the phrase regex matched `text` (" " and what follows the space): a
    number's first character, punctuation, a term, or "non X" (no term starts with a digit, ".",
    punctuation or "non ": vocabulary.py)."""
    if len(text) == 2:
        if text[1] in ";,:()":
            return PUNCTUATION
        if text[1] in ".0123456789":
            return NUMBER
    if text.startswith(" non ") and not vocab.meanings(text[1:]):
        return NON
    return TERM


def _templates(vocab: Vocabulary, text: str, group: int | None = None) -> tuple:
    """(kind, data) tokens a text matched by the phrase regex stands for (cached per spelling;
    the spelling tells which alternative matched: mention_kind)."""
    if group is None:
        group = mention_kind(vocab, text)
    if group == TERM:
        out = []
        for v in vocab.meanings(text[1:]):
            kind = _MEANING_KIND.get(v[0], WORD)
            out.append((kind, v[1:] if kind != WORD else (v[0],)))
        got: tuple = tuple(out)
    elif group == NUMBER:
        got = _MEASUREMENT
    elif group == PUNCTUATION:
        got = ((BOUND, (CLAUSE if text[1] == ";" else SEGMENT, text[1])),)
    else:  # "non X": consumed so that X is not read, stands for nothing
        got = ()
    vocab.token_cache[text] = got
    return got


def scan(text: str, vocab: Vocabulary) -> list[tuple]:
    """Phrase and location mentions of a space-padded chunk, in order: (start, end, kind, data),
    with character positions (a mention starts at the space before it)."""
    out = scan_phrases(text, vocab)
    locs = scan_locations(text, vocab)
    if locs:
        out.extend(locs)
        out.sort()  # two sorted runs; tuples order by start first
    return out


def scan_phrases(text: str, vocab: Vocabulary) -> list[tuple]:
    """The phrase mentions of `scan` (no locations): enough for step 1, since locations neither
    bound nor delete anything. `text` may hold several chunks joined by " . "."""
    out: list[tuple] = []
    append = out.append
    cache = vocab.token_cache
    skip_to = 0
    for m in vocab.phrase_regex.finditer(text):
        term = m.group()
        got = cache.get(term)
        if got is None:
            got = _templates(vocab, term)
        if not got:
            continue
        s = m.start()
        if s < skip_to:
            continue
        if got is _MEASUREMENT:
            # A measurement never reaches past a full stop: read the words up to the chunk's end.
            stop = text.find(" . ", s)
            size = read_size_at(text, s + 1, stop if stop >= 0 else len(text) - 1)
            if size is not None:
                append((s, size[0], SIZE, size[1:]))
                skip_to = size[0]
            continue
        e = s + len(term)
        for kind, data in got:
            append((s, e, kind, data))
    return out


def could_state_finding(mentions: list[tuple]) -> bool:
    """False when `mentions` (of one sentence or more, before deletion) hold no abnormality term,
    no co-occurring pair with both words, and no pair word with a measurement and its anchor:
    term_search makes findings from those only."""
    halves: dict[tuple, int] = {}
    pair = size = anchor = False
    for k in mentions:
        kind = k[2]
        if kind == ABN:
            return True
        if kind == PAIR:
            name, n, side = k[3]
            if halves.setdefault((name, n), side) != side:
                return True
            pair = True
        elif kind == SIZE:
            size = True
        elif kind == ANCHOR:
            anchor = True
    return pair and size and anchor


# Flags of a chunk's mentions (scan_report): which kinds it has, and above PAIR_SHIFT one bit per
# half of each co-occurring pair (pair j's halves at bits 2j and 2j + 1), so that whether both halves
# of some pair occur is a test on integers (`complete_pair`).
HAS_ABN, HAS_PAIR, HAS_HEADER, HAS_BOUND, HAS_SIZE, HAS_ANCHOR, HAS_FORWARD, HAS_BACKWARD = 1, 2, 4, 8, 16, 32, 64, 128
PAIR_SHIFT = 8
UNKNOWN_FLAGS = -1  # every bit set: "may have anything" (for mentions scanned without flags)
_KIND_FLAG = {ABN: HAS_ABN, PAIR: HAS_PAIR, HEADER: HAS_HEADER, BOUND: HAS_BOUND, ANCHOR: HAS_ANCHOR}
_CANDIDATE = HAS_ABN | HAS_PAIR
_PAIR_SIZE_ANCHOR = HAS_PAIR | HAS_SIZE | HAS_ANCHOR
_FIRST_HALVES = int("5" * 256, 16)  # bits 0, 2, 4, ...: the first half of every pair
_SECOND_HALF = PAIR_SHIFT + 1


def complete_pair(flags: int) -> bool:
    """Whether both halves of some co-occurring pair are among the mentions `flags` describe."""
    halves = flags >> PAIR_SHIFT
    return (halves & (halves >> 1) & _FIRST_HALVES) != 0


def may_find(flags: int) -> bool:
    """could_state_finding from a chunk's flags alone (the same answer)."""
    return bool(flags & HAS_ABN) or complete_pair(flags) or flags & _PAIR_SIZE_ANCHOR == _PAIR_SIZE_ANCHOR


def _scan_entry(vocab: Vocabulary, term: str) -> tuple:
    """What scan_report needs of a matched text (cached per spelling): (simple, kind, data, flags,
    length, header, templates). kind is None for a text that stands for nothing, MEASURE for a
    number, MANY for a text that stands for several mentions (`templates`); `simple` marks the
    common case: one mention, no header, and a text no measurement can hold (a measurement's words
    are numbers, "x", "by" and units, and no term starts with a digit), so that scan_report
    appends it without further tests."""
    templates = vocab.token_cache.get(term) or _templates(vocab, term)
    header = next((d[0] for k, d in templates if k == HEADER), None)
    flags = sum({_KIND_FLAG.get(k, 0) for k, _ in templates})
    if (CUE, ("forward",)) in templates:
        flags |= HAS_FORWARD
    if (CUE, ("backward",)) in templates:
        flags |= HAS_BACKWARD
    for k, d in templates:
        if k == PAIR:
            flags |= 1 << (PAIR_SHIFT + 2 * vocab.pair_index[d[:2]] + d[2])
    if templates is _MEASUREMENT:
        kind, data = MEASURE, None
    elif len(templates) == 1:
        kind, data = templates[0]
    else:
        kind, data = (MANY if templates else None), None
    first = term[1:].split(" ", 1)[0]
    simple = (
        kind not in (None, MEASURE, MANY)
        and header is None
        and not first[:1].isdigit()
        and first[:1] != "."
        and first not in _MEASUREMENT_WORDS
    )
    got = vocab.scan_entries[term] = (simple, kind, data, flags, len(term), header, templates)
    return got


MEASURE, MANY = "measure", "many"  # scan entries' kinds besides the token kinds
_MEASUREMENT_WORDS = frozenset({"x", "by", "cm", "mm", "centimeter", "centimeters", "millimeter", "millimeters"})


def scan_report(joined: str, parts: list[str], vocab: Vocabulary) -> list[tuple[int, int, list[tuple], int, str]]:
    """scan_phrases over a whole report (`report_chunks`), cut by chunk, keeping the chunks that
    can state a finding (`may_find`: an abnormality term, both words of a pair, or a pair word
    with a measurement and its anchor): (start, end, mentions, flags, section) for each, where
    `joined[start:end]` is the chunk with a space on each side, `flags` tell which kinds of
    mention it has and which pair halves (see HAS_*, PAIR_SHIFT) and `section` is the section it
    starts in (the last header before it: no other chunk can state a finding)."""
    out: list[tuple[int, int, list[tuple], int, str]] = []
    ends = iter(parts)
    start = 0
    end = len(next(ends, "")) + 2
    tokens: list[tuple] = []
    append = tokens.append
    flags = 0
    section = opening_section = "none"
    entries = vocab.scan_entries
    skip_to = 0
    # The regex split with one capture group gives the matched texts between the text around
    # them, [before, match, between, match, ..., after]: positions follow from the lengths, with
    # no match object per mention (a few microseconds less per report than finditer).
    pieces = (vocab.phrase_split or _phrase_split(vocab)).split(joined)
    rest = iter(pieces)
    e = len(next(rest))
    for term, gap in zip(rest, rest):
        got = entries.get(term) or _scan_entry(vocab, term)
        s = e
        e = s + got[4]
        if s >= end:  # the mention lies in a later chunk: close this one
            if flags & _CANDIDATE and (  # may_find(flags), inlined
                flags & HAS_ABN
                or (flags >> PAIR_SHIFT) & (flags >> _SECOND_HALF) & _FIRST_HALVES
                or flags & _PAIR_SIZE_ANCHOR == _PAIR_SIZE_ANCHOR
            ):
                out.append((start, end, tokens, flags, opening_section))
            if tokens:
                tokens, flags = [], 0
                append = tokens.append
            opening_section = section
            while s >= end:
                start = end + 1
                end = start + len(next(ends)) + 2
        if got[0]:
            append((s, e, got[1], got[2]))
            flags |= got[3]
            e += len(gap)
            continue
        kind = got[1]
        if kind is None or s < skip_to:
            e += len(gap)
            continue  # "non X", or a word of the measurement just read
        if kind is MEASURE:
            size = read_size_at(joined, s + 1, end - 1)  # the chunk's words from here
            if size is not None:
                append((s, size[0], SIZE, size[1:]))
                skip_to = size[0]
                flags |= HAS_SIZE
            e += len(gap)
            continue
        if kind is MANY:
            for k, data in got[6]:
                append((s, e, k, data))
        else:
            append((s, e, kind, got[2]))
        flags |= got[3]
        if got[5] is not None:
            section = got[5]
        e += len(gap)
    if flags & _CANDIDATE and may_find(flags):
        out.append((start, end, tokens, flags, opening_section))
    return out


def _phrase_split(vocab: Vocabulary) -> re.Pattern[str]:
    """The phrase regex in one capture group (for a Vocabulary built without `phrase_split`)."""
    got = vocab.phrase_split = re.compile(f"({vocab.phrase_regex.pattern})")
    return got


def scan_locations(text: str, vocab: Vocabulary, start: int = 0, end: int | None = None) -> list[tuple]:
    """The location mentions of `scan` in `text[start:end]`, in order (coordinated sides read as
    lung locations: see `_coordinate_sides`)."""
    kinds = vocab.location_tokens
    out = []
    # As in scan_report: the split of the span, positions from the lengths of the pieces.
    rest = iter((vocab.location_split or _location_split(vocab)).split(text[start:end]))
    e = start + len(next(rest))
    for term, gap in zip(rest, rest):
        s = e
        e = s + len(term)
        out.append((s, e, LOC, kinds.get(term) or _location_data(vocab, term)))
        e += len(gap)
    if len(out) > 1:
        _coordinate_sides(text, out)
    return out


def _location_split(vocab: Vocabulary) -> re.Pattern[str]:
    got = vocab.location_split = re.compile(f"({vocab.location_regex.pattern})")
    return got


def _location_data(vocab: Vocabulary, term: str) -> tuple[str]:
    got = vocab.location_tokens[term] = (vocab.location_kind(term[1:]),)
    return got


def location_kinds(text: str, vocab: Vocabulary, start: int, end: int, opener: tuple | None = None) -> list[str] | None:
    """The kinds of the locations scan_locations finds in `text[start:end]`, less those that sort
    before `opener` (a header mention starting at `start`), found without their positions (the
    regex engine's findall). None when a side word is followed by a lung location: whether they
    are coordinated depends on the words between (then use scan_locations)."""
    regex = vocab.location_regex
    table = vocab.location_tokens
    out: list[str]
    if opener is None:
        out = []
    else:
        # The header's own words ("lungs and airways :") give the same kinds wherever it stands,
        # and no location term holds the ":" that ends it, so none reaches past it: its kinds are
        # worked out once per header, and the scan starts after it.
        header = text[start : opener[1]]
        got = vocab.header_locations.get(header)
        if got is None:
            got = vocab.header_locations[header] = _header_kinds(vocab, header, opener)
        out = list(got)
        start = opener[1]
    for term in regex.findall(text, start, end):
        out.append((table.get(term) or _location_data(vocab, term))[0])
    if "side_right" in out or "side_left" in out:
        for k in range(len(out) - 1):
            if out[k] in _SIDE_LUNG and out[k + 1] in _SIDED_LUNG:
                return None
    return out


def _header_kinds(vocab: Vocabulary, header: str, opener: tuple) -> tuple[str, ...]:
    """location_kinds' kinds inside the header mention `opener` spelled `header` (a space, its
    words, " :"), before any side test."""
    regex = vocab.location_regex
    text = header + " "
    start, end = 0, len(text)
    out: list[str] = []
    m = regex.match(text, start, end)
    if m is not None:  # the one location that can sort before the header: it starts where it does
        data = vocab.location_tokens.get(m[0]) or _location_data(vocab, m[0])
        if not (start, start + len(m[0]), LOC, data) < (0, len(header), *opener[2:]):
            out.append(data[0])
        start = m.end()
    for term in regex.findall(text, start, end):
        out.append((vocab.location_tokens.get(term) or _location_data(vocab, term))[0])
    return tuple(out)


# Words that coordinate a side with the next location ("right and left lower lobes", "right greater
# than left lower lobe"); the words between must all be of these, one of them a conjunction.
_CONJUNCTIONS = frozenset({"and", "or", ",", "/", "than"})
_COORDINATING = _CONJUNCTIONS | {"the", "greater", "more", "larger", "worse", "less", "slightly", "much"}
_SIDE_LUNG = {"side_right": ("right_lung",), "side_left": ("left_lung",)}
_SIDED_LUNG = frozenset({"right_lung", "left_lung"})


def _coordinate_sides(text: str, locations: list[tuple]) -> None:
    """A side word coordinated with a sided lung location names the same part of its own lung:
    "atelectasis in the right and left lower lobes" is in the right lower lobe too, "nodules in the
    left or right upper lobe" in either. Such a side word becomes a location of its lung (in place);
    a side word before anything else ("right and left pleural effusions", "left pneumonia") stays a
    side word."""
    for k in range(len(locations) - 1):
        s, e, kind, data = locations[k]
        lung = _SIDE_LUNG.get(data[0])
        if lung is not None:
            after = locations[k + 1]
            if after[3][0] in _SIDED_LUNG and after[0] - e < 40:
                between = text[e : after[0]].split()
                if between and _COORDINATING.issuperset(between) and not _CONJUNCTIONS.isdisjoint(between):
                    locations[k] = (s, e, kind, lung)



def bound_level(text: str, item: tuple, limit: int, vocab: Vocabulary) -> int:
    """The level of the boundary mention `item` in its chunk (ending at `limit`): its own, but
    ", and" before a clause starter ("and there") ends a clause and ", with" a forward cue's scope."""
    s, e, _, (level, word) = item
    after_comma = text[s - 1] == ","  # tokens are one space apart: the previous token ends at s - 1
    if word == "and":
        nxt = text[e + 1 : text.find(" ", e + 1)] if e + 1 < limit else ""  # the chunk's next word
        if vocab.clause_starters.keys_for(nxt) and (after_comma or nxt == "there"):
            level = CLAUSE
    elif after_comma and word in vocab.negation_stop_after_comma:
        level = NEGATION_STOP
    return level
