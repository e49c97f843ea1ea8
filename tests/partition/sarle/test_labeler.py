"""SARLE steps 2-3 and whole reports: F1 on the written sentences, Table 3, the rows contract."""

from __future__ import annotations

from collections import Counter

import pytest

from ctplatform.labels import N_LABELS, all_labels, encode_volume_labels, label_index
from ctplatform.partition.sarle.evaluation import evaluate, read_gold
from ctplatform.partition.sarle.labeler import EmptyReportError, SentenceCache, label_report, label_rows, label_volume
from tests.conftest import REPO

HERE = REPO / "tests" / "partition" / "sarle"


def _labeller(text: str) -> set[tuple[str, str]]:
    return label_report(text, cache=None)


def test_f1_on_the_written_sentences_is_at_least_095() -> None:
    gold = read_gold(HERE / "sentences.tsv")
    assert len(gold) >= 250
    scores = evaluate(_labeller, gold)
    assert scores["abnormality"].f1 >= 0.95, scores["abnormality"]
    assert scores["location"].f1 >= 0.95, scores["location"]


def test_held_out_sentences_do_not_regress() -> None:
    # Written after tuning and never tuned on (see the file's header); a looser guard.
    scores = evaluate(_labeller, read_gold(HERE / "heldout.tsv"))
    assert scores["abnormality"].f1 >= 0.90 and scores["location"].f1 >= 0.90, scores


def test_the_sentences_cover_what_the_issue_asks_for() -> None:
    text = (HERE / "sentences.tsv").read_text().lower()
    for needle in ("not excluded", "partially resolved", "no change in", "status post", "stable", "versus", "lingula", " mm ", "short axis"):
        assert needle in text, needle
    # every location appears in the gold
    gold = read_gold(HERE / "sentences.tsv")
    locations = Counter(loc for _, fs in gold for _, loc in fs)
    assert set(locations) == {"right_lung", "left_lung", "lung", "heart", "great_vessel", "mediastinum"}
    assert sum(1 for _, fs in gold if not fs) >= 80  # normal, negated and outside-the-chest sentences


@pytest.mark.parametrize(
    ("sentence", "findings"),
    [  # paper 000, Table 3
        ("the heart is enlarged without pericardial effusion", {("cardiomegaly", "heart")}),
        ("there is a nodule in the right upper lobe", {("nodule", "right_lung")}),
        ("left pneumonia", {("pneumonia", "left_lung")}),
        ("calcifications in the aorta", {("calcification", "great_vessel")}),
        (
            "a calcified granuloma is visible in the apex of the left lung",
            {("calcification", "left_lung"), ("granuloma", "left_lung")},
        ),
        ("the catheter tip is visible in the SVC", {("catheter_or_port", "great_vessel")}),
        ("The lungs are clear", set()),
        ("The consolidation has resolved", set()),
    ],
)
def test_table3(sentence: str, findings: set) -> None:
    assert _labeller(sentence) == findings


REPORT = """EXAM: CT chest without contrast.
INDICATION: Cough, evaluate for pneumonia; history of lung cancer.
TECHNIQUE: Axial images of the chest were obtained.
FINDINGS:
LUNGS: 4 mm nodule, unchanged. Moderate centrilobular emphysema. No consolidation
or pleural effusion.
HEART: Mild cardiomegaly. No pericardial effusion.
VESSELS: Calcified plaque.
MEDIASTINUM: Enlarged right paratracheal lymph node measuring 1.4 cm in short axis.
UPPER ABDOMEN: Small hypodense lesion in the liver.
IMPRESSION:
1. Right lower lobe nodule measuring 1.2 x 0.9 cm, previously 0.8 cm.
2. No pneumonia.
"""


def test_a_whole_report_with_sections() -> None:
    assert _labeller(REPORT) == {
        ("nodule", "lung"),
        ("emphysema", "lung"),
        ("cardiomegaly", "heart"),
        ("calcification", "great_vessel"),
        ("lymphadenopathy", "mediastinum"),
        ("nodule", "right_lung"),
        ("nodulegr1cm", "right_lung"),
    }


def test_the_sentence_cache_changes_nothing() -> None:
    cache = SentenceCache()
    gold = read_gold(HERE / "sentences.tsv")
    for sentence, _ in gold:
        assert label_report(sentence, cache=cache) == _labeller(sentence)
        assert label_report(sentence, cache=cache) == _labeller(sentence)  # now from the cache
    assert cache.hits >= len(gold) // 2
    assert label_report(REPORT, cache=cache) == label_report(REPORT, cache=cache) == _labeller(REPORT)


