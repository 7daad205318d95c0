"""``python -m experiments.paper_table``: the EGD paper's main table, measured.

Nine tasks: ``a + b`` and ``a · b mod p`` for p ∈ {79, 97, 127} (the paper's
MLP, SGD lr 0.7, batch 512, l2 1e-4, cross-entropy, 50% train split) and
sparse parity (n, k) ∈ {(400, 2), (100, 3), (50, 4)} (the official scripts:
2000 train / 10 000 test examples, batch 32, SGD without momentum, l2 on the
two weight matrices, MSE on ±1 labels; k=2: hidden 50, lr 1e-2, l2 1e-3;
k=3: hidden 100, lr 0.0416239, l2 1e-2; k=4: hidden 100, lr 0.0230841, l2
1e-2). Every task is trained with SGD, EGD (exact SVD), EGD (randomized SVD,
rank 128) and column normalization, for ``--seeds`` seeds, until the test
accuracy reaches 95% or ``--max-epochs``. EGD runs on the first layer, as in
the official scripts; ``--optimizers`` takes any of
:data:`experiments.optimizers.NAMES`.

Each run is :func:`experiments.grok.run_one` with the task's defaults from
:func:`experiments.grok.resolve`: the same data split, initialization and
shuffles for every optimizer of a seed, seconds without compilation.

Writes ``table.md`` and ``results.json`` to ``--out`` (after every run, so an
interrupted table keeps what finished): per task and optimizer, how many
seeds reached 95%, the median and range of epochs and seconds to 95%, and
the ratios ``SGD median / median`` (the paper reports 45-53x fewer epochs
and 10-14x less time). A run that does not reach 95% counts as "more than
the epochs (seconds) it ran"; medians and ratios that such a run decides are
printed as bounds (``> 3000``, ``≥ 40x``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
from typing import Any

import jax

from experiments import _cli, _machine, _threads, grok, optimizers, registry

# Task id → the unresolved ``experiments.grok`` config that selects it (the
# task's other hyperparameters come from :func:`experiments.grok.resolve`;
# parity's n from its k).
TASKS: dict[str, grok.RunConfig] = {
  **{f"add-{p}": grok.options(task="mod_add", p=p) for p in (79, 97, 127)},
  **{f"mul-{p}": grok.options(task="mod_mul", p=p) for p in (79, 97, 127)},
  **{
    f"parity-{n}-{k}": grok.options(task="parity", k=k)
    for n, k in (
      (400, 2),
      (100, 3),
      (50, 4),
    )
  },
}
OPTIMIZERS = ("sgd", "egd-first-layer", "egd-rsvd-first-layer", "column-norm")
BASELINE = "sgd"
QUICK = dict(tasks="add-97,parity-400-2", seeds=1, max_epochs=300)
TARGET = 0.95
OUTPUTS = ("table.md", "results.json")  # what a table writes into --out


@dataclasses.dataclass(frozen=True)
class Bound:
  """A measured value, or a lower bound on it (``exact=False``)."""

  value: float
  exact: bool = True

  def show(self, digits: int = 0, suffix: str = "") -> str:
    """``38`` or ``> 3000`` (``digits`` decimals)."""
    text = f"{self.value:.{digits}f}{suffix}"
    return text if self.exact else f"> {text}"


def build_parser() -> argparse.ArgumentParser:
  """The command line's parser."""
  p = argparse.ArgumentParser(
    prog="python -m experiments.paper_table", description=__doc__.splitlines()[0]
  )
  p.add_argument("--tasks", help=f"comma-separated, from: {', '.join(TASKS)} (all)")
  p.add_argument(
    "--optimizers",
    "--optimizer",
    dest="optimizers",
    default=",".join(OPTIMIZERS),
    help=f"comma-separated names of experiments.optimizers (default {OPTIMIZERS})",
  )
  p.add_argument("--seeds", type=_cli.integer(1), help="seeds 0..N-1 (default 3)")
  p.add_argument(
    "--max-epochs",
    type=_cli.integer(1),
    help="cap per run (default 3000); not reached: '> cap'",
  )
  p.add_argument(
    "--quick",
    action="store_true",
    help="add-97 and parity-400-2, 1 seed, 300 epochs (minutes)",
  )
  p.add_argument(
    "--out",
    type=pathlib.Path,
    default=pathlib.Path("runs/paper_table"),
    help="output folder (default runs/paper_table); one that holds files is "
    "refused unless --overwrite is given",
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace the table in --out: delete its table.md and results.json first",
  )
  p.add_argument("--progress", action="store_true", help="per-run progress bars")
  return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Command-line options; ``--quick`` fills the unset ones with :data:`QUICK`."""
  p = build_parser()
  args = p.parse_args(argv)
  defaults = (
    QUICK if args.quick else dict(tasks=",".join(TASKS), seeds=3, max_epochs=3000)
  )
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.task_ids = _cli.name_list(args.tasks)
  args.optimizer_names = _cli.name_list(args.optimizers)
  problem = _cli.check_names("argument --tasks", args.task_ids, tuple(TASKS)) or (
    _cli.check_names("argument --optimizers", args.optimizer_names, optimizers.NAMES)
  )
  if problem:
    p.error(problem)
  return args


def task_args(task: str, max_epochs: int) -> grok.RunConfig:
  """The resolved :mod:`experiments.grok` config of one task (its command line:
  ``grok.argv(task_args(task, max_epochs))``)."""
  return grok.resolve(
    dataclasses.replace(TASKS[task], max_epochs=max_epochs, checkpoint_every=0)
  )


def run_record(task: str, name: str, seed: int, args: grok.RunConfig) -> dict[str, Any]:
  """Train ``name`` on ``task`` with ``seed``; the run as a JSON-ready dict."""
  result = grok.run_one(args, name, seed)
  h = result.history
  return {
    "task": task,
    "optimizer": name,
    "seed": seed,
    "epochs_to_target": result.epochs_to_target,
    "seconds_to_target": result.seconds_to_target,
    "epochs_run": h.epochs,
    "seconds_run": sum(h.seconds),
    "compile_seconds": result.compile_seconds,
    "best_test_acc": max(h.test_acc),
    "final_train_acc": h.train_acc[-1],
  }


def censored_median(values: Sequence[Bound]) -> Bound:
  """Median of values some of which are lower bounds.

  Unfinished runs sort last; the median is exact only when it is a finished
  run's value (for an even count, when both middle values are).
  """
  ordered = sorted(values, key=lambda b: (not b.exact, b.value))
  n = len(ordered)
  middle = ordered[(n - 1) // 2 : n // 2 + 1]
  return Bound(statistics.mean(b.value for b in middle), all(b.exact for b in middle))


def ratio(baseline: Bound, other: Bound) -> str:
  """``baseline / other`` as text: exact, ``≥`` or ``≤`` a bound, or ``?``."""
  if not other.exact:
    return f"≤ {baseline.value / other.value:.1f}x" if baseline.exact else "?"
  value = f"{baseline.value / other.value:.1f}x"
  return value if baseline.exact else f"≥ {value}"


def _bounds(runs: list[dict[str, Any]], kind: str) -> list[Bound]:
  return [
    Bound(r[f"{kind}_to_target"])
    if r[f"{kind}_to_target"] is not None
    else Bound(r[f"{kind}_run"], exact=False)
    for r in runs
  ]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (task, optimizer) in first-seen order, with ratios to SGD."""
  keys = list(dict.fromkeys((r["task"], r["optimizer"]) for r in records))
  rows = []
  for task, name in keys:
    runs = [r for r in records if (r["task"], r["optimizer"]) == (task, name)]
    row: dict[str, Any] = {
      "task": task,
      "optimizer": name,
      "runs": len(runs),
      "reached": sum(r["epochs_to_target"] is not None for r in runs),
    }
    for kind in ("epochs", "seconds"):
      bounds = _bounds(runs, kind)
      # The smallest value is exact if its run finished; the largest is a
      # bound as soon as any run did not finish.
      highest = Bound(max(b.value for b in bounds), all(b.exact for b in bounds))
      row[kind] = {
        "median": dataclasses.asdict(censored_median(bounds)),
        "min": dataclasses.asdict(min(bounds, key=lambda b: b.value)),
        "max": dataclasses.asdict(highest),
      }
    rows.append(row)
  for row in rows:
    base = next(
      (r for r in rows if r["task"] == row["task"] and r["optimizer"] == BASELINE),
      None,
    )
    for kind in ("epochs", "seconds"):
      row[f"{kind}_vs_sgd"] = (
        ratio(Bound(**base[kind]["median"]), Bound(**row[kind]["median"]))
        if base is not None and row["optimizer"] != BASELINE
        else None
      )
  return rows


