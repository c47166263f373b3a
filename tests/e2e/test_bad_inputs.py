"""Every bad input: exit code 2, one line naming the culprit, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs.cases import CASES, OUT, markdown

from calmerge.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tiny_pair, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out"
    argv = [a.replace(OUT, str(out)) for a in case.build(work, tiny_pair)]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    capsys.readouterr()  # building the broken input may print
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "(hint: " in errors[0], err
    assert case.expect in errors[0], err
    assert not out.exists(), "an output was written"
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, sorted(set(after) ^ set(before))


def test_corpus_is_large_enough():
    assert len(CASES) >= 100  # issue 14: at least 100 hostile or fat-fingered inputs


def test_robustness_doc_is_current():
    assert (ROOT / "docs" / "robustness.md").read_text() == markdown()
