"""``python -m experiments.grok``: grokking runs from the command line.

Example::

    python -m experiments.grok --task mod_add --p 97 --optimizer egd,sgd,column-norm \\
        --seeds 3 --max-epochs 2000 --out runs/add97

Every optimizer of ``--optimizer`` trains from the same data split and the
same initial weights for a given seed; ``--seeds N`` repeats that for seeds
``seed .. seed+N-1``. The output folder gets ``results.json`` (the resolved
configuration, each optimizer's hyperparameters, what ran: the command line,
date, commit, versions and machine; and per run: epochs and seconds
(compilation excluded) to the target test accuracy, final metrics,
per-epoch curves, the epoch EGD was switched off) and ``curves.png``;
``--spectrum`` adds the first kernel's gradient singular values per epoch
and ``spectrum.png``. Runs are
checkpointed with Orbax every ``--checkpoint-every`` epochs, with the
options that made them; ``--resume`` continues them exactly (to a larger
``--max-epochs``, or past the target with ``--no-stop``). It refuses, with a
usage error and before any training, an ``--out`` without checkpoints,
changed options (naming them) and unreadable checkpoints (naming the file);
runs of the command that have no checkpoint yet start from epoch 0. An
``--out`` that already holds files is refused unless ``--resume`` continues
the run there or ``--overwrite`` replaces it (deleting the files a run writes:
``results.json``, the plots and the checkpoints; nothing else). Every option
is checked first: a bad value, or an option the task, model or optimizers do
not use, is a one-line usage error naming the option (exit code 2).

Hyperparameters left unset take the papers' values for the task: EGD's for
modular arithmetic with the MLP and for sparse parity, Grokfast's for the
transformer, Omnigrok's for MNIST.

``--preset grokfast`` (the same as ``--task grokfast_mul``) is Grokfast's
modular-multiplication experiment (``ironjr/grokfast``'s ``main.py``) in
every detail: ``x·y mod 97`` with ``y ≠ 0`` (9,312 equations, half for
training), its 2-layer decoder (:class:`experiments.models.GrokfastDecoder`)
with PyTorch's default initialization, batch 512 with the last partial batch
kept (10 steps an epoch), a 10-step linear warmup, Adam β = (0.9, 0.98),
AdamW's decay on every parameter. Its default optimizer is the shipped EGD
recipe (``experiments.optimizers.GROKFAST_DEFAULT``: ``egdm`` at lr 0.03 with
momentum 0.9 and weight decay 0.1 on the matrices); each run reports
``steps_to_target`` (optimizer steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import shutil
import statistics
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

# JAX, Flax, Orbax and matplotlib are imported where they are used, so that
# ``--help`` and usage errors come before (and without) them.
from experiments import _cli, _threads, registry
from experiments._cli import integer, number
from experiments._machine import json_safe

if TYPE_CHECKING:
  import jax
  from matplotlib.figure import Figure

  from experiments import models, tasks
  from experiments.checkpoint import Checkpointer
  from experiments.train import RunResult, TrainConfig

PROG = "python -m experiments.grok"
TASKS = ("mod_add", "mod_sub", "mod_mul", "mod_div", "grokfast_mul", "parity", "mnist")
MODELS = ("mlp", "transformer", "grokfast", "omnigrok")
PRESETS = {"grokfast": "grokfast_mul"}

# Hyperparameters per task (and model) from the papers; see the module docstring.
_MODULAR_MLP = dict(hidden=512, lr=0.7, l2=1e-4, batch_size=512, loss="cross_entropy")
_MODULAR_TRANSFORMER = dict(
  l2=0.0, batch_size=512, loss="cross_entropy", warmup_steps=10
)
# Grokfast's main.py (its own default: Adam without weight decay).
_GROKFAST = dict(
  l2=0.0,
  batch_size=512,
  drop_last=False,
  loss="cross_entropy",
  warmup_steps=10,
  target_accuracy=0.95,
  optimizer=registry.GROKFAST_DEFAULT,
  # egdm, momentum 0.9 (not 0.95: 400 against 570 steps over seeds 0-4,
  # experiments/results/grokfast_recipe_eval.json), at the leaderboard's tuned
  # configuration: lr 0.03 with weight decay 0.1 on the matrices, the best of
  # its grid on tuning seeds 100-101, then a median of 320 steps on seeds 0-4
  # where lr 0.06 without decay took 370 (experiments/results/leaderboard.jsonl;
  # docs/transformers.md).
  lr=0.03,
  momentum=0.9,
  weight_decay=0.1,
)
_PARITY = {
  2: dict(hidden=50, lr=1e-2, l2=1e-3),
  3: dict(hidden=100, lr=0.0416239, l2=1e-2),
  4: dict(hidden=100, lr=0.0230841, l2=1e-2),
}
_PARITY_COMMON = dict(batch_size=32, loss="mse")
_MNIST = dict(
  batch_size=200,
  loss="mse",
  l2=0.0,
  adam_weight_decay=0.01,
  b2=0.999,
  target_accuracy=0.85,
  n_train=1000,
)
_FALLBACK = dict(
  hidden=512,
  l2=0.0,
  batch_size=512,
  drop_last=True,
  loss="cross_entropy",
  target_accuracy=0.95,
  optimizer="egd",
)
_OPTIMIZER_FIELDS = {
  f.name: int if "int" in str(f.type) else float
  for f in dataclasses.fields(registry.OptimizerConfig)
  if f.name not in ("seed", "polar_method")
}


def _knob_type(name: str, kind: type) -> Any:
  """The argparse type of knob ``name``: its registry range, else any finite
  value of its kind."""
  bounds = registry.KNOB_RANGES.get(name)
  if bounds is None:
    return integer() if kind is int else number()
  if bounds.integer:
    return integer(bounds.low, bounds.high)  # type: ignore[arg-type]
  return number(bounds.low, bounds.high, low_open=bounds.low_open,
                high_open=bounds.high_open)  # fmt: skip


# Options a resumed run may change; any other option must match the checkpoint's.
RESUMABLE_CHANGES = frozenset(
  {"max_epochs", "no_stop", "checkpoint_every", "resume", "overwrite", "no_progress"}
  | {"out"}
  | {"seed", "seeds", "optimizer", "optimizers"}
)
# Options that steer the command, not the runs: left out of results.json.
PLUMBING = frozenset({"overwrite", "resume", "no_progress", "optimizer", "preset"})
# The options an optimizer may read (registry.KNOBS): one none of the
# chosen optimizers reads is a usage error; results.json records the others.
KNOB_OPTIONS = (*_OPTIMIZER_FIELDS, "polar_method")
MNIST_IMAGES = 5000  # the images tasks.mnist reads; n_train of them train
MODULAR = ("mod_add", "mod_sub", "mod_mul", "mod_div", "grokfast_mul")
# The options only some tasks (models) use: given for another, a usage error;
# left unset there, None (and out of results.json).
TASK_OPTIONS = {
  "p": MODULAR,
  "train_fraction": MODULAR,
  "encoding": MODULAR[:4],
  "label_noise": MODULAR[:4],
  "n": ("parity",),
  "k": ("parity",),
  "n_test": ("parity",),
  "n_train": ("parity", "mnist"),
}
MODEL_OPTIONS = {
  "hidden": ("mlp",),
  **dict.fromkeys(("layers", "d_model", "heads"), ("transformer", "grokfast")),
  **dict.fromkeys(("depth", "width", "init_scale"), ("omnigrok",)),
}
# Defaults of those options wherever they apply (the tasks' own: task_defaults).
OPTION_DEFAULTS = dict(
  p=97,
  train_fraction=0.5,
  encoding="onehot",
  n_test=10000,
  layers=2,
  d_model=128,
  heads=4,
  depth=3,
  width=200,
  init_scale=8.0,
)
# What a run writes into --out; --overwrite deletes these (and nothing else).
OUTPUTS = ("results.json", "curves.png", "spectrum.png", "checkpoints")


def build_parser() -> argparse.ArgumentParser:
  """The command line's parser; every numeric option checks its range."""
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  task = p.add_argument_group("task")
  task.add_argument(
    "--preset",
    choices=tuple(PRESETS),
    help="grokfast: Grokfast's modular multiplication and transformer "
    "(sets --task grokfast_mul)",
  )
  task.add_argument("--task", choices=TASKS, default="mod_add", help="default mod_add")
  task.add_argument(
    "--p", type=integer(2), help="modular tasks: the prime modulus (default 97)"
  )
  task.add_argument(
    "--train-fraction",
    type=number(0, 1, low_open=True, high_open=True),
    help="modular tasks: the fraction of the equations to train on (default 0.5)",
  )
  task.add_argument(
    "--encoding",
    choices=("onehot", "tokens"),
    help="mod_*: one-hot features (default) or tokens (for --model transformer)",
  )
  task.add_argument(
    "--label-noise",
    type=number(0, 1, high_open=True),
    help="mod_*: the fraction of training labels replaced by a wrong class "
    "(default 0; the test labels stay clean)",
  )
  task.add_argument(
    "--n", type=integer(1), help="parity: input bits (default from --k: 400, 100, 50)"
  )
  task.add_argument(
    "--k",
    type=integer(1),
    help="parity: secret bits (2, 3 or 4 have presets; default 4)",
  )
  task.add_argument(
    "--n-train",
    type=integer(1),
    help="parity, MNIST: training examples (default 2000; MNIST 1000)",
  )
  task.add_argument(
    "--n-test", type=integer(1), help="parity: test examples (default 10000)"
  )
  model = p.add_argument_group("model")
  model.add_argument(
    "--model",
    choices=MODELS,
    help="default: mlp, transformer for tokens, grokfast for grokfast_mul, "
    "omnigrok for mnist",
  )
  model.add_argument(
    "--hidden",
    type=integer(1),
    help="mlp: hidden width (default 512; parity 50 for k=2, else 100)",
  )
  for name, default in (("layers", 2), ("d-model", 128), ("heads", 4)):
    model.add_argument(
      f"--{name}",
      type=integer(1),
      help=f"transformer, grokfast: {name.replace('-', '_')} (default {default})",
    )
  model.add_argument("--depth", type=integer(1), help="omnigrok: MLP depth (default 3)")
  model.add_argument(
    "--width", type=integer(1), help="omnigrok: MLP width (default 200)"
  )
  model.add_argument(
    "--init-scale",
    type=number(0, low_open=True),
    help="omnigrok: init multiplier (default 8.0)",
  )
  opt = p.add_argument_group("optimization")
  opt.add_argument(
    "--optimizer",
    "--optimizers",
    dest="optimizer",
    help=f"comma-separated, from: {', '.join(registry.NAMES)} (default egd; "
    f"{registry.GROKFAST_DEFAULT} for --preset grokfast)",
  )
  opt.add_argument(
    "--plugin",
    action="append",
    metavar="FILE.py|MODULE",
    help="a Python file or module defining an experiments.registry.OptimizerSpec: "
    "its optimizers join the --optimizer choices (repeatable)",
  )
  for name, kind in _OPTIMIZER_FIELDS.items():
    kind = _knob_type(name, kind)
    opt.add_argument(
      f"--{name.replace('_', '-')}",
      type=kind,
      help=f"{kind.range}; {_knob_help(name)}",
    )
  opt.add_argument(
    "--polar-method",
    choices=registry.POLAR_METHODS,
    help="the polar method of the EGD optimizers (egd, egd-first-layer, adam-egd,"
    " momentum-egd*, egdm); default auto (svd on CPU, polar_express_exact on"
    " GPU/TPU); polar_express_exact on CPU reproduces the accelerators' choice",
  )
  opt.add_argument(
    "--l2", type=number(0), help="weight decay as 0.5·l2·Σ‖W‖² in the loss"
  )
  opt.add_argument(
    "--batch-size",
    type=integer(1),
    help="default: the task's (512; parity 32, MNIST 200), at most the training set",
  )
  opt.add_argument(
    "--loss",
    choices=("cross_entropy", "mse", "stablemax_cross_entropy"),
    help="stablemax_cross_entropy: StableMax (Prieto et al. 2025), for ⊥Grad",
  )
  run = p.add_argument_group("run")
  run.add_argument(
    "--max-epochs", type=integer(1), default=2000, help="per run (default 2000)"
  )
  run.add_argument(
    "--target-accuracy",
    type=number(0, 1),
    help="test accuracy to reach (0.95; MNIST 0.85)",
  )
  run.add_argument(
    "--no-stop", action="store_true", help="keep training after the target accuracy"
  )
  run.add_argument(
    "--egd-off-at",
    type=number(0, 1),
    help="switch EGD off once test accuracy reaches this",
  )
  run.add_argument(
    "--spectrum",
    action="store_true",
    help="record the first kernel's gradient singular values every epoch (on the "
    "first batch of the training set) and draw spectrum.png",
  )
  run.add_argument(
    "--train-metrics",
    choices=("minibatch", "full"),
    default="minibatch",
    help="train loss/accuracy per epoch: the mean over the epoch's minibatches "
    "(free) or a pass over the whole training set after the epoch",
  )
  run.add_argument(
    "--seed", type=integer(0, _cli.SEED_MAX), default=0, help="first seed (default 0)"
  )
  run.add_argument(
    "--seeds",
    type=integer(1),
    default=1,
    help="number of seeds, from --seed on (default 1)",
  )
  run.add_argument(
    "--vectorize-seeds",
    action="store_true",
    help="train the --seeds of each optimizer in one vectorized (jax.vmap) program "
    "instead of one after another (same results; no checkpoints, no --resume; "
    "see docs/vectorized_seeds.md)",
  )
  run.add_argument(
    "--out",
    type=pathlib.Path,
    default=pathlib.Path("runs/grok"),
    help="output folder (default runs/grok); one that holds files is refused "
    "unless --resume or --overwrite is given",
  )
  run.add_argument(
    "--overwrite",
    action="store_true",
    help="replace the run in --out: delete its results.json, curves.png, "
    "spectrum.png and checkpoints before training",
  )
  run.add_argument(
    "--checkpoint-every",
    type=integer(0),
    default=500,
    help="epochs between checkpoints; 0: none (default 500)",
  )
  run.add_argument(
    "--resume",
    action="store_true",
    help="continue the runs checkpointed in --out, e.g. to a larger --max-epochs "
    "or with --no-stop; every other option must be the checkpoint's. Refused if "
    "--out holds no checkpoint of these runs (drop --resume to start afresh); a "
    "run that has none yet (another seed or optimizer) starts from epoch 0",
  )
  run.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p


