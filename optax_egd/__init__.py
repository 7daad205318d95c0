"""optax-egd: Egalitarian Gradient Descent and grokking baselines for optax.

Example:
  >>> import optax, optax_egd
  >>> tx = optax.chain(optax_egd.egd(), optax.sgd(0.7))
"""

from optax_egd.baselines import column_norm
from optax_egd.baselines import grokfast_ema
from optax_egd.baselines import grokfast_ma
from optax_egd.baselines import GrokfastEmaState
from optax_egd.baselines import GrokfastMaState
from optax_egd.baselines import orthograd
from optax_egd.polar import auto_method
from optax_egd.polar import METHODS
from optax_egd.polar import polar
from optax_egd.spectrum import spectrum
from optax_egd.spectrum import SpectrumInfo
from optax_egd.transform import DimensionNumbers
from optax_egd.transform import egd
from optax_egd.transform import EGDState

__version__ = "0.1.0"

__all__ = [
    "DimensionNumbers",
    "EGDState",
    "GrokfastEmaState",
    "GrokfastMaState",
    "METHODS",
    "SpectrumInfo",
    "auto_method",
    "column_norm",
    "egd",
    "grokfast_ema",
    "grokfast_ma",
    "orthograd",
    "polar",
    "spectrum",
]
