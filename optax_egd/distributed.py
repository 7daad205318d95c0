"""Sharded gradients and layer-parallel polar factors for :func:`optax_egd.egd`.

Two things live here, both built only from ``jax.sharding`` primitives and
``jax.shard_map`` (no host-side device lists, no assumption of one process, so
the same code runs on a multi-host global mesh):

* :func:`with_whole_matrices`: on meshes with *explicit* axis types
  (``jax.sharding.AxisType.Explicit``, ``jax.make_mesh``'s default) a
  decomposition cannot run on a matrix split across devices
  (``jnp.linalg.svd`` demands unsharded matrix axes). Every matrix leaf whose
  gradient is sharded is resharded to fully replicated with
  ``jax.sharding.reshard`` before the decompositions, and each update is
  resharded back to its gradient's sharding after them. Cost: one all-gather
  per sharded matrix leaf (each device receives the (k-1)/k of the leaf it
  does not hold, for k shards: the volume of an FSDP forward all-gather of
  that weight) and, transiently, the whole gradient of every sharded matrix
  on every device. Resharding back is a local slice, no communication. On
  *auto* axes nothing is done here: XLA's partitioner inserts the same
  gathers itself, and it also picks the layout of the updates a jit returns
  (pin it with ``out_shardings``, as a sharded train step does for its
  parameters).
* :func:`map_matrices` with a :class:`Distribute`: *layer-parallel* polar.
  Without it every device decomposes every matrix (the SVD is one opaque
  custom call the SPMD partitioner cannot split), so D-1 of D devices repeat
  the same work. With it, each same-shape group's (B, m, n) stack is padded
  with zero matrices to a multiple of D (a zero matrix has a zero polar
  factor), its batch axis is split over the D devices of the chosen mesh axes
  with ``jax.shard_map``, each device decomposes its ceil(B/D) whole matrices,
  and the results are all-gathered back to every device (``reshard`` or a
  sharding constraint to replicated: each device receives (D-1)/D of the
  padded stack, B_pad·m·n values per group). Per-device decomposition work
  falls from B to ceil(B/D) matrices per group; the price is that
  all-gather, usually far cheaper than the decompositions it saves.

Example:
  >>> import jax, jax.numpy as jnp, optax_egd
  >>> mesh = jax.make_mesh((1,), ("d",))
  >>> tx = optax_egd.egd(method="svd",
  ...                    distribute=optax_egd.Distribute(mesh, "d"))
  >>> grads = {"w": jnp.ones((2, 4, 3))}
  >>> updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
  >>> updates["w"].shape
  (2, 4, 3)
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AnyMesh = Mesh | AbstractMesh


class Distribute(NamedTuple):
  """Which devices share :func:`optax_egd.egd`'s decompositions (layer-parallel).

  Attributes:
    mesh: a ``jax.sharding.Mesh`` (or ``AbstractMesh``), on a multi-host run
      the global one. ``None``: the mesh set with ``jax.set_mesh`` where the
      update is traced.
    axis_names: a mesh axis name or a tuple of them; their devices (D, the
      product of their sizes) each decompose 1/D of every same-shape group of
      matrices. ``None``: every axis of the mesh. The axes must be all
      ``Auto`` or all ``Explicit``.

  Example:
    >>> import jax, optax_egd
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
    >>> tx = optax_egd.egd(distribute=optax_egd.Distribute(mesh, "data"))
  """

  mesh: AnyMesh | None = None
  axis_names: str | tuple[str, ...] | None = None


DistributeSpec = Distribute | Mesh | AbstractMesh | None
"""What ``egd(distribute=...)`` accepts: a :class:`Distribute`, a mesh (all of
its axes), or ``None`` (every device decomposes every matrix)."""


def _as_tuple(names: str | tuple[str, ...]) -> tuple[str, ...]:
  return (names,) if isinstance(names, str) else tuple(names)


def _check_axes(mesh: AnyMesh, names: tuple[str, ...]) -> None:
  missing = [a for a in names if a not in mesh.axis_names]
  if missing:
    raise ValueError(
        f"distribute axis_names {missing} are not axes of the mesh"
        f" {mesh.axis_names}")
  types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
  if len({types[a] for a in names}) > 1:
    raise ValueError(
        f"distribute axes {names} mix axis types"
        f" {[types[a] for a in names]}; use axes that are all Auto or all"
        " Explicit")


def resolve(distribute: DistributeSpec) -> Distribute | None:
  """Validates ``egd``'s ``distribute`` argument and normalizes it.

  Raises:
    TypeError / ValueError naming what is wrong.

  Example:
    >>> import jax
    >>> resolve(jax.make_mesh((1,), ("d",))).axis_names
    ('d',)
  """
  if distribute is None:
    return None
  if isinstance(distribute, (Mesh, AbstractMesh)):
    distribute = Distribute(distribute)
  if not isinstance(distribute, Distribute):
    raise TypeError(
        "distribute must be an optax_egd.Distribute, a jax.sharding.Mesh, or"
        f" None; got {distribute!r}")
  mesh, names = distribute
  if mesh is not None and not isinstance(mesh, (Mesh, AbstractMesh)):
    raise TypeError(f"Distribute.mesh must be a jax.sharding.Mesh, got {mesh!r}")
  if names is not None:
    if not isinstance(names, (str, tuple)) or not names or not all(
        isinstance(a, str) for a in _as_tuple(names)):
      raise TypeError(
          "Distribute.axis_names must be a mesh axis name or a non-empty tuple"
          f" of them, got {names!r}")
    names = _as_tuple(names)
  if mesh is not None:
    names = tuple(mesh.axis_names) if names is None else names
    _check_axes(mesh, names)
  return Distribute(mesh, names)


def mesh_and_axes(distribute: Distribute) -> tuple[AnyMesh, tuple[str, ...]]:
  """The mesh and axis names a resolved :class:`Distribute` means right now.

  A ``mesh=None`` config takes the mesh set with ``jax.set_mesh``.

  Raises:
    ValueError: if there is no mesh to use.

  Example:
    >>> import jax
    >>> mesh = jax.make_mesh((1,), ("d",))
    >>> with jax.set_mesh(mesh):
    ...   mesh_and_axes(Distribute(axis_names=("d",)))[1]
    ('d',)
  """
  mesh: AnyMesh | None = distribute.mesh
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      raise ValueError(
          "Distribute(mesh=None) needs a mesh set with jax.set_mesh(...) where"
          " the update is traced; or pass Distribute(mesh, axis_names)")
  names = (tuple(mesh.axis_names) if distribute.axis_names is None
           else _as_tuple(distribute.axis_names))
  _check_axes(mesh, names)
  return mesh, names


def _explicit(mesh: AnyMesh, names: tuple[str, ...]) -> bool:
  types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
  return all(types[a] == AxisType.Explicit for a in names)


def map_matrices(
    fn: Callable[..., jax.Array],
    stack: jax.Array,
    key: jax.Array,
    distribute: Distribute | None,
    *operands: Any,
) -> jax.Array:
  """``fn(stack, key, *operands)``, with the (B, m, n) ``stack`` split over devices.

  With ``distribute=None`` this is just that call. Otherwise the batch is
  zero-padded to a multiple of D (the product of the axes' sizes), each device
  runs ``fn`` on its B/D whole matrices inside ``jax.shard_map`` with the key
  folded with its index along the axes, and the results are gathered (an
  all-gather) and the padding dropped. ``fn`` must map every matrix independently
  and send zero to zero. ``operands`` that are ``jax.Array`` (e.g. a traced
  rtol) enter the shard_map replicated, anything else (``None``, Python
  floats) stays static; pass traced values this way rather than closing over
  them (a shard_map cannot close over arrays typed with explicit mesh axes). A
  randomized ``fn`` draws per-device randomness, so its result differs from
  the undistributed one by that randomness only.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> mesh = jax.make_mesh((1,), ("d",))
    >>> scale = lambda x, key, c: c * x
    >>> map_matrices(scale, jnp.ones((3, 2, 2)), jax.random.key(0),
    ...              resolve(mesh), 2.0).shape
    (3, 2, 2)
  """
  if distribute is None:
    return fn(stack, key, *operands)
  mesh, names = mesh_and_axes(distribute)
  shards = math.prod(mesh.shape[a] for a in names)
  if shards == 1:
    return fn(stack, key, *operands)
  batch = stack.shape[0]
  pad = -batch % shards
  if pad:
    stack = jnp.concatenate([stack, jnp.zeros((pad, *stack.shape[1:]),
                                              stack.dtype)])
  split = P(names)
  explicit = _explicit(mesh, names)
  if explicit:
    stack = jax.sharding.reshard(stack, NamedSharding(mesh, split))
  traced = [i for i, x in enumerate(operands) if isinstance(x, jax.Array)]

  def local(x: jax.Array, key: jax.Array, *values: jax.Array) -> jax.Array:
    args = list(operands)
    for i, value in zip(traced, values, strict=True):
      args[i] = value
    return fn(x, jax.random.fold_in(key, jax.lax.axis_index(names)), *args)

  out = jax.shard_map(
      local, mesh=mesh, in_specs=(split, P(), *(P(),) * len(traced)),
      out_specs=split)(stack, key, *(operands[i] for i in traced))
  # Gather: every device gets every decomposed matrix back (an all-gather).
  whole = NamedSharding(mesh, P())
  out = (jax.sharding.reshard(out, whole) if explicit
         else jax.lax.with_sharding_constraint(out, whole))
  return out[:batch] if pad else out


def _explicit_sharding(x: Any) -> NamedSharding | None:
  """The sharding of a matrix leaf split over explicit mesh axes, else None."""
  if getattr(x, "ndim", 0) < 2:
    return None
  sharding = getattr(jax.typeof(x), "sharding", None)
  if not isinstance(sharding, NamedSharding) or all(
      s is None for s in sharding.spec):
    return None
  return sharding


def with_whole_matrices(
    fn: Callable[..., Any], updates: Any, *args: Any) -> Any:
  """``fn(updates, *args)`` on whole matrices, resharded back afterwards.

  Matrix leaves (``ndim >= 2``) sharded over explicit mesh axes are resharded
  to replicated (``jax.sharding.reshard``, an all-gather) before ``fn`` and
  its outputs back to each leaf's sharding (a local slice). Leaves on auto
  axes, unsharded leaves and vectors pass through as they are.

  Example:
    >>> import jax.numpy as jnp
    >>> with_whole_matrices(lambda u: u, {"w": jnp.ones((2, 2))})["w"].shape
    (2, 2)
  """
  leaves, treedef = jax.tree.flatten(updates)
  shardings = [_explicit_sharding(x) for x in leaves]
  whole = [x if s is None else jax.sharding.reshard(x, NamedSharding(s.mesh, P()))
           for x, s in zip(leaves, shardings, strict=True)]
  out = jax.tree.leaves(fn(jax.tree.unflatten(treedef, whole), *args))
  return jax.tree.unflatten(treedef, [
      y if s is None else jax.sharding.reshard(y, s)
      for y, s in zip(out, shardings, strict=True)])
