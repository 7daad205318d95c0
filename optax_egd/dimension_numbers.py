"""Which axes of which leaves form matrices: ``dimension_numbers`` for ``egd``/``egdm``.

A ``dimension_numbers`` spec is a :class:`DimensionNumbers` (optax's
``MuonDimensionNumbers``: ``reduction_axis`` is the fan-in, ``output_axis``
the fan-out, other axes are a batch), :data:`NOT_A_MATRIX`, ``None``, a tree
of them matched to the params by key names, or a callable from params to such
a tree. This module holds the one matcher, the checks (at construction and
against the params at ``init``), the reshaping of a leaf into a stack of
matrices, and the warning policy of the default (``None``), shared by
:func:`optax_egd.egd` and :func:`optax_egd.egdm`.

Example:
  >>> import jax.numpy as jnp
  >>> from optax_egd.dimension_numbers import DimensionNumbers, leaf_dims
  >>> conv = DimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
  >>> leaf_dims({"conv": conv, "dense": None},
  ...           {"conv": jnp.ones((3, 3, 1, 8)), "dense": jnp.ones((8, 2))})
  [(MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3), True),
   (None, True)]
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple
import warnings

import jax
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers as DimensionNumbers

__all__ = ["NOT_A_MATRIX", "DimensionNumbers", "DimensionNumbersSpec",
           "Matrixify", "check_dims_fit", "check_spec", "leaf_dims",
           "warn_about_default_axes"]


class NotAMatrix:
  """The type of :data:`NOT_A_MATRIX` (one instance, a pytree leaf)."""

  _instance: NotAMatrix | None = None

  def __new__(cls) -> NotAMatrix:
    if cls._instance is None:
      cls._instance = super().__new__(cls)
    return cls._instance

  def __repr__(self) -> str:
    return "optax_egd.NOT_A_MATRIX"

  def __reduce__(self) -> str:
    return "NOT_A_MATRIX"


NOT_A_MATRIX = NotAMatrix()
"""A ``dimension_numbers`` entry for a leaf that is not a matrix.

``egd`` passes such a leaf through and ``egdm`` gives it AdamW, whatever its
number of axes: a scanned (stacked) bias or norm scale ``(layers, d)``, say,
which the default would orthogonalize across layers. (``None`` in an ``egd``
tree means the default, the last two axes.)
:func:`optax_egd.flax_dimension_numbers` gives it to every such leaf.

Example:
  >>> import jax.numpy as jnp, optax_egd
  >>> tx = optax_egd.egd(dimension_numbers={"w": None,
  ...                                       "b": optax_egd.NOT_A_MATRIX})
  >>> grads = {"w": jnp.ones((2, 2)), "b": jnp.ones((3, 2))}
  >>> updates, _ = tx.update(grads, tx.init(grads))
  >>> updates["b"]  # passed through
  Array([[1., 1.],
         [1., 1.],
         [1., 1.]], dtype=float32)
