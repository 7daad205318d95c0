"""The polar methods' arguments: names, defaults, and one rule per argument.

:func:`validate` checks every static argument of :func:`optax_egd.polar`
(and so of ``egd`` and ``egdm``, which call it at construction) and
:func:`check_rtol` is the one rule for ``rtol``.

Example:
  >>> from optax_egd.polar_args import validate
  >>> validate("svd", rtol=1e-3)
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

Method = Literal[
    "auto", "svd", "eigh", "rsvd", "newton_schulz", "polar_express", "qdwh",
    "polar_express_exact",
]
METHODS: tuple[str, ...] = get_args(Method)
Precision = Literal["float32", "tf32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# Methods whose result for a vector (one row or column) is exactly x/‖x‖.
EXACT_FOR_VECTORS = ("svd", "eigh", "rsvd", "qdwh", "polar_express_exact")
DEFAULT_NS_STEPS = {"newton_schulz": 5, "polar_express": 8}
DEFAULT_OVERSAMPLE = 10
QR_ASPECT = 2  # "svd" QR-factorizes first when max(m, n) >= QR_ASPECT·min(m, n).
DEFAULT_POWER_ITERS = 2
_RSVD = ("rsvd",)  # The methods that use rank, oversample and power_iters.
_NS = ("newton_schulz", "polar_express")  # The methods that use ns_steps.
# The matmul iterations: the methods that take ``precision``.
MATMUL_METHODS = ("newton_schulz", "polar_express", "polar_express_exact")
# Methods whose schedule is built from rtol, so it must be a Python float.
STATIC_RTOL_METHODS = ("qdwh", "polar_express_exact")
# Methods that take rtol = 0 (no cutoff: the exact UVᵀ, noise directions
# included). The others need rtol > 0: their iteration's schedule is built for
# a lower bound rtol, and "auto" may pick one of them on GPU/TPU.
_ZERO_RTOL = ("svd", "eigh", "rsvd")
# The default rtol of the matmul iterations at a lower precision: below it
# the rounding of the products swamps the directions (condition-1e6 spectra,
# 64² to 512×194: at 1e-3 resolved directions land within 2e-4 of one with
# tf32 and 1.5e-3 with bfloat16; float32 reaches 1e-6 at max(m, n)·eps).
PRECISION_RTOL = {"tf32": 1e-3, "bfloat16": 1e-3}
# What "auto" can resolve to (auto_method).
AUTO_CHOICES = ("svd", "polar_express_exact")


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The dtype decompositions of a ``dtype`` input run in (float32 or wider).

  Raises:
    TypeError: for non-floating dtypes.

  Example:
    >>> import jax.numpy as jnp
    >>> compute_dtype(jnp.bfloat16)
    dtype('float32')
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"polar factors need a floating dtype, got {dtype}")
  return jnp.promote_types(dtype, jnp.float32)


def default_rtol(shape: tuple[int, ...], dtype: jnp.dtype) -> float:
  """``max(m, n)·eps``: the float noise floor of a matrix's singular values.

  Example:
    >>> import jax.numpy as jnp
    >>> round(default_rtol((512, 97), jnp.float32), 8)
    6.104e-05
  """
  eps = float(jnp.finfo(compute_dtype(dtype)).eps)
  return max(shape[-2], shape[-1]) * eps


def check_rtol(method: str, rtol: Any) -> None:
  """The one rule for ``rtol``, shared by :func:`polar`, ``egd`` and ``egdm``.

  ``None`` means the default. Otherwise ``rtol`` is a real number (a Python
  or NumPy float or int) or a scalar floating array, in ``[0, 1)`` for the
  SVD-based methods (``"svd"``, ``"eigh"``, ``"rsvd"``: 0 is the exact UVᵀ
  with no cutoff) and in ``(0, 1)`` for the others that take it
  (``"qdwh"`` and ``"polar_express_exact"`` build their schedules for the
  lower bound ``rtol``; ``"auto"`` may pick ``"polar_express_exact"``).
  ``"qdwh"`` and ``"polar_express_exact"`` need it as a number, not an array.
  ``"newton_schulz"`` and ``"polar_express"`` have no cutoff and take no
  ``rtol``. An array's value is checked where it is concrete; a traced one
  (under ``jax.jit``, e.g. from ``optax.inject_hyperparams``) outside the
  range makes :func:`polar`'s result NaN.

  Raises:
    TypeError / ValueError naming ``rtol``.

  Example:
    >>> check_rtol("svd", 0.0)
    >>> check_rtol("auto", 0.0)
    Traceback (most recent call last):
    ...
    ValueError: rtol must be in (0, 1) for method='auto', got 0.0 (rtol = 0, ...
  """
  if rtol is None:
    return
  if method in _NS:
    raise ValueError(
        f"rtol is not used by method={method!r} (its iteration has no cutoff;"
        " it is used by every other method): leave rtol unset (None)")
  if isinstance(rtol, (jax.Array, np.ndarray, np.generic)) and not isinstance(
      rtol, (np.floating, np.integer)):
    if jnp.shape(rtol) != () or not jnp.issubdtype(rtol.dtype, jnp.floating):
      raise TypeError(
          f"rtol must be a float, a scalar floating array or None, got an array"
          f" of shape {jnp.shape(rtol)} and dtype {rtol.dtype}")
    if method in STATIC_RTOL_METHODS:
      raise TypeError(
          f"method={method!r} needs rtol as a Python float (it sets the"
          f" iteration's schedule), got {rtol!r}; with optax.inject_hyperparams"
          " list rtol in static_args, or use method='svd' for a traced rtol")
    if isinstance(rtol, jax.core.Tracer):
      return  # Checked where it is used: out of range gives NaN.
    value = float(rtol)
  elif isinstance(rtol, (bool, np.bool_)) or not isinstance(rtol, numbers.Real):
    raise TypeError(f"rtol must be a float in [0, 1) or None, got {rtol!r}")
  else:
    value = float(rtol)
  if method in _ZERO_RTOL:
    if not 0 <= value < 1:
      raise ValueError(f"rtol must be in [0, 1), got {value}")
  elif not 0 < value < 1:
    zero = (" (rtol = 0, no cutoff, is for method 'svd', 'eigh' or 'rsvd'"
            " only)" if value == 0 else "")
    raise ValueError(
        f"rtol must be in (0, 1) for method={method!r}, got {value}{zero}")


def validate(
    method: str,
    *,
    rank: int | None = None,
    oversample: int | None = None,
    power_iters: int | None = None,
    ns_steps: int | None = None,
    rtol: float | jax.Array | None = None,
    precision: str | None = None,
) -> None:
  """Checks the static (shape- and algorithm-changing) polar arguments.

  ``rank``, ``oversample`` and ``power_iters`` are for ``"rsvd"`` only,
  ``ns_steps`` for ``"newton_schulz"`` and ``"polar_express"`` only, and
  ``rtol`` for every method but those two (they have no cutoff): giving one
  to a method that does not use it (``None`` means not given) raises rather
  than being ignored. ``"auto"`` resolves to ``"svd"`` or
  ``"polar_express_exact"`` (see :func:`optax_egd.auto_method`), so it takes ``rtol``
  and ``precision``. ``rtol`` follows :func:`check_rtol`.

  Raises:
    ValueError / TypeError naming the offending argument.

  Example:
    >>> validate("rsvd", rank=0)
    Traceback (most recent call last):
    ...
    ValueError: rank must be an int >= 1 or None, got 0
  """
  if not isinstance(method, str) or method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  for name, value, low in (("rank", rank, 1), ("oversample", oversample, 0),
                           ("power_iters", power_iters, 0),
                           ("ns_steps", ns_steps, 1)):
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, int):
      raise TypeError(
          f"{name} must be a Python int or None (it is static: with"
          f" optax.inject_hyperparams, list it in static_args), got {value!r}")
    if value < low:
      raise ValueError(f"{name} must be an int >= {low} or None, got {value}")
  if method == "rsvd" and rank is None:
    raise ValueError("method='rsvd' needs rank, an int >= 1")
  # An argument the method does not use is a mistake, never silently ignored
  # (None means "not given"; a given default value counts as given).
  for name, value, users in (("rank", rank, _RSVD), ("oversample", oversample,
                             _RSVD), ("power_iters", power_iters, _RSVD),
                             ("ns_steps", ns_steps, _NS)):
    if value is not None and method not in users:
      used_by = "method " + " or ".join(map(repr, users))
      picks = (f" (which picks {' or '.join(map(repr, AUTO_CHOICES))})"
               if method == "auto" else "")
      raise ValueError(
          f"{name}={value} is used only by {used_by}; method={method!r}{picks}"
          f" does not use it: leave {name} unset (None)")
  check_rtol(method, rtol)
  if precision is not None:
    if not isinstance(precision, str) or precision not in PRECISIONS:
      raise ValueError(
          f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    if method not in (*MATMUL_METHODS, "auto"):
      raise ValueError(
          f"precision={precision!r} is used only by the matrix-product methods"
          f" {MATMUL_METHODS} and 'auto'; method={method!r} decomposes in float32 or"
          " wider: leave precision unset (None)")