def _knob_help(name: str) -> str:
  """``--help``'s default of optimizer option ``name``: the value most of its
  optimizers use, the others' own, and which optimizers read it.

  >>> _knob_help("momentum")[:67]
  'default 0.0 (egdm 0.95; momentum-egd, momentum-egd-first-layer 0.9)'
  >>> _knob_help("muon_lr")
  'default 0.02 unless the task sets it; read by muon'
  """
  readers = registry.readers(name)
  by_value: dict[Any, list[str]] = {}
  for reader in readers:
    by_value.setdefault(registry.default(reader, name), []).append(reader)
  common = max(by_value, key=lambda value: len(by_value[value]))
  shown = "the polar method's" if common is None else str(common)
  others = "; ".join(
    f"{', '.join(names)} {value}"
    for value, names in by_value.items()
    if value != common
  )
  text = f"default {shown}" + (f" ({others})" if others else "")
  text += " unless the task sets it; read by "
  sgd_based = {f"{p}" for p in registry.PRECONDITIONERS} & set(readers)
  adamw_based = {f"{p}-adamw" for p in registry.PRECONDITIONERS} & set(readers)
  named = [r for r in readers if r not in sgd_based | adamw_based]
  if {"momentum-egd", "momentum-egd-first-layer"} <= set(named):
    named = [r for r in named if r != "momentum-egd-first-layer"]
    named[named.index("momentum-egd")] = "momentum-egd*"
  if len(sgd_based) == len(registry.PRECONDITIONERS):
    named.append("the SGD-based preconditioners")
  else:
    named += sorted(sgd_based, key=readers.index)
  if len(adamw_based) == len(registry.PRECONDITIONERS):
    named.append("the -adamw preconditioners")
  else:
    named += sorted(adamw_based, key=readers.index)
  return text + ", ".join(named)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Parse the command line; task-dependent options stay None until :func:`resolve`."""
  return build_parser().parse_args(argv)


def options(**values: Any) -> argparse.Namespace:
  """The unresolved options of a run given as Python values (``p=97`` for
  ``--p 97``), as :func:`parse_args` returns them: for code that builds runs,
  with no command line to parse. A TypeError names an unknown option.

  >>> options(task="parity", k=3) == parse_args(["--task", "parity", "--k", "3"])
  True
  """
  args = parse_args([])
  for name, value in values.items():
    if name not in vars(args):
      raise TypeError(f"{PROG} has no option {_option(name)}")
    setattr(args, name, value)
  return args


def argv(values: dict[str, Any]) -> list[str]:
  """The command-line options that ``options(**values)`` stands for (a true
  flag bare, a list repeated, floats as ``repr`` writes them).

  >>> argv({"task": "mod_add", "p": 97, "label_noise": 0.05, "no_stop": True})
  ['--task', 'mod_add', '--p', '97', '--label-noise', '0.05', '--no-stop']
  """
  out: list[str] = []
  for name, value in values.items():
    if value is True:
      out.append(_option(name))
    elif value is not None and value is not False:
      for item in value if isinstance(value, list) else [value]:
        out += [_option(name), repr(item) if isinstance(item, float) else str(item)]
  return out


def _error(message: str) -> NoReturn:
  """Exit with argparse's usage line and ``message`` (exit code 2)."""
  build_parser().error(message)


