"""``python -m experiments.leaderboard``: every optimizer tuned on one budget, per task.

For each task and optimizer, two phases:

* **tune**: :data:`BUDGET` configurations for every optimizer, each on the
  tuning seeds :data:`TUNE_SEEDS` (:func:`search`): the optimizer's grid of
  :data:`TRIALS` (:func:`grid`: the learning rate, and the weight decay
  where the optimizer has one), then one at a time past the edge of the
  best's learning-rate line, or between it and its better neighbour
  (:func:`propose`). The chosen configuration has the fewest median steps to
  the target accuracy, a seed that does not reach it counting as the cap
  (ties: the higher median best test accuracy, then the order tried); one
  still at an edge of what was tried is flagged;
* **eval**: the chosen configuration on the evaluation seeds
  :data:`EVAL_SEEDS`, disjoint from the tuning seeds.

Each run is :func:`experiments.grok.run_one` with the task's options
(:data:`TASKS`), so on a task every optimizer of a seed starts from the same
data split, initialization and shuffles. Every finished run is appended at
once, as one JSON line, to ``--jsonl`` (default
``experiments/results/leaderboard.jsonl``): a rerun skips the rows already
there, and several processes can fill one file (each claims a run under an
``fcntl`` lock of ``<jsonl>.lock`` in ``<jsonl>.claims`` before training it,
so two processes never train the same run; a claim of a process that is no
longer running is void). A cell's eval runs wait until its tune rows are all
in the file. ``docs/make_leaderboard.py`` renders the file as
``docs/leaderboard.md``.

Example::

    python -m experiments.leaderboard --tasks add97-mlp --optimizers sgd,egd
    python -m experiments.leaderboard --tasks add97-mlp --workers 2   # 2 processes
    python -m experiments.leaderboard --print-grid
    python -m experiments.leaderboard --quick --jsonl /tmp/quick.jsonl   # seconds

The per-task options and optimizer grids are in :data:`TASKS` and
:func:`grid`:

>>> [c["lr"] for c in grid("add97-mlp", "sgd")]
[0.175, 0.35, 0.7, 1.4, 2.8, 5.6]
>>> grid("grokfast", "muon")[0]
{'muon_lr': 0.03, 'adam_weight_decay': 0.0}
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from experiments import _cli, _threads, grok, registry
from experiments._machine import json_safe, machine

DEFAULT_JSONL = pathlib.Path("experiments/results/leaderboard.jsonl")
TUNE_SEEDS = (100, 101)
EVAL_SEEDS = (0, 1, 2, 3, 4)
QUICK_TUNE_SEEDS = (100,)
QUICK_EVAL_SEEDS = (0, 1)
TRIALS = 6  # configurations of the starting grid per optimizer and task
QUICK_TRIALS = 2
# Configurations per optimizer and task in all: the grid, then BUDGET - TRIALS
# placed by the search (search()), for every optimizer alike.
BUDGET = 10
QUICK_BUDGET = 3
# A step off an edge multiplies or divides the learning rate by this (the
# grid's spacing), each further step off the same edge by twice the factor
# of the one before; a refinement takes the geometric midpoint.
EDGE_STEP = 2.0
# Stable grokking: the target holds at every epoch from s through epoch 2·s
# (or the cap); runs go on until then (experiments.train, stop_rule="stable").
STABLE_RULE = ("test accuracy at or above the target at every epoch from s through "
               "epoch min(2·s, cap)")  # fmt: skip
STABLE_FIELDS = ("stable_steps_to_target", "stable_epochs_to_target", "fell_back")
# Times the task's learning rate, lr-only grids. (With 0.25-2, every tuned
# optimizer on add97-mlp chose the grid's largest learning rate.)
LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
WD_LR_FACTORS = (0.5, 1.0, 2.0)  # with two weight decays: 3 × 2 = TRIALS


@dataclasses.dataclass(frozen=True)
class Task:
  """One leaderboard task.

  Attributes:
    options: the :mod:`experiments.grok` options that select it, as Python
      values (``{"task": "mod_add", "p": 97}``: ``--task mod_add --p 97``).
    baseline: ``"sgd"`` or ``"adamw"``, as the task's paper trains it.
    cap_steps: optimizer steps per run at most (rounded up to whole epochs).
    family: ``"mlp"`` (the EGD paper's MLP, modular), ``"parity"``,
      ``"transformer"`` or ``"mnist"``: picks the optimizers' learning rates.
    optimizers: the optimizers run by default.
    source: the paper whose setup this is.
    quick_options: tiny options for ``--quick``.
  """

  options: Mapping[str, Any]
  baseline: str
  cap_steps: int
  family: str
  optimizers: tuple[str, ...]
  source: str
  quick_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def argv(self) -> tuple[str, ...]:
    """:attr:`options` as the command line writes them.

    >>> TASKS["parity-100-3"].argv
    ('--task', 'parity', '--k', '3')
    """
    return tuple(grok.argv(dict(self.options)))

  @property
  def quick_argv(self) -> tuple[str, ...]:
    """:attr:`quick_options` as the command line writes them."""
    return tuple(grok.argv(dict(self.quick_options)))


# Leaderboard optimizer names (see OPTIMIZERS) run everywhere.
ALL_OPTIMIZERS = (
  "baseline",
  "egd-first-layer",
  "egd",
  "egdm",
  "adam-egd",
  "muon",
  "grokfast-ema",
  "grokfast-ma",
  "perp-adamw",
  "column-norm",
)
# On transformers: egdm on the leaves muon treats as matrices too (egdm's own
# default takes the 2-D leaves, embeddings included, and gives the 3-D
# attention kernels AdamW), so that egdm and muon compare like with like.
TRANSFORMER_OPTIMIZERS = (*ALL_OPTIMIZERS, "egdm-kernels")
# The task variants of the EGD paper's open questions: EGD against its baselines.
VARIANT_OPTIMIZERS = ("baseline", "egd-first-layer", "egd", "egdm", "column-norm")
OPTIMIZERS = {
  "baseline": "the task's baseline: SGD (EGD paper tasks) or AdamW (Grokfast, "
  "Power et al., Omnigrok)",
  "egd-first-layer": "EGD on the first kernel, then SGD (the EGD paper's mode)",
  "egd": "EGD on every kernel, then SGD",
  "egdm": "optax_egd.egdm with its default leaves (EGD of Nesterov momentum on "
  "every 2-D leaf, embeddings included; AdamW on the rest, so on the transformers "
  "the 3-D attention kernels of nnx.MultiHeadAttention take AdamW, where muon "
  "treats them as matrices)",
  "egdm-kernels": "optax_egd.egdm on muon's leaves (every kernel, the 3-D "
  "attention kernels as matrices; AdamW on the rest, embeddings included): run "
  "on the transformers only, where the two differ",
  "adam-egd": "Adam's moments, then EGD, on the kernels; AdamW elsewhere",
  "muon": "optax.contrib.muon",
  "grokfast-ema": "Grokfast EMA filter in front of the baseline",
  "grokfast-ma": "Grokfast MA filter in front of the baseline",
  "perp-adamw": "⊥AdamW (⊥Grad in front of AdamW) with the StableMax "
  "cross-entropy (Prieto et al. 2025); MSE stays on a ±1 task",
  "column-norm": "column normalization in front of the baseline",
}

_MLP_QUICK = dict(p=11, hidden=16, batch_size=16)
_PARITY_QUICK = dict(n=20, n_train=64, n_test=64, hidden=16)
_TRANSFORMER_QUICK = dict(p=11, d_model=16, heads=2, layers=1)
_MLP_VARIANTS: dict[str, dict[str, Any]] = {
  "noise5": dict(label_noise=0.05),
  "noise10": dict(label_noise=0.1),
  "frac0.3": dict(train_fraction=0.3),
  "frac0.7": dict(train_fraction=0.7),
  "bs32": dict(batch_size=32),
  "bs128": dict(batch_size=128),
}
_EGD_PAPER = "EGD paper (Saheb Pasand & Dohmatob, ICLR 2026), its official scripts"
TASKS: dict[str, Task] = {
  "add97-mlp": Task(
    dict(task="mod_add", p=97),
    "sgd",
    2700,
    "mlp",
    ALL_OPTIMIZERS,
    _EGD_PAPER,
    dict(task="mod_add", **_MLP_QUICK),
  ),
  "mul97-mlp": Task(
    dict(task="mod_mul", p=97),
    "sgd",
    2700,
    "mlp",
    ALL_OPTIMIZERS,
    _EGD_PAPER,
    dict(task="mod_mul", **_MLP_QUICK),
  ),
  "parity-400-2": Task(
    dict(task="parity", k=2),
    "sgd",
    18600,
    "parity",
    ALL_OPTIMIZERS,
    _EGD_PAPER,
    dict(task="parity", k=2, **_PARITY_QUICK),
  ),
  **{
    f"add97-mlp-{name}": Task(
      dict(task="mod_add", p=97, **extra),
      "sgd",
      2700,
      "mlp",
      VARIANT_OPTIMIZERS,
      _EGD_PAPER + ", with " + " ".join(grok.argv(extra)),
      dict(task="mod_add", **_MLP_QUICK, **(extra if "noise" in name else {})),
    )
    for name, extra in _MLP_VARIANTS.items()
  },
  "grokfast": Task(
    dict(preset="grokfast"),
    "adamw",
    1000,
    "transformer",
    TRANSFORMER_OPTIMIZERS,
    "Grokfast (Lee et al. 2024), ironjr/grokfast main.py",
    dict(preset="grokfast", **_TRANSFORMER_QUICK),
  ),
  "add97-transformer": Task(
    dict(task="mod_add", p=97, encoding="tokens"),
    "adamw",
    3000,
    "transformer",
    TRANSFORMER_OPTIMIZERS,
    "Power et al. 2022 style: a + b mod 97, 50% train, 2-layer decoder "
    "(d_model 128, 4 heads), AdamW β2 0.98, 10-step warmup",
    dict(task="mod_add", encoding="tokens", **_TRANSFORMER_QUICK),
  ),
  "parity-100-3": Task(
    dict(task="parity", k=3),
    "sgd",
    62000,
    "parity",
    ALL_OPTIMIZERS,
    _EGD_PAPER,
    dict(task="parity", k=3, **_PARITY_QUICK),
  ),
  "parity-50-4": Task(
    dict(task="parity", k=4),
    "sgd",
    62000,
    "parity",
    ALL_OPTIMIZERS,
    _EGD_PAPER,
    dict(task="parity", k=4, **_PARITY_QUICK),
  ),
  "mnist": Task(
    dict(task="mnist"),
    "adamw",
    2000,
    "mnist",
    ALL_OPTIMIZERS,
    "Omnigrok (Liu et al. 2023): 1000 training images, MSE, init ×8",
    dict(task="mnist", n_train=100, width=16),
  ),
}
# Cheapest first: the order the sweep runs them in.
QUICK_TASKS = ("add97-mlp",)
QUICK_OPTIMIZERS = ("baseline", "egd")
QUICK_CAP_STEPS = 8


def grok_options(task: str, name: str) -> tuple[str, dict[str, Any]]:
  """The :mod:`experiments.grok` optimizer name of leaderboard optimizer
  ``name`` on ``task``, and any other grok options it needs (Python values).

  >>> grok_options("add97-mlp", "perp-adamw")
  ('orthograd-adamw', {'loss': 'stablemax_cross_entropy'})
  """
  base = TASKS[task].baseline
  if name == "baseline":
    return base, {}
  if name in ("grokfast-ema", "grokfast-ma", "column-norm"):
    return (name if base == "sgd" else f"{name}-adamw"), {}
  if name == "perp-adamw":
    sign_task = TASKS[task].family == "parity"
    return "orthograd-adamw", {} if sign_task else {"loss": "stablemax_cross_entropy"}
  return name, {}


def grok_optimizer(task: str, name: str) -> tuple[str, tuple[str, ...]]:
  """:func:`grok_options` with the other options as the command line writes them.

  >>> grok_optimizer("grokfast", "grokfast-ema")
  ('grokfast-ema-adamw', ())
  >>> grok_optimizer("add97-mlp", "perp-adamw")
  ('orthograd-adamw', ('--loss', 'stablemax_cross_entropy'))
  """
  grok_name, extra = grok_options(task, name)
  return grok_name, tuple(grok.argv(extra))


def _centre(task: str, spec: registry.OptimizerSpec) -> float:
  """The learning rate at the centre of ``spec``'s grid on ``task``."""
  family = TASKS[task].family
  centre = spec.centres[family]
  if centre is not None:
    return centre
  # The task's own SGD learning rate (on parity, the EGD paper's per k).
  own = grok.resolve(grok.options(**TASKS[task].options, optimizer="sgd"))
  return grok.given(own.lr)


def grid(task: str, name: str, trials: int = TRIALS) -> list[dict[str, float]]:
  """The configurations tried for ``name`` on ``task``: ``trials`` of them.

  Learning-rate-only optimizers: the centre learning rate times
  :data:`LR_FACTORS` (the first ``trials``, widest spread kept); with a
  weight decay: :data:`WD_LR_FACTORS` × two decays (0.1 and 1 for AdamW, 0
  and 0.1 for the others). The knobs and the centre are the optimizer's
  registry entry's (:attr:`experiments.registry.OptimizerSpec.tune` and
  ``centre``).
  """
  grok_name, _ = grok_optimizer(task, name)
  spec = registry.get(grok_name)
  lr_key, wd_key = (*spec.tuned, None)[:2]
  assert lr_key is not None  # registry.OptimizerSpec checks tune is not empty
  centre = _centre(task, spec)
  rounded = lambda v: float(f"{v:.4g}")
  if wd_key is None:
    factors = LR_FACTORS if trials == len(LR_FACTORS) else LR_FACTORS[1 : 1 + trials]
    return [{lr_key: rounded(centre * f)} for f in factors][:trials]
  decays = registry.ADAMW_DECAYS if lr_key == "adam_lr" else registry.OTHER_DECAYS
  configs = [
    {lr_key: rounded(centre * f), wd_key: d} for d in decays for f in WD_LR_FACTORS
  ]
  return configs if trials == len(configs) else configs[1::2][:trials]


def build_parser() -> argparse.ArgumentParser:
  """The command line's parser."""
  p = argparse.ArgumentParser(
    prog="python -m experiments.leaderboard", description=__doc__.splitlines()[0]
  )
  p.add_argument(
    "--tasks", help=f"comma-separated, from: {', '.join(TASKS)} (default: all)"
  )
  p.add_argument(
    "--optimizers",
    help=f"comma-separated, from: {', '.join(OPTIMIZERS)}, or any --optimizer of "
    "python -m experiments.grok or a --plugin (default: each "
    "task's own list: all of them, the MLP variants "
    f"{', '.join(VARIANT_OPTIMIZERS)})",
  )
  p.add_argument(
    "--plugin",
    action="append",
    metavar="FILE.py|MODULE",
    help="a Python file or module defining an experiments.registry.OptimizerSpec "
    "(see docs/leaderboard.md, 'Add your optimizer'): its optimizers are tuned and "
    "evaluated like the others, and run by default instead of the built-in ones "
    "(repeatable)",
  )
  p.add_argument(
    "--phase",
    choices=("tune", "eval", "both"),
    default="both",
    help="tune: the grid on the tuning seeds; eval: the chosen configuration on "
    "the evaluation seeds (needs the cell's tune rows); default both",
  )
  p.add_argument(
    "--quick",
    action="store_true",
    help=f"tiny task sizes, a cap of {QUICK_CAP_STEPS} steps, {QUICK_TRIALS} "
    f"trials, tune seed {QUICK_TUNE_SEEDS}, eval seeds {QUICK_EVAL_SEEDS} "
    f"(default tasks {', '.join(QUICK_TASKS)}, optimizers "
    f"{', '.join(QUICK_OPTIMIZERS)}): seconds",
  )
  p.add_argument(
    "--jsonl",
    "--out",
    dest="jsonl",
    type=pathlib.Path,
    default=DEFAULT_JSONL,
    help=f"the rows file, appended to (default {DEFAULT_JSONL})",
  )
  p.add_argument(
    "--print-grid",
    action="store_true",
    help="print every task's options, cap, seeds and grids, and exit",
  )
  p.add_argument(
    "--max-runs",
    type=_cli.integer(1),
    help="stop after training this many runs (default: all; with --workers, "
    "per worker)",
  )
  p.add_argument(
    "--workers",
    type=_cli.integer(1, 64),
    default=1,
    help="train with this many processes side by side, each one run at a time, "
    "all filling --jsonl (default 1; on a GPU the processes share its memory, "
    "XLA_PYTHON_CLIENT_PREALLOCATE=false unless an XLA_PYTHON_CLIENT_* memory "
    "variable is set)",
  )
  return p


def choices() -> tuple[str, ...]:
  """The ``--optimizers`` choices: :data:`OPTIMIZERS`, then every registered
  optimizer (plugins loaded so far included).

  >>> choices()[:3], "sgd" in choices()
  (('baseline', 'egd-first-layer', 'egd'), True)
  """
  return tuple(dict.fromkeys([*OPTIMIZERS, *registry.SPECS]))


@dataclasses.dataclass(frozen=True)
class Sweep:
  """What one ``python -m experiments.leaderboard`` runs: its checked options.

  Attributes:
    tasks: the tasks, in the order they run.
    optimizers: the leaderboard optimizers; None: each task's own list.
    phase: ``"tune"``, ``"eval"`` or ``"both"``.
    quick: tiny tasks, cap, trials and seeds (``--quick``).
    jsonl: the rows file.
    max_runs: stop after training this many runs (None: all).
    print_grid: print the grids and budget instead of training.
    workers: processes training side by side (:func:`run_workers`).

  >>> sweep = Sweep(tasks=("add97-mlp",), quick=True)
  >>> sweep.trials, sweep.budget, sweep.tune_seeds, sweep.eval_seeds
  (2, 3, (100,), (0, 1))
  """

  tasks: tuple[str, ...] = tuple(TASKS)
  optimizers: tuple[str, ...] | None = None
  phase: str = "both"
  quick: bool = False
  jsonl: pathlib.Path = DEFAULT_JSONL
  max_runs: int | None = None
  print_grid: bool = False
  workers: int = 1

  @property
  def trials(self) -> int:
    """Configurations per optimizer and task."""
    return QUICK_TRIALS if self.quick else TRIALS

  @property
  def budget(self) -> int:
    """Configurations per optimizer and task in all (:func:`search`)."""
    return QUICK_BUDGET if self.quick else BUDGET

  @property
  def tune_seeds(self) -> tuple[int, ...]:
    """The tuning seeds."""
    return QUICK_TUNE_SEEDS if self.quick else TUNE_SEEDS

  @property
  def eval_seeds(self) -> tuple[int, ...]:
    """The evaluation seeds."""
    return QUICK_EVAL_SEEDS if self.quick else EVAL_SEEDS


def parse_args(argv: list[str] | None = None) -> Sweep:
  """Parse and check the options (loading ``--plugin`` files); a bad one is a
  one-line usage error."""
  p = build_parser()
  args = p.parse_args(argv)
  plugins: list[str] = []
  for source in args.plugin or ():
    try:
      plugins += [spec.name for spec in registry.load_plugin(source)]
    except ValueError as error:
      p.error(f"argument --plugin: {error}")
    clash = [name for name in plugins if name in OPTIMIZERS]
    if clash:
      p.error(f"argument --plugin: {source}: {clash[0]!r} is a leaderboard name")
  tasks = QUICK_TASKS if args.quick else tuple(TASKS)
  task_ids = _cli.name_list(args.tasks) if args.tasks is not None else list(tasks)
  problem = _cli.check_names("argument --tasks", task_ids, tuple(TASKS))
  optimizers: list[str] | None
  if args.optimizers is not None:
    optimizers = _cli.name_list(args.optimizers)
    problem = problem or _cli.check_names(
      "argument --optimizers", optimizers, choices()
    )
  elif plugins:
    optimizers = plugins
  else:
    optimizers = list(QUICK_OPTIMIZERS) if args.quick else None
  if problem:
    p.error(problem)
  if args.jsonl.exists() and not args.jsonl.is_file():
    p.error(f"argument --jsonl: {args.jsonl} is not a file")
  if not args.print_grid:
    problem = _cli.unwritable(args.jsonl.parent)
    if problem:
      p.error(f"argument --jsonl: {problem}")
  return Sweep(
    tasks=tuple(task_ids),
    optimizers=None if optimizers is None else tuple(optimizers),
    phase=args.phase,
    quick=args.quick,
    jsonl=args.jsonl,
    max_runs=args.max_runs,
    print_grid=args.print_grid,
    workers=args.workers,
  )


def optimizers_of(sweep: Sweep, task: str) -> list[str]:
  """The optimizers to run on ``task``: ``--optimizers`` or the task's own."""
  if sweep.optimizers is not None:
    return list(sweep.optimizers)
  return list(TASKS[task].optimizers)


def task_argv(task: str, quick: bool) -> list[str]:
  """The task's :mod:`experiments.grok` options (the tiny ones with ``quick``).

  >>> task_argv("add97-mlp-noise5", quick=True)
  ['--task', 'mod_add', '--p', '11', '--hidden', '16', '--batch-size', '16', \
'--label-noise', '0.05']
  """
  spec = TASKS[task]
  if not quick:
    return list(spec.argv)
  return list(spec.quick_argv)


def cap_epochs(cap_steps: int, steps_per_epoch: int) -> int:
  """Whole epochs covering ``cap_steps`` steps.

  >>> cap_epochs(2700, 9), cap_epochs(1000, 10), cap_epochs(10, 3)
  (300, 100, 4)
  """
  return -(-cap_steps // steps_per_epoch)


def run_options(
  task: str, name: str, config: dict[str, float], quick: bool
) -> dict[str, Any]:
  """The :mod:`experiments.grok` options of one run, cap excluded, as Python
  values (:func:`experiments.grok.options` takes them)."""
  grok_name, extra = grok_options(task, name)
  spec = TASKS[task]
  options = {**(spec.quick_options if quick else spec.options), "optimizer": grok_name}
  plugin = registry.get(grok_name).plugin
  if plugin is not None:
    options["plugin"] = [plugin.source]
  return {**options, **extra, **config}


def run_argv(task: str, name: str, config: dict[str, float], quick: bool) -> list[str]:
  """:func:`run_options` as the command line writes them (rows' ``command``).

  >>> run_argv("parity-100-3", "egd", {"lr": 0.04}, quick=False)
  ['--task', 'parity', '--k', '3', '--optimizer', 'egd', '--lr', '0.04']
  """
  return grok.argv(run_options(task, name, config, quick))


def resolved(
  task: str, name: str, config: dict[str, float], quick: bool
) -> grok.RunConfig:
  """The resolved :mod:`experiments.grok` options of a run, with its cap set
  (``max_epochs`` covering the task's cap steps)."""
  from experiments.train import steps_per_epoch

  options = run_options(task, name, config, quick)
  run = grok.resolve(grok.options(**options, max_epochs=1))
  per_epoch = steps_per_epoch(grok.train_size(run), grok.train_config(run))
  cap = QUICK_CAP_STEPS if quick else TASKS[task].cap_steps
  return dataclasses.replace(
    run,
    max_epochs=cap_epochs(cap, per_epoch),
    checkpoint_every=0,
    no_progress=True,
  )


def row_key(row: dict[str, Any]) -> str:
  """What identifies a run: task, optimizer, phase, seed, config, quick, and a
  plugin's SHA-256 (a changed plugin file is another optimizer)."""
  key = [row["task"], row["optimizer"], row["phase"], row["seed"], row["config"],
         bool(row.get("quick"))]  # fmt: skip
  if row.get("plugin") is not None:
    key.append(row["plugin"]["sha256"])
  return json.dumps(key, sort_keys=True)


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a JSONL file (a torn last line, from a killed writer, is
  skipped)."""
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    with contextlib.suppress(json.JSONDecodeError):
      if line.strip():
        rows.append(json.loads(line))
  return rows


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
  """An exclusive ``fcntl`` lock of ``<path>.lock`` for the block."""
  with open(f"{path}.lock", "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(claim: dict[str, Any]) -> bool:
  if claim.get("host") != socket.gethostname():
    return time.time() - claim.get("time", 0) < 24 * 3600
  if claim.get("pid") == os.getpid():
    return True
  try:
    os.kill(claim["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def complete(row: dict[str, Any]) -> bool:
  """Whether ``row`` carries the stable-grokking fields (:data:`STABLE_FIELDS`)."""
  return all(field in row for field in STABLE_FIELDS)


def claim(path: pathlib.Path, key: str) -> bool:
  """Claim run ``key`` for this process; False if a complete row of it is in
  the file (:func:`complete`) or a live process claimed it."""
  claims = pathlib.Path(f"{path}.claims")
  with locked(path):
    if key in {row_key(r) for r in read_rows(path) if complete(r)}:
      return False
    if any(c["key"] == key and _alive(c) for c in read_rows(claims)):
      return False
    entry = {"key": key, "pid": os.getpid(), "host": socket.gethostname(),
             "time": time.time()}  # fmt: skip
    with open(claims, "a") as f:
      f.write(json.dumps(entry) + "\n")
  return True


def _rewrite(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
  """Replace the file's rows (call under :func:`locked`): written next to it,
  then renamed over it, so a reader never sees half a file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(json_safe(r)) + "\n" for r in rows))
  os.replace(tmp, path)


