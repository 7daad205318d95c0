"""Flax NNX models of the EGD and Omnigrok experiments.

* :class:`MLP`: the EGD paper's two-layer ReLU network ``in → hidden → out``,
  He-normal kernels, a bias on the hidden layer only (as in the official
  ``main-results`` scripts), zero hidden bias by default.
* :class:`Transformer`: a small decoder-only transformer (pre-LayerNorm
  blocks, causal attention, GELU MLP of width ``4·d_model``, learned token and
  position embeddings, bias-free head) that predicts from the last position.
* :class:`GrokfastDecoder`: Grokfast's modular-arithmetic transformer
  (``ironjr/grokfast``'s ``main.py``) with PyTorch's default initialization:
  its residual layout ``x = ln1(x); x = x + attn(x); x = x + mlp(ln2(x))``, a
  fused QKV projection, exact GELU, LayerNorm ε 1e-5, logits over the whole
  vocabulary at the last position.
* :class:`OmnigrokMLP`: Omnigrok's MNIST network (``depth`` linear layers of
  width ``width``, PyTorch's default ``nn.Linear`` initialization times
  ``init_scale``).

Every model names the path of its first kernel in ``first_kernel`` (used by
the ``egd-first-layer`` optimizer).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from flax import nnx
import jax
import jax.numpy as jnp
from optax.contrib import MuonDimensionNumbers as DimensionNumbers

from optax_egd import dimension_numbers

HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
ZEROS = nnx.initializers.zeros_init()
Path = tuple[str | int, ...]


class MLP(nnx.Module):
  """Two-layer ReLU network; output squeezed to a scalar when ``out == 1``.

  Float inputs are feature vectors. Integer inputs ``(..., k)`` are the
  indices of the ones of a multi-hot feature vector: the hidden layer then
  sums ``k`` kernel rows, equal to (and much cheaper than) the matmul with
  the dense vector, with the same gradients.
  """

  first_kernel: ClassVar[Path] = ("hidden", "kernel")

  def __init__(
    self,
    in_features: int,
    hidden: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    hidden_bias_init: nnx.Initializer = ZEROS,
  ) -> None:
    self.hidden = nnx.Linear(
      in_features, hidden, kernel_init=HE_NORMAL, bias_init=hidden_bias_init, rngs=rngs
    )
    self.out = nnx.Linear(
      hidden, out_features, use_bias=False, kernel_init=HE_NORMAL, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.integer):
      h = self.hidden.kernel[...][x].sum(axis=-2)
      if self.hidden.bias is not None:
        h = h + self.hidden.bias[...]
    else:
      h = self.hidden(x)
    y = self.out(jax.nn.relu(h))
    return y[..., 0] if y.shape[-1] == 1 else y


def parity_bias_init(in_features: int) -> nnx.Initializer:
  """The official parity script's hidden bias: ``N(0, 2/in_features)``."""
  return nnx.initializers.normal(math.sqrt(2.0 / in_features))


class Block(nnx.Module):
  """Pre-LayerNorm causal self-attention block with a GELU MLP."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs) -> None:
    self.ln_attn = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads, d_model, decode=False, rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp_in = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
    self.mlp_out = nnx.Linear(4 * d_model, d_model, rngs=rngs)

  def __call__(
    self, h: jax.Array, mask: jax.Array, last_only: bool = False
  ) -> jax.Array:
    """Apply the block; with ``last_only`` only the last position's output.

    ``last_only`` attends from the last position alone (to every position),
    which is all the final block has to compute for a next-token prediction.
    """
    x = self.ln_attn(h)
    if last_only:
      h, mask = h[..., -1:, :], mask[..., -1:, :]
    h = h + self.attn(x[..., -h.shape[-2] :, :], x, x, mask=mask)
    return h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln_mlp(h))))


class Transformer(nnx.Module):
  """Decoder-only transformer; logits of the token after the last position."""

  first_kernel: ClassVar[Path] = ("blocks", 0, "mlp_in", "kernel")

  def __init__(
    self,
    vocab_size: int,
    num_classes: int,
    seq_len: int,
    *,
    d_model: int = 128,
    num_heads: int = 4,
    num_layers: int = 2,
    rngs: nnx.Rngs,
  ) -> None:
    self.token_embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    self.pos_embed = nnx.Embed(seq_len, d_model, rngs=rngs)
    self.blocks = nnx.List(
      [Block(d_model, num_heads, rngs=rngs) for _ in range(num_layers)]
    )
    self.ln_final = nnx.LayerNorm(d_model, rngs=rngs)
    self.head = nnx.Linear(d_model, num_classes, use_bias=False, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    seq_len = tokens.shape[-1]
    h = self.token_embed(tokens) + self.pos_embed(jnp.arange(seq_len))
    mask = nnx.make_causal_mask(tokens)
    for i, block in enumerate(self.blocks):
      h = block(h, mask, last_only=i == len(self.blocks) - 1)
    return self.head(self.ln_final(h[..., -1, :]))


def _torch_kernel_init(init_scale: float) -> nnx.Initializer:
  """PyTorch ``nn.Linear``'s kernel init ``U(±1/√fan_in)``, times ``init_scale``."""
  return nnx.initializers.variance_scaling(init_scale**2 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int, init_scale: float) -> nnx.Initializer:
  """PyTorch ``nn.Linear``'s bias init ``U(±1/√fan_in)``, times ``init_scale``."""
  limit = init_scale / math.sqrt(fan_in)

  def init(
    key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
  ) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


