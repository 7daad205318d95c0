"""``flax_dimension_numbers``: which axes of a Flax NNX model's params form matrices.

By its leaves' shapes alone a pytree cannot say what they are: a scanned
model's stacked biases ``(layers, d)`` look like matrices, a conv kernel
``(h, w, in, out)`` like a stack of ``h·w`` matrices, an attention kernel
``(in, heads, head_dim)`` like ``in`` matrices. The model knows: this module
reads the type of the layer that owns each parameter (``nnx.Linear``,
``nnx.LinearGeneral`` and so ``nnx.MultiHeadAttention``, ``nnx.Conv``,
``nnx.ConvTranspose``, ``nnx.Embed``, the norms) and takes axes beyond the
layer's own as stacked (``nnx.vmap``/``nnx.scan``) layers, a batch of
matrices. The result is a tree for ``dimension_numbers`` of
:func:`optax_egd.egd` and :func:`optax_egd.egdm`.

Flax is needed only to call it (``pip install optax-egd[experiments]``, or
flax itself).

Example:
  >>> import jax, optax, optax_egd
  >>> from flax import nnx
  >>> class Block(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.linear = nnx.Linear(4, 4, rngs=rngs)
  ...     self.norm = nnx.LayerNorm(4, rngs=rngs)
  >>> @nnx.vmap(in_axes=0, out_axes=0)
  ... def stack(key):
  ...   return Block(nnx.Rngs(key))
  >>> blocks = stack(jax.random.split(jax.random.key(0), 3))
  >>> blocks.linear.bias.shape  # 2-D, yet a stack of vectors
  (3, 4)
  >>> dims = optax_egd.flax_dimension_numbers(blocks)
  >>> dims["linear"]["kernel"], dims["linear"]["bias"]
  (MuonDimensionNumbers(reduction_axis=-2, output_axis=-1), optax_egd.NOT_A_MATRIX)
  >>> tx = optax.chain(optax_egd.egd(dimension_numbers=dims), optax.sgd(0.1))
  >>> optimizer = nnx.Optimizer(blocks, tx, wrt=nnx.Param)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optax_egd.transform import NOT_A_MATRIX, DimensionNumbers, _NotAMatrix


def _axes(first: int, count: int) -> tuple[int, ...]:
  return tuple(range(first, first + count))


def _kernel_dims(module: Any, shape: tuple[int, ...]
                 ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """(layer's own kernel shape, reduction axes, output axes) within it."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  if isinstance(module, nnx.LinearGeneral):  # Also MultiHeadAttention's.
    batch = tuple(module.batch_axis.values())
    n_in, n_out = len(module.in_features), len(module.out_features)
    own = (*batch, *module.in_features, *module.out_features)
    return own, _axes(len(batch), n_in), _axes(len(batch) + n_in, n_out)
  if isinstance(module, nnx.Linear):
    return (module.in_features, module.out_features), (0,), (1,)
  if isinstance(module, nnx.ConvTranspose):
    own = tuple(module.kernel_shape)
    spatial = len(own) - 2
    if module.transpose_kernel:  # (*kernel_size, out, in)
      return own, (*range(spatial), spatial + 1), (spatial,)
    return own, _axes(0, spatial + 1), (spatial + 1,)
  if isinstance(module, nnx.Conv):  # (*kernel_size, in // groups, out)
    own = tuple(module.kernel_shape)
    return own, _axes(0, len(own) - 1), (len(own) - 1,)
  raise NotImplementedError(type(module).__name__)


def _label(module: Any, name: str, shape: tuple[int, ...], where: str,
           embeddings: bool) -> DimensionNumbers | _NotAMatrix | None:
  """The label of parameter ``name`` of ``module``; None: not known."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  matrix_owners = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose)
  if isinstance(module, nnx.Embed) and name == "embedding":
    own: tuple[int, ...] = (module.num_embeddings, module.features)
    rows: tuple[int, ...] = (0,)
    cols: tuple[int, ...] = (1,)
    if not embeddings:
      return NOT_A_MATRIX
  elif isinstance(module, matrix_owners) and name == "kernel":
    own, rows, cols = _kernel_dims(module, shape)
  elif isinstance(module, (*matrix_owners, nnx.Embed, nnx.LayerNorm,
                           nnx.RMSNorm, nnx.BatchNorm, nnx.GroupNorm)):
    return NOT_A_MATRIX  # biases, norm scales and statistics: vectors
  elif len(shape) < 2:
    return NOT_A_MATRIX
  else:
    return None
  stacked = len(shape) - len(own)
  if stacked < 0 or tuple(shape[stacked:]) != tuple(own):
    raise ValueError(
        f"flax_dimension_numbers: {where} has shape {shape}, but its"
        f" {type(module).__name__} layer makes it {own}; stacked (nnx.vmap,"
        " nnx.scan) layers must stack along leading axes (out_axes=0)")
  # Counted from the end: the same numbers fit the leaf with or without its
  # stack (and say that leading axes are a batch).
  rows, cols = (tuple(a - len(own) for a in axes) for axes in (rows, cols))
  return DimensionNumbers(reduction_axis=rows if len(rows) > 1 else rows[0],
                          output_axis=cols if len(cols) > 1 else cols[0])


def _matches(path: tuple[Any, ...], prefix: tuple[Any, ...]) -> bool:
  return path[:len(prefix)] == prefix


def flax_dimension_numbers(
    model: Any,
    *,
    wrt: Any = None,
    embeddings: bool = True,
    overrides: Mapping[tuple[Any, ...], Any] | None = None,
) -> dict[Any, Any]:
  """A ``dimension_numbers`` tree for a Flax NNX model, read off its layers.

  Every parameter gets a :class:`optax_egd.DimensionNumbers` or
  :data:`optax_egd.NOT_A_MATRIX`, by the type of the layer that owns it:

  * ``nnx.Linear`` kernel ``(in, out)``: one matrix.
  * ``nnx.LinearGeneral`` kernel ``(*batch, *in_features, *out_features)``,
    hence ``nnx.MultiHeadAttention``'s query, key and value ``(in, heads,
    head_dim)`` and output ``(heads, head_dim, out)`` kernels: one
    ``prod(in_features) × prod(out_features)`` matrix (per ``batch_axis``
    entry).
  * ``nnx.Conv`` kernel ``(*kernel_size, in, out)``: one ``(h·w·in) × out``
    matrix; ``nnx.ConvTranspose`` likewise (``transpose_kernel`` read).
  * ``nnx.Embed`` embedding ``(num_embeddings, features)``: one matrix if
    ``embeddings`` (as ``optax.contrib.muon`` and ``egdm``'s default treat
    2-D leaves), else ``NOT_A_MATRIX``.
  * Biases, the norms' (``LayerNorm``, ``RMSNorm``, ``BatchNorm``,
    ``GroupNorm``) scales and any parameter with fewer than two axes:
    ``NOT_A_MATRIX``.

  Axes in front of a layer's own (``nnx.vmap``/``nnx.scan`` stacked layers,
  stacked along axis 0) are a batch: one matrix per layer. Axes are given
  counted from the end, so the tree fits the params with or without them.

  Args:
    model: an ``nnx.Module``.
    wrt: an NNX filter of the variables the optimizer updates, as given to
      ``nnx.Optimizer`` (default ``nnx.Param``).
    embeddings: whether ``nnx.Embed`` tables are matrices.
    overrides: ``{path: label}`` for parameters of other layer types (which
      raise otherwise) or to change a label: a path is a tuple of the names
      in the params (``("head", "w")``) or a prefix of one (``("blocks",)``),
      a label a ``DimensionNumbers`` or ``NOT_A_MATRIX``.

  Returns:
    A nested dict keyed like ``nnx.state(model, wrt)``, for
    ``egd(dimension_numbers=...)`` or ``egdm(dimension_numbers=...)``.

  Raises:
    TypeError: ``model`` is not an ``nnx.Module`` (linen: see below).
    ValueError: a parameter with two or more axes belongs to a layer type
      not listed above and has no override (named, with its shape), an
      override names no parameter, or a stack is not along leading axes.

  Linen models have no layer objects in their params: give linen's params a
  tree by layer name instead (docs/guide/egd.md, "Which axes form the
  matrix").

  Example:
    >>> import optax_egd
    >>> from flax import nnx
    >>> cnn = nnx.Conv(1, 8, (3, 3), rngs=nnx.Rngs(0))
    >>> optax_egd.flax_dimension_numbers(cnn)["kernel"]
    MuonDimensionNumbers(reduction_axis=(-4, -3, -2), output_axis=-1)
  """
  try:
    from flax import nnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - flax is an optional extra.
    raise ImportError(
        "flax_dimension_numbers needs flax: pip install flax") from e
  if not isinstance(model, nnx.Module):
    raise TypeError(
        "flax_dimension_numbers takes a flax.nnx.Module, got"
        f" {type(model).__name__}; for linen params give a tree by layer"
        " name (docs/guide/egd.md, 'Which axes form the matrix')")
  if not isinstance(embeddings, bool):
    raise TypeError(f"embeddings must be a bool, got {embeddings!r}")
  overrides = dict(overrides or {})
  for prefix, label in overrides.items():
    if not isinstance(prefix, tuple) or not prefix:
      raise TypeError(
          "overrides keys must be non-empty tuples of names, e.g."
          f" ('head', 'w'), got {prefix!r}")
    if label is not NOT_A_MATRIX and not isinstance(label, DimensionNumbers):
      raise TypeError(
          "overrides values must be optax_egd.DimensionNumbers or"
          f" optax_egd.NOT_A_MATRIX, got {label!r} for {prefix!r}")
  keep = nnx.filterlib.to_predicate(nnx.Param if wrt is None else wrt)
  nodes = dict(nnx.iter_graph(model))
  tree: dict[Any, Any] = {}
  used = set()
  unknown = []
  for path, node in nodes.items():
    if not isinstance(node, nnx.Variable) or not keep(path, node):
      continue
    shape = tuple(node.shape)
    where = "/".join(map(str, path))
    chosen = [p for p in overrides if _matches(path, p)]
    if chosen:
      prefix = max(chosen, key=len)
      used.add(prefix)
      label = overrides[prefix]
    else:
      label = _label(nodes[path[:-1]], str(path[-1]), shape, where, embeddings)
    if label is None:
      unknown.append(f"{where} {shape} ({type(nodes[path[:-1]]).__name__})")
      continue
    branch = tree
    for name in path[:-1]:
      branch = branch.setdefault(name, {})
    branch[path[-1]] = label
  if unknown:
    raise ValueError(
        "flax_dimension_numbers does not know which axes of these parameters"
        f" form a matrix: {', '.join(unknown)}; give each a label with"
        " overrides={path: label}, e.g. overrides={('head', 'w'):"
        " optax_egd.DimensionNumbers(-2, -1)} or optax_egd.NOT_A_MATRIX")
  unused = sorted(map(repr, set(overrides) - used))
  if unused:
    raise ValueError(
        f"overrides name no parameter of the model: {', '.join(unused)}")
  return tree