def append(path: pathlib.Path, row: dict[str, Any]) -> None:
  """Append ``row`` as one line, under the lock. A row of the same run
  without the stable-grokking fields (written before they existed) is
  replaced in place by ``row``, which keeps its steps to target and date
  under ``"replaced"`` (the rerun runs the current code: where that changed
  since, its steps may differ)."""
  row = json_safe(row)
  with locked(path):
    rows = read_rows(path)
    key = row_key(row)
    old = [i for i, r in enumerate(rows) if row_key(r) == key and not complete(r)]
    if not old:
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
      return
    before = rows[old[0]]
    replaced = {k: before.get(k) for k in ("steps_to_target", "date")}
    rows[old[0]] = {**row, "replaced": replaced}
    _rewrite(path, [r for i, r in enumerate(rows) if i not in old[1:]])


def complete_unreached(path: pathlib.Path) -> int:
  """Give the stable-grokking fields to the rows written before they existed
  that never reached the target in a run to the cap: they follow from the
  row (no stable grokking, never fell back), so no rerun is needed. Returns
  how many rows were completed; rows that reached the target stay incomplete
  until a rerun replaces them (:func:`append`)."""
  if not path.exists():
    return 0
  with locked(path):
    rows = read_rows(path)
    done = 0
    for row in rows:
      if (not complete(row) and row.get("steps_to_target") is None
          and row.get("epochs_run") == row.get("cap_epochs")):  # fmt: skip
        row.update(
          stable_steps_to_target=None,
          stable_epochs_to_target=None,
          fell_back=False,
          stable_rule=STABLE_RULE,
          stable_derived="never reached the target in a run to the cap",
        )
        done += 1
    if done:
      _rewrite(path, rows)
  return done