class OmnigrokMLP(nnx.Module):
  """Omnigrok's MNIST MLP: ``depth`` linear layers, ReLU between them."""

  first_kernel: ClassVar[Path] = ("layers", 0, "kernel")

  def __init__(
    self,
    in_features: int = 784,
    width: int = 200,
    out_features: int = 10,
    *,
    depth: int = 3,
    init_scale: float = 8.0,
    rngs: nnx.Rngs,
  ) -> None:
    sizes = [in_features] + [width] * (depth - 1) + [out_features]
    self.layers = nnx.List(
      [
        nnx.Linear(
          fan_in,
          fan_out,
          kernel_init=_torch_kernel_init(init_scale),
          bias_init=_torch_bias_init(fan_in, init_scale),
          rngs=rngs,
        )
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


TORCH_EMBED_INIT = nnx.initializers.normal(1.0)
TORCH_LN_EPS = 1e-5


class CausalSelfAttention(nnx.Module):
  """``torch.nn.MultiheadAttention`` with a causal mask, in Flax NNX.

  One fused ``qkv`` kernel ``(d_model, 3·d_model)`` (query, key, value
  columns in that order) initialized Xavier-uniform as PyTorch's
  ``in_proj_weight``, zero ``qkv`` and ``out`` biases, and the ``out`` kernel
  ``U(±1/√d_model)`` (PyTorch's ``nn.Linear`` default). All kernels are 2-D.
  """

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs) -> None:
    if d_model % num_heads:
      raise ValueError(f"d_model {d_model} is not a multiple of num_heads {num_heads}")
    self.num_heads = num_heads
    self.qkv = nnx.Linear(
      d_model,
      3 * d_model,
      kernel_init=nnx.initializers.xavier_uniform(),
      bias_init=ZEROS,
      rngs=rngs,
    )
    self.out = nnx.Linear(
      d_model, d_model, kernel_init=_torch_kernel_init(1.0), bias_init=ZEROS, rngs=rngs
    )

  def __call__(self, x: jax.Array, last_only: bool = False) -> jax.Array:
    """Causal self-attention over ``x`` ``(..., T, d)``; with ``last_only``
    only the last position's output ``(..., 1, d)``."""
    *batch, length, d = x.shape
    heads, head_dim = self.num_heads, d // self.num_heads
    q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
    split = lambda t: t.reshape(*t.shape[:-1], heads, head_dim)
    q, k, v = split(q), split(k), split(v)
    mask = jnp.tril(jnp.ones((length, length), jnp.bool_))
    if last_only:
      q, mask = q[..., -1:, :, :], mask[-1:]
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(head_dim)
    scores = jnp.where(mask, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    y = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return self.out(y.reshape(*y.shape[:-2], d))


class GrokfastBlock(nnx.Module):
  """Grokfast's block: ``x = ln1(x); x = x + attn(x); x = x + mlp(ln2(x))``.

  The first residual adds to the *normalized* input, as in
  ``ironjr/grokfast``'s ``Block.forward``; the MLP is
  ``Linear(d, 4d) → GELU (exact) → Linear(4d, d)`` with PyTorch's default
  ``U(±1/√fan_in)`` kernels and biases.
  """

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs) -> None:
    self.ln1 = nnx.LayerNorm(d_model, epsilon=TORCH_LN_EPS, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d_model, epsilon=TORCH_LN_EPS, rngs=rngs)
    self.mlp_in = nnx.Linear(
      d_model,
      4 * d_model,
      kernel_init=_torch_kernel_init(1.0),
      bias_init=_torch_bias_init(d_model, 1.0),
      rngs=rngs,
    )
    self.mlp_out = nnx.Linear(
      4 * d_model,
      d_model,
      kernel_init=_torch_kernel_init(1.0),
      bias_init=_torch_bias_init(4 * d_model, 1.0),
      rngs=rngs,
    )

  def __call__(self, x: jax.Array, last_only: bool = False) -> jax.Array:
    x = self.ln1(x)
    a = self.attn(x, last_only)
    x = (x[..., -1:, :] if last_only else x) + a
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(x)), approximate=False))


