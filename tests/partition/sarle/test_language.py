"""The English check that sends unreadable reports to review instead of labelling them normal."""

from __future__ import annotations

from pathlib import Path

from ctplatform.partition.sarle.language import unrecognised

HERE = Path(__file__).parent


def _sentences() -> list[str]:
    out = []
    for name in ("sentences.tsv", "heldout.tsv"):
        for line in (HERE / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                out.append(line.split("\t")[0])
    return out


def test_english_report_sentences_are_recognised() -> None:
    sentences = _sentences()
    flagged = [s for s in sentences if unrecognised(s)]
    assert len(sentences) > 450
    # Only one-word sentences outside the vocabulary; as whole reports they rightly go to review.
    assert flagged == ["Cholelithiasis.", "Gynecomastia."] or all(len(s.split()) == 1 for s in flagged)


def test_other_languages_and_noise_go_to_review() -> None:
    for text in (
        "双肺纹理清晰，未见明显实质性病变。",
        "Keine pathologisch vergrößerten Lymphknoten. Herz normal groß. Kein Pleuraerguss.",
        "Poumons clairs. Pas d'épanchement pleural. Nodule de 5 mm du lobe supérieur droit.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    ):
        reason = unrecognised(text)
        assert reason and "no recognisable clinical English" in reason
        assert not any(w in reason for w in ("Lymphknoten", "Poumons", "Lorem"))  # counts only, no text