def train_row(
  task: str, name: str, phase: str, seed: int, config: dict[str, float], quick: bool
) -> dict[str, Any]:
  """Train one run and return its row."""
  import jax

  args = dataclasses.replace(resolved(task, name, config, quick), stop_rule="stable")
  result = grok.run_one(args, grok.given(args.optimizers)[0], seed)
  h = result.history
  argv = run_argv(task, name, config, quick)
  command = shlex.join(
    ["python", "-m", "experiments.grok", *argv, "--max-epochs", str(args.max_epochs),
     "--stop-rule", "stable", "--seed", str(seed)]
  )  # fmt: skip
  stable = result.stable_epochs_to_target(args.max_epochs)
  return {
    "task": task,
    "optimizer": name,
    "phase": phase,
    "seed": seed,
    "config": config,
    "quick": quick,
    "steps_to_target": result.steps_to_target,
    "epochs_to_target": result.epochs_to_target,
    "seconds": result.seconds_to_target,
    "stable_steps_to_target": stable and stable * result.steps_per_epoch,
    "stable_epochs_to_target": stable,
    "fell_back": result.fell_back,
    "stable_rule": STABLE_RULE,
    "cap_steps": args.max_epochs * result.steps_per_epoch,
    "cap_epochs": args.max_epochs,
    "steps_per_epoch": result.steps_per_epoch,
    "target_accuracy": args.target_accuracy,
    "epochs_run": h.epochs,
    "seconds_run": sum(h.seconds),
    "compile_seconds": result.compile_seconds,
    "best_test_acc": max(h.test_acc),
    "final_test_acc": h.test_acc[-1],
    "final_train_acc": h.train_acc[-1],
    "grok_optimizer": grok.given(args.optimizers)[0],
    "loss": args.loss,
    "command": command,
    "machine": machine(),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "jax": jax.__version__,
    **_plugin_field(grok.given(args.optimizers)[0]),
  }


