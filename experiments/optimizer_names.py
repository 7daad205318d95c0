"""The optimizers' names and hyperparameters, without JAX.

What the command lines need to parse their options (and print ``--help``)
before anything imports JAX; :mod:`experiments.optimizers` builds the
optimizers and re-exports these names. :data:`KNOBS` declares, in this one
place, the hyperparameters each optimizer reads: ``python -m
experiments.grok`` refuses an option none of its optimizers reads, records
only the ones they read, and ``python -m experiments.leaderboard`` tunes
only those.

>>> KNOBS["adamw"]
('adam_lr', 'b1', 'b2', 'adam_weight_decay', 'warmup_steps')
>>> [default(name, "momentum") for name in ("egdm", "momentum-egd", "sgd")]
[0.95, 0.9, 0.0]
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from optax import ScalarOrSchedule

BASES = ("sgd", "adamw")
PRECONDITIONERS = (
  "egd",
  "egd-first-layer",
  "egd-rsvd",
  "egd-rsvd-first-layer",
  "egd-ns",
  "egd-polar-express",
  "column-norm",
  "grokfast-ema",
  "grokfast-ma",
  "orthograd",
)
COMPOSED = ("adam-egd", "momentum-egd", "momentum-egd-first-layer")
GROKFAST_DEFAULT = "egdm"
NAMES = (
  *BASES,
  "muon",
  "egdm",
  *COMPOSED,
  *PRECONDITIONERS,
  *(f"{p}-adamw" for p in PRECONDITIONERS),
)

# Momentum of the optimizers with their own default (--momentum unset):
# optax_egd.egdm's, and optax.trace's usual 0.9 for momentum-egd*.
EGDM_MOMENTUM = 0.95
DEFAULT_MOMENTUM = 0.9

# The hyperparameters (OptimizerConfig fields) each optimizer reads.
_SGD = ("lr", "momentum", "warmup_steps")
_ADAMW = ("adam_lr", "b1", "b2", "adam_weight_decay", "warmup_steps")
_PRECONDITIONER_KNOBS = {
  "egd": ("polar_method",),
  "egd-first-layer": ("polar_method",),
  "egd-rsvd": ("rank",),
  "egd-rsvd-first-layer": ("rank",),
  "egd-ns": ("ns_steps",),
  "egd-polar-express": ("ns_steps",),
  "column-norm": (),
  "grokfast-ema": ("ema_alpha", "ema_lamb"),
  "grokfast-ma": ("ma_window", "ma_lamb"),
  "orthograd": (),
}
_MOMENTUM_EGD = ("lr", "momentum", "warmup_steps", "polar_method")
KNOBS: dict[str, tuple[str, ...]] = {
  "sgd": _SGD,
  "adamw": _ADAMW,
  "muon": ("muon_lr", "adam_weight_decay", "warmup_steps"),
  "egdm": ("lr", "momentum", "weight_decay", "warmup_steps", "polar_method"),
  "adam-egd": (
    "lr", "adam_lr", "b1", "b2", "adam_weight_decay", "warmup_steps", "polar_method"
  ),
  "momentum-egd": _MOMENTUM_EGD,
  "momentum-egd-first-layer": _MOMENTUM_EGD,
  **{name: knobs + _SGD for name, knobs in _PRECONDITIONER_KNOBS.items()},
  **{f"{name}-adamw": knobs + _ADAMW for name, knobs in _PRECONDITIONER_KNOBS.items()},
}
# Where an optimizer's default differs from OptimizerConfig's.
_OWN_DEFAULTS = {
  "egdm": {"momentum": EGDM_MOMENTUM},
  "momentum-egd": {"momentum": DEFAULT_MOMENTUM},
  "momentum-egd-first-layer": {"momentum": DEFAULT_MOMENTUM},
}
# Momentum of the others (SGD's: none).
_MOMENTUM_FALLBACK = 0.0

# optax_egd.METHODS but "rsvd" (which needs a rank): the --polar-method
# choices, spelled out so that --help does not import JAX (tests check it).
POLAR_METHODS = ("auto", "svd", "eigh", "newton_schulz", "polar_express", "qdwh",
                 "polar_express_exact")


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


def default(name: str, knob: str) -> object:
  """The value optimizer ``name`` uses for ``knob`` when it is not set.

  >>> default("egd-rsvd", "rank")
  128
  """
  if knob in _OWN_DEFAULTS.get(name, {}):
    return _OWN_DEFAULTS[name][knob]
  if knob == "momentum":
    return _MOMENTUM_FALLBACK
  return getattr(OptimizerConfig(), knob)


def readers(knob: str) -> tuple[str, ...]:
  """The optimizers that read ``knob``, in :data:`NAMES` order.

  >>> readers("muon_lr")
  ('muon',)
  """
  return tuple(name for name in NAMES if knob in KNOBS[name])