def task_defaults(args: argparse.Namespace) -> dict[str, Any]:
  """The papers' hyperparameters for ``args.task`` and ``args.model``."""
  if args.task == "grokfast_mul":
    return _GROKFAST
  if args.task.startswith("mod_"):
    return _MODULAR_MLP if args.model == "mlp" else _MODULAR_TRANSFORMER
  if args.task == "parity":
    k = 4 if args.k is None else args.k
    from experiments.tasks import PARITY_PRESETS  # here: it imports JAX

    n = PARITY_PRESETS[k][0] if k in PARITY_PRESETS else None
    return _PARITY_COMMON | _PARITY.get(k, _PARITY[4]) | dict(k=k, n=n, n_train=2000)
  return _MNIST


def resolve(args: argparse.Namespace) -> argparse.Namespace:
  """Fill every unset option with the task's default; exit with a usage error
  for an option the task or model does not use. Options that do not apply
  stay None."""
  if getattr(args, "preset", None) is not None:
    args.task = PRESETS[args.preset]
  given = [name for name in KNOB_OPTIONS if getattr(args, name) is not None]
  for name, used_by in TASK_OPTIONS.items():
    if getattr(args, name) is not None and args.task not in used_by:
      _error(
        f"argument {_option(name)}: --task {args.task} does not use it (it is for "
        f"{', '.join(used_by)})"
      )
  if args.task in TASK_OPTIONS["encoding"] and args.encoding is None:
    args.encoding = OPTION_DEFAULTS["encoding"]
  if args.model is None:
    args.model = {"mnist": "omnigrok", "grokfast_mul": "grokfast"}.get(
      args.task, "transformer" if args.encoding == "tokens" else "mlp"
    )
  for name, used_by in MODEL_OPTIONS.items():
    if getattr(args, name) is not None and args.model not in used_by:
      _error(
        f"argument {_option(name)}: --model {args.model} does not use it (it is for "
        f"{', '.join(used_by)})"
      )
  defaults = _FALLBACK | OPTION_DEFAULTS | task_defaults(args)
  batch_size: int = defaults.pop("batch_size")  # type: ignore[assignment]
  applies = lambda name: (
    args.task in TASK_OPTIONS.get(name, (args.task,))
    and (args.model in MODEL_OPTIONS.get(name, (args.model,)))
  )
  for name, value in defaults.items():
    if getattr(args, name, None) is None and applies(name):
      setattr(args, name, value)
  for name in _OPTIMIZER_FIELDS:
    if getattr(args, name) is None:
      setattr(args, name, getattr(registry.OptimizerConfig(), name))
  if args.task == "parity" and args.n is None:
    _error(f"--task parity --k {args.k} has no preset: give --n")
  for source in args.plugin or ():
    try:
      registry.load_plugin(source)
    except ValueError as error:
      _error(f"argument --plugin: {error}")
  args.optimizers = _cli.name_list(args.optimizer)
  problem = _cli.check_names(
    "argument --optimizer", args.optimizers, tuple(registry.SPECS)
  )
  if problem:
    _error(problem)
  for name in given:
    if not any(name in registry.KNOBS[o] for o in args.optimizers):
      _error(f"argument {_option(name)}: " + _unread(args.optimizers))
  if args.polar_method is None:
    args.polar_method = "auto"
  _check_task(args)
  if args.batch_size is None:  # the task's, or the whole training set if smaller
    args.batch_size = min(batch_size, train_size(args))
  return args


