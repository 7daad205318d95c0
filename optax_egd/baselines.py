"""Baseline gradient preconditioners that EGD is compared against.

Each function returns an :class:`optax.GradientTransformationExtraArgs` with no
learning rate; chain it with an optimizer, e.g.
``optax.chain(column_norm(), optax.sgd(0.1))``.

* :func:`column_norm`: the EGD paper's cheap baseline, every column of a weight
  gradient scaled to unit norm (``col_norm_update`` in
  ``main-results/mod_add.py`` of asahebpa/Egalitarian-Gradient-Descent).
* :func:`grokfast_ema` and :func:`grokfast_ma`: Grokfast (Lee et al., 2024),
  amplifying the slow (low-pass filtered) gradient component
  (``gradfilter_ema`` / ``gradfilter_ma`` in ``grokfast.py`` of ironjr/grokfast).
* :func:`orthograd`: ⊥Grad (Prieto et al., 2025), the gradient projected
  orthogonally to the weights and rescaled to its own norm (``OrthoGrad`` in
  ``orthograd.py`` of
  LucasPrietoAl/grokking-at-the-edge-of-numerical-stability).

Arithmetic runs in float32 or wider (complex64 or wider for complex leaves,
as in :func:`optax.contrib.muon`) and every update keeps its input's dtype;
other dtypes are rejected naming the transform and the leaf. State arrays are
made like the params (same sharding, also on explicit mesh axes), so the state
types after ``init`` are those after every update.
Numeric hyperparameters may be arrays (as :func:`optax.inject_hyperparams`
makes them); they are range-checked when given as Python numbers.

Example:
  >>> import jax.numpy as jnp
  >>> import optax
  >>> from optax_egd.baselines import column_norm
  >>> tx = optax.chain(column_norm(), optax.sgd(1.0))
  >>> params = {"w": jnp.zeros((2, 2))}
  >>> grads = {"w": jnp.array([[3.0, 0.0], [4.0, 2.0]])}
  >>> updates, _ = tx.update(grads, tx.init(params))
  >>> updates["w"]
  Array([[-0.6, -0. ],
         [-0.8, -1. ]], dtype=float32)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def _check_number(
    name: str, value: object, low: float, high: float | None = None
) -> None:
  """Checks ``low <= value <= high`` (or finite) if ``value`` is a number."""
  if isinstance(value, bool) or not (
      isinstance(value, (int, float)) or hasattr(value, "dtype")
  ):
    raise TypeError(f"{name} must be a real number, got {value!r}")
  if not isinstance(value, (int, float)):
    return  # An array, possibly traced: its value cannot be checked here.
  in_range = value <= high if high is not None else math.isfinite(value)
  if not (low <= value and in_range):
    accepted = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
    raise ValueError(f"{name} must be in {accepted}, got {value!r}")


def _work_dtype(dtype: Any) -> jnp.dtype:
  """float32 or wider for real dtypes, complex64 or wider for complex ones."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    return jnp.promote_types(dtype, jnp.complex64)
  return jnp.promote_types(dtype, jnp.float32)