def _plugin_field(grok_name: str) -> dict[str, Any]:
  """``{"plugin": {"source": ..., "sha256": ...}}`` for a plugin optimizer,
  else nothing (the rows of built-in optimizers keep their keys)."""
  plugin = registry.get(grok_name).plugin
  return {} if plugin is None else {"plugin": dataclasses.asdict(plugin)}


def _score(rows: list[dict[str, Any]]) -> tuple[float, float]:
  steps = [
    r["steps_to_target"] if r["steps_to_target"] is not None else r["cap_steps"]
    for r in rows
  ]
  # A run that went NaN has no best test accuracy (None): it counts as 0.
  accuracy = statistics.median(r["best_test_acc"] or 0.0 for r in rows)
  return statistics.median(steps), -accuracy


def cell_rows(
  rows: list[dict[str, Any]], task: str, name: str, quick: bool, sha256: str | None
) -> list[dict[str, Any]]:
  """The rows of one cell: ``task``, optimizer ``name``, ``--quick`` or not,
  and the plugin file with hash ``sha256`` (None: no plugin)."""
  return [
    r for r in rows
    if r["task"] == task and r["optimizer"] == name
    and bool(r.get("quick")) == quick
    and (r.get("plugin") or {}).get("sha256") == sha256
  ]  # fmt: skip