def _unread(names: list[str]) -> str:
  """Why an optimizer option is refused: what ``names`` read instead."""
  reads = "; ".join(
    f"{name} reads "
    + (", ".join(map(_option, registry.KNOBS[name])) or "no optimizer option")
    for name in names
  )
  verb = "does" if len(names) == 1 else "do"
  return f"--optimizer {','.join(names)} {verb} not read it ({reads})"


def knobs(args: argparse.Namespace, name: str) -> dict[str, Any]:
  """The hyperparameters optimizer ``name`` runs with: those it reads
  (:data:`registry.KNOBS`), unset ones at its own defaults."""
  values = {}
  for knob in registry.KNOBS[name]:
    value = getattr(args, knob)
    values[knob] = registry.default(name, knob) if value is None else value
  return values


def _check_task(args: argparse.Namespace) -> None:
  """Exit with a usage error for options that do not fit the resolved task."""
  if args.task in MODULAR and not _cli.is_prime(args.p):
    _error(f"argument --p: must be a prime >= 2 for --task {args.task}, got {args.p}")
  if args.task == "parity" and args.k > args.n:
    _error(f"argument --k: must be in [1, --n = {args.n}] for parity, got {args.k}")
  if args.task == "mnist" and args.n_train >= MNIST_IMAGES:
    _error(
      f"argument --n-train: must be in [1, {MNIST_IMAGES - 1}] for mnist "
      f"(the rest of the {MNIST_IMAGES} images are the test set), got {args.n_train}"
    )
  if args.task == "parity" and args.loss != "mse":
    _error("argument --loss: parity (a ±1 target) needs --loss mse")
  tokens = args.task.startswith("mod_") and args.encoding == "tokens"
  if args.model == "transformer" and not tokens:
    _error("--model transformer needs a modular task with --encoding tokens")
  if args.model != "transformer" and tokens:
    _error(f"--model {args.model} needs feature inputs: --encoding onehot")
  if args.model == "transformer" and args.d_model % args.heads:
    _error(f"argument --heads: must divide --d-model {args.d_model}, got {args.heads}")
  if args.seed + args.seeds - 1 > _cli.SEED_MAX:
    _error(f"--seed + --seeds - 1 must be <= {_cli.SEED_MAX}")
  n_train = train_size(args)
  if n_train < 1:
    _error(
      f"argument --train-fraction: {args.train_fraction} leaves no training example"
    )
  if args.batch_size is not None and args.batch_size > n_train:
    _error(
      f"argument --batch-size: must be in [1, {n_train}] (the training set of "
      f"this task), got {args.batch_size}"
    )


