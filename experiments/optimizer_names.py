"""The optimizers' names and hyperparameters: :mod:`experiments.registry`
under its former name (the same objects).

>>> from experiments import registry
>>> KNOBS is registry.KNOBS and OptimizerConfig is registry.OptimizerConfig
True
"""

from __future__ import annotations

from experiments.registry import (  # noqa: F401 (re-exported)
  BASES,
  COMPOSED,
  DEFAULT_MOMENTUM,
  EGDM_MOMENTUM,
  GROKFAST_DEFAULT,
  KNOBS,
  NAMES,
  POLAR_METHODS,
  PRECONDITIONERS,
  OptimizerConfig,
  default,
  readers,
)
