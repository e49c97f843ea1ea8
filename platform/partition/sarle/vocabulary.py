"""Load SARLE's vocabularies (platform/data/sarle/*.yaml) and compile them once into word tries.

Two tries scan a tokenised report:
- the phrase trie finds everything steps 1 and 2 need: negation/normality cues, clause and segment
  boundaries, abnormality terms, co-occurring pair words, exclusions, size anchors, words around
  measurements, interpretation words and section headers;
- the location trie finds location terms and side words (step 3).
Each trie value says what a term means, e.g. ("abn", "nodule"), ("pair", "cardiomegaly", 0, 1),
("cue", "forward"), ("bound", 1, "and"), ("header", "lung"); location values are location kinds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ctplatform.labels import all_labels
from ctplatform.partition.sarle.trie import WordTrie, trie_alternatives, trie_regex, validate_term

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "sarle"

#: Location kinds of locations.yaml and the organ group each belongs to (None: side words).
LOCATION_KINDS: dict[str, str] = {
    "right_lung": "lung",
    "left_lung": "lung",
    "both_lungs": "lung",
    "lung": "lung",
    "heart": "heart",
    "great_vessel": "great_vessel",
    "mediastinum": "mediastinum",
    "outside_chest": "outside_chest",
}
SIDE_KINDS: dict[str, str] = {"right": "side_right", "left": "side_left", "both": "side_both"}
SCOPES: tuple[str, ...] = ("forward", "backward", "clause", "segment", "keep")
SECTION_CONTEXTS: tuple[str, ...] = (
    "skip", "none", "mixed", "right_lung", "left_lung", "lung", "heart", "great_vessel", "mediastinum", "other",
)

# Boundary levels: a segment ends at level >= 1, the scope of a forward cue at >= 2, a clause at >= 3.
SEGMENT, NEGATION_STOP, CLAUSE, SENTENCE = 1, 2, 3, 4

@dataclass(frozen=True)
class SizeRule:
    """An abnormality defined by a measurement of an anchor word ("nodule" > 1 cm)."""

    anchors: tuple[str, ...]
    greater_than_cm: float
    axis: str  # "longest" or "short"


@dataclass(frozen=True)
class AbnormalityRule:
    """How one abnormality name is found and located."""

    name: str
    groups: frozenset[str]  # organ groups it has a label in (abnormalities.csv)
    defined: bool  # its definition places it in its organ ("pneumonia" -> lung)
    default: str | None  # group used when no location is found
    implies: tuple[str, ...]
    size: SizeRule | None
    n_pairs: int


@dataclass
class Vocabulary:
    """The compiled vocabularies. Build with `load_vocabulary()`."""

    rules: dict[str, AbnormalityRule]
    phrases: WordTrie
    locations: WordTrie
    phrase_regex: re.Pattern[str]  # over " ".join(tokens): terms, numbers, punctuation, "non X"
    location_regex: re.Pattern[str]
    clause_starters: WordTrie  # words after ", and" that start a new clause
    negation_stop_after_comma: frozenset[str]  # ", with": ends a forward cue's scope
    abnormality_terms: dict[str, tuple[str, ...]]  # name -> terms (for the medspaCy baseline)
    pair_terms: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]]
    location_terms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> terms
    size_thresholds: tuple[float, ...] = ()  # every size rule's threshold (cm), sorted
    pair_index: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, pair number) -> j
    _meanings: dict[str, tuple] = field(default_factory=dict)
    _kinds: dict[str, str] = field(default_factory=dict)
    token_cache: dict[str, tuple] = field(default_factory=dict)  # scanning.py: matched text -> tokens
    location_tokens: dict[str, tuple[str]] = field(default_factory=dict)  # matched text -> (kind,)
    scan_entries: dict[str, tuple] = field(default_factory=dict)  # scanning.scan_report: matched text -> its entry
    phrase_split: re.Pattern[str] | None = None  # phrase_regex in one capture group (scanning.scan_report)
    location_split: re.Pattern[str] | None = None  # location_regex in one capture group (scanning.scan_locations)
    header_locations: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scanning.location_kinds: header -> kinds

    def meanings(self, text: str) -> tuple:
        """Values of the phrase term spelled `text` (space-separated tokens), cached."""
        got = self._meanings.get(text)
        if got is None:
            got = self._meanings[text] = _exact(self.phrases, text)
        return got

    def location_kind(self, text: str) -> str:
        """Location kind of the location term spelled `text`, cached."""
        got = self._kinds.get(text)
        if got is None:
            values = _exact(self.locations, text)
            got = self._kinds[text] = values[0] if values else ""
        return got


def _exact(trie: WordTrie, text: str) -> tuple:
    words = text.split()
    hit = trie.match(words, 0, trie.starts(words[0])) if words else None
    return tuple(hit[1]) if hit is not None and hit[0] == len(words) else ()


def _as_terms(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of terms")
    for t in value:
        if not isinstance(t, str):
            # YAML reads bare no/yes/on/off as booleans and digits as numbers.
            raise ValueError(f"{where}: {t!r} is not text; quote it (e.g. \"no\")")
    for t in value:
        try:
            validate_term(t)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"SARLE vocabulary file {path} is missing (reinstall ctplatform)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


class _TermTable:
    """Collects (term, meaning) pairs before they go into the phrase trie."""

    def __init__(self) -> None:
        self.terms: dict[str, list[tuple]] = {}

    def add(self, term: str, meaning: tuple) -> None:
        self.terms.setdefault(term, []).append(meaning)

    def trie(self) -> WordTrie:
        trie = WordTrie()
        for term, meanings in self.terms.items():
            for m in meanings:
                trie.add(term, m)
        return trie


def _abnormality_rules(data: dict, table: _TermTable) -> tuple[dict[str, AbnormalityRule], dict, dict]:
    groups_of: dict[str, set[str]] = {}
    for lab in all_labels():
        groups_of.setdefault(lab.abnormality, set()).add(lab.group)
    missing = sorted(set(groups_of) - set(data))
    unknown = sorted(set(data) - set(groups_of))
    if missing or unknown:
        raise ValueError(
            f"abnormalities.yaml must have one entry per abnormality of abnormalities.csv; "
            f"missing {missing}, unknown {unknown}"
        )
    rules: dict[str, AbnormalityRule] = {}
    any_terms: dict[str, tuple[str, ...]] = {}
    pair_terms: dict[str, tuple] = {}
    for name, entry in data.items():
        where = f"abnormalities.yaml: {name}"
        entry = entry or {}
        extra = sorted(set(entry) - {"terms", "pairs", "exclude", "location", "default", "implies", "size"})
        if extra:
            raise ValueError(f"{where}: unknown keys {extra}")
        groups = frozenset(groups_of[name])
        location = entry.get("location", "generic")
        if location not in ("defined", "generic"):
            raise ValueError(f"{where}: location must be 'defined' or 'generic', not {location!r}")
        if location == "defined" and len(groups) != 1:
            raise ValueError(f"{where}: only an abnormality with one organ group can have location: defined")
        default = entry.get("default")
        if default is not None and default not in groups:
            raise ValueError(f"{where}: default {default!r} is not one of its groups {sorted(groups)}")
        implies = tuple(entry.get("implies") or ())
        for imp in implies:
            if imp not in groups_of:
                raise ValueError(f"{where}: implies unknown abnormality {imp!r}")
        terms = _as_terms(entry.get("terms"), f"{where}: terms")
        for t in terms:
            table.add(t, ("abn", name))
        any_terms[name] = tuple(terms)
        pairs = entry.get("pairs") or []
        parsed_pairs = []
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ValueError(f"{where}: each pair is [[words...], [words...]]")
            first = _as_terms(pair[0], f"{where}: pairs[{k}][0]")
            second = _as_terms(pair[1], f"{where}: pairs[{k}][1]")
            for side, words in enumerate((first, second)):
                for w in words:
                    table.add(w, ("pair", name, k, side))
            parsed_pairs.append((tuple(first), tuple(second)))
        pair_terms[name] = tuple(parsed_pairs)
        for t in _as_terms(entry.get("exclude"), f"{where}: exclude"):
            table.add(t, ("excl", name))
        size = None
        if entry.get("size") is not None:
            s = entry["size"]
            anchors = _as_terms(s.get("anchor"), f"{where}: size.anchor")
            if not anchors or s.get("axis") not in ("longest", "short"):
                raise ValueError(f"{where}: size needs anchor words and axis: longest | short")
            size = SizeRule(tuple(anchors), float(s.get("greater_than_cm", 1.0)), s["axis"])
            for a in anchors:
                table.add(a, ("anchor", name))
        if not terms and not pairs and size is None:
            raise ValueError(f"{where}: give terms, pairs or a size rule")
        rules[name] = AbnormalityRule(
            name=name,
            groups=groups,
            defined=location == "defined",
            default=default,
            implies=implies,
            size=size,
            n_pairs=len(parsed_pairs),
        )
    return rules, any_terms, pair_terms


def _phrase_rules(data: dict, table: _TermTable) -> tuple[WordTrie, frozenset[str]]:
    cues = data.get("cues") or {}
    bad = sorted(set(cues) - set(SCOPES))
    if bad:
        raise ValueError(f"phrases.yaml: unknown cue scopes {bad}; use {list(SCOPES)}")
    for scope in SCOPES:
        for t in _as_terms(cues.get(scope), f"phrases.yaml: cues.{scope}"):
            table.add(t, ("cue", scope))
    b = data.get("boundaries") or {}
    for t in _as_terms(b.get("clause"), "phrases.yaml: boundaries.clause"):
        table.add(t, ("bound", CLAUSE, t))
    for t in _as_terms(b.get("segment"), "phrases.yaml: boundaries.segment"):
        table.add(t, ("bound", SEGMENT, t))
    clause_and = WordTrie()
    for t in _as_terms(b.get("clause_after_comma_and"), "phrases.yaml: boundaries.clause_after_comma_and"):
        clause_and.add(t, True)
    stops = frozenset(_as_terms(b.get("negation_stop_after_comma"), "phrases.yaml: boundaries.negation_stop_after_comma"))
    for key, tag in (
        ("prior_size_words", "prior"),
        ("current_size_words", "current"),
        ("short_axis_words", "short"),
        ("interpretation_words", "interp"),
    ):
        for t in _as_terms(data.get(key), f"phrases.yaml: {key}"):
            table.add(t, (tag,))
    sections = data.get("sections") or {}
    bad = sorted(set(sections) - set(SECTION_CONTEXTS))
    if bad:
        raise ValueError(f"phrases.yaml: unknown section contexts {bad}; use {list(SECTION_CONTEXTS)}")
    for context, headers in sections.items():
        for h in _as_terms(headers, f"phrases.yaml: sections.{context}"):
            table.add(h + ":", ("header", context))
    return clause_and, stops


def _location_trie(data: dict) -> tuple[WordTrie, dict[str, tuple[str, ...]]]:
    bad = sorted(set(data) - set(LOCATION_KINDS) - {"sides"})
    if bad:
        raise ValueError(f"locations.yaml: unknown location kinds {bad}; use {list(LOCATION_KINDS)} and sides")
    kind_of: dict[str, str] = {}

    def put(term: str, kind: str) -> None:
        if ":" in term:  # scanning.location_kinds reads a header's locations apart from its sentence
            raise ValueError(f"locations.yaml: term {term!r}: a location term cannot hold ':' (it ends section headers)")
        if kind_of.get(term, kind) != kind:
            raise ValueError(f"locations.yaml: term {term!r} is listed as both {kind_of[term]} and {kind}")
        kind_of[term] = kind

    for kind in LOCATION_KINDS:
        for t in _as_terms(data.get(kind), f"locations.yaml: {kind}"):
            put(t, kind)
    sides = data.get("sides") or {}
    for side, kind in SIDE_KINDS.items():
        for t in _as_terms(sides.get(side), f"locations.yaml: sides.{side}"):
            put(t, kind)
    trie = WordTrie()
    by_kind: dict[str, list[str]] = {}
    for t, k in kind_of.items():
        trie.add(t, k)
        by_kind.setdefault(k, []).append(t)
    return trie, {k: tuple(v) for k, v in by_kind.items()}


def _check_conflicts(table: _TermTable) -> None:
    """A word that is both a cue/boundary/header and an abnormality term would be ambiguous."""
    structural = {"cue", "bound", "header"}
    for term, meanings in table.terms.items():
        kinds = {m[0] for m in meanings} - {"interp"}  # "not excluded" is a keep cue and an interpretation
        if kinds & structural and len(kinds) > 1:
            raise ValueError(f"term {term!r} is both {sorted(kinds)}: give it one role")


@cache
def load_vocabulary(data_dir: str | None = None) -> Vocabulary:
    """Read and compile the three YAML files (cached per folder)."""
    folder = Path(data_dir) if data_dir else DATA_DIR
    table = _TermTable()
    rules, any_terms, pair_terms = _abnormality_rules(_read_yaml(folder / "abnormalities.yaml"), table)
    clause_and, stops = _phrase_rules(_read_yaml(folder / "phrases.yaml"), table)
    _check_conflicts(table)
    locations, location_terms = _location_trie(_read_yaml(folder / "locations.yaml"))
    for t in table.terms:
        if len(t) == 1 and t in ".0123456789":
            raise ValueError(f"term {t!r}: a term of one digit would be read as a number; remove it")
    # Every mention starts at the space before it (a literal prefix: the engine jumps from space to
    # space in C). One flat alternation, each alternative led by a character or a character class
    # (what CPython's engine tests without entering it), no capture groups: what a match is, is
    # told by its text (scanning.mention_kind).
    size_shape = r"(?=(?:[0-9.x ]|by)*(?:cm|mm|centimeters?|millimeters?) )"
    phrase_source = " (?:" + "|".join(
        [
            *trie_alternatives(table.terms),  # a term
            # the first character of a number that may start a measurement (number, dimension and
            # "x"/"by" characters, then a unit: sizes.read_size_at checks it within the chunk)
            "[0-9]" + size_shape,
            r"\.(?=[0-9])" + size_shape,
            "[;,:()](?= )",  # punctuation (full stops end chunks before this scan)
            "non [a-z]+(?= )",  # "non-calcified" is not calcified
        ]
    ) + ")"
    location_source = trie_regex(list(locations.terms()))
    return Vocabulary(
        rules=rules,
        phrases=table.trie(),
        locations=locations,
        phrase_regex=re.compile(phrase_source),
        phrase_split=re.compile(f"({phrase_source})"),
        location_regex=re.compile(location_source),
        location_split=re.compile(f"({location_source})"),
        clause_starters=clause_and,
        negation_stop_after_comma=stops,
        abnormality_terms=any_terms,
        pair_terms=pair_terms,
        location_terms=location_terms,
        size_thresholds=tuple(sorted({r.size.greater_than_cm for r in rules.values() if r.size is not None})),
        pair_index={key: j for j, key in enumerate((name, k) for name, pairs in pair_terms.items() for k in range(len(pairs)))},
    )
