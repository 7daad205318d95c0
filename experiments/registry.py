"""The optimizer registry of the experiments: each optimizer defined once, without JAX.

An :class:`OptimizerSpec` holds everything the experiments need of one
optimizer: its builder, the hyperparameters (:class:`OptimizerConfig` fields,
"knobs") it reads, the ones the leaderboard tunes and the centre of their grid
per task family, its labels and its family (SGD- or AdamW-type).
``python -m experiments.grok`` takes its options and ``--optimizer`` choices
from here (refusing an option none of its optimizers reads, recording only the
ones they read), ``python -m experiments.leaderboard`` its grids,
``experiments.paper_table`` its labels, the benchmarks its builders. This
module imports no JAX, so the command lines parse (and print ``--help``) at
once; the builders are imported when an optimizer is built.

Adding an optimizer is one entry of :data:`SPECS` (or one :func:`register`
call); :func:`load_plugin` registers the optimizers a file outside the package
defines (``python -m experiments.leaderboard --plugin FILE.py``).

>>> KNOBS["adamw"]
('adam_lr', 'b1', 'b2', 'adam_weight_decay', 'warmup_steps')
>>> [default(name, "momentum") for name in ("egdm", "momentum-egd", "sgd")]
[0.95, 0.9, 0.0]
>>> SPECS["muon"].tune, SPECS["muon"].centre["transformer"]
(('muon_lr', 'adam_weight_decay'), 0.06)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import pathlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from optax import ScalarOrSchedule

BASES = ("sgd", "adamw")
COMPOSED = ("adam-egd", "momentum-egd", "momentum-egd-first-layer")
GROKFAST_DEFAULT = "egdm"
FAMILIES = ("sgd", "adamw")
# The leaderboard's task families (experiments.leaderboard.Task.family).
TASK_FAMILIES = ("mlp", "parity", "transformer", "mnist")

# Momentum of the optimizers with their own default (--momentum unset):
# optax_egd.egdm's, and optax.trace's usual 0.9 for momentum-egd*.
EGDM_MOMENTUM = 0.95
DEFAULT_MOMENTUM = 0.9
# Momentum of the others (SGD's: none).
_MOMENTUM_FALLBACK = 0.0

# optax_egd.METHODS but "rsvd" (which needs a rank): the --polar-method
# choices, spelled out so that --help does not import JAX (tests check it).
POLAR_METHODS = (
  "auto",
  "svd",
  "eigh",
  "newton_schulz",
  "polar_express",
  "qdwh",
  "polar_express_exact",
)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hyperparameters of every optimizer; each uses the fields it needs."""

  lr: float = 0.7
  # None: the optimizer's own (see default()): egdm 0.95, momentum-egd* 0.9, SGD 0.
  momentum: float | None = None
  adam_lr: float = 1e-3
  b1: float = 0.9
  b2: float = 0.98
  adam_weight_decay: float = 0.0
  weight_decay: float = 0.0
  muon_lr: float = 0.02
  rank: int = 128
  ns_steps: int | None = None
  ema_alpha: float = 0.98
  ema_lamb: float = 2.0
  ma_window: int = 100
  ma_lamb: float = 5.0
  warmup_steps: int = 0
  seed: int = 0
  # The polar method of every optimizer that runs optax_egd.egd with its
  # default method (egd, egd-first-layer, adam-egd, momentum-egd*, egdm).
  polar_method: str = "auto"

  def schedule(self, value: float) -> ScalarOrSchedule:
    """``value``, ramped up linearly from 0 over ``warmup_steps`` if set
    (Grokfast's ``LambdaLR(min(step / 10, 1))``)."""
    import optax  # here, not at the top: the command lines parse without JAX

    if self.warmup_steps <= 0:
      return value
    return optax.schedules.warmup_constant_schedule(0.0, value, self.warmup_steps)


# The knobs an optimizer may read: OptimizerConfig's fields but the seed.
KNOB_FIELDS = tuple(
  f.name for f in dataclasses.fields(OptimizerConfig) if f.name != "seed"
)


