"""``python -m experiments.hypotheses``: why an EGD optimizer is not first.

Where a non-EGD optimizer leads a leaderboard task, each entry of
:data:`HYPOTHESES` states one reason and the experiment that tests it: the
cell's tuned configuration (from the leaderboard's rows) with one change,
run on the evaluation seeds with the stable stop rule, like the leaderboard's
own evaluation runs. Each finished run is one row of ``--jsonl`` (default
``experiments/results/hypotheses.jsonl``), in the leaderboard's format with
phase ``"hypothesis"`` and the hypothesis' name; a rerun trains only the
missing rows. ``docs/make_leaderboard.py`` shows each hypothesis in its
task's section, with its rows' medians against the cell's own (a sentence
made from the rows).

Example::

    python -m experiments.hypotheses --list
    python -m experiments.hypotheses --only mnist-perp-adamw-mse

>>> HYPOTHESES["mnist-perp-adamw-mse"].change
{'loss': 'mse'}
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any

from experiments import _cli, _threads, leaderboard

DEFAULT_JSONL = pathlib.Path("experiments/results/hypotheses.jsonl")


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """One reason why an optimizer is (or is not) ahead on a task, and its test.

  Attributes:
    task: the leaderboard task.
    optimizer: the leaderboard optimizer whose tuned configuration is changed.
    change: the :mod:`experiments.grok` options set on top of it (Python
      values, e.g. ``{"loss": "mse"}``).
    statement: the hypothesis, one sentence.
    compare: the leaderboard optimizer whose evaluation rows it is set
      against (default: ``optimizer``'s own).
    expect: what supports it, read off the paired interval of the median
      steps to the first evaluation at the target: ``"closes"``, the changed
      run is not behind ``compare`` (level or ahead); ``"slower"``, it is
      behind ``optimizer``'s own tuned cell.
  """

  task: str
  optimizer: str
  change: dict[str, Any]
  statement: str
  compare: str | None = None
  expect: str = "closes"

  def __post_init__(self) -> None:
    if self.expect not in ("closes", "slower"):
      raise ValueError(f"expect must be 'closes' or 'slower', got {self.expect!r}")


HYPOTHESES: dict[str, Hypothesis] = {
  "bs128-egd-momentum": Hypothesis(
    "add97-mlp-bs128",
    "egd",
    {"momentum": 0.9},
    "At batch 128 EGD gives every singular direction of a noisy minibatch "
    "gradient the same step; averaging those steps with momentum 0.9 (SGD with "
    "momentum after EGD) closes the gap to column normalization.",
    compare="column-norm",
  ),
  "bs128-egd-newton-schulz": Hypothesis(
    "add97-mlp-bs128",
    "egd",
    {"polar_method": "newton_schulz"},
    "At batch 128 the exact polar factor lifts the gradient's smallest, "
    "noise-dominated singular directions to a full step; Newton–Schulz (5 "
    "iterations, which leave the smallest singular values below 1) closes the "
    "gap to column normalization.",
    compare="column-norm",
  ),
  "mnist-perp-adamw-mse": Hypothesis(
    "mnist",
    "perp-adamw",
    {"loss": "mse"},
    "⊥AdamW leads on MNIST because it trains with the StableMax cross-entropy "
    "(the leaderboard's ⊥AdamW recipe) where every other optimizer trains the "
    "task's MSE: with the MSE loss, ⊥AdamW loses its lead.",
    expect="slower",
  ),
  "mnist-egdm-stablemax": Hypothesis(
    "mnist",
    "egdm",
    {"loss": "stablemax_cross_entropy"},
    "With ⊥AdamW's loss, the StableMax cross-entropy, egdm closes the gap to ⊥AdamW.",
    compare="perp-adamw",
  ),
}


def chosen(rows: list[dict[str, Any]], task: str, name: str) -> dict[str, float] | None:
  """The tuned configuration of a leaderboard cell (None: still tuning)."""
  return leaderboard.search(rows, task, name).chosen


def config_of(
  hypothesis: Hypothesis, rows: list[dict[str, Any]]
) -> dict[str, Any] | None:
  """The configuration a hypothesis runs: its cell's tuned one with its change."""
  tuned = chosen(rows, hypothesis.task, hypothesis.optimizer)
  return None if tuned is None else {**tuned, **hypothesis.change}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The options; a bad one is a one-line usage error."""
  p = argparse.ArgumentParser(
    prog="python -m experiments.hypotheses", description=__doc__.splitlines()[0]
  )
  p.add_argument("--only", help=f"comma-separated, from: {', '.join(HYPOTHESES)}")
  p.add_argument("--list", action="store_true", help="print the hypotheses and exit")
  p.add_argument(
    "--leaderboard",
    type=pathlib.Path,
    default=leaderboard.DEFAULT_JSONL,
    help=f"the leaderboard's rows (default {leaderboard.DEFAULT_JSONL})",
  )
  p.add_argument(
    "--jsonl",
    type=pathlib.Path,
    default=DEFAULT_JSONL,
    help=f"the rows file, appended to (default {DEFAULT_JSONL})",
  )
  args = p.parse_args(argv)
  names = _cli.name_list(args.only) if args.only is not None else list(HYPOTHESES)
  problem = _cli.check_names("argument --only", names, tuple(HYPOTHESES))
  if problem:
    p.error(problem)
  if not args.leaderboard.is_file():
    p.error(f"argument --leaderboard: {args.leaderboard} is not a file")
  if not args.list:
    problem = _cli.unwritable(args.jsonl.parent)
    if problem:
      p.error(f"argument --jsonl: {problem}")
  args.names = names
  return args


def main(argv: list[str] | None = None) -> None:
  """Run every missing row of the selected hypotheses."""
  args = parse_args(argv)
  rows = leaderboard.read_rows(args.leaderboard)
  if args.list:
    for name in args.names:
      h = HYPOTHESES[name]
      print(f"{name}: {h.task}/{h.optimizer} with {h.change}: {h.statement}")
    return
  print(_threads.describe(), flush=True)
  waiting = []
  for name in args.names:
    h = HYPOTHESES[name]
    config = config_of(h, rows)
    if config is None:
      waiting.append(name)
      continue
    sweep = leaderboard.Sweep(tasks=(h.task,), jsonl=args.jsonl)
    for seed in leaderboard.EVAL_SEEDS:
      entry = (h.task, h.optimizer, "hypothesis", seed, config)
      leaderboard.run_entry(sweep, entry, {"hypothesis": name})
  if waiting:
    print(f"waiting for the leaderboard cells of: {', '.join(waiting)}")


if __name__ == "__main__":
  main(sys.argv[1:])