def _tune_rows(
  rows: list[dict[str, Any]], task: str, name: str, quick: bool, sha256: str | None
) -> list[dict[str, Any]]:
  return [r for r in cell_rows(rows, task, name, quick, sha256) if r["phase"] == "tune"]


def choose(
  rows: list[dict[str, Any]],
  task: str,
  name: str,
  configs: list[dict[str, float]],
  seeds: tuple[int, ...],
  quick: bool = False,
  sha256: str | None = None,
) -> dict[str, float] | None:
  """The best of ``configs`` for (``task``, ``name``): the one with the
  fewest median steps to target over ``seeds`` (unreached: the cap), ties to
  the higher median best test accuracy, then the earlier config. None until
  every tune row is in ``rows``. ``sha256``: only the rows of the plugin file
  with this hash (None: the rows of no plugin). :func:`search` places the
  configurations; this picks among them.

  >>> row = lambda lr, s: dict(task="t", optimizer="o", phase="tune", seed=0,
  ...   config={"lr": lr}, steps_to_target=s, cap_steps=100, best_test_acc=0.9)
  >>> choose([row(1.0, None), row(2.0, 40)], "t", "o", [{"lr": 1.0}, {"lr": 2.0}], (0,))
  {'lr': 2.0}
  """
  tune = _tune_rows(rows, task, name, quick, sha256)
  scores = []
  for i, config in enumerate(configs):
    mine = [r for r in tune if r["config"] == config and r["seed"] in seeds]
    if {r["seed"] for r in mine} != set(seeds):
      return None
    scores.append((*_score(mine), i))
  return configs[min(scores)[2]] if scores else None