def train_size(args: argparse.Namespace) -> int:
  """Training examples of the (resolved) task, as :func:`make_data` splits them."""
  if args.task.startswith("mod_") or args.task == "grokfast_mul":
    nonzero = args.task in ("mod_div", "grokfast_mul")  # y != 0
    pairs = args.p * (args.p - 1 if nonzero else args.p)
    return int(pairs * args.train_fraction)
  return args.n_train


def make_data(args: argparse.Namespace, key: jax.Array) -> tasks.Dataset:
  """The task's data set."""
  from experiments import tasks

  if args.task == "grokfast_mul":
    return tasks.grokfast_multiplication(key, args.p, args.train_fraction)
  if args.task.startswith("mod_"):
    op = args.task.removeprefix("mod_")
    return tasks.modular_arithmetic(
      key,
      op,
      args.p,
      args.train_fraction,
      args.encoding,
      0.0 if args.label_noise is None else args.label_noise,
    )
  if args.task == "parity":
    return tasks.sparse_parity(key, args.n, args.k, args.n_train, args.n_test)
  return tasks.mnist(key, args.n_train)


def make_model(
  args: argparse.Namespace, data: tasks.Dataset, key: jax.Array
) -> models.Model:
  """The model, initialized from ``key``."""
  from flax import nnx

  from experiments import models

  rngs = nnx.Rngs(params=key)
  out = data.num_classes or 1
  if args.model == "grokfast":
    if data.vocab_size != data.num_classes:
      raise SystemExit("--model grokfast needs --task grokfast_mul")
    return models.GrokfastDecoder(
      data.vocab_size,
      d_model=args.d_model,
      num_heads=args.heads,
      num_layers=args.layers,
      rngs=rngs,
    )
  if args.model == "transformer":
    if not data.vocab_size:
      raise SystemExit("the transformer needs token inputs: --encoding tokens")
    seq_len = data.x_train.shape[-1]
    return models.Transformer(
      data.vocab_size,
      out,
      seq_len,
      d_model=args.d_model,
      num_heads=args.heads,
      num_layers=args.layers,
      rngs=rngs,
    )
  if not data.num_features:
    raise SystemExit(f"--model {args.model} needs feature inputs: --encoding onehot")
  if args.model == "omnigrok":
    return models.OmnigrokMLP(
      data.num_features,
      args.width,
      out,
      depth=args.depth,
      init_scale=args.init_scale,
      rngs=rngs,
    )
  bias_init = (
    models.parity_bias_init(data.num_features)
    if args.task == "parity"
    else models.ZEROS
  )
  return models.MLP(
    data.num_features, args.hidden, out, hidden_bias_init=bias_init, rngs=rngs
  )


def train_config(args: argparse.Namespace) -> TrainConfig:
  """The loop's configuration from the (resolved) options."""
  from experiments.train import TrainConfig

  return TrainConfig(
    batch_size=args.batch_size,
    drop_last=args.drop_last,
    l2=args.l2,
    loss=args.loss,
    max_epochs=args.max_epochs,
    target_accuracy=args.target_accuracy,
    stop_at_target=not args.no_stop,
    egd_off_at=args.egd_off_at,
    train_metrics=args.train_metrics,
  )


class Setup(NamedTuple):
  """What a seed fixes of a run: the data split, the initialized model and
  the key of the epochs' shuffles."""

  data: tasks.Dataset
  model: Any
  shuffle_key: Any


def setup(args: argparse.Namespace, seed: int) -> Setup:
  """The data, model and shuffle key of ``seed`` for the (resolved) options:
  the one place a seed becomes a run, so that every optimizer, command and
  benchmark given a seed starts from the same split, weights and shuffles."""
  import jax

  data_key, init_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  data = make_data(args, data_key)
  return Setup(data, make_model(args, data, init_key), shuffle_key)