@dataclasses.dataclass(frozen=True)
class Range:
  """The accepted values of a numeric knob: ``low``/``high`` (None: unbounded),
  open ends with ``low_open``/``high_open``, whole numbers with ``integer``
  (``python -m experiments.grok`` checks each option against its knob's).

  >>> KNOB_RANGES["momentum"]
  Range(low=0, high=1, low_open=False, high_open=True, integer=False)
  """

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False


# Accepted values of the numeric knobs (``--polar-method`` takes POLAR_METHODS).
KNOB_RANGES: dict[str, Range] = {
  "lr": Range(0, low_open=True),
  "momentum": Range(0, 1, high_open=True),
  "adam_lr": Range(0, low_open=True),
  "b1": Range(0, 1, high_open=True),
  "b2": Range(0, 1, high_open=True),
  "adam_weight_decay": Range(0),
  "weight_decay": Range(0),
  "muon_lr": Range(0, low_open=True),
  "rank": Range(1, integer=True),
  "ns_steps": Range(1, integer=True),
  "ema_alpha": Range(0, 1, high_open=True),
  "ema_lamb": Range(0),
  "ma_window": Range(1, integer=True),
  "ma_lamb": Range(0),
  "warmup_steps": Range(0, integer=True),
}

# Grid centres of the learning rate per task family (experiments.leaderboard):
# the papers' where they exist (SGD and EGD: the EGD paper's, None: the task's
# own learning rate, per parity k; AdamW 1e-3: Grokfast's and Power et al.'s),
# else the nearest measured value in experiments/results.
SGD_CENTRE: Mapping[str, float | None] = {
  "mlp": 0.7, "parity": None, "transformer": 0.05, "mnist": 0.05
}  # fmt: skip
ADAMW_CENTRE: Mapping[str, float | None] = dict.fromkeys(TASK_FAMILIES, 1e-3)
# The weight decays a grid tries, by its learning-rate knob (AdamW's: 0.1 and 1).
ADAMW_DECAYS = (0.1, 1.0)
OTHER_DECAYS = (0.0, 0.1)

Builder = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Plugin:
  """Where a plugin optimizer came from: the file and its SHA-256."""

  source: str
  sha256: str


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One optimizer of the experiments.

  Attributes:
    name: the ``--optimizer`` name.
    build: ``builder(config, first_kernel)`` returning the
      ``optax.GradientTransformation`` (``config``: an :class:`OptimizerConfig`;
      ``first_kernel``: the model's first kernel's path), or a
      ``"module:function"`` string naming it, imported when first built
      (``args`` are passed in front of ``config``).
    knobs: the :class:`OptimizerConfig` fields it reads.
    family: ``"sgd"`` or ``"adamw"``: an SGD- or an AdamW-type optimizer; sets
      the defaults of ``tune`` and ``centre``.
    label: a short name for tables (default: ``name``).
    tune: the knobs the leaderboard grids: a learning rate, and optionally a
      weight decay (None: ``("lr",)`` for SGD-type, ``("adam_lr",
      "adam_weight_decay")`` for AdamW-type).
    centre: the learning rate at the centre of the leaderboard's grid per task
      family (``mlp``, ``parity``, ``transformer``, ``mnist``); a None value is
      the task's own learning rate (None: :data:`SGD_CENTRE` or
      :data:`ADAMW_CENTRE` by family).
    defaults: its own defaults of knobs, where they differ from
      :class:`OptimizerConfig`'s.
    args: positional arguments of ``build`` in front of ``config``.
    plugin: set by :func:`load_plugin`: the file it came from.
  """

  name: str
  build: str | Builder
  knobs: tuple[str, ...]
  family: str
  label: str | None = None
  tune: tuple[str, ...] | None = None
  centre: Mapping[str, float | None] | None = None
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  args: tuple[Any, ...] = ()
  plugin: Plugin | None = None

  def __post_init__(self) -> None:
    problems = check(self)
    if problems:
      raise ValueError(f"optimizer {self.name!r}: " + "; ".join(problems))

  @property
  def tuned(self) -> tuple[str, ...]:
    """:attr:`tune`, or the family's."""
    if self.tune is not None:
      return self.tune
    return ("lr",) if self.family == "sgd" else ("adam_lr", "adam_weight_decay")

  @property
  def centres(self) -> Mapping[str, float | None]:
    """:attr:`centre`, or the family's."""
    if self.centre is not None:
      return self.centre
    return SGD_CENTRE if self.family == "sgd" else ADAMW_CENTRE

  @property
  def shown(self) -> str:
    """:attr:`label`, or the name."""
    return self.name if self.label is None else self.label

  def builder(self) -> Builder:
    """The builder, imported if named by a string, with :attr:`args` bound."""
    build = self.build
    if isinstance(build, str):
      module, function = build.split(":")
      build = getattr(importlib.import_module(module), function)
    return functools.partial(build, *self.args) if self.args else build


