"""``ci/mutants.py`` stays in step with the code it plants bugs in.

Running the mutants takes minutes (``python ci/mutants.py``); here only each
edit is checked to match its file exactly once, so a refactor that moves the
code makes this fail instead of silently retiring the mutant.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutants", ROOT / "ci" / "mutants.py")
assert _spec is not None and _spec.loader is not None
mutants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutants)


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_edit_matches_once(mutant) -> None:
  source = (ROOT / mutant.path).read_text()
  assert source.count(mutant.old) == 1, (mutant.name, mutant.path)
  assert mutant.new != mutant.old
  for test in mutant.tests:
    assert (ROOT / test).is_file(), test


def test_names_are_unique() -> None:
  names = [m.name for m in mutants.MUTANTS]
  assert len(names) == len(set(names))


def test_unknown_mutant_is_a_usage_error(capsys) -> None:
  with pytest.raises(SystemExit) as e:
    mutants.main(["--only", "no-such-mutant"])
  assert e.value.code == 2
  assert "unknown mutant(s) no-such-mutant" in capsys.readouterr().err