def run_one(args: argparse.Namespace, name: str, seed: int) -> RunResult:
  """Train optimizer ``name`` with ``seed``, checkpointing and resuming as asked."""
  from tqdm import tqdm

  from experiments import optimizers
  from experiments.checkpoint import CheckpointError
  from experiments.train import Run, start, train

  data, model, shuffle_key = setup(args, seed)
  optimizer = optimizers.build(
    name, optimizer_config(args, seed), type(model).first_kernel
  )
  config = train_config(args)
  if args.spectrum:
    config = dataclasses.replace(config, spectrum_of=type(model).first_kernel)
  compiled, state = start(model, optimizer, data, config)
  checkpointer = _checkpointer(args, name, seed)
  if checkpointer is not None and args.resume:
    try:
      state = checkpointer.restore(state)
    except CheckpointError as error:
      _error(f"--resume: {error}")
  bar = tqdm(
    total=config.max_epochs,
    initial=state.result.history.epochs,
    desc=f"{name} s{seed}",
    disable=args.no_progress,
    dynamic_ncols=True,
    mininterval=0.5,
  )

  def on_epoch(run: Run) -> None:
    h = run.result.history
    bar.update(1)
    bar.set_postfix_str(
      f"train {h.train_loss[-1]:.3g}/{h.train_acc[-1]:.3f} "
      f"test {h.test_loss[-1]:.3g}/{h.test_acc[-1]:.3f}",
      refresh=False,
    )
    if checkpointer is not None:
      checkpointer.save(run)

  state = train(compiled, state, shuffle_key, config, on_epoch)
  bar.close()
  if checkpointer is not None:
    checkpointer.save(state, force=True)
    checkpointer.close()
  return state.result


def optimizer_config(args: argparse.Namespace, seed: int) -> registry.OptimizerConfig:
  """The hyperparameters of the (resolved) options, for :func:`optimizers.build`."""
  return registry.OptimizerConfig(
    seed=seed,
    polar_method=args.polar_method,
    **{f: getattr(args, f) for f in _OPTIMIZER_FIELDS},
  )


def _checkpoint_dir(args: argparse.Namespace, name: str, seed: int) -> pathlib.Path:
  return args.out / "checkpoints" / f"{name}-seed{seed}"


def run_vectorized(
  args: argparse.Namespace, name: str, seeds: list[int]
) -> list[RunResult]:
  """:func:`run_one` for every seed of ``seeds`` in one vectorized program
  (same data, weights, shuffles and results per seed; no checkpoints)."""
  from tqdm import tqdm

  from experiments import optimizers
  from experiments.train import Run, start_vectorized, train_vectorized

  models_, optimizers_, datas, shuffle_keys = [], [], [], []
  for seed in seeds:
    data, model, shuffle_key = setup(args, seed)
    models_.append(model)
    optimizers_.append(
      optimizers.build(name, optimizer_config(args, seed), type(model).first_kernel)
    )
    datas.append(data)
    shuffle_keys.append(shuffle_key)
  config = train_config(args)
  if args.spectrum:
    config = dataclasses.replace(config, spectrum_of=type(models_[0]).first_kernel)
  compiled, runs, consts = start_vectorized(models_, optimizers_, datas, config)
  bar = tqdm(
    total=config.max_epochs,
    desc=f"{name} s{seeds[0]}-{seeds[-1]}",
    disable=args.no_progress,
    dynamic_ncols=True,
    mininterval=0.5,
  )

  def on_epoch(runs: list[Run]) -> None:
    accs = [r.result.history.test_acc[-1] for r in runs]
    bar.update(1)
    bar.set_postfix_str(f"test acc {min(accs):.3f}-{max(accs):.3f}", refresh=False)

  runs = train_vectorized(compiled, runs, shuffle_keys, consts, config, on_epoch)
  bar.close()
  return [r.result for r in runs]


def _checkpointer(
  args: argparse.Namespace, name: str, seed: int
) -> Checkpointer | None:
  from experiments.checkpoint import Checkpointer

  if args.checkpoint_every <= 0:
    return None
  directory = _checkpoint_dir(args, name, seed)
  if not args.resume and directory.exists():
    shutil.rmtree(directory)
  return Checkpointer(directory, args.checkpoint_every, run_config(args, name, seed))


