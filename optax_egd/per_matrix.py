"""``per_matrix``: one matrix per LAPACK call on CPU, the jaxlib deadlock workaround.

With jax/jaxlib 0.10 a compiled CPU program holding several *batched* LAPACK
calls can deadlock XLA's CPU thread pool (docs/lapack_deadlock.md); unbatched
calls never did. :func:`per_matrix` runs a one-matrix function over a stack
in a ``lax.map`` loop on CPU (``vmap`` elsewhere), and keeps it unbatched
under ``jax.vmap`` too.

Example:
  >>> import jax.numpy as jnp
  >>> from optax_egd.per_matrix import per_matrix
  >>> per_matrix(lambda m: m.T @ m, jnp.ones((3, 2, 2))).shape
  (3, 2, 2)
"""

from __future__ import annotations

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp


def _stack_loop(f: Callable[..., jax.Array], *flat: jax.Array) -> jax.Array:
  """``f`` over the leading axis of every array in ``flat``.

  One matrix per LAPACK call on CPU (a ``lax.map`` loop); elsewhere ``vmap``.
  """
  if flat[0].shape[0] == 1:
    return f(*(a[0] for a in flat))[None]
  return jax.lax.platform_dependent(
      *flat,
      cpu=lambda *a: jax.lax.map(lambda b: f(*b), a),
      default=jax.vmap(f))


def _fold_mapped_axes(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``_stack_loop(f, ...)`` with a ``vmap`` rule that keeps it unbatched.

  ``jax.vmap`` of a ``lax.map`` batches the loop body, turning every LAPACK
  call in it back into a batched call (the deadlock ``per_matrix`` avoids).
  The ``custom_vmap`` rule instead folds the mapped axis into the stack's
  leading axis (``(k, B, ...)`` → ``(k·B, ...)``; unbatched arguments are
  broadcast first) and calls the same function again, so the loop covers the
  mapped models too; nested ``vmap`` (also inside ``scan``, ``shard_map`` or
  ``jit``) folds one axis per level. Elsewhere it is the same ``vmap(f)`` as
  before, reshaped: no cost on GPU/TPU.

  ``custom_vmap`` has no reverse-mode rule, so the primal sits behind a
  ``custom_jvp`` whose rule is the plain per-matrix ``jvp`` (a ``lax.map`` on
  CPU, linearizable and transposable as before): ``grad``, ``jvp`` and
  ``vmap`` all work; ``vmap`` of a derivative batches like it did before.
  """

  @jax.custom_batching.custom_vmap
  def folded(*flat: jax.Array) -> jax.Array:
    return _stack_loop(f, *flat)

  @folded.def_vmap
  def _rule(axis_size: int, in_batched: list[bool], *flat: jax.Array):
    flat = tuple(a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                 for a, b in zip(flat, in_batched, strict=True))
    y = folded(*(a.reshape(-1, *a.shape[2:]) for a in flat))
    return y.reshape(axis_size, -1, *y.shape[1:]), True

  @jax.custom_jvp
  def stack(*flat: jax.Array) -> jax.Array:
    return folded(*flat)

  @stack.defjvp
  def _jvp(primals, tangents):
    return _stack_loop(lambda *pt: jax.jvp(f, pt[:len(pt) // 2], pt[len(pt) // 2:]),
                       *primals, *tangents)

  return stack


def per_matrix(f: Callable[..., jax.Array], x: jax.Array,
                *args: jax.Array) -> jax.Array:
  """``f`` (written for one matrix) over the leading axes of ``x`` and ``args``.

  ``args`` have the batch axes of ``x`` first (broadcast scalars explicitly);
  ``f`` must close over static values only (pass traced ones in ``args``).

  On CPU one matrix per call, in a ``lax.map`` loop: with jax/jaxlib 0.10 a
  compiled program holding several *batched* LAPACK calls (SVD, eigh, QR of
  stacks, e.g. ``egd`` on a model with several matrix shapes) can deadlock
  XLA's CPU thread pool (5 of 8 runs of a four-stack repro hung; serializing
  the stacks did not help), whereas unbatched calls never did (0 of 28); see
  "Fixed: CPU deadlock" in ``benchmarks/README.md`` and
  ``docs/lapack_deadlock.md``. Batched calls are up to 1.4x faster on 2
  cores, but a step that hangs is worse. ``jax.vmap`` over ``polar`` (e.g.
  over models or seeds) folds the mapped axes into the same loop (see
  ``_fold_mapped_axes``). Elsewhere: ``vmap`` (one batched call).
  """
  batch = x.shape[:-2]
  n = math.prod(batch)
  flat = [a.reshape(n, *a.shape[len(batch):]) for a in (x, *args)]
  y = _fold_mapped_axes(f)(*flat)
  return y.reshape(*batch, *y.shape[1:])