def _line(config: dict[str, float], configs: list[dict[str, float]]) -> list[float]:
  """The learning rates (first key) tried with ``config``'s other knobs, sorted."""
  lr_key = next(iter(config))
  rest = {k: v for k, v in config.items() if k != lr_key}
  return sorted(
    {c[lr_key] for c in configs if {k: v for k, v in c.items() if k != lr_key} == rest}
  )


def at_edge(config: dict[str, float], configs: list[dict[str, float]]) -> bool:
  """Whether ``config``'s learning rate is the smallest or largest of those
  tried with its other knobs (then its best may lie past what was tried).

  >>> at_edge({"lr": 1.0, "wd": 0.1}, [{"lr": 1.0, "wd": 0.1}, {"lr": 2.0, "wd": 0.1},
  ...   {"lr": 0.5, "wd": 0.0}])
  True
  """
  line = _line(config, configs)
  return config[next(iter(config))] in (line[0], line[-1])


def propose(
  configs: list[dict[str, float]],
  scores: list[tuple[float, float]],
  trials: int = TRIALS,
) -> dict[str, float]:
  """The next configuration to try, given those tried (the first ``trials``
  the grid) and their scores (:func:`_score`, lower is better). From the best
  one: when its learning rate is at an edge of its line (:func:`at_edge`), a
  step past that edge, of :data:`EDGE_STEP` the first time and twice the
  factor of the step before each further time (×2, ×4, ×8: a far optimum is
  reached in a few trials); else the geometric midpoint towards its better
  neighbour (then towards the other).

  >>> configs = [{"lr": 1.0}, {"lr": 2.0}, {"lr": 4.0}]
  >>> propose(configs, [(30, 0), (20, 0), (10, 0)], trials=3)  # at the top: on
  {'lr': 8.0}
  >>> propose([*configs, {"lr": 8.0}], [(30, 0), (20, 0), (10, 0), (5, 0)], 3)
  {'lr': 32.0}
  >>> propose(configs, [(30, 0), (10, 0), (20, 0)], trials=3)  # inside: refine
  {'lr': 2.828}
  """
  best = configs[min(range(len(configs)), key=lambda i: (scores[i], i))]
  lr_key = next(iter(best))
  line = _line(best, configs)
  grid_line = _line(best, configs[:trials]) or [best[lr_key]]
  lr = best[lr_key]
  at = line.index(lr)

  def at_lr(value: float) -> dict[str, float]:
    return {**best, lr_key: float(f"{value:.4g}")}

  if at == 0:
    steps_before = sum(v < grid_line[0] for v in line)
    return at_lr(lr / EDGE_STEP ** (steps_before + 1))
  if at == len(line) - 1:
    steps_before = sum(v > grid_line[-1] for v in line)
    return at_lr(lr * EDGE_STEP ** (steps_before + 1))
  score = {
    json.dumps(c, sort_keys=True): sc for c, sc in zip(configs, scores, strict=True)
  }
  neighbours = sorted(
    (line[at - 1], line[at + 1]),
    key=lambda v: score[json.dumps(at_lr(v), sort_keys=True)],
  )
  for neighbour in neighbours:
    candidate = at_lr((lr * neighbour) ** 0.5)
    if candidate not in configs:
      return candidate
  return at_lr(line[0] / EDGE_STEP)  # refined to 4 digits: widen instead