def run_config(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
  """The options that make run (``name``, ``seed``): saved with its checkpoints,
  and what ``--resume`` must match (all but :data:`RESUMABLE_CHANGES`): the
  task and run settings and the hyperparameters optimizer ``name`` reads."""
  config = {
    k: v
    for k, v in results_config(args).items()
    if k not in RESUMABLE_CHANGES and k not in KNOB_OPTIONS
  }
  return json_safe(config | knobs(args, name) | {"optimizer": name, "seed": seed})


def results_config(args: argparse.Namespace) -> dict[str, Any]:
  """The resolved options, as results.json records them: the task and run
  settings that apply (options the task, model or run does not use are None
  and left out), the optimizer options that some of ``args.optimizers``
  reads, and none of the command's plumbing (:data:`PLUMBING`)."""
  read = {knob for name in args.optimizers for knob in registry.KNOBS[name]}
  return {
    k: str(v) if isinstance(v, pathlib.Path) else v
    for k, v in vars(args).items()
    if v is not None and k not in PLUMBING and (k not in KNOB_OPTIONS or k in read)
  }


def _option(field: str) -> str:
  return f"--{field.replace('_', '-')}"


def check_resume(args: argparse.Namespace) -> None:
  """Before any training, exit with a usage error unless ``--resume`` has
  something to continue: at least one run's checkpoint in ``--out``, every
  such checkpoint readable and made with the same options. Runs without a
  checkpoint train from epoch 0, with a notice."""
  from experiments.checkpoint import Checkpointer, CheckpointError, config_differences

  if args.checkpoint_every == 0:
    _error("--resume needs checkpoints: give --checkpoint-every N with N >= 1, not 0")
  found, missing = 0, []
  for seed in range(args.seed, args.seed + args.seeds):
    for name in args.optimizers:
      directory = _checkpoint_dir(args, name, seed)
      if not directory.is_dir():
        missing.append(f"{name} seed {seed}")
        continue
      checkpointer = Checkpointer(directory, args.checkpoint_every)
      try:
        if checkpointer.latest_step() is None:
          missing.append(f"{name} seed {seed}")
          continue
        stored = checkpointer.check()
      except CheckpointError as error:
        _error(f"--resume: {error}")
      finally:
        checkpointer.close()
      current = run_config(args, name, seed)
      # Checkpoints of older versions also hold the options the optimizer does
      # not read, and the command's plumbing: neither changed the run.
      ignored = PLUMBING | (set(KNOB_OPTIONS) - set(registry.KNOBS[name]))
      differ = [f for f in config_differences(stored, current) if f not in ignored]
      if differ:
        changes = ", ".join(
          f"{_option(f)} {stored.get(f, '(unset)')} (now {current.get(f, '(unset)')})"
          for f in differ
        )
        _error(
          f"--resume: {directory} was trained with other options: {changes}; "
          "give the checkpoint's options, or drop --resume (or use another --out) "
          "to start afresh"
        )
      found += 1
  if not found:
    folder = args.out / "checkpoints"
    there = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    _error(
      f"--resume: no checkpoint of these runs in {folder}"
      + (f" (it has {', '.join(there)})" if there else "")
      + "; drop --resume to start afresh"
    )
  for run in missing:
    print(f"--resume: no checkpoint of {run}: it trains from epoch 0")


def run_record(name: str, seed: int, result: RunResult) -> dict[str, Any]:
  """One run as a JSON-ready dict."""
  h = result.history
  curves = dataclasses.asdict(h)
  has_egd = any(flag is not None for flag in h.egd_enabled)
  if not has_egd:  # no EGD transform in this optimizer
    del curves["egd_enabled"]
  if not h.grad_spectrum:  # recorded with --spectrum only
    del curves["grad_spectrum"]
  record = {
    "optimizer": name,
    "seed": seed,
    "epochs_to_target": result.epochs_to_target,
    "steps_to_target": result.steps_to_target,
    "steps_per_epoch": result.steps_per_epoch,
    "seconds_to_target": result.seconds_to_target,
    "compile_seconds": result.compile_seconds,
    "epochs": h.epochs,
    "final": {
      m: getattr(h, m)[-1] for m in ("train_loss", "train_acc", "test_loss", "test_acc")
    },
    "curves": curves,
  }
  if has_egd:
    record["egd_off_epoch"] = result.egd_off_epoch
  return record


def summarize(
  records: list[dict[str, Any]], optimizer_names: list[str]
) -> dict[str, dict[str, Any]]:
  """Per optimizer: runs reaching the target; median and range of epochs, seconds."""
  summary = {}
  for name in optimizer_names:
    runs = [r for r in records if r["optimizer"] == name]
    epochs = [r["epochs_to_target"] for r in runs if r["epochs_to_target"] is not None]
    steps = [r["steps_to_target"] for r in runs if r.get("steps_to_target") is not None]
    seconds = [
      r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None
    ]
    summary[name] = {
      "runs": len(runs),
      "reached": len(epochs),
      "epochs_median": statistics.median(epochs) if epochs else None,
      "epochs_range": [min(epochs), max(epochs)] if epochs else None,
      "steps_median": statistics.median(steps) if steps else None,
      "steps_range": [min(steps), max(steps)] if steps else None,
      "seconds_median": statistics.median(seconds) if seconds else None,
      "seconds_range": [min(seconds), max(seconds)] if seconds else None,
    }
  return summary


def _finite(values: list[Any]) -> list[float]:
  """``values`` as floats, with None, NaN and infinities (a diverged run) as
  NaN, which matplotlib leaves out of a line."""
  return [float(v) if v is not None and math.isfinite(v) else math.nan for v in values]


def _scale_y(ax: Any, values: list[float], log: bool) -> None:
  """A log y axis (if ``log``) when some of ``values`` is positive, else linear;
  a note on a panel with no finite value at all (a run diverged from epoch 1)."""
  if log and any(v > 0 for v in values if math.isfinite(v)):
    ax.set_yscale("log", nonpositive="mask")
  if not any(math.isfinite(v) for v in values):
    ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")


_OPERATIONS = {"mod_add": "a + b", "mod_sub": "a − b", "mod_mul": "a · b",
               "mod_div": "a / b", "grokfast_mul": "x · y"}  # fmt: skip


def plot_title(args: argparse.Namespace) -> str:
  """The task with its parameters (p, n, k, training set) and the model."""
  if args.task in MODULAR:
    task = (
      f"({_OPERATIONS[args.task]}) mod {args.p}, p = {args.p}, "
      f"{args.train_fraction:.0%} train"
    )
  elif args.task == "parity":
    task = f"sparse parity, n = {args.n}, k = {args.k}, {args.n_train} train"
  else:
    task = f"MNIST, {args.n_train} train"
  model = {
    "mlp": lambda: f"MLP, hidden {args.hidden}",
    "transformer": lambda: f"transformer, {args.layers} layers, d_model {args.d_model}",
    "grokfast": lambda: f"Grokfast decoder, {args.layers} layers",
    "omnigrok": lambda: f"Omnigrok MLP, depth {args.depth}, width {args.width}",
  }[args.model]()
  return f"{task}; {model}"


def plot(
  records: list[dict[str, Any]],
  optimizer_names: list[str],
  path: pathlib.Path,
  title: str,
  target: float | None = None,
) -> Figure:
  """Train/test accuracy and loss against epoch (log x), one color per optimizer.

  The accuracy panels span [0, 1] whatever the curves do (noise near 0 stays
  near 0) and draw ``target`` as a dotted line. Returns the figure, also
  saved to ``path``.
  """
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 7))
  axes = fig.subplots(2, 2, sharex=True)
  panels = [
    ("train_acc", "train accuracy"),
    ("test_acc", "test accuracy"),
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
  ]
  drawn: dict[str, list[float]] = {metric: [] for metric, _ in panels}
  for i, name in enumerate(optimizer_names):
    for j, record in enumerate(r for r in records if r["optimizer"] == name):
      epochs = range(1, record["epochs"] + 1)
      for ax, (metric, _) in zip(axes.flat, panels, strict=True):
        values = _finite(record["curves"][metric])
        drawn[metric] += values
        ax.plot(
          epochs,
          values,
          color=f"C{i}",
          alpha=0.9 if j == 0 else 0.4,
          label=name if j == 0 else None,
        )
  for ax, (metric, label) in zip(axes.flat, panels, strict=True):
    ax.set_xscale("log")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    _scale_y(ax, drawn[metric], log=metric.endswith("loss"))
    if metric.endswith("acc"):
      ax.set_ylim(0, 1.02)
      if target is not None:
        ax.axhline(target, color="0.3", ls=":", lw=1, label=f"target {target:.0%}")
  for ax in axes[1]:
    ax.set_xlabel("epoch")
  axes[0, 0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return fig


def plot_spectrum(
  records: list[dict[str, Any]],
  optimizer_names: list[str],
  path: pathlib.Path,
  title: str,
) -> None:
  """The paper's figure: the first kernel's gradient singular values σᵢ/σ₁
  against epoch (log-log), one panel per optimizer (its first seed), one line
  per index i, colored from the largest (dark) to the smallest (light)."""
  from matplotlib import cm
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5 * len(optimizer_names), 4))
  axes = fig.subplots(1, len(optimizer_names), squeeze=False)[0]
  for ax, name in zip(axes, optimizer_names, strict=True):
    record = next(r for r in records if r["optimizer"] == name)
    values = record["curves"]["grad_spectrum"]
    epochs = range(1, len(values) + 1)
    count = len(values[0]) if values else 0
    ratios = []
    for i in range(count):
      ratio = _finite(
        [row[i] / row[0] if row[0] > 0 else math.nan for row in _rows(values)]
      )
      ratios += ratio
      ax.plot(epochs, ratio, color=cm.viridis(i / max(count - 1, 1)), lw=0.7)
    _scale_y(ax, ratios, log=True)
    ax.set(
      xscale="log",
      xlabel="epoch",
      ylabel="σᵢ / σ₁",
      title=f"{name} (seed {record['seed']})",
    )
    ax.grid(True, alpha=0.3)
  fig.suptitle(f"{title}: first-layer gradient spectrum")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _rows(values: list[list[Any]]) -> list[list[float]]:
  return [[v if v is not None else math.nan for v in row] for row in values]


