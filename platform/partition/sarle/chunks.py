"""SARLE step 1, first part: a report's word tokens and its sentence chunks.

A report is lower-cased and cut into word tokens (trie.tokens), and into chunks at ". ? !" (not
after an abbreviation such as "approx.") and at line starts that begin with a capital, digit or
bullet. A chunk is its tokens joined by single spaces.
"""

from __future__ import annotations

import re

from ctplatform.partition.sarle.trie import BLANK_TABLE, PAD, STOPS
from ctplatform.partition.sarle.trie import tokens as split_tokens

_LINE_START = re.compile(r"\n(?=[ \t]*(?:[A-Z0-9]|[-*\u2022]))")
_ABBREVIATIONS = frozenset({"approx", "vs", "e.g", "i.e", "eg", "ie", "dr", "mr", "mrs", "ms", "fig", "cf"})


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
    for part in parts:  # its last word is one (tested on the parts' ends, without cutting words)
        if part.endswith(_ABBREVIATION_ENDS) or part in _ABBREVIATIONS:
            return _report_chunks_by_parts(text)
    return joined, parts


def _report_chunks_by_parts(text: str) -> tuple[str, list[str]]:
    parts = _chunks(_joined(_LINE_START.sub(" . ", text)))
    return " " + " . ".join(parts) + " ", parts


_LINE_START_AFTER_TEXT = re.compile(r"\n(?<!\.\n)" + _LINE_START.pattern[2:])  # "\n" first: found in C


_PADDED = tuple((ch, f" {ch} ") for ch in PAD)


def _joined(text: str) -> str:
    """`" ".join(trie.tokens(text.lower()))` with a space before and after, from C string operations."""
    t = text.lower().translate(BLANK_TABLE)
    if "?" in t or "!" in t or "\u2022" in t:
        t = STOPS.sub(" . ", t)
    if "\u00d7" in t:
        t = t.replace("\u00d7", " x ")
    for ch, spaced in _PADDED:
        if ch in t:
            t = t.replace(ch, spaced)
    t = _FULL_STOP.sub(" . ", t)  # t.replace(". ", " . "), in half the time (a two-character search)
    if t.endswith("."):
        t = t[:-1] + " ."
    # All whitespace is a space now (BLANK_TABLE): collapse runs of spaces in one regex pass (about
    # half the time of repeated str.replace passes, which search for a two-character string).
    return f" {_SPACE_RUN.sub(' ', t).strip(' ')} "


_SPACE_RUN = re.compile("  +")
_FULL_STOP = re.compile(r"\. ")


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
