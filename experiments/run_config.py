"""The typed configuration of ``python -m experiments.grok``: :class:`RunConfig`.

One frozen dataclass holds every option of a run (task, model, optimizer,
schedule, seeds, caps and the command's plumbing). Each field carries its
command line in its metadata (:class:`Option`: the help text, the type that
checks its range, which tasks or models use it, its default where it
applies), so the parser is generated from the fields (:func:`build_parser`)
and code that builds runs writes ``dataclasses.replace(config, lr=0.1)``
instead of a command line. A field left unset is None; :func:`resolve`
turns a partial config into a complete one with the task's defaults (the
papers' hyperparameters), or exits with a one-line usage error (exit code 2)
naming the option.

>>> config = options(task="parity", k=3)
>>> config == parse_args(["--task", "parity", "--k", "3"])
True
>>> resolve(config).n, resolve(config).lr
(100, 0.0416239)
>>> argv(config)
['--task', 'parity', '--k', '3']
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
import dataclasses
import pathlib
from typing import Any, Literal, NoReturn, TypeVar, get_args

# No JAX here: --help and usage errors come before (and without) it.
from experiments import _cli, registry
from experiments._cli import integer, number

PROG = "python -m experiments.grok"
DESCRIPTION = "``python -m experiments.grok``: grokking runs from the command line."
TASKS = ("mod_add", "mod_sub", "mod_mul", "mod_div", "grokfast_mul", "parity", "mnist")
MODELS = ("mlp", "transformer", "grokfast", "omnigrok")
PRESETS = {"grokfast": "grokfast_mul"}
MODULAR = ("mod_add", "mod_sub", "mod_mul", "mod_div", "grokfast_mul")
Encoding = Literal["onehot", "tokens"]  # tasks.Encoding
LossKind = Literal["cross_entropy", "mse", "stablemax_cross_entropy"]  # train.LossKind
TrainMetrics = Literal["minibatch", "full"]
StopRule = Literal["first", "stable"]  # experiments.train.StopRule
MNIST_IMAGES = 5000  # the images tasks.mnist reads; n_train of them train

# Hyperparameters per task (and model) from the papers: EGD's for modular
# arithmetic with the MLP and for sparse parity, Grokfast's for the
# transformer, Omnigrok's for MNIST.
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


@dataclasses.dataclass(frozen=True)
class Option:
  """The command line of one :class:`RunConfig` field (its ``metadata["option"]``).

  Attributes:
    group: the ``--help`` section: task, model, optimization or run.
    help: the help text; ``{default}`` stands for :attr:`applies_default`
      (else the field's default). A callable (of the field's name) is called
      when the parser is built: the optimizer options' help lists the
      registry's defaults, plugins' included.
    type: the argparse type, which checks the range (None: a string, a
      choice or a flag); of an optimizer option, a function of the field's
      name returning it (the registry's range), called when the parser is
      built.
    choices: the accepted values, if a fixed set.
    flag: a bare switch (``store_true``), or ``append`` (repeatable).
    aliases: other spellings of the option (``--optimizers``).
    metavar: argparse's metavar.
    tasks: the tasks that use it (None: all); given for another, a usage error.
    models: the models that use it (None: all).
    applies_default: its default wherever it applies (the tasks' own
      defaults come from :func:`task_defaults`).
    knob: an optimizer option (a field of :class:`registry.OptimizerConfig`).
    derived: not an option: :func:`resolve` sets it.
  """

  group: str = "run"
  help: str | Callable[[str], str] = ""
  type: Callable[..., Any] | None = None
  choices: tuple[str, ...] | None = None
  flag: str | None = None
  aliases: tuple[str, ...] = ()
  metavar: str | None = None
  tasks: tuple[str, ...] | None = None
  models: tuple[str, ...] | None = None
  applies_default: Any = None
  knob: bool = False
  derived: bool = False


def _field(default: Any = None, **option: Any) -> Any:
  return dataclasses.field(default=default, metadata={"option": Option(**option)})


def _knob_type(name: str) -> Any:
  """The argparse type of knob ``name``: its registry range, else any finite
  value of its kind."""
  bounds = registry.KNOB_RANGES.get(name)
  if bounds is None:
    kind = next(f.type for f in dataclasses.fields(registry.OptimizerConfig)
                if f.name == name)  # fmt: skip
    return integer() if "int" in str(kind) else number()
  if bounds.integer:
    return integer(bounds.low, bounds.high)  # type: ignore[arg-type]
  return number(bounds.low, bounds.high, low_open=bounds.low_open,
                high_open=bounds.high_open)  # fmt: skip


def _knob() -> Any:
  return _field(group="optimization", type=_knob_type, knob=True, help=_knob_help)


def _knob_help(name: str) -> str:
  """``--help``'s default of optimizer option ``name``: the value most of its
  optimizers use, the others' own, and which optimizers read it.

  >>> _knob_help("momentum")[:81]
  'default 0.0 (egdm, egdm-kernels 0.95; momentum-egd, momentum-egd-first-layer 0.9)'
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


_TRANSFORMERS = ("transformer", "grokfast")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every option of ``python -m experiments.grok``, one field per option
  (``--train-fraction`` is ``train_fraction``), in ``--help``'s order.

  Unset is None: :func:`parse_args` and :func:`options` give a partial
  config, :func:`resolve` a complete one (each field the task, model and
  optimizers use set; the others None). Build variants with
  ``dataclasses.replace``.

  >>> import dataclasses
  >>> base = options(task="mod_add", p=11)
  >>> dataclasses.replace(base, lr=0.1) == parse_args(["--p", "11", "--lr", "0.1"])
  True
  """

  # task
  preset: str | None = _field(
    group="task",
    choices=tuple(PRESETS),
    help="grokfast: Grokfast's modular multiplication and transformer "
    "(sets --task grokfast_mul)",
  )
  task: str = _field("mod_add", group="task", choices=TASKS, help="default mod_add")
  p: int | None = _field(
    group="task",
    type=integer(2),
    tasks=MODULAR,
    applies_default=97,
    help="modular tasks: the prime modulus (default {default})",
  )
  train_fraction: float | None = _field(
    group="task",
    type=number(0, 1, low_open=True, high_open=True),
    tasks=MODULAR,
    applies_default=0.5,
    help="modular tasks: the fraction of the equations to train on (default {default})",
  )
  encoding: Encoding | None = _field(
    group="task",
    choices=get_args(Encoding),
    tasks=MODULAR[:4],
    applies_default="onehot",
    help="mod_*: one-hot features (default) or tokens (for --model transformer)",
  )
  label_noise: float | None = _field(
    group="task",
    type=number(0, 1, high_open=True),
    tasks=MODULAR[:4],
    help="mod_*: the fraction of training labels replaced by a wrong class "
    "(default 0; the test labels stay clean)",
  )
  n: int | None = _field(
    group="task",
    type=integer(1),
    tasks=("parity",),
    help="parity: input bits (default from --k: 400, 100, 50)",
  )
  k: int | None = _field(
    group="task",
    type=integer(1),
    tasks=("parity",),
    help="parity: secret bits (2, 3 or 4 have presets; default 4)",
  )
  n_train: int | None = _field(
    group="task",
    type=integer(1),
    tasks=("parity", "mnist"),
    help="parity, MNIST: training examples (default 2000; MNIST 1000)",
  )
  n_test: int | None = _field(
    group="task",
    type=integer(1),
    tasks=("parity",),
    applies_default=10000,
    help="parity: test examples (default {default})",
  )
  # model
  model: str | None = _field(
    group="model",
    choices=MODELS,
    help="default: mlp, transformer for tokens, grokfast for grokfast_mul, "
    "omnigrok for mnist",
  )
  hidden: int | None = _field(
    group="model",
    type=integer(1),
    models=("mlp",),
    help="mlp: hidden width (default 512; parity 50 for k=2, else 100)",
  )
  layers: int | None = _field(
    group="model",
    type=integer(1),
    models=_TRANSFORMERS,
    applies_default=2,
    help="transformer, grokfast: layers (default {default})",
  )
  d_model: int | None = _field(
    group="model",
    type=integer(1),
    models=_TRANSFORMERS,
    applies_default=128,
    help="transformer, grokfast: d_model (default {default})",
  )
  heads: int | None = _field(
    group="model",
    type=integer(1),
    models=_TRANSFORMERS,
    applies_default=4,
    help="transformer, grokfast: heads (default {default})",
  )
  depth: int | None = _field(
    group="model",
    type=integer(1),
    models=("omnigrok",),
    applies_default=3,
    help="omnigrok: MLP depth (default {default})",
  )
  width: int | None = _field(
    group="model",
    type=integer(1),
    models=("omnigrok",),
    applies_default=200,
    help="omnigrok: MLP width (default {default})",
  )
  init_scale: float | None = _field(
    group="model",
    type=number(0, low_open=True),
    models=("omnigrok",),
    applies_default=8.0,
    help="omnigrok: init multiplier (default {default})",
  )
  # optimization
  optimizer: str | None = _field(
    group="optimization",
    aliases=("--optimizers",),
    help=lambda _: (
      f"comma-separated, from: {', '.join(registry.NAMES)} (default "
      f"egd; {registry.GROKFAST_DEFAULT} for --preset grokfast)"
    ),
  )
  plugin: list[str] | None = _field(
    group="optimization",
    flag="append",
    metavar="FILE.py|MODULE",
    help="a Python file or module defining an experiments.registry.OptimizerSpec: "
    "its optimizers join the --optimizer choices (repeatable)",
  )
  # The fields of registry.OptimizerConfig but seed (a test checks them).
  lr: float | None = _knob()
  momentum: float | None = _knob()
  adam_lr: float | None = _knob()
  b1: float | None = _knob()
  b2: float | None = _knob()
  adam_weight_decay: float | None = _knob()
  weight_decay: float | None = _knob()
  muon_lr: float | None = _knob()
  rank: int | None = _knob()
  ns_steps: int | None = _knob()
  ema_alpha: float | None = _knob()
  ema_lamb: float | None = _knob()
  ma_window: int | None = _knob()
  ma_lamb: float | None = _knob()
  warmup_steps: int | None = _knob()
  polar_method: str | None = _field(
    group="optimization",
    choices=registry.POLAR_METHODS,
    knob=True,
    help="the polar method of the EGD optimizers (egd, egd-first-layer, adam-egd,"
    " momentum-egd*, egdm); default auto (svd on CPU, polar_express_exact on"
    " GPU/TPU); polar_express_exact on CPU reproduces the accelerators' choice",
  )
  l2: float | None = _field(
    group="optimization",
    type=number(0),
    help="weight decay as 0.5·l2·Σ‖W‖² in the loss",
  )
  batch_size: int | None = _field(
    group="optimization",
    type=integer(1),
    help="default: the task's (512; parity 32, MNIST 200), at most the training set",
  )
  loss: LossKind | None = _field(
    group="optimization",
    choices=get_args(LossKind),
    help="stablemax_cross_entropy: StableMax (Prieto et al. 2025), for ⊥Grad",
  )
  # run
  max_epochs: int = _field(2000, type=integer(1), help="per run (default {default})")
  target_accuracy: float | None = _field(
    type=number(0, 1), help="test accuracy to reach (0.95; MNIST 0.85)"
  )
  no_stop: bool = _field(
    False, flag="store_true", help="keep training after the target accuracy"
  )
  stop_rule: StopRule = _field(
    "first",
    choices=get_args(StopRule),
    help="first: stop at the first epoch at the target accuracy; stable: go on "
    "until it has held from its last crossing, epoch s, through epoch 2·s (or "
    "--max-epochs), which measures stable grokking (default {default})",
  )
  egd_off_at: float | None = _field(
    type=number(0, 1), help="switch EGD off once test accuracy reaches this"
  )
  spectrum: bool = _field(
    False,
    flag="store_true",
    help="record the first kernel's gradient singular values every epoch (on the "
    "first batch of the training set) and draw spectrum.png",
  )
  train_metrics: TrainMetrics = _field(
    "minibatch",
    choices=get_args(TrainMetrics),
    help="train loss/accuracy per epoch: the mean over the epoch's minibatches "
    "(free) or a pass over the whole training set after the epoch",
  )
  seed: int = _field(
    0, type=integer(0, _cli.SEED_MAX), help="first seed (default {default})"
  )
  seeds: int = _field(
    1, type=integer(1), help="number of seeds, from --seed on (default {default})"
  )
  vectorize_seeds: bool = _field(
    False,
    flag="store_true",
    help="train the --seeds of each optimizer in one vectorized (jax.vmap) program "
    "instead of one after another (same results; no checkpoints, no --resume; "
    "see docs/vectorized_seeds.md)",
  )
  out: pathlib.Path = _field(
    pathlib.Path("runs/grok"),
    type=pathlib.Path,
    help="output folder (default {default}); one that holds files is refused "
    "unless --resume or --overwrite is given",
  )
  overwrite: bool = _field(
    False,
    flag="store_true",
    help="replace the run in --out: delete its results.json, curves.png, "
    "spectrum.png and checkpoints before training",
  )
  checkpoint_every: int = _field(
    500,
    type=integer(0),
    help="epochs between checkpoints; 0: none (default {default})",
  )
  resume: bool = _field(
    False,
    flag="store_true",
    help="continue the runs checkpointed in --out, e.g. to a larger --max-epochs "
    "or with --no-stop; every other option must be the checkpoint's. Refused if "
    "--out holds no checkpoint of these runs (drop --resume to start afresh); a "
    "run that has none yet (another seed or optimizer) starts from epoch 0",
  )
  no_progress: bool = _field(False, flag="store_true", help="no progress bar")
  # Set by resolve, not options.
  drop_last: bool | None = _field(derived=True)
  optimizers: list[str] | None = _field(derived=True)


_T = TypeVar("_T")


def given(value: _T | None) -> _T:
  """``value``, a field that :func:`resolve` sets for the config's task and
  model (a ValueError if it is unset: the config is not resolved, or the
  field does not apply).

  >>> given(resolve(options()).p)
  97
  """
  if value is None:
    raise ValueError("an unset option: resolve() the config first")
  return value


def flag_of(field: str) -> str:
  """The option of field ``field``.

  >>> flag_of("train_fraction")
  '--train-fraction'
  """
  return f"--{field.replace('_', '-')}"


def option_fields() -> tuple[dataclasses.Field[Any], ...]:
  """The fields of :class:`RunConfig` that are command-line options."""
  return tuple(f for f in dataclasses.fields(RunConfig) if not _meta(f).derived)


def _meta(field: dataclasses.Field[Any]) -> Option:
  return field.metadata["option"]  # type: ignore[no-any-return]


_FIELDS = {f.name: _meta(f) for f in dataclasses.fields(RunConfig)}
# The options only some tasks (models) use: given for another, a usage error;
# left unset there, None (and out of results.json).
TASK_OPTIONS = {n: o.tasks for n, o in _FIELDS.items() if o.tasks is not None}
MODEL_OPTIONS = {n: o.models for n, o in _FIELDS.items() if o.models is not None}
# Defaults of those options wherever they apply (the tasks' own: task_defaults).
OPTION_DEFAULTS = {
  n: o.applies_default for n, o in _FIELDS.items() if o.applies_default is not None
}
# The options an optimizer may read (registry.KNOBS): one none of the
# chosen optimizers reads is a usage error; results.json records the others.
KNOB_OPTIONS = tuple(n for n, o in _FIELDS.items() if o.knob)
OPTIMIZER_FIELDS = tuple(n for n in KNOB_OPTIONS if n != "polar_method")


def build_parser(description: str = DESCRIPTION) -> argparse.ArgumentParser:
  """The command line's parser, generated from :class:`RunConfig`'s fields:
  one option per field, in its group, its range checked by its type."""
  parser = argparse.ArgumentParser(prog=PROG, description=description)
  groups: dict[str, Any] = {}
  for field in option_fields():
    option = _meta(field)
    if option.group not in groups:  # in the order of their first fields
      groups[option.group] = parser.add_argument_group(option.group)
    group = groups[option.group]
    kwargs: dict[str, Any] = {"dest": field.name}
    if option.flag is not None:
      kwargs["action"] = option.flag
    if option.choices is not None:
      kwargs["choices"] = option.choices
    if option.metavar is not None:
      kwargs["metavar"] = option.metavar
    kind = option.type
    if option.knob and option.type is not None:
      kind = option.type(field.name)
    if kind is not None:
      kwargs["type"] = kind
    if field.default is not None:
      kwargs["default"] = field.default
    text = option.help(field.name) if callable(option.help) else option.help
    shown = field.default if option.applies_default is None else option.applies_default
    text = text.replace("{default}", str(shown))
    if option.knob and kind is not None:
      text = f"{kind.range}; {text}"  # type: ignore[attr-defined]
    group.add_argument(flag_of(field.name), *option.aliases, help=text, **kwargs)
  return parser


def parse_args(argv: list[str] | None = None) -> RunConfig:
  """Parse the command line; task-dependent options stay None until :func:`resolve`."""
  return RunConfig(**vars(build_parser().parse_args(argv)))


def options(**values: Any) -> RunConfig:
  """The unresolved config of a run given as Python values (``p=97`` for
  ``--p 97``), as :func:`parse_args` returns it: for code that builds runs,
  with no command line to parse. A TypeError names an unknown option.

  >>> options(task="parity", k=3) == parse_args(["--task", "parity", "--k", "3"])
  True
  """
  for name in values:
    if name not in _FIELDS or _FIELDS[name].derived:
      raise TypeError(f"{PROG} has no option {flag_of(name)}")
  return dataclasses.replace(RunConfig(), **values)


def argv(values: Mapping[str, Any] | RunConfig) -> list[str]:
  """The command-line options that ``options(**values)`` stands for (a true
  flag bare, a list repeated, floats as ``repr`` writes them); of a
  :class:`RunConfig`, the options that differ from their defaults (of a
  resolved one, those its optimizers read: the command resolves to it again).

  >>> argv({"task": "mod_add", "p": 97, "label_noise": 0.05, "no_stop": True})
  ['--task', 'mod_add', '--p', '97', '--label-noise', '0.05', '--no-stop']
  >>> argv(options(k=3, task="parity", max_epochs=2000))
  ['--task', 'parity', '--k', '3']
  """
  if isinstance(values, RunConfig):
    config = values
    # A resolved config: the optimizer options its optimizers read.
    unread = (
      set()
      if config.optimizers is None
      else set(KNOB_OPTIONS)
      - {knob for name in config.optimizers for knob in registry.KNOBS[name]}
    )
    values = {
      f.name: getattr(config, f.name)
      for f in option_fields()
      if getattr(config, f.name) != f.default and f.name not in unread
    }
  out: list[str] = []
  for name, value in values.items():
    if value is True:
      out.append(flag_of(name))
    elif value is not None and value is not False:
      for item in value if isinstance(value, list) else [value]:
        out += [flag_of(name), repr(item) if isinstance(item, float) else str(item)]
  return out


def error(message: str) -> NoReturn:
  """Exit with argparse's usage line and ``message`` (exit code 2)."""
  build_parser().error(message)


def task_defaults(config: Any) -> dict[str, Any]:
  """The papers' hyperparameters for ``config.task`` and ``config.model``."""
  if config.task == "grokfast_mul":
    return _GROKFAST
  if config.task.startswith("mod_"):
    return _MODULAR_MLP if config.model == "mlp" else _MODULAR_TRANSFORMER
  if config.task == "parity":
    k = 4 if config.k is None else config.k
    from experiments.tasks import PARITY_PRESETS  # here: it imports JAX

    n = PARITY_PRESETS[k][0] if k in PARITY_PRESETS else None
    return _PARITY_COMMON | _PARITY.get(k, _PARITY[4]) | dict(k=k, n=n, n_train=2000)
  return _MNIST


def resolve(config: RunConfig) -> RunConfig:
  """``config`` with every unset option the task's default; exit with a usage
  error for an option the task or model does not use. Options that do not
  apply stay None."""
  # A scratch copy to fill in; the result is a new frozen config.
  args = argparse.Namespace(
    **{f.name: getattr(config, f.name) for f in dataclasses.fields(RunConfig)}
  )
  if args.preset is not None:
    args.task = PRESETS[args.preset]
  given = [name for name in KNOB_OPTIONS if getattr(args, name) is not None]
  for name, used_by in TASK_OPTIONS.items():
    if getattr(args, name) is not None and args.task not in used_by:
      error(
        f"argument {flag_of(name)}: --task {args.task} does not use it (it is for "
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
      error(
        f"argument {flag_of(name)}: --model {args.model} does not use it (it is for "
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
  for name in OPTIMIZER_FIELDS:
    if getattr(args, name) is None:
      setattr(args, name, getattr(registry.OptimizerConfig(), name))
  if args.task == "parity" and args.n is None:
    error(f"--task parity --k {args.k} has no preset: give --n")
  for source in args.plugin or ():
    try:
      registry.load_plugin(source)
    except ValueError as bad:
      error(f"argument --plugin: {bad}")
  args.optimizers = _cli.name_list(args.optimizer)
  problem = _cli.check_names(
    "argument --optimizer", args.optimizers, tuple(registry.SPECS)
  )
  if problem:
    error(problem)
  for name in given:
    if not any(name in registry.KNOBS[o] for o in args.optimizers):
      error(f"argument {flag_of(name)}: " + _unread(args.optimizers))
  if args.polar_method is None:
    args.polar_method = "auto"
  _check_task(args)
  if args.batch_size is None:  # the task's, or the whole training set if smaller
    args.batch_size = min(batch_size, train_size(args))
  return RunConfig(**vars(args))


def _unread(names: list[str]) -> str:
  """Why an optimizer option is refused: what ``names`` read instead."""
  reads = "; ".join(
    f"{name} reads "
    + (", ".join(map(flag_of, registry.KNOBS[name])) or "no optimizer option")
    for name in names
  )
  verb = "does" if len(names) == 1 else "do"
  return f"--optimizer {','.join(names)} {verb} not read it ({reads})"


def knobs(config: RunConfig, name: str) -> dict[str, Any]:
  """The hyperparameters optimizer ``name`` runs with: those it reads
  (:data:`registry.KNOBS`), unset ones at its own defaults."""
  values = {}
  for knob in registry.KNOBS[name]:
    value = getattr(config, knob)
    values[knob] = registry.default(name, knob) if value is None else value
  return values


def _check_task(args: Any) -> None:
  """Exit with a usage error for options that do not fit the resolved task."""
  if args.task in MODULAR and not _cli.is_prime(args.p):
    error(f"argument --p: must be a prime >= 2 for --task {args.task}, got {args.p}")
  if args.task == "parity" and args.k > args.n:
    error(f"argument --k: must be in [1, --n = {args.n}] for parity, got {args.k}")
  if args.task == "mnist" and args.n_train >= MNIST_IMAGES:
    error(
      f"argument --n-train: must be in [1, {MNIST_IMAGES - 1}] for mnist "
      f"(the rest of the {MNIST_IMAGES} images are the test set), got {args.n_train}"
    )
  if args.task == "parity" and args.loss != "mse":
    error("argument --loss: parity (a ±1 target) needs --loss mse")
  tokens = args.task.startswith("mod_") and args.encoding == "tokens"
  if args.model == "transformer" and not tokens:
    error("--model transformer needs a modular task with --encoding tokens")
  if args.model != "transformer" and tokens:
    error(f"--model {args.model} needs feature inputs: --encoding onehot")
  if args.model == "transformer" and args.d_model % args.heads:
    error(f"argument --heads: must divide --d-model {args.d_model}, got {args.heads}")
  if args.seed + args.seeds - 1 > _cli.SEED_MAX:
    error(f"--seed + --seeds - 1 must be <= {_cli.SEED_MAX}")
  n_train = train_size(args)
  if n_train < 1:
    error(
      f"argument --train-fraction: {args.train_fraction} leaves no training example"
    )
  if args.batch_size is not None and args.batch_size > n_train:
    error(
      f"argument --batch-size: must be in [1, {n_train}] (the training set of "
      f"this task), got {args.batch_size}"
    )


def train_size(config: Any) -> int:
  """Training examples of the (resolved) task, as the task splits them."""
  if config.task.startswith("mod_") or config.task == "grokfast_mul":
    nonzero = config.task in ("mod_div", "grokfast_mul")  # y != 0
    pairs = config.p * (config.p - 1 if nonzero else config.p)
    return int(pairs * config.train_fraction)
  return config.n_train  # type: ignore[no-any-return]


def optimizer_config(config: RunConfig, seed: int) -> registry.OptimizerConfig:
  """The hyperparameters of the (resolved) ``config``, for
  :func:`experiments.optimizers.build`."""
  return registry.OptimizerConfig(
    seed=seed,
    polar_method=config.polar_method,  # type: ignore[arg-type]
    **{f: getattr(config, f) for f in OPTIMIZER_FIELDS},
  )
