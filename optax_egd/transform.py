"""``egd()``: Egalitarian Gradient Descent as an optax gradient transformation.

EGD (ICLR 2026) replaces the gradient G of every weight matrix by its polar
factor (GGᵀ)^{-1/2}G = UVᵀ: the singular directions are kept and every
singular value becomes one, so slow directions are no longer starved and the
grokking plateau shrinks. ``egd()`` is a preconditioner only; chain it in front
of the optimizer that owns the learning rate.

Example:
  >>> import jax, jax.numpy as jnp, optax, optax_egd
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> tx = optax.chain(optax_egd.egd(method="svd"), optax.sgd(0.1))
  >>> state = tx.init(params)
  >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 0.5], [0.0, 0.0]]),
  ...          "b": jnp.ones(2)}
  >>> updates, state = jax.jit(tx.update)(grads, state)
  >>> updates["w"]  # unit singular values, times -lr
  Array([[-0.1, -0. ],
         [-0. , -0.1],
         [-0. , -0. ]], dtype=float32)
  >>> state = optax.tree.set(state, enabled=False)  # EGD off: plain SGD
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, get_args

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_egd import distributed
from optax_egd.dimension_numbers import (
    NOT_A_MATRIX,
    DimensionNumbersSpec,
    Matrixify,
    check_dims_fit,
    check_spec,
    leaf_dims,
    warn_about_default_axes,
)
from optax_egd.polar import Method, compute_dtype, polar, validate

Scale = Literal["none", "muon", "rms"]
SCALES: tuple[str, ...] = get_args(Scale)
RMS_TARGET = 0.2  # AdamW's typical update RMS (Liu et al., 2025).



class EGDState(NamedTuple):
  """State of :func:`egd`.

  Attributes:
    count: number of updates applied so far (int32).
    key: raw ``jax.random`` key data (uint32), split every step; used by
      ``method="rsvd"``. Raw data rather than a typed key so the state
      checkpoints and tree-maps like any other array.
    enabled: bool scalar; ``False`` makes the transform the identity and skips
      every decomposition. Flip it with ``optax.tree.set(state, enabled=False)``.
  """

  count: chex.Array
  key: chex.Array
  enabled: chex.Array


def _key_data(key: Any) -> jax.Array:
  """Raw uint32 key data from an int seed, a typed key, or raw key data."""
  if isinstance(key, bool):
    raise TypeError(f"key must be an int seed or a jax.random key, got {key!r}")
  if isinstance(key, (int, np.integer)):
    return jax.random.key_data(jax.random.key(key))
  if isinstance(key, (jax.Array, np.ndarray)):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      if key.shape != ():
        raise ValueError(f"key must be a single key, got shape {key.shape}")
      default_impl = jax.random.key_impl(jax.random.key(0))
      if str(jax.random.key_impl(key)) != str(default_impl):
        # The state keeps raw key data and rewraps it with the default impl.
        raise ValueError(
            f"key must use the default PRNG implementation ({default_impl}),"
            f" got a {jax.random.key_impl(key)} key")
      return jax.random.key_data(key)
    if key.dtype == jnp.uint32 and key.shape == (2,):
      return jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jnp.integer) and key.shape == ():
      return jax.random.key_data(jax.random.key(key))
  raise TypeError(
      "key must be an int seed, a jax.random.key, or raw uint32[2] key data,"
      f" got {key!r}")


def _check_enabled(enabled: Any) -> None:
  if isinstance(enabled, bool):
    return
  if isinstance(enabled, (jax.Array, np.ndarray)) and enabled.shape == () and (
      enabled.dtype == jnp.bool_):
    return
  raise TypeError(f"enabled must be a bool, got {enabled!r}")


def _shape_scale(scale: str, m: int, n: int) -> float:
  """Per-matrix factor for a (fan_in=m, fan_out=n) update with unit σ's."""
  if scale == "muon":
    return math.sqrt(max(1.0, n / m))
  if scale == "rms":
    return RMS_TARGET * math.sqrt(max(m, n))
  return 1.0