def _cell(stats: dict[str, Any], digits: int) -> str:
  low, high = Bound(**stats["min"]), Bound(**stats["max"])
  median = Bound(**stats["median"]).show(digits)
  if low == high:
    return median
  return f"{median} [{low.show(digits)}–{high.show(digits)}]"


def markdown(rows: list[dict[str, Any]], header: str) -> str:
  """The summary as a Markdown table below ``header``."""
  lines = [
    header,
    "",
    "| task | optimizer | reached 95% | epochs to 95%: median [range] "
    "| seconds to 95%: median [range] | epochs vs SGD | time vs SGD |",
    "|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append(
      f"| {row['task']} | {registry.get(row['optimizer']).shown} "
      f"| {row['reached']}/{row['runs']} | {_cell(row['epochs'], 0)} "
      f"| {_cell(row['seconds'], 1)} | {row['epochs_vs_sgd'] or '–'} "
      f"| {row['seconds_vs_sgd'] or '–'} |"
    )
  return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
  """Where the table was measured: :func:`experiments._machine.machine` with
  the three load averages, the JAX version and the date."""
  return {
    **_machine.machine(),
    "load_average": os.getloadavg(),
    "jax": jax.__version__,
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }


def main(argv: list[str] | None = None) -> None:
  """Run every (task, seed, optimizer) and write table.md and results.json."""
  args = parse_args(argv)
  problem = _cli.out_in_use(args.out, OUTPUTS, overwrite=args.overwrite)
  if problem:  # the reason alone: the usage lines say nothing about --out's files
    _cli.refuse("python -m experiments.paper_table", problem)
  problem = _cli.unwritable(args.out)  # before any training
  if problem:
    _cli.refuse("python -m experiments.paper_table", f"argument --out: {problem}")
  if args.overwrite:
    _cli.clear_outputs(args.out, OUTPUTS)
  print(_threads.describe())
  command = "python -m experiments.paper_table " + shlex.join(
    sys.argv[1:] if argv is None else argv
  )
  info = machine()
  header = (
    f"`{command}`: {info['cpu']}, {info['cpus']} CPUs, {info['blas_threads']}, "
    f"JAX {info['jax']} ({info['backend']}), load {info['load_average'][0]:.1f}, "
    f"{info['date']}. Cap {args.max_epochs} epochs; seconds exclude compilation."
  )
  records: list[dict[str, Any]] = []
  for task in args.task_ids:
    options = dataclasses.replace(
      task_args(task, args.max_epochs), no_progress=not args.progress
    )
    for seed in range(args.seeds):
      for name in args.optimizer_names:
        record = run_record(task, name, seed, options)
        records.append(record)
        print(json.dumps(record), flush=True)
        rows = summarize(records)
        results = {
          "command": command,
          "machine": info,
          "summary": rows,
          "runs": records,
        }
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / "table.md").write_text(markdown(rows, header))
  print(markdown(summarize(records), header))
  print(f"wrote {args.out / 'table.md'} and {args.out / 'results.json'}")


if __name__ == "__main__":
  main()