def check(spec: OptimizerSpec) -> list[str]:
  """What is wrong with ``spec`` (empty: nothing).

  >>> check(SPECS["sgd"])
  []
  >>> OptimizerSpec("x", "m:f", ("lr", "beta"), "sgd")
  Traceback (most recent call last):
  ValueError: optimizer 'x': knob 'beta' is no OptimizerConfig field (lr, momentum, ...)
  """
  problems = []
  if not isinstance(spec.name, str) or not spec.name or "," in spec.name:
    problems.append("name must be a non-empty string without commas")
  if isinstance(spec.build, str) and spec.build.count(":") != 1:
    problems.append(f"build must be 'module:function', got {spec.build!r}")
  elif not isinstance(spec.build, str) and not callable(spec.build):
    problems.append("build must be a callable or a 'module:function' string")
  if spec.family not in FAMILIES:
    problems.append(f"family must be one of {', '.join(FAMILIES)}, got {spec.family!r}")
  fields = ", ".join(KNOB_FIELDS)
  for knob in (*spec.knobs, *spec.defaults):
    if knob not in KNOB_FIELDS:
      problems.append(f"knob {knob!r} is no OptimizerConfig field ({fields})")
  for knob, value in spec.defaults.items():
    bounds = KNOB_RANGES.get(knob)
    if bounds is not None and not _within(value, bounds):
      problems.append(f"defaults[{knob!r}] is out of its range, got {value!r}")
  if spec.label is not None and not isinstance(spec.label, str):
    problems.append(f"label must be a string, got {spec.label!r}")
  tuned = spec.tuned if spec.family in FAMILIES else ()
  if not 1 <= len(tuned) <= 2:
    problems.append(f"tune must name a learning rate and at most a decay, got {tuned}")
  for knob in tuned:
    if knob not in spec.knobs:
      problems.append(f"tune: {knob!r} is not one of its knobs {spec.knobs}")
  if spec.centre is not None:
    missing = [family for family in TASK_FAMILIES if family not in spec.centre]
    if missing:
      problems.append(f"centre: no value for task family {', '.join(missing)}")
    for family, value in spec.centre.items():
      if family not in TASK_FAMILIES:
        problems.append(f"centre: unknown task family {family!r}")
      elif value is not None and not value > 0:
        problems.append(f"centre[{family!r}] must be > 0 or None, got {value!r}")
  return problems


def _within(value: Any, bounds: Range) -> bool:
  """Whether ``value`` is a number ``bounds`` accepts."""
  if isinstance(value, bool) or not isinstance(value, int | float):
    return False
  if bounds.integer and value != int(value):
    return False
  low, high = bounds.low, bounds.high
  if low is not None and (value <= low if bounds.low_open else value < low):
    return False
  return high is None or (value < high if bounds.high_open else value <= high)


def _preconditioner(name: str, base: str) -> OptimizerSpec:
  """``name`` (one of :data:`PRECONDITIONERS`) in front of SGD or AdamW."""
  own, label = _PRECONDITIONERS[name]
  if base == "sgd":
    return OptimizerSpec(name, _BUILD + "preconditioned", own + _SGD, "sgd",
                         args=(name, base), label=label)  # fmt: skip
  return OptimizerSpec(f"{name}-adamw", _BUILD + "preconditioned", own + _ADAMW,
                       "adamw", args=(name, base))  # fmt: skip


