"""Every broken or hostile file gets a specific, plain verdict; the validator never crashes."""

from __future__ import annotations

import pytest

from tests.corpus import CASES, GOOD, patch_dimension
from watcher.validate import validate_file
from watcher.validate.report import KINDS


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_corpus(tmp_path, name, make, expected):
    path = tmp_path / f"{name}.xlsx"
    path.write_bytes(make())
    report = validate_file(path)
    if expected == "valid":
        assert report.is_valid, report.as_json()
        assert report.data_rows > 0
    else:
        assert not report.is_valid
        assert expected in report.counts, report.as_json()
        example = next(p for p in report.examples if p.kind == expected)
        assert example.message  # a plain message, and advice for the receipt
        assert KINDS[expected].advice


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_a_wrong_dimension_is_not_trusted(tmp_path):
    path = tmp_path / "dim.xlsx"
    path.write_bytes(patch_dimension(GOOD))
    assert validate_file(path).data_rows == 5