def _check_leaves(name: str, tree: Any) -> None:
  """Raises a TypeError naming ``name`` and the leaf for a non-float leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"{name} needs floating or complex leaves; leaf"
          f" {jax.tree_util.keystr(path)} has dtype {dtype}")


def column_norm(
    rtol: float = 1e-6, *, axis: int = -2
) -> optax.GradientTransformationExtraArgs:
  """Scales every column of each weight-matrix gradient to unit norm.

  For leaves with ``ndim >= 2`` (the last two axes form a matrix, leading axes
  are a batch) each vector along ``axis`` is divided by
  ``max(‖column‖, rtol·max_column_norm)``, the maximum taken within its matrix.
  Leaves with ``ndim < 2`` pass through unchanged.

  The official code (``col_norm_update`` in ``main-results/mod_add.py``) is
  JAX with Flax-style ``(in_features, out_features)`` kernels and divides by
  ``max(jnp.linalg.norm(gW1, axis=0), 0.01)``: the norm is taken over the input
  axis, one scale per output unit (a row of a PyTorch ``(out, in)`` weight).
  ``axis=-2`` does the same for Flax kernels; use ``axis=-1`` for PyTorch
  layouts. Unlike the official code, which only normalizes the first layer,
  every matrix is normalized (restrict it with :func:`optax.masked`), and the
  floor is relative, so the transform is invariant to the gradient's scale.

  Args:
    rtol: floor on column norms relative to the largest column norm of the
      same matrix, in ``[0, 1]``; columns below it are shrunk, not blown up.
    axis: ``-2`` (normalize columns) or ``-1`` (normalize rows).

  Returns:
    A stateless :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_egd.baselines import column_norm
    >>> tx = column_norm()
    >>> g = {"w": jnp.array([[3.0, 0.0], [4.0, 2.0]]), "b": jnp.ones(2)}
    >>> updates, _ = tx.update(g, tx.init(g))
    >>> updates["w"]
    Array([[0.6, 0. ],
           [0.8, 1. ]], dtype=float32)
    >>> updates["b"]
    Array([1., 1.], dtype=float32)
  """
  _check_number("rtol", rtol, 0, 1)
  if isinstance(axis, bool) or not isinstance(axis, int):
    raise TypeError(
        "axis must be a Python int, -2 or -1 (with optax.inject_hyperparams,"
        f" list it in static_args), got {axis!r}")
  if axis not in (-2, -1):
    raise ValueError(f"axis must be -2 (columns) or -1 (rows), got {axis}")

  def normalize(g: jax.Array) -> jax.Array:
    if g.ndim < 2:
      return g
    x = g.astype(_work_dtype(g.dtype))
    norms = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x)), axis=axis, keepdims=True))
    largest = jnp.max(norms, axis=-3 - axis, keepdims=True, initial=0.0)
    floor = jnp.maximum(rtol * largest, jnp.finfo(norms.dtype).tiny)
    return (x / jnp.maximum(norms, floor)).astype(g.dtype)

  def init_fn(params: optax.Params) -> optax.EmptyState:
    _check_leaves("column_norm", params)
    return optax.EmptyState()

  def update_fn(
      updates: optax.Updates,
      state: optax.EmptyState,
      params: optax.Params | None = None,
      **extra_args: object,
  ) -> tuple[optax.Updates, optax.EmptyState]:
    del params, extra_args
    _check_leaves("column_norm", updates)
    return jax.tree.map(normalize, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class GrokfastEmaState(NamedTuple):
  """State of :func:`grokfast_ema`."""

  count: jax.Array  # type: ignore[assignment]  # int32 number of updates.
  ema: optax.Updates  # Moving average of the gradients, float32 or wider.


def grokfast_ema(
    alpha: float = 0.98, lamb: float = 2.0
) -> optax.GradientTransformationExtraArgs:
  """Grokfast-EMA: adds ``lamb`` times an exponential moving average.

  ``ema ← alpha·ema + (1 - alpha)·g`` and the update is ``g + lamb·ema``, on
  every leaf. As in the official ``gradfilter_ema`` the average is seeded with
  the first gradient (not zero), so the first update is ``(1 + lamb)·g``.

  Args:
    alpha: decay of the moving average, in ``[0, 1]``.
    lamb: amplification of the slow component, ``>= 0``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with
    :class:`GrokfastEmaState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_egd.baselines import grokfast_ema
    >>> tx = grokfast_ema(alpha=0.5, lamb=1.0)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([2.0, 0.0]), state)  # ema = g
    >>> u
    Array([4., 0.], dtype=float32)
    >>> u, state = tx.update(jnp.array([0.0, 2.0]), state)  # ema = [1, 1]
    >>> u
    Array([1., 3.], dtype=float32)
  """
  _check_number("alpha", alpha, 0, 1)
  _check_number("lamb", lamb, 0)

  def init_fn(params: optax.Params) -> GrokfastEmaState:
    _check_leaves("grokfast_ema", params)
    ema = jax.tree.map(  # zeros_like keeps the params' sharding.
        lambda p: jnp.zeros_like(p, _work_dtype(p.dtype)), params)
    return GrokfastEmaState(count=jnp.zeros([], jnp.int32), ema=ema)

  def update_fn(
      updates: optax.Updates,
      state: GrokfastEmaState,
      params: optax.Params | None = None,
      **extra_args: object,
  ) -> tuple[optax.Updates, GrokfastEmaState]:
    del params, extra_args
    _check_leaves("grokfast_ema", updates)
    decay = jnp.where(state.count == 0, 0.0, alpha)  # Seed with the first g.
    ema = jax.tree.map(
        lambda g, m: decay * m + (1 - decay) * g.astype(m.dtype),
        updates, state.ema)
    updates = jax.tree.map(
        lambda g, m: (g + lamb * m).astype(g.dtype), updates, ema)
    return updates, GrokfastEmaState(optax.safe_increment(state.count), ema)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class GrokfastMaState(NamedTuple):
  """State of :func:`grokfast_ma`."""

  count: jax.Array  # type: ignore[assignment]  # int32 number of updates.
  buffer: optax.Updates  # Per leaf the last `window` gradients, (window, ...).
  # Per leaf, in float32 or wider, the sum of the buffer without the slot the
  # next update overwrites (the window - 1 newest gradients).
  kept_sum: optax.Updates


def grokfast_ma(
    window: int = 100, lamb: float = 5.0, *, warmup: bool = True
) -> optax.GradientTransformationExtraArgs:
  """Grokfast-MA: adds ``lamb`` times the mean of the last ``window`` grads.

  Matches the official ``gradfilter_ma`` (``filter_type="mean"``): each
  gradient is appended to a ring buffer of the last ``window`` gradients and
  the update is ``g + lamb·mean(buffer)``, the mean including ``g``. With
  ``warmup=True`` gradients pass unchanged until the buffer is full (the first
  ``window - 1`` steps); with ``warmup=False`` the mean is over the gradients
  seen so far. The buffer is stored in the params' dtype (``window`` copies of
  the params); the sum is kept running in float32 or wider, so a step reads
  and writes one slot whatever the window (summing the whole buffer every
  step made Grokfast-MA 3-10x slower than the EMA), and is recomputed from
  the buffer once every ``window`` steps so that rounding cannot drift.

  Args:
    window: number of gradients averaged, a Python int ``>= 1`` (with
      :func:`optax.inject_hyperparams`, list it in ``static_args``).
    lamb: amplification of the slow component, ``>= 0``.
    warmup: whether to leave gradients unchanged until the buffer is full.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with
    :class:`GrokfastMaState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_egd.baselines import grokfast_ma
    >>> tx = grokfast_ma(window=2, lamb=1.0)
    >>> state = tx.init(jnp.zeros(1))
    >>> u, state = tx.update(jnp.array([1.0]), state)  # Warming up.
    >>> u
    Array([1.], dtype=float32)
    >>> u, state = tx.update(jnp.array([3.0]), state)  # 3 + (1 + 3) / 2
    >>> u
    Array([5.], dtype=float32)
  """
  if isinstance(window, bool) or not isinstance(window, int):
    raise TypeError(
        "window must be a Python int (with optax.inject_hyperparams, list it"
        f" in static_args), got {window!r}")
  if window < 1:
    raise ValueError(f"window must be an int >= 1, got {window}")
  _check_number("lamb", lamb, 0)
  if not isinstance(warmup, bool):
    raise TypeError(f"warmup must be a bool, got {warmup!r}")

  def init_fn(params: optax.Params) -> GrokfastMaState:
    _check_leaves("grokfast_ma", params)
    buffer = jax.tree.map(  # Each slot sharded like its leaf.
        lambda p: jnp.broadcast_to(jnp.zeros_like(p)[None],
                                   (window, *p.shape)), params)
    kept_sum = jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=_work_dtype(p.dtype)), params)
    return GrokfastMaState(count=jnp.zeros([], jnp.int32), buffer=buffer,
                           kept_sum=kept_sum)

  def update_fn(
      updates: optax.Updates,
      state: GrokfastMaState,
      params: optax.Params | None = None,
      **extra_args: object,
  ) -> tuple[optax.Updates, GrokfastMaState]:
    del params, extra_args
    _check_leaves("grokfast_ma", updates)
    slot = state.count % window
    count = optax.safe_increment(state.count)
    stored = jax.tree.map(lambda g, b: g.astype(b.dtype), updates, state.buffer)
    buffer = jax.tree.map(
        lambda g, b: b.at[slot].set(g), stored, state.buffer)

    def running(_: None) -> optax.Updates:
      return jax.tree.map(lambda k, g: k + g.astype(k.dtype), state.kept_sum,
                          stored)

    def exact(_: None) -> optax.Updates:
      return jax.tree.map(lambda k, b: jnp.sum(b.astype(k.dtype), axis=0),
                          state.kept_sum, buffer)

    # The buffer's sum; the last slot of each cycle recomputes it exactly.
    total = jax.lax.cond(slot == window - 1, exact, running, None)
    # What the next update keeps: read after this write, the slot it evicts.
    # (Reading the evicted slot before the write instead makes XLA copy the
    # whole buffer every step.)
    evict = (slot + 1) % window
    kept_sum = jax.tree.map(
        lambda t, b: t - b[evict].astype(t.dtype), total, buffer)

    def amplify(g: jax.Array, t: jax.Array) -> jax.Array:
      out = g + lamb * t / jnp.minimum(count, window)
      if warmup:
        out = jnp.where(count >= window, out, g)
      return out.astype(g.dtype)

    updates = jax.tree.map(amplify, updates, total)
    return updates, GrokfastMaState(count, buffer, kept_sum)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def orthograd(rtol: float = 1e-4) -> optax.GradientTransformationExtraArgs:
  """⊥Grad: removes the gradient's component along the weights.

  Per leaf, flattened: ``g⊥ = g - (⟨w, g⟩ / ⟨w, w⟩)·w``, rescaled to the
  norm of ``g``: ``g⊥·‖g‖ / max(‖g⊥‖, rtol·‖g‖)``. The official ``OrthoGrad``
  does this per tensor (every tensor, biases included) with absolute ``1e-30``
  guards on both denominators; ``rtol=0`` reproduces it. The relative floor
  keeps a ``g⊥`` that is only rounding noise (``g`` parallel to ``w``, e.g.
  every single-element leaf, where ``g⊥`` is mathematically zero) from being
  blown up to the norm of ``g``: in float32 that noise is about
  ``1e-7·‖g‖`` and comes out at most ``1e-7 / rtol·‖g‖``. A zero ``w`` leaves
  ``g`` unchanged and a zero ``g`` gives a zero update.

  Args:
    rtol: floor on ``‖g⊥‖`` relative to ``‖g‖``, in ``[0, 1]``.

  Returns:
    A stateless :class:`optax.GradientTransformationExtraArgs` whose update
    needs ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_egd.baselines import orthograd
    >>> tx = orthograd()
    >>> w = jnp.array([1.0, 0.0])
    >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(w), w)
    >>> u
    Array([0., 5.], dtype=float32)
  """
  _check_number("rtol", rtol, 0, 1)

  def project(g: jax.Array, w: jax.Array) -> jax.Array:
    dtype = _work_dtype(jnp.result_type(g, w))
    x, w = g.astype(dtype), w.astype(dtype)
    sq_norm = lambda v: jnp.sum(jnp.square(jnp.abs(v)))
    w_sq = sq_norm(w)
    tiny = jnp.finfo(w_sq.dtype).tiny
    # <w, x> / <w, w> with the complex inner product <a, b> = sum(conj(a) b).
    perp = x - jnp.sum(jnp.conj(w) * x) / jnp.maximum(w_sq, tiny) * w
    g_norm = jnp.sqrt(sq_norm(x))
    perp_norm = jnp.sqrt(sq_norm(perp))
    floor = jnp.maximum(rtol * g_norm, tiny)
    return (perp * (g_norm / jnp.maximum(perp_norm, floor))).astype(g.dtype)

  def init_fn(params: optax.Params) -> optax.EmptyState:
    _check_leaves("orthograd", params)
    return optax.EmptyState()

  def update_fn(
      updates: optax.Updates,
      state: optax.EmptyState,
      params: optax.Params | None = None,
      **extra_args: object,
  ) -> tuple[optax.Updates, optax.EmptyState]:
    del extra_args
    if params is None:
      raise ValueError(
          "orthograd needs params: call update(updates, state, params)")
    _check_leaves("orthograd", updates)
    _check_leaves("orthograd", params)
    return jax.tree.map(project, updates, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
