"""SARLE steps 2 and 3: which abnormalities the kept phrases name, and where they are.

Within a sentence every abnormality mention is placed, in this order, by:
1. the location terms of its own segment (plus segments that hold only locations, which attach to
   the nearest segment with a finding in the same clause: "nodules in the right upper lobe and
   left lower lobe"), restricted to the organ groups it has labels in; a segment that names only
   organs outside the chest, or (for a generic finding) only other organs, removes it;
2. the locations of the nearest segment of its clause that has some ("atelectasis and
   consolidation in the left lower lobe");
3. for a generic finding, the locations of the other findings of its segment ("calcified
   granuloma in the left lung" -> calcification in the left lung), else of its sentence;
4. locations in the deleted part of the sentence ("normal caliber aorta with calcified plaque");
5. the section header's location ("LUNGS: 4 mm nodule");
6. its definition ("pneumonia" -> lung) or its default organ.
A lung finding carries the sides named by its location terms, else the side words of its phrase
("left pneumonia"), else `lung` (side not stated); in a phrase that interprets the sentence's
other findings ("..., consistent with pulmonary edema") it takes their sides.
"""

from __future__ import annotations

from collections.abc import Sequence

from ctplatform.labels import LOCATION_GROUP
from ctplatform.partition.sarle.phrases import Sentence
from ctplatform.partition.sarle.vocabulary import LOCATION_KINDS, AbnormalityRule, Vocabulary

_SIDED = {"right_lung": ("right_lung",), "left_lung": ("left_lung",), "both_lungs": ("right_lung", "left_lung")}
_SIDE_WORDS = {"side_right": ("right_lung",), "side_left": ("left_lung",), "side_both": ("right_lung", "left_lung")}
_LUNG_SIDES = frozenset({"right_lung", "left_lung"})
_SECTION_KINDS = frozenset({"right_lung", "left_lung", "lung", "heart", "great_vessel", "mediastinum"})
_NON_LUNG = ("heart", "great_vessel", "mediastinum")
_SHORT_AXIS_REACH = 4  # tokens between a measurement and "short axis"