def test_rows_follow_the_labels_parquet_contract() -> None:
    rows = label_rows("v1", {("nodule", "right_lung"), ("nodule", "left_lung"), ("cardiomegaly", "heart")})
    by_label = Counter((a, "lung" if loc in ("right_lung", "left_lung") else loc) for _, a, loc, _ in rows)
    assert len(rows) == N_LABELS + 1  # one row per absent label, one per (present label, location)
    assert by_label[("nodule", "lung")] == 2
    assert {(a, loc, v) for _, a, loc, v in rows if v} == {
        ("nodule", "right_lung", 1),
        ("nodule", "left_lung", 1),
        ("cardiomegaly", "heart", 1),
    }
    for _, a, loc, v in rows:
        if not v:
            assert loc in ("lung", "heart", "great_vessel", "mediastinum")
    y, bits = encode_volume_labels([(a, loc, v) for _, a, loc, v in rows])
    assert y.sum() == 2
    assert bits[label_index("nodule", "lung")] == 3  # both lungs allowed for the nodule
    assert bits[label_index("cardiomegaly", "heart")] == 4  # the mediastinum region


def test_a_report_without_findings_is_labelled_with_80_zeros() -> None:
    rows = label_volume("v2", "The lungs are clear. The heart is normal in size. No pleural effusion.")
    assert len(rows) == N_LABELS and not any(v for *_, v in rows)
    assert [a for _, a, _, _ in rows] == [lab.abnormality for lab in all_labels()]


@pytest.mark.parametrize("report", ["", "   \n ", None])
def test_an_empty_report_fails_naming_the_volume_only(report) -> None:
    with pytest.raises(EmptyReportError, match="volume v3: the report is empty"):
        label_volume("v3", report)


def test_measurements_reduced_to_size_classes_give_the_same_findings() -> None:
    # The sentence cache keys on sentences whose measurements are reduced to size classes; that
    # must never change a finding. Check on the written sentences with their numbers redrawn.
    import random
    import re

    from ctplatform.partition.sarle.chunks import chunks, normalize
    from ctplatform.partition.sarle.labeler import chunk_findings
    from ctplatform.partition.sarle.sizes import canonical_measurements
    from ctplatform.partition.sarle.vocabulary import load_vocabulary

    vocab = load_vocabulary()
    rng = random.Random(1)
    sentences = [s for s, _ in read_gold(HERE / "sentences.tsv") if re.search(r"\d", s)]
    assert len(sentences) >= 30
    changed = 0
    for _ in range(10):
        for s in sentences:
            text = re.sub(r"\d+(\.\d+)?", lambda _: rng.choice(["0.4", "0.9", "1", "1.0", "1.1", "2.5", "8", "10", "11", "35"]), s)
            for chunk in chunks(normalize(text)):
                canonical = canonical_measurements(chunk, vocab.size_thresholds)
                changed += canonical != chunk
                assert chunk_findings(canonical, "none", vocab) == chunk_findings(chunk, "none", vocab), text
    assert changed > 100


def test_the_negated_sentence_shortcut_agrees_with_the_full_parse() -> None:
    from ctplatform.partition.sarle.chunks import chunks, normalize
    from ctplatform.partition.sarle.labeler import _negated_from_the_start, _negated_to_the_end, chunk_findings
    from ctplatform.partition.sarle.scanning import scan_phrases
    from ctplatform.partition.sarle.phrases import classify_chunk
    from ctplatform.partition.sarle.term_search import sentence_findings
    from ctplatform.partition.sarle.vocabulary import load_vocabulary

    vocab = load_vocabulary()
    texts = [s for path in ("sentences.tsv", "heldout.tsv") for s, _ in read_gold(HERE / path)]
    texts += [f"{header}: {s}" for header in ("LUNGS", "HEART", "INDICATION") for s in texts[:150]]
    shortcut = backward = 0
    for text in texts:
        for chunk in chunks(normalize(text)):
            sents, after = classify_chunk(chunk, "none", vocab)
            full = (frozenset(f for s in sents for f in sentence_findings(s, vocab)), after)
            assert chunk_findings(chunk, "none", vocab) == full, text
            padded = f" {chunk} "
            tokens = scan_phrases(padded, vocab)
            if tokens and _negated_to_the_end(padded, tokens, len(padded), vocab):
                shortcut += 1
                assert not full[0], text
            if tokens and _negated_from_the_start(tokens):
                backward += 1
                assert not full[0], text
    assert shortcut >= 50 and backward >= 20  # the shortcuts are actually taken
