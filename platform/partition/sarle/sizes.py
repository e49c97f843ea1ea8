"""Measurements in report text: "12 mm", "1.2 x 0.8 cm", "5-7 mm".

`read_size` reads one from word tokens (for nodulegr1cm and lymphadenopathy, paper 000);
`canonical_measurements` reduces a sentence's measurements to their size classes for the sentence
cache (labels depend on sizes only through the size rules' thresholds).
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(cm|mm|centimeters?|millimeters?)?$")
_DIMS = re.compile(r"^(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)(?:x(\d+(?:\.\d+)?))?(cm|mm)?$")
_UNITS = {"cm": 1.0, "centimeter": 1.0, "centimeters": 1.0, "mm": 0.1, "millimeter": 0.1, "millimeters": 0.1}
_DIM_WORDS = frozenset({"x", "by"})
_NUMBER_IN_TOKEN = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_UNIT_SUFFIX = re.compile(r"(cm|mm|centimeters?|millimeters?)$")
_DIGIT = re.compile(r"\d")


def read_size_at(text: str, start: int, stop: int) -> tuple[int, float, float] | None:
    """`read_size` of the words of `text[start:stop]` (single spaces between them), from the first:
    (character end of the measurement, largest, smallest cm), or None. Splits only the first few
    words: a measurement is short, and the rest of a long sentence need not be cut into words."""
    simple = _SIMPLE_SIZE.match(text, start, stop + 1)
    if simple is not None:  # "12 mm", "1.5 cm" (most measurements): read_size stops at the unit
        value = float(simple[1])
        cm = value if simple[2][0] == "c" else value / 10
        return simple.end(), cm, cm
    if _SIZE_SHAPE.match(text, start, stop + 1) is None:
        return None  # most numbers that are no measurement ("1 .", "series 3") end here, in C
    rest = text[start:stop]
    words = rest.split(" ", _FEW)
    if len(words) > _FEW:
        words.pop()  # the unsplit remainder
        size, looked = _read_size(words, 0)
        if looked >= len(words):  # it could have read further: read all of it
            words = rest.split(" ")
            size, _ = _read_size(words, 0)
    else:
        size, _ = _read_size(words, 0)
    if size is None:
        return None
    return start + len(" ".join(words[: size[0]])), size[1], size[2]


_FEW = 12
# One number word and a unit word: what read_size reads from such words whatever follows them.
_SIMPLE_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+) (cm|mm|centimeters?|millimeters?)(?= )")
# What every measurement read_size reads starts with: number, dimension and "x"/"by" characters,
# then a unit (as a word or a suffix) and the space after it (text[stop] is a space).
_SIZE_SHAPE = re.compile(r"(?:[0-9.x ]|by)*(?:cm|mm|centimeters?|millimeters?) ")


def read_size(words: list[str], i: int) -> tuple[int, float, float] | None:
    """A measurement starting at words[i]: (end index, largest, smallest dimension in cm), or None.

    Reads "12 mm", "1.5cm", "1.2 x 0.8 cm", "1.2x0.8 cm" and ranges "5-7 mm" (tokenised "5 7 mm",
    counted as one dimension, its upper end). A number without a unit is no measurement.
    """
    return _read_size(words, i)[0]


def _read_size(words: list[str], i: int) -> tuple[tuple[int, float, float] | None, int]:
    """read_size, and an index past every word it looked at (its decisions depend on no other)."""
    dims: list[float] = []
    unit = None
    j = i
    n = len(words)
    ranged = False
    while j < n:
        w = words[j]
        m = _NUMBER.match(w) or None
        if m is None:
            d = _DIMS.match(w)
            if d is None:
                break
            dims.extend(float(x) for x in d.groups()[:3] if x)
            unit = d.group(4)
            j += 1
        else:
            if dims and not words[j - 1] in _DIM_WORDS:
                ranged = True  # "5 7 mm" from "5-7 mm"
            dims.append(float(m.group(1)))
            unit = m.group(2)
            j += 1
        if unit:
            break
        if j < n and words[j] in _UNITS:
            unit = words[j]
            j += 1
            break
        if j + 1 < n and words[j] in _DIM_WORDS:
            j += 1
            continue
        if j < n and not (_NUMBER.match(words[j]) or _DIMS.match(words[j])):
            break
    looked = j + 2  # it read words[j] at most, and asked whether words[j + 1] exists
    if not unit or not dims:
        return None, looked
    scale = _UNITS[unit]
    if ranged:
        dims = [max(dims)]
    cm = [d * scale if scale == 1.0 else d / 10 for d in dims]
    return (j, max(cm), min(cm)), looked


def canonical_measurements(chunk: str, thresholds: tuple[float, ...]) -> str:
    """`chunk` with every measurement's numbers replaced by a representative of their size class.

    Findings depend on a measurement only through comparisons with the size rules' thresholds
    ("> 1 cm"), and `read_size` reads the rewritten tokens the same way (same tokens, same order
    of magnitudes between thresholds), so labels are unchanged; what changes is that "7 mm nodule"
    and "4 mm nodule" become one sentence for the sentence cache.
    """
    if not thresholds or _DIGIT.search(chunk) is None:
        return chunk
    words = chunk.split()
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        if w[0].isdigit() or (w[0] == "." and len(w) > 1):
            size = read_size(words, i)
            if size is not None:
                end = size[0]
                scale = next(
                    (_UNITS[u] for t in words[i:end] for u in ([t] if t in _UNITS else _UNIT_SUFFIX.findall(t))), 1.0
                )
                for j in range(i, end):
                    words[j] = _NUMBER_IN_TOKEN.sub(lambda m: _representative(float(m.group()), scale, thresholds), words[j])
                i = end
                continue
        i += 1
    return " ".join(words)


def _representative(value: float, scale: float, thresholds: tuple[float, ...]) -> str:
    cm = value * scale if scale == 1.0 else value / 10
    k = sum(cm > t for t in thresholds)  # how many thresholds it exceeds
    if k == 0:
        rep = thresholds[0] / 2
    elif k == len(thresholds):
        rep = thresholds[-1] * 2
    else:
        rep = (thresholds[k - 1] + thresholds[k]) / 2
    return f"{rep if scale == 1.0 else rep * 10:g}"
