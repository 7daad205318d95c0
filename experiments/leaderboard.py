"""``python -m experiments.leaderboard``: every optimizer tuned on one budget, per task.

For each task and optimizer, two phases:

* **tune**: every configuration of the optimizer's grid (:func:`grid`: the
  learning rate, and the weight decay where the optimizer has one; the same
  number of trials, :data:`TRIALS`, for every optimizer) on the tuning seeds
  :data:`TUNE_SEEDS`. The chosen configuration (:func:`choose`) has the
  fewest median steps to the target accuracy, a seed that does not reach it
  counting as the cap (ties: the higher median best test accuracy, then the
  grid's order);
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
import socket
import statistics
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
TRIALS = 6  # configurations per optimizer and task
QUICK_TRIALS = 2
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
# The task variants of the EGD paper's open questions: EGD against its baselines.
VARIANT_OPTIMIZERS = ("baseline", "egd-first-layer", "egd", "egdm", "column-norm")
OPTIMIZERS = {
  "baseline": "the task's baseline: SGD (EGD paper tasks) or AdamW (Grokfast, "
  "Power et al., Omnigrok)",
  "egd-first-layer": "EGD on the first kernel, then SGD (the EGD paper's mode)",
  "egd": "EGD on every kernel, then SGD",
  "egdm": "optax_egd.egdm (EGD of Nesterov momentum on every 2-D leaf, embeddings "
  "included; AdamW on the rest, so on add97-transformer the 3-D attention kernels "
  "of nnx.MultiHeadAttention take AdamW, where muon treats them as matrices)",
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
    ALL_OPTIMIZERS,
    "Grokfast (Lee et al. 2024), ironjr/grokfast main.py",
    dict(preset="grokfast", **_TRANSFORMER_QUICK),
  ),
  "add97-transformer": Task(
    dict(task="mod_add", p=97, encoding="tokens"),
    "adamw",
    3000,
    "transformer",
    ALL_OPTIMIZERS,
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
    help="stop after training this many runs (default: all)",
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

  >>> sweep = Sweep(tasks=("add97-mlp",), quick=True)
  >>> sweep.trials, sweep.tune_seeds, sweep.eval_seeds
  (2, (100,), (0, 1))
  """

  tasks: tuple[str, ...] = tuple(TASKS)
  optimizers: tuple[str, ...] | None = None
  phase: str = "both"
  quick: bool = False
  jsonl: pathlib.Path = DEFAULT_JSONL
  max_runs: int | None = None
  print_grid: bool = False

  @property
  def trials(self) -> int:
    """Configurations per optimizer and task."""
    return QUICK_TRIALS if self.quick else TRIALS

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


def claim(path: pathlib.Path, key: str) -> bool:
  """Claim run ``key`` for this process; False if it is done or claimed by a
  live process."""
  claims = pathlib.Path(f"{path}.claims")
  with locked(path):
    if key in {row_key(r) for r in read_rows(path)}:
      return False
    if any(c["key"] == key and _alive(c) for c in read_rows(claims)):
      return False
    entry = {"key": key, "pid": os.getpid(), "host": socket.gethostname(),
             "time": time.time()}  # fmt: skip
    with open(claims, "a") as f:
      f.write(json.dumps(entry) + "\n")
  return True


def append(path: pathlib.Path, row: dict[str, Any]) -> None:
  """Append ``row`` as one line, under the lock."""
  with locked(path), open(path, "a") as f:
    f.write(json.dumps(json_safe(row)) + "\n")


def train_row(
  task: str, name: str, phase: str, seed: int, config: dict[str, float], quick: bool
) -> dict[str, Any]:
  """Train one run and return its row."""
  import jax

  args = resolved(task, name, config, quick)
  result = grok.run_one(args, grok.given(args.optimizers)[0], seed)
  h = result.history
  argv = run_argv(task, name, config, quick)
  command = shlex.join(
    ["python", "-m", "experiments.grok", *argv, "--max-epochs", str(args.max_epochs),
     "--seed", str(seed)]
  )  # fmt: skip
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
  return statistics.median(steps), -statistics.median(r["best_test_acc"] for r in rows)


