"""``egdm()``: EGD on a momentum buffer for the matrices, AdamW for the rest.

The transformer recipe of optax-egd, built like ``optax.contrib.muon``: every
weight matrix takes Nesterov momentum, then its polar factor (EGD, exact by
default, where Muon runs five Newton–Schulz steps), Muon's shape scaling
``sqrt(max(1, fan_out/fan_in))``, decoupled weight decay and the learning
rate; every other leaf (biases, norms, and by default nothing else: 2-D
embeddings count as matrices, as in Muon) takes AdamW.

Example:
  >>> import jax, jax.numpy as jnp, optax, optax_egd
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> tx = optax_egd.egdm(0.05, weight_decay=0.1)
  >>> state = tx.init(params)
  >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 0.5], [0.0, 0.0]]),
  ...          "b": jnp.ones(2)}
  >>> updates, state = jax.jit(tx.update)(grads, state, params)
  >>> updates["w"]  # -lr · (UVᵀ + weight_decay · w): unit singular values
  Array([[-0.055, -0.005],
         [-0.005, -0.055],
         [-0.005, -0.005]], dtype=float32)
  >>> updates["b"]  # AdamW's first step: -lr · sign(g)
  Array([-0.05, -0.05], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from optax_egd import distributed
from optax_egd.dimension_numbers import (
  NOT_A_MATRIX,
  DimensionNumbers,
  check_spec,
  leaf_dims,
  warn_about_default_axes,
)
from optax_egd.polar import Method
from optax_egd.transform import Scale, egd

MATRIX = "egd"
OTHER = "adam"


def _labels(dimension_numbers: Any) -> Callable[[Any], Any]:
  """Params -> a tree of ``"egd"`` / ``"adam"`` labels.

  Default: 2-D leaves are matrices. Otherwise a leaf is a matrix when
  ``dimension_numbers`` gives it a DimensionNumbers and it has two or more
  axes, or the DimensionNumbers was given for that leaf alone (then ``egd``'s
  ``init`` checks that it fits).
  """

  def labels(params: Any) -> Any:
    leaves, treedef = jax.tree.flatten(
        params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    if dimension_numbers is None:
      names = [MATRIX if getattr(x, "ndim", 0) == 2 else OTHER for x in leaves]
    else:
      names = [MATRIX if d is not None and d is not NOT_A_MATRIX and (
                   getattr(x, "ndim", 0) >= 2 or own) else OTHER for x, (d, own) in zip(
                   leaves, leaf_dims(dimension_numbers, params), strict=True)]
    return jax.tree.unflatten(treedef, names)

  return labels


def _check_fraction(name: str, value: Any) -> None:
  if isinstance(value, (int, float)) and not isinstance(value, bool) and not (
      0 <= value < 1):
    raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_nonnegative(name: str, value: Any) -> None:
  if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}")


def egdm(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | jax.Array = 0.95,
    nesterov: bool = True,
    weight_decay: float | jax.Array = 0.0,
    weight_decay_mask: Any = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float | jax.Array = 0.9,
    adam_b2: float | jax.Array = 0.999,
    adam_eps: float | jax.Array = 1e-8,
    adam_weight_decay: float | jax.Array = 0.0,
    dimension_numbers: Any = None,
    method: Method | str = "auto",
    scale: Scale | str = "muon",
    rank: int | None = None,
    oversample: int | None = None,
    power_iters: int | None = None,
    ns_steps: int | None = None,
    rtol: float | jax.Array | None = None,
    precision: str | None = None,
    key: int | jax.Array = 0,
    enabled: bool | jax.Array = True,
    distribute: distributed.DistributeSpec = None,
) -> optax.GradientTransformationExtraArgs:
  """EGD on a Nesterov momentum buffer for matrices, AdamW for the rest.

  On the matrices (the ``"egd"`` partition)::

    chain(trace(momentum, nesterov), egd(scale="muon", ...),
          add_decayed_weights(weight_decay, weight_decay_mask),
          scale_by_learning_rate(learning_rate))

  and ``adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps,
  weight_decay=adam_weight_decay)`` on every other leaf (the ``"adam"``
  partition), combined with ``optax.partition`` as ``optax.contrib.muon``
  does. Each matrix update is ``-lr·(s·UVᵀ + weight_decay·W)``, where UVᵀ is
  the polar factor of the momentum buffer and ``s`` the shape scale.

  Args:
    learning_rate: learning rate (or schedule) of the matrices; also of the
      other leaves unless ``adam_learning_rate`` is given. May be traced
      (``optax.inject_hyperparams``).
    momentum: decay of the momentum buffer ``m ← g + momentum·m``, in [0, 1);
      0 gives EGD of the raw gradient. May be traced.
    nesterov: use ``g + momentum·m`` (Nesterov) rather than ``m``; static.
    weight_decay: decoupled weight decay of the matrices, multiplied by the
      learning rate (as in ``optax.adamw`` and ``optax.contrib.muon``). May be
      traced.
    weight_decay_mask: mask (or callable) of the matrices to decay, as for
      ``optax.add_decayed_weights``; None decays them all.
    adam_learning_rate: learning rate (or schedule) of the other leaves;
      None: ``learning_rate``.
    adam_b1, adam_b2, adam_eps: AdamW's moment decays and epsilon.
    adam_weight_decay: AdamW's decoupled weight decay on the other leaves.
    dimension_numbers: which leaves are matrices and how. None (default):
      every 2-D leaf is a ``(fan_in, fan_out)`` matrix and every other leaf
      takes AdamW, as in ``optax.contrib.muon``; leaves with three or more
      axes (scanned layers, conv and attention kernels) are ambiguous, so
      ``init`` warns, naming them, that they take AdamW. Otherwise what
      :func:`optax_egd.egd` takes: a :class:`optax_egd.DimensionNumbers`
      (for every leaf with two or more axes), a tree of them matched by key
      names (an entry for a subtree stands for its leaves with two or more
      axes; None: AdamW), or a callable from params to such a tree. Extra
      axes are a batch of matrices.
    method: passed to :func:`optax_egd.egd`, as are ``scale`` (``"muon"``
      by default here), ``rank``, ``oversample``, ``power_iters``,
      ``ns_steps``, ``rtol``, ``precision``, ``key``, ``enabled`` and
      ``distribute``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is
    ``optax.PartitionState`` with inner states ``"egd"`` and ``"adam"``
    (``optax.tree.set(state, enabled=False)`` turns EGD off).

  Warns:
    UserWarning: at ``init`` with the default ``dimension_numbers``, at the
    caller's line, naming the leaves with three or more axes (they take
    AdamW) and 2-D leaves named ``bias`` or ``scale`` (stacked vectors of a
    scanned model, which take EGD), as ``egd`` does; its suggested fixes run
    when pasted. :func:`optax_egd.flax_dimension_numbers` labels a Flax NNX
    model's leaves from its layers.

  Raises:
    ValueError: at construction, for an argument out of its range (named).
    TypeError: at construction, for an argument of the wrong type (named).

  Example:
    >>> import jax.numpy as jnp, optax, optax_egd
    >>> tx = optax.inject_hyperparams(optax_egd.egdm)(learning_rate=0.05)
    >>> state = tx.init({"w": jnp.ones((4, 3)), "b": jnp.zeros(3)})
    >>> float(state.hyperparams["learning_rate"])
    0.05
  """
  _check_fraction("momentum", momentum)
  _check_nonnegative("weight_decay", weight_decay)
  _check_nonnegative("adam_weight_decay", adam_weight_decay)
  for name, value in (("learning_rate", learning_rate),
                      ("adam_learning_rate", adam_learning_rate)):
    if value is not None and not callable(value):
      _check_nonnegative(name, value)
  if not isinstance(nesterov, bool):
    raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
  check_spec(dimension_numbers)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  labels = _labels(dimension_numbers)

  matrices = optax.chain(
      optax.trace(momentum, nesterov=nesterov),
      # By default egd sees only the 2-D leaves (the others are masked out):
      # the last two axes, said explicitly, so that only egdm warns.
      egd(method, rank=rank, oversample=oversample, power_iters=power_iters,
          ns_steps=ns_steps, rtol=rtol, precision=precision, scale=scale,
          key=key, enabled=enabled, distribute=distribute,
          dimension_numbers=(DimensionNumbers(-2, -1) if dimension_numbers
                             is None else dimension_numbers)),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  others = optax.adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps,
                       weight_decay=adam_weight_decay)
  tx = optax.partition({MATRIX: matrices, OTHER: others}, labels)
  if dimension_numbers is not None:
    return tx

  def init_fn(params: optax.Params) -> Any:
    warn_about_default_axes(params, "egdm")
    return tx.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)