@dataclasses.dataclass(frozen=True)
class Search:
  """Where the tuning of one (task, optimizer) cell stands (:func:`search`).

  Attributes:
    configs: the configurations tried on every tuning seed, in the order
      the search placed them (the grid first).
    needed: the configurations to run next (some tuning seed missing);
      empty once the budget is spent.
    chosen: the best of ``configs`` once the budget is spent, else None.
    edge: ``chosen`` is at an edge of what was tried (:func:`at_edge`).
  """

  configs: tuple[dict[str, float], ...]
  needed: tuple[dict[str, float], ...]
  chosen: dict[str, float] | None
  edge: bool


def search(
  rows: list[dict[str, Any]],
  task: str,
  name: str,
  *,
  trials: int = TRIALS,
  budget: int = BUDGET,
  seeds: tuple[int, ...] = TUNE_SEEDS,
  quick: bool = False,
  sha256: str | None = None,
) -> Search:
  """The tuning of (``task``, ``name``) from the rows so far: the grid
  (:func:`grid`, ``trials`` configurations), then :func:`propose` until
  ``budget`` configurations were tried on every seed of ``seeds``. The
  same budget for every optimizer; the placement follows from the rows
  alone, so every process filling the file places the same ones, and a
  configuration already in the file is reused."""
  tune = _tune_rows(rows, task, name, quick, sha256)

  def mine(config: dict[str, float]) -> list[dict[str, Any]]:
    return [r for r in tune if r["config"] == config and r["seed"] in seeds]

  def tried(config: dict[str, float]) -> bool:
    return {r["seed"] for r in mine(config)} == set(seeds)

  configs = grid(task, name, trials)
  missing = [c for c in configs if not tried(c)]
  if missing:
    return Search(tuple(c for c in configs if tried(c)), tuple(missing), None, False)
  scores = [_score(mine(c)) for c in configs]
  while len(configs) < budget:
    following = propose(configs, scores, trials)
    if not tried(following):
      return Search(tuple(configs), (following,), None, False)
    configs.append(following)
    scores.append(_score(mine(following)))
  best = configs[min(range(len(configs)), key=lambda i: (scores[i], i))]
  return Search(tuple(configs), (), best, at_edge(best, configs))


Entry = tuple[
  str, str, str, int, dict[str, float]
]  # task, optimizer, phase, seed, config


def _sha256(task: str, name: str) -> str | None:
  plugin = registry.get(grok_optimizer(task, name)[0]).plugin
  return None if plugin is None else plugin.sha256


def cell_search(
  sweep: Sweep, rows: list[dict[str, Any]], task: str, name: str
) -> Search:
  """:func:`search` of a cell with the sweep's budget and seeds."""
  return search(rows, task, name, trials=sweep.trials, budget=sweep.budget,
                seeds=sweep.tune_seeds, quick=sweep.quick,
                sha256=_sha256(task, name))  # fmt: skip


def next_runs(
  sweep: Sweep, rows: list[dict[str, Any]], task: str, name: str, upgrades: bool
) -> tuple[list[Entry], bool]:
  """The runs the cell (``task``, ``name``) needs next, in order, and whether
  its evaluation waits for tuning rows.

  Without ``upgrades``: the tuning search's next configurations on the
  tuning seeds (:func:`search`), then the chosen configuration on the
  evaluation seeds (a row of it written before the stable-grokking fields
  existed is rerun). With ``upgrades``: the reruns of the cell's other rows
  without those fields (the tables do not need them; every row gets them)."""
  mine = cell_rows(rows, task, name, sweep.quick, _sha256(task, name))
  done = {(r["phase"], r["seed"], json.dumps(r["config"], sort_keys=True))
          for r in mine if complete(r)}  # fmt: skip

  def missing(
    phase: str, seeds: tuple[int, ...], config: dict[str, float]
  ) -> list[Entry]:
    key = json.dumps(config, sort_keys=True)
    return [(task, name, phase, seed, config) for seed in seeds
            if (phase, seed, key) not in done]  # fmt: skip

  if upgrades:
    phases = {"tune", "eval"} if sweep.phase == "both" else {sweep.phase}
    return [(task, name, r["phase"], r["seed"], r["config"]) for r in mine
            if not complete(r) and r["phase"] in phases], False  # fmt: skip
  runs: list[Entry] = []
  state = cell_search(sweep, rows, task, name)
  if sweep.phase in ("tune", "both"):
    for config in state.needed:
      tuned = {
        r["seed"] for r in mine if r["phase"] == "tune" and r["config"] == config
      }
      runs += [(task, name, "tune", seed, config) for seed in sweep.tune_seeds
               if seed not in tuned]  # fmt: skip
  if sweep.phase in ("eval", "both"):
    if state.chosen is None:
      return runs, True
    runs += missing("eval", sweep.eval_seeds, state.chosen)
  return runs, False


def plan(sweep: Sweep, rows: list[dict[str, Any]] | None = None) -> list[Entry]:
  """The runs the options ask for next, from ``rows`` (default: none), in
  the order they run: task by task, optimizer by optimizer, the tuning
  search before the evaluation (which needs the search done), then the
  reruns that give old rows the stable-grokking fields. With no rows: the
  grid's tuning runs (the search places the rest once they are in)."""
  rows = rows or []
  cells = [(task, name) for task in sweep.tasks for name in optimizers_of(sweep, task)]
  entries = []
  for upgrades in (False, True):
    for task, name in cells:
      entries += next_runs(sweep, rows, task, name, upgrades)[0]
  return entries


def print_grid(sweep: Sweep) -> None:
  """The grid and budget of every selected task and optimizer."""
  mode = "--quick" if sweep.quick else "full"
  print(
    f"{mode}: {sweep.budget} configurations per optimizer, each on tuning seeds "
    f"{list(sweep.tune_seeds)}: the grid of {sweep.trials} below, then "
    f"{sweep.budget - sweep.trials} placed by the search (from the best so far: "
    f"past the edge of what was tried, x{EDGE_STEP:g}, then x{EDGE_STEP**2:g}, "
    f"x{EDGE_STEP**3:g}, ..., else the midpoint towards its better neighbour); "
    f"the best on evaluation seeds {list(sweep.eval_seeds)}; "
    f"{sweep.budget * len(sweep.tune_seeds)} tuning runs + {len(sweep.eval_seeds)} "
    "evaluation runs per optimizer and task"
  )
  for task in sweep.tasks:
    spec = TASKS[task]
    cap = QUICK_CAP_STEPS if sweep.quick else spec.cap_steps
    options = shlex.join(task_argv(task, sweep.quick))
    print(f"\n{task}: python -m experiments.grok {options}")
    print(f"  {spec.source}; baseline {spec.baseline}; cap {cap} steps")
    for name in optimizers_of(sweep, task):
      grok_name, extra = grok_optimizer(task, name)
      configs = ", ".join(
        " ".join(f"{k}={v:g}" for k, v in c.items())
        for c in grid(task, name, sweep.trials)
      )
      print(f"  {name:16s} {grok_name} {' '.join(extra)}: {configs}")


