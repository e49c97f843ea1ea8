"""SARLE: abnormality x location labels from free-text chest CT reports (paper 000, section 7.2.1).

    from ctplatform.partition.sarle import label_report, label_rows
    label_report("Left lower lobe pneumonia. No pleural effusion.")   # {("pneumonia", "left_lung")}

Step 1 (chunks.py, scanning.py, phrases.py) deletes the normal and negated parts of each sentence;
step 2 and 3 (term_search.py) find the abnormalities and their locations in what remains. The
vocabularies are YAML files in platform/data/sarle/. job.py runs it over a reports CSV with Ray Data
and writes labels.parquet; external.py imports RAD-ChestCT's and CT-RATE's released labels instead.
See docs/sarle.md.
"""

from importlib import import_module

# Imported on first use, so that `ctplatform label-reports --help` stays fast.
_EXPORTS = {
    "EmptyReportError": "labeler",
    "Explanation": "labeler",
    "SentenceCache": "labeler",
    "explain": "labeler",
    "label_report": "labeler",
    "label_rows": "labeler",
    "label_volume": "labeler",
    "Vocabulary": "vocabulary",
    "load_vocabulary": "vocabulary",
    "run_labelling": "job",
    "label_batch": "job",
    "radchestct_rows": "external",
    "ctrate_rows": "external",
    "read_label_tables": "external",
    "CTRATE_COVERED_LABELS": "external",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