def _locate(
    kinds: list[str], sides: set[str] | frozenset[str], groups: frozenset[str], listed: set[str] | frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Locations (labels.parquet names) of `kinds` that fit `groups`; () when none fits.

    `sides` are side words of the finding's own phrase (used when no location term has a side);
    `listed` are sides from a list around it ("moderate right and small left effusions"), which
    count when some location term names the lung. A lookup table over the vocabulary's symbols
    (the answer depends on the set of kinds only), filled as combinations occur: at most a few
    thousand entries, whatever the text.
    """
    if not kinds:
        return ()
    key = (frozenset(kinds), groups, frozenset(sides) if sides else None, frozenset(listed) if listed else None)
    got = _LOCATED.get(key)
    if got is None:
        got = _LOCATED[key] = tuple(_locate_kinds(key[0], sides, groups, listed))
    return got


_LOCATED: dict[tuple, tuple[str, ...]] = {}


def _locate_kinds(kinds: frozenset[str], sides: set[str] | frozenset[str], groups: frozenset[str], listed: set[str] | frozenset[str]) -> list[str]:
    out: list[str] = []
    if "lung" in groups:
        sided: set[str] | None = None
        lung = False
        for k in kinds:
            got = _SIDED.get(k)
            if got is not None:
                if sided is None:
                    sided = set(got)
                else:
                    sided.update(got)
            elif k == "lung":
                lung = True
        if listed and (sided or lung):
            sided = listed | (sided or set())
        if sided:
            out = sorted(sided)
        elif lung:
            out = sorted(sides) if sides else ["lung"]
        if len(groups) == 1:
            return out
    for g in _NON_LUNG:
        if g in groups and g in kinds:
            out.append(g)
    return out


def group_of(kind: str) -> str | None:
    return LOCATION_KINDS.get(kind)


def _in_group(location: str, groups: frozenset[str]) -> bool:
    return LOCATION_GROUP[location] in groups


def _place_by_group(group: str, sides: set[str]) -> list[str]:
    if group == "lung":
        return sorted(sides) if sides else ["lung"]
    return [group]


def _first_pass(
    rule: AbnormalityRule, own: list[str], borrowed: list[str], sides: set[str], listed: frozenset[str]
) -> list[str] | None:
    """Steps 1-2. Returns locations, [] to drop the mention, None when still unknown."""
    groups = rule.groups
    found = _locate(own, sides, groups, listed)
    if found:
        return found
    if own and ("outside_chest" in own or not rule.defined):
        return []
    found = _locate(borrowed, sides, groups, listed)
    if found:
        return found
    if borrowed and (not rule.defined or all(k == "outside_chest" for k in borrowed)):
        return []
    return None


_NOTHING: frozenset[tuple[str, str]] = frozenset()


def sentence_findings(sent: Sentence, vocab: Vocabulary) -> frozenset[tuple[str, str]]:
    """(abnormality, location) pairs one classified sentence states."""
    if not sent.abnormalities and not sent.pairs:
        return _NOTHING
    measures = (sent.sizes, sent.anchors, sent.text, sent.terms_at) if sent.sizes and sent.anchors else None
    locs, sides = split_locations(sent.locations)
    out: set[tuple[str, str]] = set()
    segment_findings(
        sent.abnormalities, sent.pairs, measures, sent.exclusions, sent.words,
        locs, sides, sent.segment_clause, sent.deleted_locations, sent.section, vocab, out,
    )  # fmt: skip
    return frozenset(out) if out else _NOTHING


def split_locations(locations: dict[int, list[str]]) -> tuple[dict[int, list[str]], dict[int, set[str]]]:
    """Per segment: the location kinds (in order) and the lung sides of its side words."""
    locs: dict[int, list[str]] = {}
    sides: dict[int, set[str]] = {}
    for sg, kinds in locations.items():
        for kind in kinds:
            add_location(locs, sides, sg, kind)
    return locs, sides


def add_location(locs: dict[int, list[str]], sides: dict[int, set[str]], sg: int, kind: str) -> None:
    """Segment `sg`'s location kind `kind`: a side word adds its lung sides, any other kind is kept in order."""
    side = _SIDE_WORDS.get(kind)
    if side is None:
        got = locs.get(sg)
        if got is None:
            locs[sg] = [kind]
        else:
            got.append(kind)
    elif sg in sides:
        sides[sg].update(side)
    else:
        sides[sg] = set(side)


def segment_findings(
    abnormalities: dict[int, list[str]],
    pairs: dict[int, dict[tuple[str, int], set[int]]],
    measures: tuple[list, list, str, list[tuple[int, str]]] | None,
    exclusions: dict[int, set[str]],
    words: list[tuple[int, int, str]],
    locs: dict[int, list[str]],
    sides: dict[int, set[str]],
    clause_of: list[int],
    deleted_locations: list[str],
    section: str,
    vocab: Vocabulary,
    out: set[tuple[str, str]],
) -> None:
    """sentence_findings over a sentence's kept mentions by segment (see Sentence), added to
    `out`: `measures` = (sizes, anchors, text, terms_at) when it has both sizes and anchors, else
    None; `locs`, `sides` from split_locations; `clause_of` the clause of each segment."""
    abn = dict(abnormalities)  # per segment (only segments that hold something); lists never mutated
    for sg, by_pair in pairs.items():
        for (name, _), halves in by_pair.items():
            if len(halves) == 2:
                abn[sg] = [*abn.get(sg, ()), name]
    if measures is not None:
        sizes, anchors, text, terms_at = measures
        for sg, names in _measured(sizes, anchors, set(abnormalities), words, vocab, text, terms_at):
            abn[sg] = [*abn.get(sg, ()), *names]
    if exclusions:
        for sg in list(abn):
            if sg in exclusions:
                names = [x for x in abn[sg] if x not in exclusions[sg]]
                if names:
                    abn[sg] = names
                else:
                    del abn[sg]
    if not abn:
        return
    for sg, names in abn.items():
        if len(names) > 1:
            abn[sg] = list(dict.fromkeys(names))

    rules = vocab.rules
    if len(clause_of) == 1:  # one segment (most sentences): its own locations or none
        one_segment_findings(abn[0], locs.get(0, []), sides.get(0, _NO_SIDES), deleted_locations, section, rules, out)
        return
    placed: dict[tuple[int, str], list[str]] = {}
    pending: list[tuple[int, str]] = []
    listed: dict[int, set[str]] = {}
    no_sides: set[str] = set()
    _place_by_segments(abn, locs, sides, pairs, listed, clause_of, rules, placed, pending)
    for attempt in range(2) if pending else ():  # fallbacks; the second round lets defaults feed co-occurrence
        still: list[tuple[int, str]] = []
        for i, name in pending:
            got = _fallback(
                rules[name], i, placed, deleted_locations, section,
                sides.get(i, no_sides) | listed.get(i, no_sides), attempt == 0,
            )  # fmt: skip
            if got is None:
                still.append((i, name))
            else:
                placed[(i, name)] = got
        pending = still

    if words:
        _interpretations_take_sides(placed, words)
    _with_implied(placed, rules, out)


_NO_SIDES: frozenset[str] = frozenset()


def one_segment_findings(
    names: list[str],
    own: list[str],
    sides: set[str] | frozenset[str],
    deleted_locations: list[str],
    section: str,
    rules: dict[str, AbnormalityRule],
    out: set[tuple[str, str]],
) -> None:
    """sentence_findings of a sentence of one segment, added to `out`: the abnormalities `names` (distinct, after
    pairs, sizes and exclusions), the location kinds `own` and side words `sides` kept in it, the
    location kinds its cues deleted and its section. Steps 1-2 reduce to its own locations (there is
    no other segment to borrow from or to interpret).

    A lookup table over the vocabulary's symbols, like `_locate`'s: the answer depends only on
    these names, kinds and section (no text, no positions), so each combination is worked out
    once per process (the table is emptied when it reaches _TABLE_SIZE entries)."""
    key = (id(rules), tuple(names), tuple(own), frozenset(sides) if sides else None, tuple(deleted_locations), section)
    got = _ONE_SEGMENT.get(key)
    if got is None:
        if len(_ONE_SEGMENT) >= _TABLE_SIZE:
            _ONE_SEGMENT.clear()
        _RULES[id(rules)] = rules  # keeps the id taken in keys from being reused
        found: set[tuple[str, str]] = set()
        _one_segment_findings(names, own, sides, deleted_locations, section, rules, found)
        got = _ONE_SEGMENT[key] = frozenset(found)
    out.update(got)


_ONE_SEGMENT: dict[tuple, frozenset[tuple[str, str]]] = {}
_RULES: dict[int, dict] = {}
_TABLE_SIZE = 100_000


def _one_segment_findings(
    names: list[str],
    own: list[str],
    sides: set[str] | frozenset[str],
    deleted_locations: list[str],
    section: str,
    rules: dict[str, AbnormalityRule],
    out: set[tuple[str, str]],
) -> None:
    placed: dict[tuple[int, str], list[str]] = {}
    pending: list[str] = []
    for name in names:
        rule = rules[name]
        found = _locate(own, sides, rule.groups) if own else None
        if found:
            placed[(0, name)] = found
        elif own and ("outside_chest" in own or not rule.defined):
            placed[(0, name)] = []
        else:
            pending.append(name)
    for attempt in range(2) if pending else ():  # as in sentence_findings
        still: list[str] = []
        for name in pending:
            got = _fallback(rules[name], 0, placed, deleted_locations, section, sides, attempt == 0)
            if got is None:
                still.append(name)
            else:
                placed[(0, name)] = got
        pending = still
    _with_implied(placed, rules, out)


def _with_implied(
    placed: dict[tuple[int, str], Sequence[str]], rules: dict[str, AbnormalityRule], out: set[tuple[str, str]]
) -> None:
    """Add the placed findings and what they imply (in the locations where the implied abnormality
    has labels) to `out`."""
    add = out.add
    for (_, name), locations in placed.items():
        for loc in locations:
            add((name, loc))
        implies = rules[name].implies
        if implies:
            for loc in locations:
                for implied in implies:
                    if _in_group(loc, rules[implied].groups):
                        add((implied, loc))


def _place_by_segments(
    abn: dict[int, list[str]],
    locs: dict[int, list[str]],
    sides: dict[int, set[str]],
    pairs: dict[int, dict[tuple[str, int], set[int]]],
    listed: dict[int, set[str]],
    clause_of: list[int],
    rules: dict[str, AbnormalityRule],
    placed: dict[tuple[int, str], list[str]],
    pending: list[tuple[int, str]],
) -> None:
    """Steps 1-2 in a sentence of several segments (fills `placed`, `pending` and `listed`)."""
    with_findings = sorted(abn) if len(abn) > 1 else list(abn)
    own: dict[int, Sequence[str]] = locs  # the segments' own locations (a copy if joining adds any)
    lone = {*locs, *sides, *pairs}.difference(abn)
    if lone:
        own = {sg: locs.get(sg, ()) for sg in with_findings}  # lists never mutated
        if not pairs.keys().isdisjoint(lone):  # joining merges pair halves: work on a copy
            pairs = {sg: {key: set(halves) for key, halves in by_pair.items()} for sg, by_pair in pairs.items()}
        _join_lone_segments(sorted(lone), with_findings, clause_of, abn, own, listed, locs, sides, pairs)
    located = sorted(locs) if len(locs) > 1 else list(locs)
    no_sides = _NO_SIDES
    for i in with_findings:
        borrowed: Sequence[str] = ()
        own_i = own.get(i, ())
        if not own_i and located:
            cl = clause_of[i]
            for j in located:  # the nearest segment after it in its clause, else before it
                if j > i and clause_of[j] == cl:
                    borrowed = locs[j]
                    break
            else:
                for j in reversed(located):
                    if j < i and clause_of[j] == cl:
                        borrowed = locs[j]
                        break
        own_sides = sides.get(i, no_sides)
        extra = listed.get(i, no_sides)
        for name in abn[i]:
            got = _first_pass(rules[name], own_i, borrowed, own_sides, extra)
            if got is None:
                pending.append((i, name))
            else:
                placed[(i, name)] = got


def _join_lone_segments(
    lone: list[int],
    with_findings: list[int],
    clause_of: list[int],
    abn: dict[int, list[str]],
    own: dict[int, Sequence[str]],
    listed: dict[int, set[str]],
    locs: dict[int, list[str]],
    sides: dict[int, set[str]],
    pairs: dict[int, dict[tuple[str, int], set[int]]],
) -> None:
    """Segments without findings join a neighbour in their clause (the one before, else after):
    "nodules in the right upper lobe and left lower lobe"."""
    for i in lone:
        cl = clause_of[i]
        before = [j for j in with_findings if j < i and clause_of[j] == cl]
        target = before[-1] if before else next((j for j in with_findings if j > i and clause_of[j] == cl), None)
        if target is None:
            continue
        joined = locs.get(i)
        if joined:
            own[target] = [*own[target], *joined]
        if i in sides:
            listed.setdefault(target, set()).update(sides[i])
        for key, got in pairs.get(i, {}).items():  # "coronary artery and aortic calcifications"
            merged = pairs.setdefault(target, {}).setdefault(key, set())
            if len(merged) < 2 and len(merged | got) == 2:
                abn[target] = [*abn[target], key[0]]
            merged |= got


def _interpretations_take_sides(placed: dict[tuple[int, str], list[str]], words: list[tuple[int, int, str]]) -> None:
    """A lung finding without a side in an interpreting phrase ("..., consistent with pulmonary
    edema") takes the sides of the sentence's other lung findings: it names what they are."""
    interp = {sg for _, sg, tag in words if tag == "interp"}
    if not interp:
        return
    for key, locs in placed.items():
        if key[0] in interp and "lung" in locs:
            sided = {loc for (sg, _), other in placed.items() if sg != key[0] for loc in other if loc in _LUNG_SIDES}
            if sided:
                placed[key] = [loc for loc in locs if loc != "lung"] + sorted(sided)


def _fallback(
    rule: AbnormalityRule,
    seg: int,
    placed: dict[tuple[int, str], list[str]],
    deleted_locations: list[str],
    section: str,
    sides: set[str] | frozenset[str],
    use_defaults: bool,
) -> list[str] | None:
    """Steps 3-6 for a mention that steps 1-2 did not place."""
    groups = rule.groups
    if not rule.defined and placed:
        for same_segment in (True, False):
            near = [
                loc
                for (sg, other), locs in placed.items()
                if (sg == seg) == same_segment and other != rule.name
                for loc in locs
            ]
            near = [loc for loc in dict.fromkeys(near) if _in_group(loc, groups)]
            if near:
                return near
    if not use_defaults:
        return None
    if deleted_locations:
        found = _locate([k for k in deleted_locations if k != "outside_chest"], sides, groups)
        if found:
            return found
    if section in _SECTION_KINDS:
        found = _locate([section], sides, groups)
        if found:
            return found
    elif section == "other":
        return []
    if rule.defined:
        return _place_by_group(next(iter(groups)), sides)
    if rule.default is not None:
        return _place_by_group(rule.default, sides)
    return None


def _measured(
    sizes: list[tuple[int, int, int, float, float]],
    anchors: list[tuple[int, int, int, str]],
    term_segments: set[int],
    words: list[tuple[int, int, str]],
    vocab: Vocabulary,
    text: str,
    terms_at: list[tuple[int, str]],
) -> list[tuple[int, list[str]]]:
    """Size-defined findings ("1.5 cm nodule" -> nodulegr1cm): (segment, names) of each.

    A current measurement (not "previously 12 mm") belongs to the nearest anchor word of its
    segment. In a segment without any finding ("..., the largest measuring 1.4 cm in the
    lingula") it belongs to the nearest anchor of the sentence, and the finding is placed in the
    measurement's segment together with the anchor's own abnormality (that nodule is in the
    lingula). For a short-axis rule, a measurement next to "short axis" is the one that counts for
    its anchor; otherwise the smallest dimension is taken as the short axis.
    """
    # Distances count tokens (not characters), so that the numbers' spelling cannot matter.
    count = text.count

    def gap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
        if a_end <= b_start:
            return count(" ", a_end, b_start)
        if b_end <= a_start:
            return count(" ", b_end, a_start)
        return 0

    assigned: dict[tuple[int, int], list[tuple[float, float, bool]]] = {}
    shorts = [(ws, ws + 1) for ws, _, tag in words if tag == "short"]
    for s, e, sg, largest, smallest in sizes:
        before = [tag for ws, wsg, tag in words if wsg == sg and ws < s and tag in ("prior", "current")]
        if before and before[-1] == "prior":
            continue
        same = [i for i, a in enumerate(anchors) if a[2] == sg]
        host = -1
        if not same:
            if sg in term_segments:
                continue  # "3 cm mass and a 4 mm nodule": the 3 cm is the mass's
            same = list(range(len(anchors)))
            host = sg
        best = same[0] if len(same) == 1 else min(same, key=lambda i: (gap(s, e, anchors[i][0], anchors[i][1]), i))
        near_short = bool(shorts) and any(gap(s, e, a, b) <= _SHORT_AXIS_REACH for a, b in shorts)
        assigned.setdefault((best, host), []).append((largest, smallest, near_short))
    out = []
    for (i, host), measures in assigned.items():
        a_start, _, a_seg, name = anchors[i]
        rule = vocab.rules[name].size
        if rule is None:
            continue
        if rule.axis == "short":
            marked = [m for m in measures if m[2]]
            values = [m[1] for m in (marked or measures)]
        else:
            values = [m[0] for m in measures]
        if max(values) > rule.greater_than_cm:
            if host < 0:
                out.append((a_seg, [name]))
            else:
                own = [name for start, name in terms_at if start == a_start]
                out.append((host, [*own, name]))
    return out
