"""Sharded gradients and layer-parallel polar factors for :func:`optax_egd.egd`.

Everything here is built only from ``jax.sharding`` primitives and
``jax.shard_map`` (no host-side device lists, no assumption of one process, so
the same code runs on a multi-host global mesh). ``egd(distribute=...)``
shares the decompositions over the D devices of a :class:`Distribute`'s mesh
axes, in one of two modes:

* ``mode="owner"`` (the default; :func:`map_group` with a plan from
  :func:`plan_owners`): *owner-compute*, the layout of Dion and of Megatron's
  layer-sharded Muon. Each same-shape group's B matrices are assigned to
  owners, floor(B/D) or ceil(B/D) each, the B mod D extra ones to the least
  loaded owners across groups (longest processing time first, by
  :func:`polar_flops`). Inside ``jax.shard_map`` every device sends each
  owner its shard of the owner's matrices with a ``jax.lax.all_to_all`` (over
  the axes the matrices are sharded along; axes they are replicated over
  just split the batch locally), each owner decomposes its whole matrices,
  and the inverse all-to-all sends the results' shards back. The update
  keeps the gradient's sharding (explicit axes), or has its rows split over
  the axes (auto axes, where the gradients' layout is not visible while
  tracing: pin the updates' layout with ``out_shardings``). Groups run one
  after another, so a device holds about 1/D of the gradients at a time, and
  each device receives about P·(D−1)/D² bytes per direction for a
  P-byte gradient. An owner with one matrix fewer than the others in a group
  skips its empty slot (a ``lax.cond``), so the padding costs no work.
* ``mode="gather"`` (:func:`with_whole_matrices` and :func:`map_matrices`):
  on *explicit* axes every sharded matrix gradient is resharded whole to
  every device first (one all-gather per sharded leaf), each same-shape
  group's (B, m, n) stack is zero-padded to a multiple of D and split over
  the devices, each decomposes its ceil(B/D) matrices, and the results are
  all-gathered back to every device. Transiently every device holds the whole
  gradient of every matrix, and moves about twice an FSDP all-gather of the
  model. On replicated gradients (pure data parallelism) the two modes
  move the same bytes; the gather mode is the layout of earlier releases.

Without ``distribute`` every device decomposes every matrix (the SVD is one
opaque custom call the SPMD partitioner cannot split); on explicit axes
sharded gradients are gathered whole first (:func:`with_whole_matrices`), on
auto axes XLA's partitioner inserts the gathers. ``python -m
benchmarks.fsdp`` measures the three on a GPT-2-small-sized tree
(docs: "Sharding, layer-parallel and multi-host").

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

from collections.abc import Callable, Sequence
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

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
    mode: ``"owner"`` (default): each matrix is moved whole to the one device
      that decomposes it with an all-to-all and its result's shards are sent
      back with another, so the update keeps the gradient's sharding and no
      device ever holds more than about 1/D of the gradients (FSDP scale).
      ``"gather"``: every sharded gradient is first gathered whole on every
      device and the decomposed matrices are all-gathered back to every
      device (the layout of earlier releases: more memory and traffic, the
      same result). See :mod:`optax_egd.distributed`.

  Example:
    >>> import jax, optax_egd
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
    >>> tx = optax_egd.egd(distribute=optax_egd.Distribute(mesh, "data"))
  """

  mesh: AnyMesh | None = None
  axis_names: str | tuple[str, ...] | None = None
  mode: str = "owner"