class GrokfastDecoder(nnx.Module):
  """Grokfast's causal decoder (``ironjr/grokfast`` ``main.py``'s ``Decoder``).

  Token and position embeddings ``N(0, 1)`` (PyTorch's ``nn.Embedding``), a
  ``max_len``-row position table (Grokfast: 5, of which the 4 input positions
  are used), ``num_layers`` :class:`GrokfastBlock`, a final LayerNorm and a
  bias-free head over the whole vocabulary (``num_tokens`` logits), read at
  the last input position (the ``=`` token). The last block computes the last
  position only (the only one the loss reads; same result).
  """

  first_kernel: ClassVar[Path] = ("blocks", 0, "mlp_in", "kernel")

  def __init__(
    self,
    num_tokens: int,
    *,
    max_len: int = 5,
    d_model: int = 128,
    num_heads: int = 4,
    num_layers: int = 2,
    rngs: nnx.Rngs,
  ) -> None:
    self.token_embed = nnx.Embed(
      num_tokens, d_model, embedding_init=TORCH_EMBED_INIT, rngs=rngs
    )
    self.pos_embed = nnx.Embed(
      max_len, d_model, embedding_init=TORCH_EMBED_INIT, rngs=rngs
    )
    self.blocks = nnx.List(
      [GrokfastBlock(d_model, num_heads, rngs=rngs) for _ in range(num_layers)]
    )
    self.ln_final = nnx.LayerNorm(d_model, epsilon=TORCH_LN_EPS, rngs=rngs)
    self.head = nnx.Linear(
      d_model,
      num_tokens,
      use_bias=False,
      kernel_init=_torch_kernel_init(1.0),
      rngs=rngs,
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    h = self.token_embed(tokens) + self.pos_embed(jnp.arange(length))
    for i, block in enumerate(self.blocks):
      h = block(h, last_only=i == len(self.blocks) - 1)
    return self.head(self.ln_final(h[..., -1, :]))


Model = MLP | Transformer | GrokfastDecoder | OmnigrokMLP


def path_keys(path: tuple[Any, ...]) -> Path:
  """A pytree key path of an ``nnx.State`` as plain names and indices
  (optax_egd's helper, without the ``.value`` attribute of NNX variables)."""
  return dimension_numbers.path_keys(path, attributes=False)


def is_kernel(path: tuple[Any, ...]) -> bool:
  """Whether a parameter path names the weight matrix of a linear map."""
  keys = path_keys(path)
  return bool(keys) and keys[-1] == "kernel"


def kernel_mask(params: Any) -> Any:
  """A tree like ``params``: True on linear-map kernels, False elsewhere."""
  return jax.tree_util.tree_map_with_path(lambda path, _: is_kernel(path), params)


def matrix_dimension_numbers(params: Any) -> Any:
  """Which axes of every kernel form a matrix, for ``egd`` and ``muon``.

  A tree like ``params`` holding a ``DimensionNumbers`` (fan-in axes,
  fan-out axes) for every kernel and None for every other leaf (biases,
  norms, embeddings). The attention kernels of :class:`nnx.MultiHeadAttention`
  are 3-D: ``(d_model, heads, head_dim)`` for query/key/value and
  ``(heads, head_dim, d_model)`` for the output projection.
  """

  def dims(path: tuple[Any, ...], leaf: jax.Array) -> DimensionNumbers | None:
    if not is_kernel(path):
      return None
    module = path_keys(path)[-2]
    if leaf.ndim == 3 and module in ("query", "key", "value"):
      return DimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    if leaf.ndim == 3 and module == "out":
      return DimensionNumbers(reduction_axis=(0, 1), output_axis=2)
    return DimensionNumbers(reduction_axis=leaf.ndim - 2, output_axis=leaf.ndim - 1)

  return jax.tree_util.tree_map_with_path(dims, params)