_SGD = ("lr", "momentum", "warmup_steps")
_ADAMW = ("adam_lr", "b1", "b2", "adam_weight_decay", "warmup_steps")
# Preconditioners: the knobs they read besides SGD's or AdamW's, their label.
_PRECONDITIONERS: dict[str, tuple[tuple[str, ...], str | None]] = {
  "egd": (("polar_method",), "EGD (SVD, every matrix)"),
  "egd-first-layer": (("polar_method",), "EGD (SVD)"),
  "egd-rsvd": (("rank",), None),
  "egd-rsvd-first-layer": (("rank",), "EGD (RSVD)"),
  "egd-ns": (("ns_steps",), None),
  "egd-polar-express": (("ns_steps",), None),
  "column-norm": ((), "column norm"),
  "grokfast-ema": (("ema_alpha", "ema_lamb"), None),
  "grokfast-ma": (("ma_window", "ma_lamb"), None),
  "orthograd": ((), None),
}
PRECONDITIONERS = tuple(_PRECONDITIONERS)
_MOMENTUM_EGD = ("lr", "momentum", "warmup_steps", "polar_method")
_BUILD = "experiments.optimizers:"

# Every built-in optimizer (plugins: register()).
SPECS: dict[str, OptimizerSpec] = {
  spec.name: spec
  for spec in (
    OptimizerSpec("sgd", _BUILD + "base", _SGD, "sgd", args=("sgd",), label="SGD"),
    OptimizerSpec(
      "adamw", _BUILD + "base", _ADAMW, "adamw", args=("adamw",), label="AdamW"
    ),  # fmt: skip
    OptimizerSpec(
      "muon",
      _BUILD + "muon",
      ("muon_lr", "adam_weight_decay", "warmup_steps"),
      "sgd",
      label="Muon",
      tune=("muon_lr", "adam_weight_decay"),
      centre={"mlp": 0.06, "parity": 0.02, "transformer": 0.06, "mnist": 0.02},
    ),
    OptimizerSpec(
      "egdm",
      _BUILD + "egdm",
      ("lr", "momentum", "weight_decay", "warmup_steps", "polar_method"),
      "sgd",
      tune=("lr", "weight_decay"),
      defaults={"momentum": EGDM_MOMENTUM},
      centre={"mlp": 0.1, "parity": 0.02, "transformer": 0.06, "mnist": 0.02},
    ),
    OptimizerSpec(
      "egdm-kernels",
      _BUILD + "egdm_kernels",
      ("lr", "momentum", "weight_decay", "warmup_steps", "polar_method"),
      "sgd",
      label="egdm (muon's leaves)",
      tune=("lr", "weight_decay"),
      defaults={"momentum": EGDM_MOMENTUM},
      centre={"mlp": 0.1, "parity": 0.02, "transformer": 0.06, "mnist": 0.02},
    ),
    OptimizerSpec(
      "adam-egd",
      _BUILD + "egd_on_smoothed",
      (
        "lr",
        "adam_lr",
        "b1",
        "b2",
        "adam_weight_decay",
        "warmup_steps",
        "polar_method",
      ),
      "adamw",
      args=("adam-egd",),
      label="Adam → EGD",
      tune=("lr", "adam_weight_decay"),
      centre={"mlp": 0.05, "parity": 0.01, "transformer": 0.02, "mnist": 0.1},
    ),  # fmt: skip
    *(
      OptimizerSpec(
        name,
        _BUILD + "egd_on_smoothed",
        _MOMENTUM_EGD,
        "sgd",
        args=(name,),
        defaults={"momentum": DEFAULT_MOMENTUM},
        label=label,
      )
      for name, label in (
        ("momentum-egd", None),
        ("momentum-egd-first-layer", "EGD on momentum (first layer)"),
      )
    ),  # fmt: skip
    *(_preconditioner(name, "sgd") for name in PRECONDITIONERS),
    *(_preconditioner(name, "adamw") for name in PRECONDITIONERS),
  )
}
# The built-in optimizers' names (the ``--optimizer`` choices of --help).
NAMES = tuple(SPECS)
# The knobs each optimizer reads, plugins included once registered.
KNOBS: dict[str, tuple[str, ...]] = {name: spec.knobs for name, spec in SPECS.items()}


