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

from ctplatform.labels import LOCATION_GROUP
from ctplatform.partition.sarle.phrases import ABN, ANCHOR, EXCL, LOC, PAIR, SIZE, WORD, Sentence
from ctplatform.partition.sarle.vocabulary import LOCATION_KINDS, AbnormalityRule, Vocabulary

_SIDED = {"right_lung": ("right_lung",), "left_lung": ("left_lung",), "both_lungs": ("right_lung", "left_lung")}
_SIDE_WORDS = {"side_right": ("right_lung",), "side_left": ("left_lung",), "side_both": ("right_lung", "left_lung")}
_LUNG_SIDES = frozenset({"right_lung", "left_lung"})
_SECTION_KINDS = frozenset({"right_lung", "left_lung", "lung", "heart", "great_vessel", "mediastinum"})
_NON_LUNG = ("heart", "great_vessel", "mediastinum")
_SHORT_AXIS_REACH = 4  # tokens between a measurement and "short axis"


def _locate(kinds: list[str], sides: set[str], groups: frozenset[str], listed: frozenset[str] = frozenset()) -> list[str]:
    """Locations (labels.parquet names) of `kinds` that fit `groups`; [] when none fits.

    `sides` are side words of the finding's own phrase (used when no location term has a side);
    `listed` are sides from a list around it ("moderate right and small left effusions").
    """
    out: list[str] = []
    if "lung" in groups:
        sided: set[str] = set(listed) if any(group_of(k) == "lung" for k in kinds) else set()
        lung = False
        for k in kinds:
            if k in _SIDED:
                sided.update(_SIDED[k])
            elif k == "lung":
                lung = True
        if sided:
            out.extend(sorted(sided))
        elif lung:
            out.extend(sorted(sides) if sides else ["lung"])
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
    abn: dict[int, list[str]] = {}  # per segment (only segments that hold something)
    locs: dict[int, list[str]] = {}
    sides: dict[int, set[str]] = {}
    excl: dict[int, set[str]] = {}
    pairs: dict[int, dict[tuple[str, int], set[int]]] = {}
    anchors: list[tuple[int, int, int, str]] = []  # (start, end, seg, name)
    mentions: list[tuple[int, int, int, bool]] = []  # (start, end, seg, is a term) of kept findings
    sizes: list[tuple[int, int, int, float, float]] = []
    words: list[tuple[int, int, str]] = []
    for s, e, k, data, sg, _ in sent.kept:
        if k == LOC:
            kind = data[0]
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
        elif k == ABN:
            got = abn.get(sg)
            if got is None:
                abn[sg] = [data[0]]
            else:
                got.append(data[0])
            mentions.append((s, e, sg, True))
        elif k == PAIR:
            pairs.setdefault(sg, {}).setdefault((data[0], data[1]), set()).add(data[2])
            mentions.append((s, e, sg, False))
        elif k == EXCL:
            excl.setdefault(sg, set()).add(data[0])
        elif k == ANCHOR:
            anchors.append((s, e, sg, data[0]))
        elif k == SIZE:
            sizes.append((s, e, sg, data[0], data[1]))
        elif k == WORD:
            words.append((s, sg, data[0]))
    if not mentions:
        return _NOTHING
    for sg, got in pairs.items():
        done = [name for (name, _), halves in got.items() if len(halves) == 2]
        if done:
            abn.setdefault(sg, []).extend(done)
    if sizes and anchors:
        terms = [m for m in mentions if m[3]]
        for sg, names in _measured(sizes, anchors, terms, words, vocab, sent):
            abn.setdefault(sg, []).extend(names)
    if excl:
        for sg in list(abn):
            if sg in excl:
                names = [x for x in abn[sg] if x not in excl[sg]]
                if names:
                    abn[sg] = names
                else:
                    del abn[sg]
    if not abn:
        return _NOTHING
    for sg, names in abn.items():
        if len(names) > 1:
            abn[sg] = list(dict.fromkeys(names))

    clause_of = sent.segment_clause
    with_findings = sorted(abn)
    own: dict[int, list[str]] = {sg: list(locs.get(sg, ())) for sg in with_findings}
    listed: dict[int, set[str]] = {}
    lone = [i for i in {*locs, *sides, *pairs} if i not in abn]
    for i in sorted(lone):  # segments without findings join a neighbour
        cl = clause_of[i]
        before = [j for j in with_findings if j < i and clause_of[j] == cl]
        target = before[-1] if before else next((j for j in with_findings if j > i and clause_of[j] == cl), None)
        if target is None:
            continue
        own[target].extend(locs.get(i, ()))
        if i in sides:
            listed.setdefault(target, set()).update(sides[i])
        for key, got in pairs.get(i, {}).items():  # "coronary artery and aortic calcifications"
            merged = pairs.setdefault(target, {}).setdefault(key, set())
            if len(merged) < 2 and len(merged | got) == 2:
                abn[target].append(key[0])
            merged |= got

    rules = vocab.rules
    placed: dict[tuple[int, str], list[str]] = {}
    pending: list[tuple[int, str]] = []
    located = sorted(locs)
    for i in with_findings:
        borrowed: list[str] = []
        if not own[i]:
            cl = clause_of[i]
            after = [j for j in located if j > i and clause_of[j] == cl]
            before = [j for j in located if j < i and clause_of[j] == cl]
            if after:
                borrowed = locs[after[0]]
            elif before:
                borrowed = locs[before[-1]]
        own_sides = sides.get(i, set())
        extra = frozenset(listed.get(i, ()))
        for name in abn[i]:
            got = _first_pass(rules[name], own[i], borrowed, own_sides, extra)
            if got is None:
                pending.append((i, name))
            else:
                placed[(i, name)] = got
    for attempt in range(2):  # fallbacks; the second round lets defaults feed co-occurrence
        still: list[tuple[int, str]] = []
        for i, name in pending:
            got = _fallback(rules[name], i, placed, sent, sides.get(i, set()) | listed.get(i, set()), attempt == 0)
            if got is None:
                still.append((i, name))
            else:
                placed[(i, name)] = got
        pending = still

    _interpretations_take_sides(placed, words)
    out: set[tuple[str, str]] = set()
    for (_, name), locations in placed.items():
        implies = rules[name].implies
        for loc in locations:
            out.add((name, loc))
            for implied in implies:
                if _in_group(loc, rules[implied].groups):
                    out.add((implied, loc))
    return frozenset(out)


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
    sent: Sentence,
    sides: set[str],
    use_defaults: bool,
) -> list[str] | None:
    """Steps 3-6 for a mention that steps 1-2 did not place."""
    groups = rule.groups
    if not rule.defined:
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
    deleted = [k for k in sent.deleted_locations if k != "outside_chest"]
    found = _locate(deleted, sides, groups)
    if found:
        return found
    if sent.section in _SECTION_KINDS:
        found = _locate([sent.section], sides, groups)
        if found:
            return found
    elif sent.section == "other":
        return []
    if rule.defined:
        return _place_by_group(next(iter(groups)), sides)
    if rule.default is not None:
        return _place_by_group(rule.default, sides)
    return None


def _measured(
    sizes: list[tuple[int, int, int, float, float]],
    anchors: list[tuple[int, int, int, str]],
    mentions: list[tuple[int, int, int, bool]],
    words: list[tuple[int, int, str]],
    vocab: Vocabulary,
    sent: Sentence,
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
    count = sent.text.count

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
            if any(m[2] == sg for m in mentions):
                continue  # "3 cm mass and a 4 mm nodule": the 3 cm is the mass's
            same = list(range(len(anchors)))
            host = sg
        best = min(same, key=lambda i: (gap(s, e, anchors[i][0], anchors[i][1]), i))
        near_short = any(gap(s, e, a, b) <= _SHORT_AXIS_REACH for a, b in shorts)
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
                own = [m[3][0] for m in sent.kept if m[2] == ABN and m[0] == a_start]
                out.append((host, [*own, name]))
    return out