def egd(
    method: Method | str = "auto",
    *,
    rank: int | None = None,
    oversample: int | None = None,
    power_iters: int | None = None,
    ns_steps: int | None = None,
    rtol: float | jax.Array | None = None,
    precision: str | None = None,
    scale: Scale | str = "none",
    key: int | jax.Array = 0,
    dimension_numbers: DimensionNumbersSpec = None,
    enabled: bool | jax.Array = True,
    distribute: distributed.DistributeSpec = None,
) -> optax.GradientTransformationExtraArgs:
  """Egalitarian Gradient Descent: replace each matrix gradient by UVᵀ.

  Every leaf with two or more dimensions is replaced by its polar factor (see
  :func:`optax_egd.polar`); leaves with fewer dimensions pass through
  untouched. Leaves of the same matrix shape are stacked: one batched
  decomposition on GPU/TPU, one matrix after another in a compiled loop on CPU
  (see :func:`optax_egd.polar`).

  Args:
    method: polar algorithm, one of ``optax_egd.METHODS``; static.
    rank: sketch rank for ``method="rsvd"`` (required there); static.
    oversample: extra sketch columns for ``"rsvd"`` (default 10); static.
    power_iters: subspace iterations for ``"rsvd"`` (default 2); static.
    ns_steps: iterations of ``"newton_schulz"`` (default 5) and
      ``"polar_express"`` (default 8); static.
    rtol: relative cutoff for small singular values, σ ↦ σ/max(σ, rtol·σ_max).
      ``None`` means ``max(m, n)·eps`` per matrix (the float noise floor: small
      directions are what EGD is for, so keep the cutoff low). May be traced
      (not with ``"qdwh"`` and ``"polar_express_exact"``). In ``[0, 1)``
      for ``"svd"``, ``"eigh"``, ``"rsvd"`` and in ``(0, 1)`` for the others
      (:func:`optax_egd.polar.check_rtol`, the rule ``polar`` and ``egdm``
      share). Not for ``"newton_schulz"``/``"polar_express"`` (no cutoff).
      For ``rank``, ``oversample``, ``power_iters``, ``ns_steps``,
      ``rtol`` and ``precision``, ``None`` means "not given"; giving one to a
      method that does not use it raises (``"auto"`` picks ``"svd"`` on CPU
      and ``"polar_express_exact"`` on GPU/TPU, so it takes ``rtol`` and
      ``precision``). With ``optax.inject_hyperparams`` the error comes at
      ``init``, where the inner transform is built.
    precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"`` matrix
      products for the matrix-product methods (``"polar_express_exact"``,
      ``"polar_express"``, ``"newton_schulz"``, and ``"auto"`` on GPU/TPU);
      see :func:`optax_egd.polar`; static.
    scale: ``"none"`` (the paper: unit singular values), ``"muon"``
      (× sqrt(max(1, fan_out/fan_in)), Muon's width scaling) or ``"rms"``
      (× 0.2·sqrt(max(fan_in, fan_out)), so the update RMS is about 0.2 like
      AdamW's, and one learning rate fits layers of different shapes).
    key: an int seed, a ``jax.random.key``, or raw key data; the state holds it
      and splits it every step. May be traced (``inject_hyperparams``).
    dimension_numbers: which axes of a leaf form the matrix, as a
      :class:`DimensionNumbers`, a tree of them (``None`` leaves take the
      default), or a callable from params to such a tree. Default: the last
      two axes form the matrix and leading axes are a batch (stacked or
      scanned layers). A tree is matched by key names, so a dict fits a Flax
      NNX ``State`` as well as linen's params; an entry for a subtree (a
      prefix, as with ``optax.contrib.muon``) stands for every leaf below it
      with two or more dimensions, so ``{"conv": conv, "dense": None}`` gives
      ``conv`` to the conv layer's kernel and passes its bias through. For a
      conv kernel (h, w, in, out) use
      ``DimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)``; a single
      DimensionNumbers applies to every leaf with two or more dimensions, so
      for a model that also has dense layers give a tree or a callable by
      ``ndim``. :data:`optax_egd.NOT_A_MATRIX` passes a leaf through (a
      scanned model's stacked biases). For a Flax NNX model,
      :func:`optax_egd.flax_dimension_numbers` builds the tree from its
      layers. With the default, ``init`` warns (at the caller's line) naming
      leaves with three or more axes and 2-D leaves named ``bias`` or
      ``scale``, where the default may be wrong. Negative axes count from
      the end (-1 is the last); axes must
      be distinct and in range for the leaf. ``init`` checks them against the
      params and raises naming the leaf, its shape and the axis, and for a
      leaf with no entry or an entry that names no leaf.
    enabled: initial value of ``state.enabled``.
    distribute: layer-parallel decompositions: an
      :class:`optax_egd.Distribute` (a mesh, axis names, a mode) or a
      ``jax.sharding.Mesh`` (all its axes). Every matrix is decomposed on one
      of those D devices only. By default (``mode="owner"``) each matrix is
      moved whole to its owner with an all-to-all and its result's shards are
      sent back, so the update keeps the gradient's sharding and per-device
      memory and traffic fall as 1/D (FSDP); ``mode="gather"`` gathers
      gradients and results whole on every device. See
      :mod:`optax_egd.distributed`. ``None``: every device decomposes every
      matrix. Sharded gradients work either way, on auto or explicit mesh
      axes.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`EGDState`.

  Raises:
    ValueError / TypeError at construction for a bad argument, naming it, and
    at ``init`` for ``dimension_numbers`` that do not fit the params.

  Example:
    >>> import jax.numpy as jnp, optax, optax_egd
    >>> tx = optax.chain(optax_egd.egd(method="rsvd", rank=2),
    ...                  optax.adamw(1e-3))
    >>> state = tx.init({"w": jnp.ones((4, 3))})
  """
  validate(method, rank=rank, oversample=oversample, power_iters=power_iters,
           ns_steps=ns_steps, rtol=rtol, precision=precision)
  if not isinstance(scale, str) or scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
  _check_enabled(enabled)
  _key_data(key)  # Checked now; the state's copy is made by init (see there).
  layer_parallel = distributed.resolve(distribute)
  check_spec(dimension_numbers)

  def check_leaves(tree: Any) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      dtype = getattr(leaf, "dtype", None)
      if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"egd needs floating leaves; leaf {jax.tree_util.keystr(path)} has"
            f" dtype {dtype}")
      if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"egd supports real leaves only; leaf {jax.tree_util.keystr(path)}"
            f" has dtype {dtype}")

  def init_fn(params: optax.Params) -> EGDState:
    check_leaves(params)
    check_dims_fit(dimension_numbers, params)
    if dimension_numbers is None:
      warn_about_default_axes(params, "egd")
    # Made here, not at construction: under the caller's mesh (jax.set_mesh)
    # its type is then the one update returns, so the step compiles once.
    return EGDState(
        count=jnp.zeros([], jnp.int32),
        key=jnp.array(_key_data(key), jnp.uint32),
        enabled=jnp.asarray(enabled, jnp.bool_),
    )

  def precondition(updates: optax.Updates, step_key: jax.Array
                   ) -> optax.Updates:
    # optax.masked passes MaskedNode() for masked-out leaves: keep them as
    # leaves so that a full-params tree of dimension numbers still lines up.
    leaves, treedef = jax.tree.flatten(
        updates, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    dims = [dim for dim, _ in leaf_dims(dimension_numbers, updates)
            ] if leaves else []
    groups: dict[tuple[int, int, Any], list[int]] = {}
    layouts: dict[int, Matrixify] = {}
    for i, (leaf, dim) in enumerate(zip(leaves, dims, strict=True)):
      if getattr(leaf, "ndim", 0) >= 2 and dim is not NOT_A_MATRIX:
        layouts[i] = Matrixify.of(leaf.shape, dim)
        _, m, n = layouts[i].stacked_shape
        groups.setdefault((m, n, compute_dtype(leaf.dtype)),
                          []).append(i)
    out = list(leaves)
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0])
    plans = owner_plans([(sum(layouts[i].stacked_shape[0] for i in members),
                          m, n) for (m, n, _), members in ordered])
    token = None  # Owner mode: one group's matrices move after another's.
    for g, ((m, n, dtype), members) in enumerate(ordered):
      stacks = [distributed.stack_leaf(layouts[i].to_stack, leaves[i],
                                       layer_parallel).astype(dtype)
                for i in members]
      parts, token = distributed.map_group(
          lambda x, k, r: polar(
              x, method, rtol=r, rank=rank, oversample=oversample,
              power_iters=power_iters, ns_steps=ns_steps, key=k,
              precision=precision),
          stacks, jax.random.fold_in(step_key, g), layer_parallel, plans[g],
          rtol, after=token)
      for i, part in zip(members, parts, strict=True):
        out[i] = distributed.unstack_leaf(
            layouts[i].from_stack, part * _shape_scale(scale, m, n),
            leaves[i]).astype(leaves[i].dtype)
    return jax.tree.unflatten(treedef, out)

  def owner_plans(shapes: list[tuple[int, int, int]]
                  ) -> list[distributed.OwnerPlan | None]:
    """Owner-mode plans per group (see ``distributed.plan_owners``)."""
    owners = distributed.owners_of(layer_parallel)
    if owners == 1:
      return [None] * len(shapes)
    plans, _ = distributed.plan_owners([(b, distributed.polar_flops(
        m, n, method, rank=rank, oversample=oversample,
        power_iters=power_iters, ns_steps=ns_steps)) for b, m, n in shapes],
                                       owners)
    return [*plans]

  def update_fn(
      updates: optax.Updates,
      state: EGDState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, EGDState]:
    del params, extra_args
    check_leaves(updates)
    next_key, step_key = jax.random.split(jax.random.wrap_key_data(state.key))
    enabled_now = jnp.asarray(state.enabled, jnp.bool_)
    updates = jax.lax.cond(
        enabled_now,
        lambda u: distributed.with_whole_matrices(
            precondition, u, step_key, distribute=layer_parallel),
        lambda u: u,
        updates)
    return updates, EGDState(
        count=optax.safe_increment(state.count),
        key=jax.random.key_data(next_key),
        enabled=enabled_now,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