"""

# A DimensionNumbers (optax's MuonDimensionNumbers: ``reduction_axis`` is the
# fan-in, ``output_axis`` the fan-out, other axes are a batch), NOT_A_MATRIX,
# a tree of them, a callable from params to such a tree, or None.
DimensionNumbersSpec = Any


# What a message suggests for leaves that need different axes.
_FIX_HINT = (
    "give each its own DimensionNumbers, e.g. {'conv': {'kernel': conv,"
    " 'bias': None}, 'dense': None}, or pass a callable by ndim, e.g."
    " lambda params: jax.tree.map(lambda p: conv if p.ndim == 4 else None,"
    " params)")


def path_keys(path: tuple[Any, ...], *, attributes: bool = True) -> tuple[Any, ...]:
  """The names in a key path (dict keys, indices, attribute names).

  ``attributes=False`` leaves attribute names out (an NNX ``State``'s leaves
  sit at ``.value`` below their parameter's name).

  Example:
    >>> import jax
    >>> path = (jax.tree_util.DictKey("l1"), jax.tree_util.SequenceKey(0),
    ...         jax.tree_util.GetAttrKey("value"))
    >>> path_keys(path), path_keys(path, attributes=False)
    (('l1', 0, 'value'), ('l1', 0))
  """
  names = []
  for entry in path:
    if not attributes and isinstance(entry, jax.tree_util.GetAttrKey):
      continue
    for field in ("key", "idx", "name"):
      if hasattr(entry, field):
        names.append(getattr(entry, field))
        break
    else:
      names.append(entry)
  return tuple(names)


def leaf_dims(spec: DimensionNumbersSpec, tree: Any
               ) -> list[tuple[DimensionNumbers | None, bool]]:
  """Per leaf of ``tree`` (``MaskedNode`` leaves included, in flatten order):
  the DimensionNumbers or None that ``spec`` gives it, and whether ``spec``
  gives it for that leaf alone.

  A tree ``spec`` is matched by key names, so a dict fits a Flax NNX
  ``State``, linen's params or an Equinox module alike: an entry stands for
  every leaf below its path (a prefix, as with ``optax.contrib.muon``).
  Raises for a leaf with no entry and for an entry that names no leaf.
  """
  if callable(spec) and not isinstance(spec, DimensionNumbers):
    spec = spec(tree)
  masked = lambda x: isinstance(x, optax.MaskedNode)
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=masked)[0]]
  if spec is None or spec is NOT_A_MATRIX or isinstance(spec, DimensionNumbers):
    return [(spec, False)] * len(paths)
  entries: dict[tuple[Any, ...], list[Any]] = {}
  for path, dim in jax.tree_util.tree_flatten_with_path(
      spec, is_leaf=lambda x: is_dims(x) or masked(x))[0]:
    if not is_dims(dim) and not masked(dim):
      raise TypeError(
          "dimension_numbers must give a DimensionNumbers or None per leaf;"
          f" got {dim!r} at {jax.tree_util.keystr(path)}")
    entries[path_keys(path)] = [None if masked(dim) else dim, path, 0]
  found = []
  for path in paths:
    keys = path_keys(path)
    entry = next((entries[keys[:n]] for n in range(len(keys), -1, -1)
                  if keys[:n] in entries), None)
    if entry is None:
      raise ValueError(
          f"dimension_numbers has no entry for leaf {jax.tree_util.keystr(path)}:"
          " give a DimensionNumbers or None for it or for a subtree above it"
          " (entries are matched by key name, as the params print), or pass a"
          " callable from params to such a tree, e.g. lambda params:"
          " jax.tree.map(lambda p: conv if p.ndim == 4 else None, params)")
    entry[2] += 1
    found.append(entry)
  unused = [jax.tree_util.keystr(path) for _, path, count in entries.values()
            if not count]
  if unused:
    top = sorted({str(path_keys(path)[0]) for path in paths if path})
    raise ValueError(
        f"dimension_numbers names {', '.join(unused)}, which is not in the"
        f" params (their top-level keys: {', '.join(top)})")
  return [(dim, count == 1) for dim, _, count in found]


def is_dims(x: Any) -> bool:
  return x is None or x is NOT_A_MATRIX or isinstance(x, DimensionNumbers)


# Packages whose frames a warning skips, so it points at the user's line (the
# call of init, directly or through nnx.Optimizer, optax.chain, ...).
_LIBRARY_PACKAGES = frozenset(
    {"optax_egd", "optax", "flax", "jax", "jaxlib", "chex", "contextlib",
     "functools"})


def user_stacklevel() -> int:
  """``stacklevel`` for a ``warnings.warn`` in the caller of this function:
  the first frame outside the libraries."""
  frame: Any = sys._getframe(1)  # pylint: disable=protected-access
  level = 1
  while frame is not None:
    package = str(frame.f_globals.get("__name__", "")).split(".")[0]
    if package not in _LIBRARY_PACKAGES:
      return level
    frame, level = frame.f_back, level + 1
  return 1


MAX_LISTED = 4  # leaves a warning names before "and N more"
# 2-D leaves that are vectors stacked over layers in Flax models.
_VECTOR_NAMES = ("bias", "scale")
# What the warnings suggest: each runs when pasted (with jax and optax_egd
# imported, and ``model`` or ``params`` defined).
FLAX_FIX = "dimension_numbers=optax_egd.flax_dimension_numbers(model)"
KERNELS_FIX = (
    "dimension_numbers=lambda params: jax.tree_util.tree_map_with_path("
    "lambda path, p: (optax_egd.DimensionNumbers((0, 1, 2), 3) if p.ndim == 4"
    " else optax_egd.DimensionNumbers(-2, -1)) if 'kernel' in"
    " jax.tree_util.keystr(path) else optax_egd.NOT_A_MATRIX, params)")
KEEP_EGDM_DEFAULT = (
    "dimension_numbers=lambda params: jax.tree.map(lambda p:"
    " optax_egd.DimensionNumbers(-2, -1) if p.ndim == 2 else"
    " optax_egd.NOT_A_MATRIX, params)")


def _listed(items: list[str]) -> str:
  return ", ".join(items[:MAX_LISTED]) + (
      f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def warn_about_default_axes(params: Any, who: str) -> None:
  """One warning policy for ``egd`` and ``egdm`` with the default
  ``dimension_numbers`` (the caller checks that it is the default).

  Warns, naming the leaves and pointing at the user's line, where the default
  may be wrong: leaves with three or more axes (conv and attention kernels as
  well as scanned layers; ``egd`` takes them as a batch of matrices over the
  last two axes, ``egdm`` gives them AdamW), and 2-D leaves named like vectors
  (``bias``, ``scale``: a scanned model's stacked biases and norm scales,
  which the default orthogonalizes across layers).
  """
  more, stacked = [], []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    ndim = getattr(leaf, "ndim", 0)
    where = f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}" if ndim else ""
    if ndim >= 3:
      more.append(where)
    elif ndim == 2 and any(str(k) in _VECTOR_NAMES for k in path_keys(path)):
      stacked.append(where)
  if not more and not stacked:
    return
  parts = []
  if more and who == "egdm":
    parts.append(
        "egdm: with dimension_numbers=None only 2-D leaves are matrices (as in"
        " optax.contrib.muon), so these leaves with more axes take AdamW, not"
        f" EGD: {_listed(more)}.")
  elif more:
    parts.append(
        "egd: with dimension_numbers=None the last two axes of a leaf form the"
        " matrix and the others are a batch, so these leaves are taken as"
        f" stacks of matrices: {_listed(more)}. That is right for stacked"
        " (scanned) layers, wrong for conv and attention kernels.")
  if stacked:
    parts.append(
        f"{who}: with dimension_numbers=None these 2-D leaves get EGD as"
        " matrices, though their names say they may be vectors stacked over"
        f" scanned layers: {_listed(stacked)}.")
  keep = (KEEP_EGDM_DEFAULT if who == "egdm" else
          "dimension_numbers=optax_egd.DimensionNumbers(-2, -1)")
  parts.append(
      f"To say which leaves are matrices, pass `{FLAX_FIX}` for a Flax NNX"
      f" model, or for any params `{KERNELS_FIX}` (docs/guide/egd.md, 'Flax"
      f" models'); to keep the default without this warning,"
      f" pass `{keep}`.")
  warnings.warn(" ".join(parts), UserWarning, stacklevel=user_stacklevel())


def _axes_of(dims: DimensionNumbers) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
  as_tuple = lambda a: tuple(a) if isinstance(a, (tuple, list)) else (a,)
  return as_tuple(dims.reduction_axis), as_tuple(dims.output_axis)


def check_dims_types(dims: DimensionNumbers) -> None:
  """Leaf-independent checks of one DimensionNumbers (at construction)."""
  for field, axes in zip(dims._fields, _axes_of(dims), strict=True):
    if not axes:
      raise ValueError(
          f"dimension_numbers {field} must name at least one axis, got {dims}")
    for a in axes:
      if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
        raise TypeError(
            f"dimension_numbers axes must be ints, got {a!r} in {dims}")


def normalized_axes(shape: tuple[int, ...], dims: DimensionNumbers,
                     where: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(rows, cols) of ``dims`` for a leaf of ``shape``, negative axes resolved.

  Axes count from the end when negative, like NumPy's: valid axes of an
  ``ndim``-dimensional leaf are ``-ndim … ndim - 1``; others raise (they are
  never wrapped around).
  """
  ndim = len(shape)
  leaf = f"leaf {where} of shape {shape}" if where else f"a leaf of shape {shape}"
  check_dims_types(dims)
  rows, cols = _axes_of(dims)
  for a in rows + cols:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"dimension_numbers {dims} does not fit {leaf}: axis {a} is out of"
          f" range for {ndim} dimensions (valid: {-ndim} to {ndim - 1})")
  rows = tuple(int(a) % ndim for a in rows)
  cols = tuple(int(a) % ndim for a in cols)
  if len(set(rows + cols)) != len(rows + cols):
    raise ValueError(
        f"dimension_numbers axes must be distinct and reduction_axis and"
        f" output_axis disjoint, got {dims} for {leaf}")
  return rows, cols