def register(spec: OptimizerSpec) -> OptimizerSpec:
  """Add ``spec`` to :data:`SPECS` (a ValueError if its name is taken by
  another optimizer); returns it.

  >>> spec = register(OptimizerSpec("sgd", "experiments.optimizers:base", ("lr",),
  ...                               "sgd"))
  Traceback (most recent call last):
  ValueError: optimizer 'sgd' is registered already
  """
  known = SPECS.get(spec.name)
  if known is not None and known != spec:
    raise ValueError(f"optimizer {spec.name!r} is registered already")
  SPECS[spec.name] = spec
  KNOBS[spec.name] = spec.knobs
  return spec


def get(name: str) -> OptimizerSpec:
  """The spec of optimizer ``name`` (a ValueError naming the choices if none)."""
  if name not in SPECS:
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(SPECS)}")
  return SPECS[name]


# The plugins loaded so far: source (a resolved path or a module name) -> specs.
_LOADED: dict[str, list[OptimizerSpec]] = {}


def load_plugin(source: str) -> list[OptimizerSpec]:
  """Import a plugin, a Python file (``path/to/file.py``) or a module
  (``package.module``), and register every :class:`OptimizerSpec` it defines
  at module level, each marked with the file and its SHA-256
  (:attr:`OptimizerSpec.plugin`); returns them. Loading the same source again
  returns the same specs. A ValueError, one line, if it cannot be imported,
  defines no spec, or reuses a registered name.

  >>> load_plugin("no/such/file.py")
  Traceback (most recent call last):
  ValueError: no/such/file.py: no such file
  """
  path = pathlib.Path(source)
  is_file = source.endswith(".py") or path.is_file()
  key = str(path.resolve()) if is_file else source
  if key in _LOADED:
    return _LOADED[key]
  if is_file and not path.is_file():
    raise ValueError(f"{source}: no such file")
  try:
    if is_file:
      name = "experiments_plugin_" + hashlib.sha256(key.encode()).hexdigest()[:12]
      module_spec = importlib.util.spec_from_file_location(name, path)
      if module_spec is None or module_spec.loader is None:
        raise ValueError("not a Python file")
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[name] = module  # as an import would (dataclasses need it)
      module_spec.loader.exec_module(module)
    else:
      module = importlib.import_module(source)
  except Exception as error:  # the plugin's own error, as one line
    raise ValueError(f"{source}: {type(error).__name__}: {error}") from error
  found = {v.name: v for v in vars(module).values() if isinstance(v, OptimizerSpec)}
  if not found:
    raise ValueError(f"{source}: defines no experiments.registry.OptimizerSpec")
  for name in found:
    if name in SPECS:
      raise ValueError(f"{source}: optimizer {name!r} is registered already")
  marked = Plugin(source, _sha256(module))
  specs = [register(dataclasses.replace(s, plugin=marked)) for s in found.values()]
  _LOADED[key] = specs
  return specs


def _sha256(module: types.ModuleType) -> str:
  """The SHA-256 of ``module``'s file."""
  return hashlib.sha256(pathlib.Path(module.__file__ or "").read_bytes()).hexdigest()


def default(name: str, knob: str) -> object:
  """The value optimizer ``name`` uses for ``knob`` when it is not set.

  >>> default("egd-rsvd", "rank")
  128
  """
  own = SPECS[name].defaults
  if knob in own:
    return own[knob]
  if knob == "momentum":
    return _MOMENTUM_FALLBACK
  return getattr(OptimizerConfig(), knob)


def readers(knob: str) -> tuple[str, ...]:
  """The built-in optimizers that read ``knob``, in :data:`NAMES` order.

  >>> readers("muon_lr")
  ('muon',)
  """
  return tuple(name for name in NAMES if knob in KNOBS[name])
