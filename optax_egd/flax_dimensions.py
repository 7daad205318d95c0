"""``flax_dimension_numbers``: which axes of a Flax model's params form matrices.

By its leaves' shapes alone a pytree cannot say what they are: a scanned
model's stacked biases ``(layers, d)`` look like matrices, a conv kernel
``(h, w, in, out)`` like a stack of ``h·w`` matrices, an attention kernel
``(in, heads, head_dim)`` like ``in`` matrices. The model knows: this module
reads the type of the layer that owns each parameter (``nnx.Linear``,
``nnx.LinearGeneral`` and so ``nnx.MultiHeadAttention``, ``nnx.Conv``,
``nnx.ConvTranspose``, ``nnx.Embed``, the norms) and takes axes beyond the
layer's own as stacked (``nnx.vmap``/``nnx.scan``) layers, a batch of
matrices. Linen modules are read the same way, by tracing their ``init``. The
result is a tree for ``dimension_numbers`` of
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

from optax_egd.dimension_numbers import NOT_A_MATRIX, DimensionNumbers, NotAMatrix


def _axes(first: int, count: int) -> tuple[int, ...]:
  return tuple(range(first, first + count))


def _as_tuple(x: Any) -> tuple[Any, ...]:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


# How a layer's own kernel is a matrix: (its number of axes, the reduction and
# the output axes among them, and the sizes they must have where known).
_Kernel = tuple[int, tuple[int, ...], tuple[int, ...], dict[int, int]]


def _nnx_kernel(module: Any) -> _Kernel | None:
  from flax import nnx  # pylint: disable=import-outside-toplevel

  if isinstance(module, nnx.LinearGeneral):  # Also MultiHeadAttention's.
    own = (*module.batch_axis.values(), *module.in_features,
           *module.out_features)
    n_batch, n_in = len(module.batch_axis), len(module.in_features)
    n_out = len(module.out_features)
    return (len(own), _axes(n_batch, n_in), _axes(n_batch + n_in, n_out),
            dict(enumerate(own)))
  if isinstance(module, nnx.Linear):
    return 2, (0,), (1,), {0: module.in_features, 1: module.out_features}
  if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
    own = tuple(module.kernel_shape)
    spatial = len(own) - 2
    if isinstance(module, nnx.ConvTranspose) and module.transpose_kernel:
      # (*kernel_size, out, in)
      return len(own), (*range(spatial), spatial + 1), (spatial,), dict(
          enumerate(own))
    return len(own), _axes(0, spatial + 1), (spatial + 1,), dict(enumerate(own))
  return None


def _linen_kernel(module: Any) -> _Kernel | None:
  from flax import linen as nn  # pylint: disable=import-outside-toplevel

  if isinstance(module, nn.DenseGeneral):  # Also the attention's.
    n_batch, n_in = len(_as_tuple(module.batch_dims)), len(_as_tuple(module.axis))
    features = _as_tuple(module.features)
    n = n_batch + n_in + len(features)
    return (n, _axes(n_batch, n_in), _axes(n_batch + n_in, len(features)),
            {n - len(features) + i: f for i, f in enumerate(features)})
  if isinstance(module, nn.Dense):
    return 2, (0,), (1,), {1: module.features}
  if isinstance(module, (nn.Conv, nn.ConvTranspose)):
    spatial = len(_as_tuple(module.kernel_size))
    if isinstance(module, nn.ConvTranspose) and module.transpose_kernel:
      return (spatial + 2, (*range(spatial), spatial + 1), (spatial,),
              {spatial: module.features})
    return spatial + 2, _axes(0, spatial + 1), (spatial + 1,), {
        spatial + 1: module.features}
  return None


def _nnx_kinds() -> tuple[tuple[type, ...], Any, tuple[type, ...]]:
  """(layers with a kernel, the embedding layer, layers of vectors only)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return ((nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose),
          nnx.Embed, (nnx.LayerNorm, nnx.RMSNorm, nnx.BatchNorm, nnx.GroupNorm))


