"""Fault injection: every kind of bad input in the catalog is flagged with a reason naming the
problem; none crashes, none is taken as fine, none has its planted marker quoted back."""

from __future__ import annotations

import pytest

from tests.faults.catalog import CASES, run_case


def test_the_catalog_covers_at_least_40_kinds_across_every_family() -> None:
    assert len(CASES) >= 40 and len({c.kind for c in CASES}) == len(CASES)
    assert {c.family for c in CASES} == {"scan", "dicom", "report", "csv", "store"}


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input_is_flagged_with_its_reason(case, tmp_path) -> None:
    out = run_case(case, tmp_path)
    assert not out.crashed, out.crashed
    assert not out.silently_wrong, f"accepted as fine: {out.reason}"
    assert out.flagged, out.reason
    assert out.matched, f"reason does not name the problem ({case.expect!r}): {out.reason}"
    assert not out.leaked, f"marker quoted back: {out.reason}"
