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
from bisect import bisect_right

from ctplatform.partition.sarle.sizes import read_size_at
from ctplatform.partition.sarle.trie import BLANK_TABLE, PAD, STOPS
from ctplatform.partition.sarle.trie import tokens as split_tokens
from ctplatform.partition.sarle.vocabulary import CLAUSE, NEGATION_STOP, SEGMENT, Vocabulary

_LINE_START = re.compile(r"\n(?=[ \t]*(?:[A-Z0-9]|[-*\u2022]))")
_ABBREVIATIONS = frozenset({"approx", "vs", "e.g", "i.e", "eg", "ie", "dr", "mr", "mrs", "ms", "fig", "cf"})

# Token kinds.
BOUND, CUE, HEADER = "b", "c", "h"
ABN, PAIR, EXCL, ANCHOR, SIZE, WORD, LOC = "a", "p", "x", "n", "s", "w", "l"
_FINDING_KINDS = frozenset({ABN, PAIR, ANCHOR})
_MEANING_KIND = {"abn": ABN, "pair": PAIR, "cue": CUE, "bound": BOUND, "excl": EXCL, "anchor": ANCHOR, "header": HEADER}


def normalize(text: str) -> list[str]:
    """Word tokens of a report. A line that starts with a capital, digit or bullet starts a sentence."""
    return split_tokens(_LINE_START.sub(" . ", text).lower())


def chunks(words: list[str]) -> list[str]:
    """The report's sentences as space-joined token strings (split at "." but not "approx.")."""
    return _chunks(" " + " ".join(words) + " ")


def report_chunks(text: str) -> tuple[str, list[str]]:
    """`chunks(normalize(text))`, and those chunks joined by " . " with a space before and after
    (one string to scan for the whole report). Built without the word list: the same tokenising
    steps as `trie.tokens`, on the report string, in C."""
    # A line start right after a full stop would only add an empty sentence: leave it out.
    joined = _joined(_LINE_START_AFTER_TEXT.sub(" . ", text))
    # The chunks are the runs of tokens between "." tokens (empty ones dropped), so collapse runs
    # of stops and drop those at either end.
    while " . . " in joined:
        joined = joined.replace(" . . ", " . ")
    if joined.endswith(" . "):
        if joined.endswith(_ABBREVIATION_FINAL_STOPS):
            return _report_chunks_by_parts(text)
        joined = joined[:-2]
    if joined.startswith(" . "):
        joined = joined[2:]
    core = joined[1:-1]
    if not core or core == ".":
        return "  ", []
    parts = core.split(" . ")
    # A full stop after an abbreviation ("approx . 5 mm") ends no sentence: the general way.
    if not _ABBREVIATIONS.isdisjoint({part[part.rfind(" ") + 1 :] for part in parts}):
        return _report_chunks_by_parts(text)
    return joined, parts


def _report_chunks_by_parts(text: str) -> tuple[str, list[str]]:
    parts = _chunks(_joined(_LINE_START.sub(" . ", text)))
    return " " + " . ".join(parts) + " ", parts


_LINE_START_AFTER_TEXT = re.compile(r"\n(?<!\.\n)" + _LINE_START.pattern[2:])  # "\n" first: found in C


def _joined(text: str) -> str:
    """`" ".join(trie.tokens(text.lower()))` with a space before and after, from C string operations."""
    t = text.lower().translate(BLANK_TABLE)
    if "?" in t or "!" in t or "\u2022" in t:
        t = STOPS.sub(" . ", t)
    if "\u00d7" in t:
        t = t.replace("\u00d7", " x ")
    for ch in PAD:
        if ch in t:
            t = t.replace(ch, f" {ch} ")
    t = t.replace(". ", " . ")
    if t.endswith("."):
        t = t[:-1] + " ."
    # All whitespace is a space now (BLANK_TABLE): collapse runs, far cheaper than split and join.
    while "  " in t:
        t = t.replace("  ", " ")
    return f" {t.strip(' ')} "


_ABBREVIATION_ENDS = tuple(f" {a}" for a in sorted(_ABBREVIATIONS))
_ABBREVIATION_FINAL_STOPS = tuple(f" {a} . " for a in sorted(_ABBREVIATIONS))


