"""Singular-value diagnostics of gradient (or weight) matrices.

EGD equalizes the singular values of each gradient matrix; :func:`spectrum`
measures how unequal they are: the singular values themselves, the condition
number, the numerical rank and the effective rank of Roy & Vetterli (2007).

Example:
  >>> import jax
  >>> import jax.numpy as jnp
  >>> from optax_egd.spectrum import spectrum
  >>> grads = {"w": jnp.eye(3), "b": jnp.ones(3)}
  >>> info = jax.jit(spectrum)(grads)
  >>> info["b"] is None
  True
  >>> int(info["w"].rank), float(info["w"].condition_number)
  (3, 1.0)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from optax_egd.polar import compute_dtype, default_rtol


class SpectrumInfo(NamedTuple):
  """Spectral summary of a matrix, or of a batch of them (leading axes).

  Attributes:
    singular_values: descending, shape ``(..., min(m, n))``, float32 or wider.
    condition_number: ``σ_max / σ_min`` over the singular values above the
      cutoff, shape ``(...)``; ``inf`` for a zero matrix (as
      ``numpy.linalg.cond``).
    effective_rank: ``exp(H(σ / Σσ))`` with ``H`` the Shannon entropy, shape
      ``(...)``; between 1 and ``min(m, n)``, and 0 for a zero matrix.
    rank: number of singular values above the cutoff, int32, shape ``(...)``.
  """

  singular_values: jax.Array
  condition_number: jax.Array
  effective_rank: jax.Array
  rank: jax.Array


def _matrix_spectrum(x: jax.Array, rtol: float | jax.Array | None) -> SpectrumInfo:
  dtype = compute_dtype(x.dtype)
  if rtol is None:
    rtol = default_rtol(x.shape, dtype)
  s = jnp.linalg.svd(x.astype(dtype), compute_uv=False)
  s_max = jnp.max(s, axis=-1, initial=0.0)
  above = s > rtol * s_max[..., None]
  rank = jnp.sum(above, axis=-1, dtype=jnp.int32)
  s_min = jnp.min(jnp.where(above, s, jnp.inf), axis=-1, initial=jnp.inf)
  # `== 0` rather than `> 0` tests, so that NaN singular values stay NaN.
  condition_number = jnp.where(s_max == 0, jnp.inf, s_max / s_min)
  total = jnp.sum(s, axis=-1, keepdims=True)
  p = s / jnp.where(total == 0, 1, total)
  entropy = -jnp.sum(xlogy(p, p), axis=-1)
  effective_rank = jnp.where(total[..., 0] == 0, 0.0, jnp.exp(entropy))
  return SpectrumInfo(s, condition_number, effective_rank, rank)


def spectrum(grads: object, *, rtol: float | jax.Array | None = None) -> object:
  """Singular-value diagnostics of every matrix leaf of a pytree.

  The last two axes of each leaf with ``ndim >= 2`` form a matrix (leading
  axes are a batch); the SVD runs in float32 or wider. Leaves with
  ``ndim < 2`` map to ``None``. Jit-compatible.

  Args:
    grads: a pytree of arrays (gradients, updates or weights).
    rtol: singular values ``<= rtol·σ_max`` are numerically zero; they are
      left out of ``rank`` and ``condition_number``. Defaults to
      ``max(m, n)·eps`` of the compute dtype, as ``numpy.linalg.matrix_rank``.
      May be an array.

  Returns:
    A pytree of ``grads``' structure with a :class:`SpectrumInfo` (or ``None``)
    in place of each leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_egd.spectrum import spectrum
    >>> info = spectrum(jnp.diag(jnp.array([4.0, 2.0, 0.0])))
    >>> info.singular_values
    Array([4., 2., 0.], dtype=float32)
    >>> int(info.rank), float(info.condition_number)
    (2, 2.0)
    >>> round(float(info.effective_rank), 3)  # exp(H(2/3, 1/3))
    1.89
  """
  if isinstance(rtol, bool):
    raise TypeError(f"rtol must be a real number or None, got {rtol!r}")
  if isinstance(rtol, (int, float)) and not (math.isfinite(rtol) and rtol >= 0):
    raise ValueError(f"rtol must be in [0, inf) or None, got {rtol!r}")

  def leaf(x: jax.Array) -> SpectrumInfo | None:
    x = jnp.asarray(x)
    return _matrix_spectrum(x, rtol) if x.ndim >= 2 else None

  return jax.tree.map(leaf, grads)