def choose(
  rows: list[dict[str, Any]],
  task: str,
  name: str,
  configs: list[dict[str, float]],
  seeds: tuple[int, ...],
  quick: bool = False,
  sha256: str | None = None,
) -> dict[str, float] | None:
  """The tuned configuration of (``task``, ``name``): the one of ``configs``
  with the fewest median steps to target over ``seeds`` (unreached: the cap),
  ties to the higher median best test accuracy, then the earlier config.
  None until every tune row is in ``rows``. ``sha256``: only the rows of the
  plugin file with this hash (None: the rows of no plugin).

  >>> row = lambda lr, s: dict(task="t", optimizer="o", phase="tune", seed=0,
  ...   config={"lr": lr}, steps_to_target=s, cap_steps=100, best_test_acc=0.9)
  >>> choose([row(1.0, None), row(2.0, 40)], "t", "o", [{"lr": 1.0}, {"lr": 2.0}], (0,))
  {'lr': 2.0}
  """
  tune = [
    r for r in rows
    if r["task"] == task and r["optimizer"] == name and r["phase"] == "tune"
    and bool(r.get("quick")) == quick
    and (r.get("plugin") or {}).get("sha256") == sha256
  ]  # fmt: skip
  scores = []
  for i, config in enumerate(configs):
    mine = [r for r in tune if r["config"] == config and r["seed"] in seeds]
    if {r["seed"] for r in mine} != set(seeds):
      return None
    scores.append((*_score(mine), i))
  return configs[min(scores)[2]] if scores else None


def plan(sweep: Sweep) -> list[tuple[str, str, str, int, dict[str, float]]]:
  """Every (task, optimizer, phase, seed, config) the options ask for, in the
  order they run: task by task, optimizer by optimizer, tune before eval
  (eval entries have an empty config: chosen when they run)."""
  entries = []
  for task in sweep.tasks:
    for name in optimizers_of(sweep, task):
      if sweep.phase in ("tune", "both"):
        for seed in sweep.tune_seeds:
          for config in grid(task, name, sweep.trials):
            entries.append((task, name, "tune", seed, config))
      if sweep.phase in ("eval", "both"):
        for seed in sweep.eval_seeds:
          entries.append((task, name, "eval", seed, {}))
  return entries


def print_grid(sweep: Sweep) -> None:
  """The grid and budget of every selected task and optimizer."""
  mode = "--quick" if sweep.quick else "full"
  print(
    f"{mode}: {sweep.trials} configurations per optimizer, each on tuning seeds "
    f"{list(sweep.tune_seeds)}; the chosen one on evaluation seeds "
    f"{list(sweep.eval_seeds)}; {sweep.trials * len(sweep.tune_seeds)} tuning runs "
    f"+ {len(sweep.eval_seeds)} evaluation runs per optimizer and task"
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


def main(argv: list[str] | None = None) -> None:
  """Run every missing row of the plan, appending each to ``--jsonl``."""
  sweep = parse_args(argv)
  if sweep.print_grid:
    print_grid(sweep)
    return
  print(_threads.describe(), flush=True)
  ran = 0
  waiting: list[str] = []
  failed: list[str] = []
  for task, name, phase, seed, config in plan(sweep):
    if phase == "eval":
      plugin = registry.get(grok_optimizer(task, name)[0]).plugin
      chosen = choose(
        read_rows(sweep.jsonl), task, name, grid(task, name, sweep.trials),
        sweep.tune_seeds, sweep.quick, None if plugin is None else plugin.sha256,
      )  # fmt: skip
      if chosen is None:
        waiting.append(f"{task}/{name}")
        continue
      config = chosen
    key = row_key(dict(task=task, optimizer=name, phase=phase, seed=seed,
                       config=config, quick=sweep.quick,
                       **_plugin_field(grok_optimizer(task, name)[0])))  # fmt: skip
    if not claim(sweep.jsonl, key):
      continue
    try:
      row = train_row(task, name, phase, seed, config, sweep.quick)
    except Exception as error:  # one broken run must not end a long sweep
      failed.append(f"{task}/{name}/{phase}/seed {seed}")
      print(f"{task} {name} {phase} seed {seed}: FAILED: {error!r}", flush=True)
      continue
    append(sweep.jsonl, row)
    ran += 1
    shown = " ".join(f"{k}={v:g}" for k, v in config.items())
    print(
      f"{task} {name} {phase} seed {seed} {shown}: steps {row['steps_to_target']} "
      f"(cap {row['cap_steps']}, {row['seconds_run']:.1f} s)",
      flush=True,
    )
    if sweep.max_runs is not None and ran >= sweep.max_runs:
      break
  if waiting:
    cells = ", ".join(dict.fromkeys(waiting))
    print(f"eval waits for tune rows of: {cells}; rerun when they are in")
  print(f"{ran} runs appended to {sweep.jsonl}")
  if failed:
    listed = ", ".join(failed)
    print(f"{len(failed)} runs failed (no row; a rerun retries them): {listed}")
    sys.exit(1)


if __name__ == "__main__":
  main(sys.argv[1:])
