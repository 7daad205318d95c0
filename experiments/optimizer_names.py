"""The optimizers' names and hyperparameters, without JAX.

What the command lines need to parse their options (and print ``--help``)
before anything imports JAX; :mod:`experiments.optimizers` builds the
optimizers and re-exports these names.
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


# optax_egd.METHODS but "rsvd" (which needs a rank): the --polar-method
# choices, spelled out so that --help does not import JAX (tests check it).
POLAR_METHODS = ("auto", "svd", "eigh", "newton_schulz", "polar_express", "qdwh",
                 "polar_express_exact")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hyperparameters of every optimizer; each uses the fields it needs."""

  lr: float = 0.7
  momentum: float = 0.0
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