def _print_summary(summary: dict[str, dict[str, Any]], target: float) -> None:
  header = f"epochs to {target:.0%} (median [range])"
  steps_header = "steps (median [range])"
  print(f"{'optimizer':24s} reached  {header:31s} {steps_header:25s} seconds")
  for name, s in summary.items():
    epochs = f"{s['epochs_median']} {s['epochs_range']}" if s["reached"] else "-"
    steps = f"{s['steps_median']} {s['steps_range']}" if s["reached"] else "-"
    seconds = f"{s['seconds_median']:.2f}" if s["reached"] else "-"
    reached = f"{s['reached']}/{s['runs']:<5d}"
    print(f"{name:24s} {reached} {epochs:31s} {steps:25s} {seconds}")


def main(argv: list[str] | None = None) -> None:
  """Run every (optimizer, seed) pair and write results.json and curves.png."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = resolve(parse_args(argv))
  if args.vectorize_seeds and args.resume:
    _error("argument --vectorize-seeds: not with --resume (it writes no checkpoints)")
  problem = _cli.out_in_use(
    args.out, OUTPUTS, overwrite=args.overwrite, resume=args.resume
  )
  if problem:  # the reason alone: the usage lines say nothing about --out's files
    _cli.refuse(PROG, problem)
  if args.resume:
    check_resume(args)
  problem = _cli.unwritable(args.out)  # before any training
  if problem:
    _cli.refuse(PROG, f"argument --out: {problem}")
  if args.overwrite:
    _cli.clear_outputs(args.out, OUTPUTS)
  import jax

  print(_threads.describe())
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}")
  from experiments._machine import provenance

  config = results_config(args)
  head = {
    "config": config,
    "hyperparameters": {name: knobs(args, name) for name in args.optimizers},
    "provenance": provenance("experiments.grok", argv),
  }
  records = []
  seeds = list(range(args.seed, args.seed + args.seeds))
  if args.vectorize_seeds:
    print(
      f"--vectorize-seeds: seeds {seeds[0]}..{seeds[-1]} of each optimizer in "
      "one program; no checkpoints"
    )
    for name in args.optimizers:
      for seed, result in zip(seeds, run_vectorized(args, name, seeds), strict=True):
        records.append(run_record(name, seed, result))
      records.sort(key=lambda r: (r["seed"], args.optimizers.index(r["optimizer"])))
      summary = summarize(records, args.optimizers)
      results = head | {"summary": summary, "runs": records}
      (args.out / "results.json").write_text(json.dumps(json_safe(results), indent=1))
  for seed in seeds if not args.vectorize_seeds else []:
    for name in args.optimizers:
      records.append(run_record(name, seed, run_one(args, name, seed)))
      summary = summarize(records, args.optimizers)
      results = head | {"summary": summary, "runs": records}
      (args.out / "results.json").write_text(json.dumps(json_safe(results), indent=1))
  title = plot_title(args)
  plot(records, args.optimizers, args.out / "curves.png", title, args.target_accuracy)
  written = ["results.json", "curves.png"]
  if args.spectrum:
    plot_spectrum(records, args.optimizers, args.out / "spectrum.png", title)
    written.append("spectrum.png")
  _print_summary(summary, args.target_accuracy)
  print(f"wrote {', '.join(str(args.out / f) for f in written)}")


if __name__ == "__main__":
  main()