def _chunks(joined: str) -> list[str]:
    out = []
    pending = None
    for part in joined.split(" . "):
        if pending is not None and (pending.endswith(_ABBREVIATION_ENDS) or pending in _ABBREVIATIONS):
            pending = f"{pending} . {part}"  # "approx . 5 mm": the stop ends an abbreviation
            continue
        if pending is not None:
            _add_chunk(out, pending)
        pending = part
    if pending is not None:
        _add_chunk(out, pending)
    return out


def _add_chunk(out: list[str], part: str) -> None:
    part = part.strip()
    if part and part != ".":
        while part[:2] == ". ":  # empty sentences (". ." from a line start)
            part = part[2:]
        out.append(part)


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


# Flags of a chunk's mentions (scan_report): which kinds it has, and above PAIR_SHIFT one bit per
# half of each co-occurring pair (pair j's halves at bits 2j and 2j + 1), so that whether both halves
# of some pair occur is a test on integers (`complete_pair`).
HAS_ABN, HAS_PAIR, HAS_HEADER, HAS_BOUND, HAS_SIZE, HAS_ANCHOR = 1, 2, 4, 8, 16, 32
PAIR_SHIFT = 8
UNKNOWN_FLAGS = -1  # every bit set: "may have anything" (for mentions scanned without flags)
_KIND_FLAG = {ABN: HAS_ABN, PAIR: HAS_PAIR, HEADER: HAS_HEADER, BOUND: HAS_BOUND, ANCHOR: HAS_ANCHOR}
_CANDIDATE = HAS_ABN | HAS_PAIR
_PAIR_SIZE_ANCHOR = HAS_PAIR | HAS_SIZE | HAS_ANCHOR
_FIRST_HALVES = int("5" * 256, 16)  # bits 0, 2, 4, ...: the first half of every pair


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
    name an abnormality term or a pair word: (start, end, mentions, flags, section) for each, where
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
    for m in vocab.phrase_regex.finditer(joined):
        term = m[0]
        got = entries.get(term) or _scan_entry(vocab, term)
        s = m.start()
        if s >= end:  # the mention lies in a later chunk: close this one
            if flags & _CANDIDATE:
                out.append((start, end, tokens, flags, opening_section))
            if tokens:
                tokens, flags = [], 0
                append = tokens.append
            opening_section = section
            while s >= end:
                start = end + 1
                end = start + len(next(ends)) + 2
        if got[0]:
            append((s, s + got[4], got[1], got[2]))
            flags |= got[3]
            continue
        kind = got[1]
        if kind is None or s < skip_to:
            continue  # "non X", or a word of the measurement just read
        if kind is MEASURE:
            size = read_size_at(joined, s + 1, end - 1)  # the chunk's words from here
            if size is not None:
                append((s, size[0], SIZE, size[1:]))
                skip_to = size[0]
                flags |= HAS_SIZE
            continue
        if kind is MANY:
            e = s + got[4]
            for k, data in got[6]:
                append((s, e, k, data))
        else:
            append((s, s + got[4], kind, got[2]))
        flags |= got[3]
        if got[5] is not None:
            section = got[5]
    if flags & _CANDIDATE:
        out.append((start, end, tokens, flags, opening_section))
    return out


def scan_locations(text: str, vocab: Vocabulary, start: int = 0, end: int | None = None) -> list[tuple]:
    """The location mentions of `scan` in `text[start:end]`, in order (coordinated sides read as
    lung locations: see `_coordinate_sides`)."""
    kinds = vocab.location_tokens
    out = []
    for m in vocab.location_regex.finditer(text, start, len(text) if end is None else end):
        term = m.group()
        data = kinds.get(term) or _location_data(vocab, term)
        s = m.start()
        out.append((s, s + len(term), LOC, data))
    if len(out) > 1:
        _coordinate_sides(text, out)
    return out


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
    out: list[str] = []
    if opener is not None:
        m = regex.match(text, start, end)
        if m is not None:  # the one location that can sort before the header: it starts where it does
            term = m[0]
            data = table.get(term) or _location_data(vocab, term)
            if not (start, start + len(term), LOC, data) < opener:
                out.append(data[0])
            start = m.end()
    for term in regex.findall(text, start, end):
        out.append((table.get(term) or _location_data(vocab, term))[0])
    if "side_right" in out or "side_left" in out:
        for k in range(len(out) - 1):
            if out[k] in _SIDE_LUNG and out[k + 1] in _SIDED_LUNG:
                return None
    return out


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