def check_dims_fit(spec: DimensionNumbersSpec, tree: Any) -> None:
  """Checks ``spec`` against the leaves of ``tree`` (the params, at init).

  Raises naming the leaf's path, its shape and the axis. A DimensionNumbers
  that stands for several leaves (a single one for the whole tree, or one for
  a subtree such as a layer's kernel and bias) applies to those with two or
  more dimensions; when it does not fit one of them the message says how to
  give leaves different axes. One given for a leaf alone must fit it.
  """
  if spec is None:
    return
  paths_leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]
  for (path, leaf), (dim, own) in zip(paths_leaves, leaf_dims(spec, tree),
                                      strict=True):
    shape = getattr(leaf, "shape", None)
    if isinstance(leaf, optax.MaskedNode) or dim is None or (
        dim is NOT_A_MATRIX) or shape is None or (not own and len(shape) < 2):
      continue
    try:
      normalized_axes(tuple(shape), dim, jax.tree_util.keystr(path))
    except ValueError as e:
      if own:
        raise
      what = ("A single DimensionNumbers applies to every leaf" if isinstance(
          spec, DimensionNumbers) else "A DimensionNumbers given for a subtree"
              " applies to every leaf below it")
      raise ValueError(
          f"{e}. {what} with two or more dimensions;"
          f" if they need different axes (e.g. conv and dense kernels),"
          f" {_FIX_HINT}") from None