def run_entry(
  sweep: Sweep, entry: Entry, extra: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
  """Claim and train one run, appending its row (with the ``extra`` fields)
  to ``sweep.jsonl`` and printing a line; None when another process has it."""
  task, name, phase, seed, config = entry
  plugin = _plugin_field(grok_optimizer(task, name)[0])
  key = row_key(dict(task=task, optimizer=name, phase=phase, seed=seed, config=config,
                     quick=sweep.quick, **plugin))  # fmt: skip
  if not claim(sweep.jsonl, key):
    return None
  row = {**train_row(task, name, phase, seed, config, sweep.quick), **(extra or {})}
  append(sweep.jsonl, row)
  shown = " ".join(f"{k}={v:g}" if isinstance(v, float | int) else f"{k}={v}"
                   for k, v in config.items())  # fmt: skip
  print(
    f"{task} {name} {phase} seed {seed} {shown}: steps {row['steps_to_target']}, "
    f"stable {row['stable_steps_to_target']} (cap {row['cap_steps']}, "
    f"{row['seconds_run']:.1f} s)",
    flush=True,
  )
  return row


# Set for the workers on a GPU unless the user set one of these: without it
# each process would take 75% of the GPU's memory at its first array.
_GPU_MEMORY_VARIABLES = ("XLA_PYTHON_CLIENT_PREALLOCATE",
                         "XLA_PYTHON_CLIENT_MEM_FRACTION",
                         "XLA_PYTHON_CLIENT_ALLOCATOR")  # fmt: skip


def run_workers(argv: list[str], workers: int) -> int:
  """Run ``python -m experiments.leaderboard argv`` as ``workers`` processes
  side by side and wait for them. Returns 0 when every one succeeded, else
  the first failing one's exit status (1 for one killed by a signal).

  The processes share the rows file as separate invocations do (claims under
  a lock: no run twice). Stopping this process (Ctrl-C, SIGTERM) stops them.
  """
  env = dict(os.environ)
  if not any(name in env for name in _GPU_MEMORY_VARIABLES):
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  command = [sys.executable, "-m", "experiments.leaderboard", *argv, "--workers", "1"]
  print(f"{workers} workers: {shlex.join(['python', *command[1:]])}", flush=True)

  def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGTERM, stop)
  procs: list[subprocess.Popen[bytes]] = []
  try:
    for _ in range(workers):
      procs.append(subprocess.Popen(command, env=env))
      time.sleep(1)  # staggered: each reads the rows after the last claimed
    failed = [code for code in (proc.wait() for proc in procs) if code != 0]
    return 0 if not failed else failed[0] if failed[0] > 0 else 1
  except KeyboardInterrupt:
    return 130
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.terminate()
    for proc in procs:
      with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
  """Run every run the sweep needs, appending each row to ``--jsonl``: the
  tuning searches and evaluations of every cell first, then the reruns that
  give older rows the stable-grokking fields. Cells are revisited until
  nothing is left (or ``--max-runs``); a run another process is training is
  waited for when nothing else is left."""
  sweep = parse_args(argv)
  if sweep.print_grid:
    print_grid(sweep)
    return
  if sweep.workers > 1:
    sys.exit(run_workers(sys.argv[1:] if argv is None else argv, sweep.workers))
  print(_threads.describe(), flush=True)
  completed = complete_unreached(sweep.jsonl)
  if completed:
    print(f"{completed} rows that never reached the target got the stable fields")
  ran = 0
  failed: set[str] = set()
  trained: set[str] = set()
  waiting: list[str] = []
  cells = [(task, name) for task in sweep.tasks for name in optimizers_of(sweep, task)]
  for upgrades in (False, True):
    while sweep.max_runs is None or ran < sweep.max_runs:
      progressed, elsewhere = False, False
      waiting = [] if not upgrades else waiting
      rows = read_rows(sweep.jsonl)  # read again after each run of this process
      for task, name in cells:
        entries, waits = next_runs(sweep, rows, task, name, upgrades)
        if waits:
          waiting.append(f"{task}/{name}")
        for entry in entries:
          if repr(entry) in failed or repr(entry) in trained:
            continue
          try:
            row = run_entry(sweep, entry)
          except Exception as error:  # one broken run must not end a long sweep
            failed.add(repr(entry))
            print(f"{' '.join(map(str, entry[:4]))}: FAILED: {error!r}", flush=True)
            continue
          if row is None:
            elsewhere = True
            continue
          ran += 1
          trained.add(repr(entry))  # never twice in one process, whatever its row
          rows = read_rows(sweep.jsonl)
          progressed = True
          break  # the cell's next runs follow from this row
        if sweep.max_runs is not None and ran >= sweep.max_runs:
          break
      if not progressed:
        if not elsewhere:
          break
        time.sleep(10)  # another process trains what is left: wait for its rows
  if waiting:
    cells_ = ", ".join(dict.fromkeys(waiting))
    print(f"eval waits for tune rows of: {cells_}; rerun when they are in")
  print(f"{ran} runs appended to {sweep.jsonl}")
  if failed:
    listed = ", ".join(sorted(failed))
    print(f"{len(failed)} runs failed (no row; a rerun retries them): {listed}")
    sys.exit(1)


if __name__ == "__main__":
  main(sys.argv[1:])
