"""Step 1: tokens, sentences, and which parts of a sentence the cues delete."""

from __future__ import annotations

import pytest

from ctplatform.partition.sarle.chunks import chunks, normalize
from ctplatform.partition.sarle.phrases import abnormal_phrases
from ctplatform.partition.sarle.trie import tokens
from ctplatform.partition.sarle.vocabulary import load_vocabulary


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def test_tokens_split_punctuation_hyphens_and_keep_decimals() -> None:
    assert tokens("a 1.2-cm tree-in-bud, (r/o) lungs/pleura: 5x6 mm.") == [
        "a", "1.2", "cm", "tree", "in", "bud", ",", "(", "r", "/", "o", ")", "lungs", "/", "pleura", ":", "5x6", "mm", ".",
    ]


def test_sentences_split_at_full_stops_and_line_starts_but_not_abbreviations() -> None:
    words = normalize("Nodule measuring approx. 5 mm.\nLeft effusion\nand atelectasis. e.g. something")
    assert chunks(words) == ["nodule measuring approx . 5 mm", "left effusion and atelectasis", "e.g . something"]


# Paper 000, Table 3, step 1 ("only abnormal phrases are kept").
@pytest.mark.parametrize(
    ("sentence", "kept"),
    [
        ("the heart is enlarged without pericardial effusion", ["the heart is enlarged"]),
        ("there is a nodule in the right upper lobe", ["there is a nodule in the right upper lobe"]),
        ("left pneumonia", ["left pneumonia"]),
        ("calcifications in the aorta", ["calcifications in the aorta"]),
        (
            "a calcified granuloma is visible in the apex of the left lung",
            ["a calcified granuloma is visible in the apex of the left lung"],
        ),
        ("the catheter tip is visible in the SVC", ["the catheter tip is visible in the svc"]),
        ("The lungs are clear", []),
        ("The consolidation has resolved", []),
    ],
)
def test_table3_step1(vocab, sentence: str, kept: list[str]) -> None:
    assert abnormal_phrases(sentence, vocab) == kept


@pytest.mark.parametrize(
    ("sentence", "kept"),
    [
        # forward scope runs to the end of the clause, through lists joined by "or"/"and"
        ("No pleural effusion, consolidation, or pneumothorax.", []),
        ("No pleural effusion, but there is mild atelectasis.", ["but there is mild atelectasis"]),
        ("No pneumothorax; small right effusion.", ["small right effusion"]),
        ("No pneumothorax, with the chest tube in place.", ["with the chest tube in place"]),
        # backward and clause scopes
        ("The right effusion has resolved, and the left effusion is unchanged.", ["and the left effusion is unchanged"]),
        ("There is no longer a right pleural effusion.", []),
        # segment scope: only the normal phrase goes
        ("The heart is normal in size with a small pericardial effusion.", ["with a small pericardial effusion"]),
        ("A 6 mm nodule, follow-up in 12 months is recommended.", ["a 6 mm nodule"]),
        # exceptions a radiologist expects
        ("Pneumonia is not excluded.", ["pneumonia is not excluded"]),
        ("The effusion has partially resolved.", ["the effusion has partially resolved"]),
        ("No change in the nodule.", ["no change in the nodule"]),
        ("A new nodule which was not present on the prior study.", ["a new nodule which was not present on the prior study"]),
    ],
)
def test_negation_scopes(vocab, sentence: str, kept: list[str]) -> None:
    assert abnormal_phrases(sentence, vocab) == kept
