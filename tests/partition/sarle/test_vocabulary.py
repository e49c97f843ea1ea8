"""The YAML vocabularies: checks that catch editing mistakes, term matching, measurements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ctplatform.labels import all_labels
from ctplatform.partition.sarle.trie import WordTrie, tokens, validate_term
from ctplatform.partition.sarle.sizes import read_size
from ctplatform.partition.sarle.vocabulary import DATA_DIR, load_vocabulary


def test_every_abnormality_has_a_rule_with_its_organ_groups() -> None:
    vocab = load_vocabulary()
    assert set(vocab.rules) == {lab.abnormality for lab in all_labels()}
    assert vocab.rules["calcification"].groups == {"lung", "heart", "great_vessel", "mediastinum"}
    assert vocab.rules["pneumonia"].defined and vocab.rules["nodule"].default == "lung"
    assert vocab.rules["nodulegr1cm"].size.greater_than_cm == 1.0


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "sarle"
    shutil.copytree(DATA_DIR, folder)
    return folder


@pytest.mark.parametrize(
    ("file", "old", "new", "error"),
    [
        ("phrases.yaml", '    - "no"          # quoted', "    - no          # unquoted", "quote it"),
        ("abnormalities.yaml", "  terms: [reticul*]", "  terms: [reticul*, tree-in-bud]", "hyphens"),
        ("abnormalities.yaml", "  terms: [reticul*]", "  terms: [Reticulation]", "lower case"),
        ("abnormalities.yaml", "aspiration:\n  location: defined\n  terms: [aspirat*]\n", "", "missing \\['aspiration'\\]"),
        ("abnormalities.yaml", "  terms: [reticul*]", "  terms: [reticul*]\n  synonyms: [x]", "unknown keys"),
        ("abnormalities.yaml", "aneurysm:\n  default: great_vessel", "aneurysm:\n  default: lung", "not one of its groups"),
        ("locations.yaml", "heart:\n  - heart\n", "heart:\n  - heart\n  - hilum\n", "both mediastinum and heart|both heart and mediastinum"),
    ],
)
def test_editing_mistakes_give_clear_errors(tmp_path: Path, file: str, old: str, new: str, error: str) -> None:
    folder = _copy(tmp_path)
    text = (folder / file).read_text()
    assert old in text
    (folder / file).write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=error):
        load_vocabulary(str(folder))


def test_an_extended_vocabulary_is_used(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    path = folder / "abnormalities.yaml"
    path.write_text(path.read_text().replace("  terms: [reticul*]", "  terms: [reticul*, lace like]"))
    from ctplatform.partition.sarle.labeler import label_report

    vocab = load_vocabulary(str(folder))
    text = "Lace-like changes in the left lower lobe."
    assert label_report(text) == set()  # the default vocabulary (and its sentence cache)
    assert label_report(text, vocab) == {("reticulation", "left_lung")}  # not the other's cache
    assert label_report(text) == set()


def test_term_checks() -> None:
    assert validate_term("atelecta*") == "atelecta*"
    for bad in ("*", "a*b", " nodule", "a  b"):
        with pytest.raises(ValueError):
            validate_term(bad)


def test_trie_prefers_the_longest_term_and_matches_stems() -> None:
    trie = WordTrie()
    trie.add("aort*", "vessel")
    trie.add("aortic valve", "heart")
    trie.add("right", "side")
    trie.add("right upper lobe", "rul")
    words = tokens("aortic valve and aortic arch right upper lobe right lung")
    assert trie.match(words, 0, trie.starts(words[0])) == (2, ["heart"])
    assert trie.match(words, 3, trie.starts(words[3])) == (4, ["vessel"])
    assert trie.match(words, 5, trie.starts(words[5])) == (8, ["rul"])
    assert trie.match(words, 8, trie.starts(words[8])) == (9, ["side"])
    assert trie.starts("and") == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12 mm nodule", (2, 1.2, 1.2)),
        ("1.5cm nodule", (1, 1.5, 1.5)),
        ("1.2 x 0.8 cm", (4, 1.2, 0.8)),
        ("1.2x0.8 cm", (2, 1.2, 0.8)),
        ("1.4 x 1.1 x 0.9 cm", (6, 1.4, 0.9)),
        ("5-7 mm", (3, 0.7, 0.7)),
        ("10 mm", (2, 1.0, 1.0)),
        ("4 lymph nodes", None),
    ],
)
def test_read_size(text: str, expected) -> None:
    got = read_size(tokens(text), 0)
    if expected is None:
        assert got is None
    else:
        assert got[0] == expected[0] and got[1:] == pytest.approx(expected[1:])