MODES = ("owner", "gather")
"""The values of :attr:`Distribute.mode`."""


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
  mesh, names, mode = distribute
  if not isinstance(mode, str) or mode not in MODES:
    raise ValueError(f"Distribute.mode must be one of {MODES}, got {mode!r}")
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
  return Distribute(mesh, names, mode)


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
    fn: Callable[..., Any], updates: Any, *args: Any,
    distribute: Distribute | None = None) -> Any:
  """``fn(updates, *args)`` on whole matrices, resharded back afterwards.

  Matrix leaves (``ndim >= 2``) sharded over explicit mesh axes are resharded
  to replicated (``jax.sharding.reshard``, an all-gather) before ``fn`` and
  its outputs back to each leaf's sharding (a local slice). Leaves on auto
  axes, unsharded leaves and vectors pass through as they are. With an
  owner-mode ``distribute`` nothing is gathered: ``fn`` gets the leaves as
  they are (:func:`stack_leaf` and :func:`map_group` move whole matrices to
  their owners).

  Example:
    >>> import jax.numpy as jnp
    >>> with_whole_matrices(lambda u: u, {"w": jnp.ones((2, 2))})["w"].shape
    (2, 2)
  """
  if owners_of(distribute) > 1:
    return fn(updates, *args)
  leaves, treedef = jax.tree.flatten(updates)
  shardings = [_explicit_sharding(x) for x in leaves]
  whole = [x if s is None else jax.sharding.reshard(x, NamedSharding(s.mesh, P()))
           for x, s in zip(leaves, shardings, strict=True)]
  out = jax.tree.leaves(fn(jax.tree.unflatten(treedef, whole), *args))
  return jax.tree.unflatten(treedef, [
      y if s is None else jax.sharding.reshard(y, s)
      for y, s in zip(out, shardings, strict=True)])


# --------------------------------------------------------------------------
# Owner-compute (``Distribute(mode="owner")``): all-to-all to owners and back.


def polar_flops(m: int, n: int, method: str, *, rank: int | None = None,
                oversample: int | None = None, power_iters: int | None = None,
                ns_steps: int | None = None) -> float:
  """Rough floating-point operations of one (m, n) polar factor by ``method``.

  Used only to balance owners' work (:func:`plan_owners`), so the constants
  are textbook orders, not measurements: with k = min(m, n), K = max(m, n),
  an SVD-based factor costs about 6·k²·K + 22·k³ (Golub-Van Loan's R-SVD plus
  the product U·Vᵀ), a Gram eigendecomposition 4·k²·K + 9·k³, QDWH about 6
  SVD-sized QR steps, a matrix-product iteration 4·k²·K + 2·k³ per step, and
  a randomized SVD of sketch rank r = rank + oversample 2·m·n·r per pass.
  ``"auto"`` is costed as what it resolves to on the default backend.

  Example:
    >>> polar_flops(768, 3072, "svd") == polar_flops(3072, 768, "svd")
    True
    >>> polar_flops(768, 768, "svd") < polar_flops(768, 2304, "svd")
    True
  """
  from optax_egd.polar import auto_method  # noqa: PLC0415 (import cycle)
  if method == "auto":
    method = auto_method((m, n))
  k, big = min(m, n), max(m, n)
  if method == "rsvd":
    r = (rank or k) + (10 if oversample is None else oversample)
    passes = 2 + 2 * (2 if power_iters is None else power_iters)
    return float(2 * m * n * min(r, k) * passes)
  if method == "eigh":
    return float(4 * k * k * big + 9 * k**3)
  if method in ("newton_schulz", "polar_express", "polar_express_exact"):
    steps = ns_steps or (5 if method == "newton_schulz" else 8)
    return float(steps * (4 * k * k * big + 2 * k**3))
  if method == "qdwh":
    return float(6 * (4 * k * k * big) + 4 * k * k * big)
  return float(6 * k * k * big + 22 * k**3)


class OwnerPlan(NamedTuple):
  """Which owner decomposes which matrix of one same-shape group.

  The group's B matrices are laid out in D·s slots, s = ceil(B/D); owner k
  (a linear index over the distribute axes) receives slots ``k·s … k·s+s-1``.
  Every owner gets floor(B/D) or ceil(B/D) real matrices; which owners take
  the B mod D extra ones is chosen across groups to balance work.

  Attributes:
    slots: s, slots per owner.
    source: (D·s,) index of the matrix in each slot; B marks a zero slot.
    position: (B,) the slot of each matrix.
    last_real: (D,) whether owner k's last slot holds a real matrix (a zero
      slot is skipped, not decomposed).
  """

  slots: int
  source: np.ndarray
  position: np.ndarray
  last_real: np.ndarray


