"""Is a report recognisable clinical English? SARLE's rules read English only: a report in another
language (or not a report at all) yields no findings, which would read as "normal". Such reports
are flagged for review instead.

    reason = unrecognised("肺部未见异常。")   # -> "... 0 of 0 words ..."; None for English

A report is recognised when at least one word is a SARLE vocabulary word (an abnormality,
location or phrase term) and at least `MIN_KNOWN_FRACTION` of its words are vocabulary words or
common English words. Measured on the 491 test sentences (tests/partition/sarle/*.tsv): 489 pass;
the other two are one-word sentences outside the vocabulary ("Cholelithiasis.", "Gynecomastia."),
which as a whole report would rightly go to review. German, French and Chinese reports fail
(tests/faults/).
"""

from __future__ import annotations

import functools
import re

import yaml

from ctplatform.partition.sarle.vocabulary import DATA_DIR

#: Fraction of a report's words that must be English or vocabulary words.
MIN_KNOWN_FRACTION = 0.4
#: Reports shorter than this (in words) are judged on the vocabulary hit alone.
MIN_WORDS_FOR_FRACTION = 4
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
#: Common English function and report words not in the vocabularies.
_ENGLISH = frozenset(
    """a about above after again all also an and any are as at be been before being below between both
    but by can could did do does done during each either few for from further had has have having here
    how if in into is it its itself may might more most much must neither nor of off on once only or
    other our out over per same seen shall should since so some such than that the their them then
    there these they this those through to too under until up upon very was we were what when where
    which while who whom why will with within would yet again appears appear appearance noted note
    noted observed identified demonstrated evidence finding findings impression exam examination study
    comparison compared prior previous patient history clinical indication technique contrast
    intravenous axial images image imaging reconstruction reconstructions obtained performed chest
    abdomen pelvis ct scan scans series dose protocol acquired acquisition since interval stable
    unchanged change changes new size sizes measuring measures measure measured mm cm approximately
    about likely unlikely suggest suggests suggestive consistent compatible possibly probable probably
    recommend recommended follow up visualized visualised portions portion included partially
    limited otherwise remaining remainder level levels region regions area areas structure structures
    normal within limits degree mild mildly moderate moderately severe severely small large tiny
    minimal trace right left bilateral bilaterally upper lower middle mid anterior posterior lateral
    medial superior inferior base bases apex apical dependent diffuse diffusely focal scattered
    multiple several single few number
    """.split()
)


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


@functools.lru_cache(maxsize=1)
def vocabulary_words() -> frozenset[str]:
    """Every word of every term in the SARLE vocabulary files (stems without their '*')."""
    words: set[str] = set()
    for name in ("abnormalities.yaml", "locations.yaml", "phrases.yaml"):
        data = yaml.safe_load((DATA_DIR / name).read_text())
        for s in _strings(data):
            words.update(w.lower() for w in _WORD.findall(s.replace("*", "")) if len(w) > 1)
    return frozenset(words)


def _known(word: str, vocab: frozenset[str]) -> bool:
    if word in vocab or word in _ENGLISH:
        return True
    # plural / simple inflections of a vocabulary word (nodules, effusions, opacities, thickened)
    for suffix in ("s", "es", "ies", "ed", "d", "ing", "al", "ally", "ly"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            if stem in vocab or stem + "y" in vocab or stem + "e" in vocab:
                return True
    return False


def unrecognised(text: str) -> str | None:
    """None when `text` reads as clinical English; otherwise the reason (counts only, no text)."""
    vocab = vocabulary_words()
    words = [w.lower() for w in _WORD.findall(text)]
    ascii_words = [w for w in words if w.isascii()]
    hits = sum(w in vocab for w in ascii_words)
    known = sum(_known(w, vocab) for w in ascii_words)
    fraction = known / len(words) if words else 0.0
    if hits and (len(words) < MIN_WORDS_FOR_FRACTION or fraction >= MIN_KNOWN_FRACTION):
        return None
    return (
        f"no recognisable clinical English ({known} of {len(words)} words known, {hits} vocabulary terms): "
        "another language or not a report; flagged for review, not labelled (SARLE reads English only)"
    )