class Matrixify(NamedTuple):
  """How one leaf becomes a (batch, m, n) stack of matrices and back."""

  perm: tuple[int, ...]
  stacked_shape: tuple[int, int, int]
  permuted_shape: tuple[int, ...]

  @classmethod
  def of(cls, shape: tuple[int, ...], dims: DimensionNumbers | None
         ) -> Matrixify:
    ndim = len(shape)
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    if dims is None:
      rows, cols = (ndim - 2,), (ndim - 1,)
    else:
      rows, cols = normalized_axes(shape, dims)
    batch = tuple(a for a in range(ndim) if a not in rows + cols)
    perm = batch + rows + cols
    size = lambda axes: math.prod(shape[a] for a in axes)
    return cls(perm, (size(batch), size(rows), size(cols)),
               tuple(shape[a] for a in perm))

  def to_stack(self, x: jax.Array) -> jax.Array:
    return x.transpose(self.perm).reshape(self.stacked_shape)

  def from_stack(self, x: jax.Array) -> jax.Array:
    return x.reshape(self.permuted_shape).transpose(np.argsort(self.perm))


def check_spec(spec: DimensionNumbersSpec) -> None:
  """Construction-time checks of a ``dimension_numbers`` spec (types, axes).

  Raises:
    TypeError / ValueError naming ``dimension_numbers``.
  """
  if callable(spec):
    return
  specs = jax.tree.leaves(spec, is_leaf=is_dims)
  if not all(is_dims(d) for d in specs):
    raise TypeError(
        "dimension_numbers must be a DimensionNumbers, optax_egd.NOT_A_MATRIX,"
        " a tree of them (None: the default), a callable from params to such a"
        f" tree, or None; got {spec!r}")
  for d in specs:
    if isinstance(d, DimensionNumbers):
      check_dims_types(d)
