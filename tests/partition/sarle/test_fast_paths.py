"""The labeller's fast paths give what the plain sentence-by-sentence parse gives.

label_report scans a whole report at once, parses only chunks that can state a finding, takes
shortcuts for negated and single-segment sentences and places locations after classification.
The reference here is the straightforward reading: every chunk scanned with its locations,
classified (classify_chunk) and searched (sentence_findings), the section carried along.
"""

from __future__ import annotations

import random
import re

import pytest

from ctplatform.partition.sarle.chunks import chunks, normalize, report_chunks
from ctplatform.partition.sarle.evaluation import read_gold
from ctplatform.partition.sarle.labeler import SentenceCache, label_report
from ctplatform.partition.sarle.phrases import classify_chunk
from ctplatform.partition.sarle.sizes import read_size, read_size_at
from ctplatform.partition.sarle.term_search import sentence_findings
from ctplatform.partition.sarle.vocabulary import load_vocabulary
from tests.conftest import REPO

HERE = REPO / "tests" / "partition" / "sarle"
HEADERS = ["LUNGS", "PLEURA", "HEART AND PERICARDIUM", "MEDIASTINUM", "VESSELS", "UPPER ABDOMEN", "INDICATION", "IMPRESSION"]


def _reference(text: str, vocab) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    section = "none"
    for chunk in chunks(normalize(text)):
        sents, section = classify_chunk(chunk, section, vocab)
        for sent in sents:
            found |= sentence_findings(sent, vocab)
    return found


def _texts() -> list[str]:
    sentences = [s for name in ("sentences.tsv", "heldout.tsv") for s, _ in read_gold(HERE / name)]
    rng = random.Random(5)
    texts = list(sentences)
    texts += [f"{rng.choice(HEADERS)}: {s}" for s in sentences]
    for _ in range(300):  # reports: sections, line breaks, numbered impressions, odd separators
        parts = []
        for _ in range(rng.randint(3, 8)):
            body = " ".join(s if s.endswith(".") else s + "." for s in rng.sample(sentences, rng.randint(1, 3)))
            parts.append(f"{rng.choice(HEADERS)}: {body}")
        text = rng.choice(["\n", " ", "\n\n"]).join(parts)
        text = re.sub(r"\d+", lambda _: rng.choice(["3", "1.2", "11", "0.9", "25"]), text)
        texts.append(text + " IMPRESSION: 1. " + rng.choice(sentences) + " 2. " + rng.choice(sentences))
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _texts()


def test_report_scan_agrees_with_the_sentence_by_sentence_parse(texts: list[str]) -> None:
    vocab = load_vocabulary()
    cache = SentenceCache()
    for text in texts:
        expected = _reference(text, vocab)
        assert label_report(text, vocab, cache=None) == expected, text
        assert label_report(text, vocab, cache=cache) == expected, text
    assert cache.hits > 1000  # the cached path was exercised from the cache too


@pytest.mark.parametrize(
    "text",
    [
        "Nodule measuring approx. 5 mm.\nLeft effusion\nand atelectasis. e.g. something",
        "No change.. Stable?! \u2022 item one\n- item two\t(r/o) 3\u00d74 cm; end.",
        "  . . leading stops. . and trailing . .",
        "Line one\nLINE TWO: x.\u00a0y.\u2003z \u001c w",
        "",
        ".",
        "Dr. Smith vs. the fig. 2 e.g. the nodule",
    ],
)
def test_report_chunks_are_the_chunks_of_the_normalised_words(text: str) -> None:
    joined, parts = report_chunks(text)
    assert parts == chunks(normalize(text))
    assert joined == " " + " . ".join(parts) + " "


def test_read_size_at_reads_what_read_size_reads() -> None:
    rng = random.Random(2)
    pieces = ["1", "1.5", "12", ".5", "5x6", "1.2x0.8", "3x4x5cm", "x", "by", "mm", "cm", "12mm", "nodule", "and"]
    checked = 0
    for _ in range(3000):
        words = [rng.choice(pieces[:8]) for _ in range(rng.randint(1, 30))] + [rng.choice(pieces) for _ in range(3)]
        words[0] = rng.choice(["1", "12", "1.5", "5x6", ".5"])
        text = " " + " ".join(words) + " "
        expected = read_size(words, 0)
        got = read_size_at(text, 1, len(text) - 1)
        if expected is None:
            assert got is None, words
        else:
            assert got == (1 + len(" ".join(words[: expected[0]])), expected[1], expected[2]), words
            checked += 1
    assert checked > 100
