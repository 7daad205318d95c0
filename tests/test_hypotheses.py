"""Tests of ``experiments.hypotheses``: each hypothesis runs its cell's tuned
configuration with its change on the evaluation seeds, once, and the page
states its result from the rows."""

from __future__ import annotations

import json

import pytest
from test_leaderboard import _row, _synthetic_rows, make_leaderboard

from experiments import hypotheses, leaderboard

TEST = hypotheses.Hypothesis(
  "grokfast", "muon", {"warmup_steps": 0}, "Muon's warmup slows it down."
)


@pytest.fixture
def files(tmp_path, monkeypatch):
  monkeypatch.setitem(hypotheses.HYPOTHESES, "test-warmup", TEST)
  board = tmp_path / "board.jsonl"
  board.write_text("".join(json.dumps(r) + "\n" for r in _synthetic_rows()))
  return board, tmp_path / "hypotheses.jsonl"


def test_a_hypothesis_runs_the_tuned_config_with_its_change_once(files, monkeypatch):
  board, out = files
  calls = []

  def fake(task, name, phase, seed, config, quick):
    calls.append((task, name, phase, seed, config))
    return _row(name, phase, seed, config, 100 + seed) | {"seconds_run": 1.0}

  monkeypatch.setattr(leaderboard, "train_row", fake)
  argv = ["--only", "test-warmup", "--leaderboard", str(board), "--jsonl", str(out)]
  hypotheses.main(argv)
  tuned = leaderboard.search(leaderboard.read_rows(board), "grokfast", "muon").chosen
  assert tuned is not None
  config = {**tuned, "warmup_steps": 0}
  assert calls == [("grokfast", "muon", "hypothesis", seed, config)
                   for seed in leaderboard.EVAL_SEEDS]  # fmt: skip
  rows = leaderboard.read_rows(out)
  assert [r["hypothesis"] for r in rows] == ["test-warmup"] * 5
  hypotheses.main(argv)  # a rerun trains nothing
  assert len(calls) == 5 and len(leaderboard.read_rows(out)) == 5
  # The page: its statement, command, and the medians against tuned muon
  # (eval rows 300, 200, miss, 250, 400: median 300; here 102).
  board_rows = leaderboard.read_rows(board)
  table = make_leaderboard.tables(board_rows)["grokfast"]
  lines = make_leaderboard.hypothesis_lines("grokfast", table, board_rows, rows)
  line = next(x for x in lines if "test-warmup" in x)
  assert line.startswith(
    "- **Muon's warmup slows it down.** (`python -m experiments.hypotheses --only "
    "test-warmup`): muon with warmup_steps 0, median steps over seeds 0–4 against "
    "tuned muon: first at target 102 against 300 (×0.34 ["
  )
  # 102 against 300: not behind muon, the hypothesis' "closes" holds.
  assert line.endswith(". **Supported.**")
  # Without rows: said plainly.
  lines = make_leaderboard.hypothesis_lines("grokfast", table, board_rows, [])
  assert any("test-warmup" in x and "not run yet (0 of 5 seeds)" in x for x in lines)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--only", "nope"], "argument --only: unknown 'nope'"),
    (["--leaderboard", "/nonexistent.jsonl"], "argument --leaderboard: /nonexistent"),
  ],
)
def test_option_errors(capsys, argv, message):
  with pytest.raises(SystemExit) as info:
    hypotheses.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err.rstrip().splitlines()
  assert err[-1].startswith("python -m experiments.hypotheses") and message in err[-1]


def test_every_hypothesis_names_a_leaderboard_cell_and_options_its_run_reads():
  for name, h in hypotheses.HYPOTHESES.items():
    assert h.optimizer in leaderboard.TASKS[h.task].optimizers, name
    assert (h.compare or h.optimizer) in leaderboard.TASKS[h.task].optimizers, name
    config = {**leaderboard.grid(h.task, h.optimizer)[0], **h.change}
    # grok's checks: the options exist and the optimizer reads them.
    leaderboard.resolved(h.task, h.optimizer, config, quick=False)