def _linen_kinds() -> tuple[tuple[type, ...], Any, tuple[type, ...]]:
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  return ((nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose), nn.Embed,
          (nn.LayerNorm, nn.RMSNorm, nn.BatchNorm, nn.GroupNorm))


def _label(module: Any, name: str, shape: tuple[int, ...], where: str,
           embeddings: bool, linen: bool) -> DimensionNumbers | NotAMatrix | None:
  """The label of parameter ``name`` of ``module``; None: not known."""
  with_kernel, embed, vectors = _linen_kinds() if linen else _nnx_kinds()
  kernel: _Kernel | None
  if isinstance(module, embed) and name == "embedding":
    if not embeddings:
      return NOT_A_MATRIX
    kernel = (2, (0,), (1,), {1: module.features})
  elif isinstance(module, with_kernel) and name == "kernel":
    kernel = (_linen_kernel if linen else _nnx_kernel)(module)
  elif isinstance(module, (*with_kernel, embed, *vectors)) or len(shape) < 2:
    return NOT_A_MATRIX  # biases, norm scales and statistics: vectors
  else:
    return None
  assert kernel is not None
  own, rows, cols, sizes = kernel
  stacked = len(shape) - own
  if stacked < 0 or any(shape[stacked + a] != n for a, n in sizes.items()):
    expected = ", ".join(f"axis {a - own} of size {n}" for a, n in sizes.items())
    raise ValueError(
        f"flax_dimension_numbers: {where} has shape {shape}, but its"
        f" {type(module).__name__} layer makes it {own}-D ({expected}, counted"
        " from the end); stacked (vmap, scan) layers must stack along leading"
        " axes (out_axes=0 / variable_axes={'params': 0})")
  # Counted from the end: the same numbers fit the leaf with or without its
  # stack (and say that leading axes are a batch).
  rows, cols = (tuple(a - own for a in axes) for axes in (rows, cols))
  return DimensionNumbers(reduction_axis=rows if len(rows) > 1 else rows[0],
                          output_axis=cols if len(cols) > 1 else cols[0])


def _matches(path: tuple[Any, ...], prefix: tuple[Any, ...]) -> bool:
  return path[:len(prefix)] == prefix