def plan_owners(groups: Sequence[tuple[int, float]], owners: int
                ) -> tuple[list[OwnerPlan], np.ndarray]:
  """Assigns every group's matrices to ``owners`` devices, balancing cost.

  ``groups`` lists (B, cost of one matrix) per group. Each owner takes
  floor(B/D) matrices of a group, and the B mod D extra ones go to the least
  loaded owners, groups taken most costly matrix first (longest processing
  time first). Returns the plans (in ``groups``' order) and the load of each
  owner (its summed cost).

  Example:
    >>> plans, load = plan_owners([(3, 2.0), (1, 1.0)], 2)
    >>> [p.slots for p in plans], load.tolist()
    ([2, 1], [4.0, 3.0])
  """
  load = np.zeros(owners)
  plans: list[OwnerPlan | None] = [None] * len(groups)
  for g in sorted(range(len(groups)), key=lambda g: -groups[g][1]):
    batch, cost = groups[g]
    slots = -(-batch // owners)
    extra = batch % owners
    has_extra = np.ones(owners, bool)
    if extra:
      has_extra[:] = False
      has_extra[np.argsort(load, kind="stable")[:extra]] = True
    counts = np.where(has_extra, slots, batch // owners)
    load += counts * cost
    source = np.full(owners * slots, batch)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for k in range(owners):
      source[k * slots:k * slots + counts[k]] = starts[k] + np.arange(counts[k])
    position = np.empty(batch, int)
    real = source < batch
    position[source[real]] = np.flatnonzero(real)
    plans[g] = OwnerPlan(slots, source, position, has_extra)
  return [p for p in plans if p is not None], load


def owners_of(distribute: Distribute | None) -> int:
  """D, the number of owner devices of an owner-mode ``distribute``, else 1.

  Example:
    >>> import jax
    >>> owners_of(resolve(jax.make_mesh((1,), ("d",))))
    1
  """
  if distribute is None or distribute.mode != "owner":
    return 1
  mesh, names = mesh_and_axes(distribute)
  return math.prod(mesh.shape[a] for a in names)


def _axes_in(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return _as_tuple(entry)


def _stack_axes(x: jax.Array, names: tuple[str, ...]
                ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
  """(row axes, column axes) of an explicitly sharded (B, m, n) stack.

  ``None`` if its batch axis is sharded or a matrix axis is sharded over a
  mesh axis outside ``names``; ((), ()) if the stack is not sharded.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return (), ()
  spec = tuple(sharding.spec) + (None,) * (3 - len(sharding.spec))
  if _axes_in(spec[0]):
    return None
  rows, cols = _axes_in(spec[1]), _axes_in(spec[2])
  if not set(rows + cols) <= set(names):
    return None
  return rows, cols


def stack_leaf(to_stack: Callable[[jax.Array], jax.Array], leaf: jax.Array,
               distribute: Distribute | None) -> jax.Array:
  """``to_stack(leaf)``, (B, m, n), keeping the leaf's sharding where it can.

  In owner mode a leaf sharded over explicit mesh axes stays sharded: the
  stack's batch axis unsharded and its matrix axes sharded only over the
  distribute axes (resharded to that if need be). A leaf whose layout a
  reshape cannot carry (a merged matrix axis that is sharded) is gathered
  whole first. Otherwise just ``to_stack(leaf)``.

  Example:
    >>> import jax.numpy as jnp
    >>> stack_leaf(lambda x: x[None], jnp.ones((2, 3)), None).shape
    (1, 2, 3)
  """
  sharding = _explicit_sharding(leaf)
  if sharding is None or owners_of(distribute) == 1:
    return to_stack(leaf)
  assert distribute is not None
  _, names = mesh_and_axes(distribute)
  try:
    stack = to_stack(leaf)
  except Exception:  # noqa: BLE001 (a reshape explicit sharding cannot follow)
    whole = NamedSharding(sharding.mesh, P())
    return to_stack(jax.sharding.reshard(leaf, whole))
  if _stack_axes(stack, names) is None:
    spec = tuple(jax.typeof(stack).sharding.spec) + (None,) * 3
    keep = lambda e: tuple(a for a in _axes_in(e) if a in names) or None
    stack = jax.sharding.reshard(stack, NamedSharding(
        sharding.mesh, P(None, keep(spec[1]), keep(spec[2]))))
  return stack


def unstack_leaf(from_stack: Callable[[jax.Array], jax.Array], stack: jax.Array,
                 leaf: jax.Array) -> jax.Array:
  """``from_stack(stack)`` with ``leaf``'s explicit sharding (replicated if none).

  Example:
    >>> import jax.numpy as jnp
    >>> unstack_leaf(lambda x: x[0], jnp.ones((1, 2, 3)), jnp.ones((2, 3))).shape
    (2, 3)
  """
  out = from_stack(stack)
  got = getattr(jax.typeof(out), "sharding", None)
  want = _explicit_sharding(leaf)
  if want is None:  # A replicated leaf: replicate a sharded result.
    if not isinstance(got, NamedSharding) or all(s is None for s in got.spec):
      return out
    want = NamedSharding(got.mesh, P())
  return out if got == want else jax.sharding.reshard(out, want)


def _fold(key: jax.Array, index: jax.Array | int) -> jax.Array:
  return jax.random.fold_in(key, index)


def map_group(
    fn: Callable[..., jax.Array],
    stacks: Sequence[jax.Array],
    key: jax.Array,
    distribute: Distribute | None,
    plan: OwnerPlan | None,
    *operands: Any,
    after: jax.Array | None = None,
) -> tuple[list[jax.Array], jax.Array | None]:
  """``fn`` on a same-shape group of (B_i, m, n) stacks: results and a token.

  With ``distribute=None`` the stacks are concatenated and ``fn`` runs on all
  of them; with ``mode="gather"`` that goes through :func:`map_matrices`. In
  owner mode (``plan`` from :func:`plan_owners`) each matrix is sent whole to
  its owner with an all-to-all over the distribute axes along which the
  stack is sharded, decomposed there, and its shards sent back with the
  inverse all-to-all, so each result keeps the layout its stack had (explicit
  axes) or the rows are split over the distribute axes (auto axes; or the
  columns when the rows do not divide). Distribute axes the stack is not
  sharded over split the work too: each device takes its part of the batch
  locally and the results are all-gathered over those axes (the update is
  replicated there, as the gradient was). ``fn`` must map every matrix
  independently and send zero to zero; ``operands`` as in
  :func:`map_matrices`.

  Returns one result per stack and, in owner mode, a token: pass it as
  ``after`` to the next group's call, whose matrices then move only once
  this group's results are back (a data dependency through a zero the
  compiler cannot fold). So one group's buffers are live at a time, not every
  group's at once; the price is that one group's communication does not
  overlap another's decompositions.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> d = resolve(jax.make_mesh((1,), ("d",)))
    >>> out, _ = map_group(lambda x, key: 2 * x, [jnp.ones((2, 3, 3)),
    ...                    jnp.ones((1, 3, 3))], jax.random.key(0), d, None)
    >>> [x.shape for x in out]
    [(2, 3, 3), (1, 3, 3)]
  """
  sizes = [s.shape[0] for s in stacks]
  split = lambda x: jnp.split(x, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [x]
  concat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs)
  if distribute is None or distribute.mode != "owner" or plan is None:
    return split(map_matrices(fn, concat(list(stacks)), key, distribute,
                              *operands)), None
  mesh, names = mesh_and_axes(distribute)
  _, m, n = stacks[0].shape
  owners = math.prod(mesh.shape[a] for a in names)
  if _explicit(mesh, names):
    axes = [_stack_axes(s, names) for s in stacks]
    largest = max(range(len(stacks)), key=lambda i: (stacks[i].size, -i))
    rows, cols = axes[largest] or ((), ())
    target = NamedSharding(mesh, P(None, rows or None, cols or None))
    stacks = [s if a == (rows, cols) else jax.sharding.reshard(s, target)
              for s, a in zip(stacks, axes, strict=True)]
  elif m % owners == 0:
    rows, cols = names, ()
  elif n % owners == 0:
    rows, cols = (), names
  else:  # Neither axis divides over the owners: gather (auto axes only).
    return split(map_matrices(fn, concat(list(stacks)), key,
                              distribute._replace(mode="gather"),
                              *operands)), after
  others = tuple(a for a in names if a not in rows + cols)
  size = lambda axes: math.prod(mesh.shape[a] for a in axes)
  n_rows, n_cols, n_others = size(rows), size(cols), size(others)
  slots = plan.slots
  spec = P(None, rows or None, cols or None)
  traced = [i for i, x in enumerate(operands) if isinstance(x, jax.Array)]
  source = np.asarray(plan.source)
  position = np.asarray(plan.position)
  last_real = np.asarray(plan.last_real)
  padded = bool(np.any(source == len(position)))
  in_order = np.array_equal(source, np.arange(len(position)))

  def local(x: jax.Array, key: jax.Array, wait: jax.Array, *values: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    args = list(operands)
    for i, value in zip(traced, values, strict=True):
      args[i] = value
    owner = jnp.zeros([], jnp.int32)
    # Slots in owner order; a zero slot where an owner has one matrix fewer.
    # ``wait`` (always 0) makes the gather wait for the previous group.
    if in_order:  # Rewrite one slot in place where it is: no copy.
      x = jax.lax.dynamic_update_slice_in_dim(x, x[:1], wait[0], 0)
    else:
      if padded:
        x = jnp.concatenate([x, jnp.zeros((1, *x.shape[1:]), x.dtype)])
      x = x[jnp.asarray(source) + wait[0]]
    if others:  # Replicated over these axes: take this device's part.
      part = owners * slots // n_others
      o = jax.lax.axis_index(others)
      x = jax.lax.dynamic_slice_in_dim(x, o * part, part)
      owner = owner + o * (n_rows * n_cols)
    if rows:  # Whole rows: each owner gathers its matrices' row blocks.
      x = jax.lax.all_to_all(x, rows, 0, 1, tiled=True)
      owner = owner + jax.lax.axis_index(rows) * n_cols
    if cols:
      x = jax.lax.all_to_all(x, cols, 0, 2, tiled=True)
      owner = owner + jax.lax.axis_index(cols)
    k = _fold(key, owner)
    if padded:  # The last slot: decomposed only where it holds a matrix.
      last = jax.lax.cond(
          jnp.asarray(last_real)[owner],
          lambda z: fn(z, _fold(k, slots - 1), *args), jnp.zeros_like,
          x[slots - 1:])
      y = last if slots == 1 else jnp.concatenate(
          [fn(x[:slots - 1], k, *args), last])
    else:
      y = fn(x, k, *args)
    if cols:
      y = jax.lax.all_to_all(y, cols, 2, 0, tiled=True)
    if rows:
      y = jax.lax.all_to_all(y, rows, 1, 0, tiled=True)
    if others:
      y = jax.lax.all_gather(y, others, axis=0, tiled=True)
    if not in_order:
      y = y[position]
    # A zero that depends on this group's result: min(|v|, 0) is 0 for every
    # v but NaN (then zeroed), which the compiler cannot know.
    v = jnp.minimum(jnp.abs(y.reshape(-1)[:1]), 0)
    return y, jnp.where(jnp.isnan(v), 0, v).astype(jnp.int32)

  # check_vma=False: the all-gather over ``others`` makes the result the same
  # on each of their devices, which the varying-axes check cannot see through
  # the owner-indexed cond.
  if after is None or after.shape != (owners,):
    after = jnp.zeros(owners, jnp.int32)
    if _explicit(mesh, names):
      after = jax.sharding.reshard(after, NamedSharding(mesh, P(names)))
  out, token = jax.shard_map(
      local, mesh=mesh,
      in_specs=(spec, P(), P(names), *(P(),) * len(traced)),
      out_specs=(spec, P(names)), check_vma=False)(
          concat(list(stacks)), key, after, *(operands[i] for i in traced))
  return split(out), token
