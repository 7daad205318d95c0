"""Tests of ``experiments.paper_table``: the table builder and a tiny run."""

from __future__ import annotations

import json

from experiments import paper_table
from experiments.paper_table import Bound


def _record(task, optimizer, seed, epochs, seconds, epochs_run=100):
  return {
    "task": task,
    "optimizer": optimizer,
    "seed": seed,
    "epochs_to_target": epochs,
    "seconds_to_target": seconds,
    "epochs_run": epochs if epochs is not None else epochs_run,
    "seconds_run": seconds if seconds is not None else 50.0,
  }


def test_censored_median():
  exact = [Bound(3), Bound(1), Bound(2)]
  assert paper_table.censored_median(exact) == Bound(2)
  # One unfinished run of three sorts last: the median is still measured.
  assert paper_table.censored_median([Bound(5), Bound(100, False), Bound(7)]) == Bound(
    7
  )
  # Two of three unfinished: the median is only a lower bound.
  median = paper_table.censored_median([Bound(5), Bound(100, False), Bound(90, False)])
  assert median == Bound(90, False) and median.show() == "> 90"
  assert paper_table.censored_median([Bound(4), Bound(6)]) == Bound(5)


def test_ratio_bounds():
  assert paper_table.ratio(Bound(100), Bound(4)) == "25.0x"
  assert paper_table.ratio(Bound(1500, False), Bound(30)) == "≥ 50.0x"
  assert paper_table.ratio(Bound(100), Bound(300, False)) == "≤ 0.3x"
  assert paper_table.ratio(Bound(100, False), Bound(300, False)) == "?"


def test_summary_and_markdown_on_synthetic_runs():
  records = [
    _record("add-97", "sgd", 0, None, None, epochs_run=1500),
    _record("add-97", "sgd", 1, 1200, 60.0),
    _record("add-97", "sgd", 2, None, None, epochs_run=1500),
    _record("add-97", "egd-first-layer", 0, 30, 3.0),
    _record("add-97", "egd-first-layer", 1, 20, 2.0),
    _record("add-97", "egd-first-layer", 2, None, None, epochs_run=1500),
  ]
  rows = paper_table.summarize(records)
  sgd, egd = rows
  assert (sgd["reached"], egd["reached"]) == (1, 2)
  assert sgd["epochs"]["median"] == {"value": 1500, "exact": False}
  assert egd["epochs"]["median"] == {"value": 30, "exact": True}
  assert egd["epochs_vs_sgd"] == "≥ 50.0x" and sgd["epochs_vs_sgd"] is None
  table = paper_table.markdown(rows, "header")
  assert "| add-97 | EGD (SVD) | 2/3 | 30 [20–> 1500] |" in table
  assert "| add-97 | SGD | 1/3 | > 1500 [1200–> 1500] |" in table


def test_cli_tiny_run(tmp_path):
  paper_table.main(
    [
      "--tasks",
      "add-79",
      "--optimizers",
      "sgd,egd-first-layer",
      "--seeds",
      "1",
      "--max-epochs",
      "2",
      "--out",
      str(tmp_path),
    ]
  )
  results = json.loads((tmp_path / "results.json").read_text())
  assert [r["optimizer"] for r in results["runs"]] == ["sgd", "egd-first-layer"]
  assert all(r["epochs_run"] == 2 for r in results["runs"])
  table = (tmp_path / "table.md").read_text()
  assert "--max-epochs 2" in table and "| add-79 | EGD (SVD) | 0/1 | > 2 |" in table


def test_quick_defaults():
  args = paper_table.parse_args(["--quick"])
  assert args.task_ids == ["add-97", "parity-400-2"] and args.seeds == 1
  assert paper_table.parse_args([]).task_ids == list(paper_table.TASKS)
  assert paper_table.task_args("parity-100-3", 10).lr == 0.0416239


def test_tasks_are_typed_configs_that_match_their_ids(monkeypatch):
  """Each task is a RunConfig (no command line parsed to make a run); its
  resolved config is the task its id names, and ``grok.argv`` of it is a
  command that resolves back to it."""
  from experiments import grok

  def no_parsing(argv=None):
    raise AssertionError(f"parsed {argv}")

  monkeypatch.setattr(grok, "parse_args", no_parsing)
  for task, base in paper_table.TASKS.items():
    assert isinstance(base, grok.RunConfig)
    config = paper_table.task_args(task, 10)
    assert (config.max_epochs, config.checkpoint_every) == (10, 0)
    family, *sizes = task.split("-")
    if family == "parity":
      assert (config.task, config.n, config.k) == ("parity", *map(int, sizes))
    else:
      assert (config.task, config.p) == (f"mod_{family}", int(sizes[0]))
    monkeypatch.undo()
    assert grok.resolve(grok.parse_args(grok.argv(config))) == config
    monkeypatch.setattr(grok, "parse_args", no_parsing)
