"""optax-egd: Egalitarian Gradient Descent and grokking baselines for optax.

Example:
  >>> import optax, optax_egd
  >>> tx = optax.chain(optax_egd.egd(), optax.sgd(0.7))
"""

from optax_egd.baselines import (
    GrokfastEmaState,
    GrokfastMaState,
    column_norm,
    grokfast_ema,
    grokfast_ma,
    orthograd,
)
from optax_egd.dimension_numbers import NOT_A_MATRIX, DimensionNumbers
from optax_egd.distributed import Distribute
from optax_egd.flax_dimensions import flax_dimension_numbers
from optax_egd.polar import METHODS, PRECISIONS, auto_method, polar
from optax_egd.recipe import egdm
from optax_egd.spectrum import SpectrumInfo, spectrum
from optax_egd.transform import EGDState, egd

__version__ = "0.1.0"

__all__ = [
    "DimensionNumbers",
    "Distribute",
    "EGDState",
    "GrokfastEmaState",
    "GrokfastMaState",
    "METHODS",
    "NOT_A_MATRIX",
    "PRECISIONS",
    "SpectrumInfo",
    "auto_method",
    "column_norm",
    "egd",
    "egdm",
    "flax_dimension_numbers",
    "grokfast_ema",
    "grokfast_ma",
    "orthograd",
    "polar",
    "spectrum",
]