def _nnx_params(model: Any, wrt: Any
                ) -> list[tuple[tuple[Any, ...], tuple[int, ...], Any]]:
  """(path, shape, owning layer) of every variable ``wrt`` selects."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  keep = nnx.filterlib.to_predicate(nnx.Param if wrt is None else wrt)
  nodes = dict(nnx.iter_graph(model))
  return [(path, tuple(node.shape), nodes[path[:-1]])
          for path, node in nodes.items()
          if isinstance(node, nnx.Variable) and keep(path, node)]


def _linen_params(model: Any, inputs: tuple[Any, ...]
                  ) -> list[tuple[tuple[Any, ...], tuple[int, ...], Any]]:
  """(path, shape, owning layer) of every parameter, ``"params"`` first in
  the path; found by tracing ``model.init`` (shapes only, nothing computed)."""
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  owners: dict[tuple[str, ...], Any] = {}

  def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
    module = context.module
    if module.scope is not None:
      owners.setdefault(tuple(module.scope.path), module)
    return next_fun(*args, **kwargs)

  key = jax.random.key(0)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(
        lambda: model.init({"params": key, "dropout": key}, *inputs))
  if "params" not in variables:
    return []
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
    names = tuple(getattr(k, "key", k) for k in path)
    found.append((("params", *names), tuple(leaf.shape), owners.get(names[:-1])))
  return found


def flax_dimension_numbers(
    model: Any,
    *inputs: Any,
    wrt: Any = None,
    embeddings: bool = True,
    overrides: Mapping[tuple[Any, ...], Any] | None = None,
) -> dict[Any, Any]:
  """A ``dimension_numbers`` tree for a Flax model, read off its layers.

  Every parameter gets a :class:`optax_egd.DimensionNumbers` or
  :data:`optax_egd.NOT_A_MATRIX`, by the type of the layer that owns it
  (NNX; linen's ``Dense``, ``DenseGeneral``, ``Conv``, ``ConvTranspose``,
  ``Embed`` and norms alike):

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

  Axes in front of a layer's own (layers stacked by ``nnx.vmap``/``nnx.scan``
  or linen's ``nn.scan``/``nn.vmap``, along axis 0) are a batch: one matrix
  per layer. Axes are counted from the end, so the tree fits the params with
  or without them.

  Args:
    model: an ``nnx.Module``, or a linen ``nn.Module`` followed by
      ``inputs``.
    *inputs: for a linen module, example arguments of its ``__call__``:
      ``model.init`` is traced on them (shapes only) to find its layers.
    wrt: for NNX, a filter of the variables the optimizer updates, as given
      to ``nnx.Optimizer`` (default ``nnx.Param``). Linen: its ``"params"``.
    embeddings: whether ``Embed`` tables are matrices.
    overrides: ``{path: label}`` for parameters of other layer types (which
      raise otherwise) or to change a label: a path is a tuple of the names
      in the returned tree (``("head", "w")``; linen: ``("params", "Dense_0")``)
      or a prefix of one, a label a ``DimensionNumbers`` or ``NOT_A_MATRIX``.

  Returns:
    A nested dict: for NNX keyed like ``nnx.state(model, wrt)``, for linen
    like ``model.init(...)``, i.e. ``{"params": ...}`` (pass ``dims["params"]``
    with ``variables["params"]``); for ``egd(dimension_numbers=...)`` or
    ``egdm(dimension_numbers=...)``.

  Raises:
    TypeError: ``model`` is not a Flax module, or a bad argument (named).
    ValueError: a parameter with two or more axes belongs to a layer type
      not listed above and has no override (named, with its shape), an
      override names no parameter, or a stack is not along leading axes.

  Example:
    >>> import jax.numpy as jnp, optax_egd
    >>> from flax import linen as nn, nnx
    >>> cnn = nnx.Conv(1, 8, (3, 3), rngs=nnx.Rngs(0))
    >>> optax_egd.flax_dimension_numbers(cnn)["kernel"]
    MuonDimensionNumbers(reduction_axis=(-4, -3, -2), output_axis=-1)
    >>> dims = optax_egd.flax_dimension_numbers(nn.Conv(8, (3, 3)),
    ...                                         jnp.ones((1, 5, 5, 1)))
    >>> dims["params"]["kernel"]
    MuonDimensionNumbers(reduction_axis=(-4, -3, -2), output_axis=-1)
  """
  try:
    from flax import linen as nn  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - flax is an optional extra.
    raise ImportError(
        "flax_dimension_numbers needs flax: pip install flax") from e
  linen = isinstance(model, nn.Module)
  if not linen and not isinstance(model, nnx.Module):
    raise TypeError(
        "flax_dimension_numbers takes a flax.nnx.Module or a flax.linen.Module,"
        f" got {type(model).__name__}")
  if linen and not inputs:
    raise TypeError(
        "flax_dimension_numbers needs example inputs for a linen module (its"
        " layers are found by tracing model.init on them), e.g."
        " flax_dimension_numbers(model, x)")
  if not linen and inputs:
    raise TypeError(
        "flax_dimension_numbers takes inputs for a linen module only; an nnx"
        " module already holds its layers")
  if linen and wrt is not None:
    raise TypeError("wrt is for NNX modules; a linen module's are its params")
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
  found = _linen_params(model, inputs) if linen else _nnx_params(model, wrt)
  tree: dict[Any, Any] = {}
  used = set()
  unknown = []
  for path, shape, owner in found:
    where = "/".join(map(str, path))
    chosen = [p for p in overrides if _matches(path, p)]
    if chosen:
      prefix = max(chosen, key=len)
      used.add(prefix)
      label = overrides[prefix]
    else:
      label = _label(owner, str(path[-1]), shape, where, embeddings, linen)
    if label is None:
      unknown.append(f"{where} {shape} ({type(owner).__name__})")
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
