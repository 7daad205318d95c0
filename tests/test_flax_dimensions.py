"""``flax_dimension_numbers`` on real Flax NNX models, and the default-axes warnings.

References are float64 NumPy polar factors of the gradients, reshaped by hand
the way each layer's weight is a matrix; never the code's own output.
"""

from __future__ import annotations

import re
import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_egd
from optax_egd import NOT_A_MATRIX, DimensionNumbers, egd, egdm, flax_dimension_numbers

LAYERS, D, HEADS = 3, 8, 2


# A cutoff well above float32's noise floor: a LayerNorm's output sums to zero
# over features, so the gradients of the kernels it feeds have a null
# direction, whose image is float noise below the cutoff.
RTOL = 1e-2


def np_polar(a: np.ndarray) -> np.ndarray:
  """UVᵀ in float64 with the cutoff σ ↦ σ/max(σ, RTOL·σ_max)."""
  u, s, vh = np.linalg.svd(np.asarray(a, np.float64), full_matrices=False)
  return (u * (s / np.maximum(s, RTOL * s[0]))) @ vh


class Block(nnx.Module):
  """A pre-norm transformer block."""

  def __init__(self, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(D, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads=HEADS, in_features=D, decode=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(D, rngs=rngs)
    self.up = nnx.Linear(D, 2 * D, rngs=rngs)
    self.down = nnx.Linear(2 * D, D, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.down(jax.nn.relu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
  """Embedding, LAYERS blocks made with nnx.vmap and run with nnx.scan, head."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(11, D, rngs=rngs)

    @nnx.split_rngs(splits=LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return Block(rngs)

    self.blocks = make(rngs)
    self.head = nnx.Linear(D, 11, rngs=rngs)

  def __call__(self, tokens):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, block):
      return block(x)

    return self.head(body(self.embed(tokens), self.blocks)).mean(axis=1)


class CNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(4, 5, rngs=rngs)

  def __call__(self, x):
    return self.dense(jax.nn.relu(self.conv(x)).mean(axis=(1, 2)))


def _tokens():
  tokens = jax.random.randint(jax.random.key(1), (6, 5), 0, 11)
  return tokens, jnp.arange(6) % 11


def _grads(model, x, y):
  loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
  return nnx.grad(loss)(model)


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def test_labels_of_a_scanned_transformer():
  dims = flax_dimension_numbers(Transformer(nnx.Rngs(0)))
  blocks = dims["blocks"]
  for name in ("query", "key", "value"):  # (layers, in, heads, head_dim)
    assert blocks["attn"][name]["kernel"] == DimensionNumbers(-3, (-2, -1))
    assert blocks["attn"][name]["bias"] is NOT_A_MATRIX  # (layers, heads, hd)
  assert blocks["attn"]["out"]["kernel"] == DimensionNumbers((-3, -2), -1)
  for name in ("up", "down"):
    assert blocks[name]["kernel"] == DimensionNumbers(-2, -1)
    assert blocks[name]["bias"] is NOT_A_MATRIX  # (layers, d): stacked vectors
  for name in ("ln1", "ln2"):
    assert blocks[name] == {"scale": NOT_A_MATRIX, "bias": NOT_A_MATRIX}
  assert dims["embed"]["embedding"] == DimensionNumbers(-2, -1)
  assert dims["head"]["kernel"] == DimensionNumbers(-2, -1)
  no_embed = flax_dimension_numbers(Transformer(nnx.Rngs(0)), embeddings=False)
  assert no_embed["embed"]["embedding"] is NOT_A_MATRIX


def test_egd_with_the_labels_orthogonalizes_each_layer_and_passes_vectors():
  model = Transformer(nnx.Rngs(0))
  tokens, labels = _tokens()
  grads = _grads(model, tokens, labels)
  tx = egd(method="svd", rtol=RTOL, dimension_numbers=flax_dimension_numbers(model))
  params = nnx.state(model, nnx.Param)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # labelled: no warning
    state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state)
  g, u = _np(grads), _np(updates)
  b_g, b_u = g["blocks"], u["blocks"]
  for layer in range(LAYERS):
    for name in ("query", "key", "value"):  # one D x (heads·head_dim) matrix
      k = b_g["attn"][name]["kernel"][layer]
      np.testing.assert_allclose(
          b_u["attn"][name]["kernel"][layer],
          np_polar(k.reshape(D, -1)).reshape(k.shape), atol=2e-5)
    k = b_g["attn"]["out"]["kernel"][layer]  # (heads·head_dim) x D
    np.testing.assert_allclose(b_u["attn"]["out"]["kernel"][layer],
                               np_polar(k.reshape(-1, D)).reshape(k.shape), atol=2e-5)
    for name in ("up", "down"):
      np.testing.assert_allclose(b_u[name]["kernel"][layer],
                                 np_polar(b_g[name]["kernel"][layer]), atol=2e-5)
  # Stacked biases and norm parameters, 2-D and 3-D: passed through.
  for leaf in (("up", "bias"), ("ln1", "scale"), ("ln2", "bias")):
    np.testing.assert_array_equal(b_u[leaf[0]][leaf[1]], b_g[leaf[0]][leaf[1]])
  np.testing.assert_array_equal(b_u["attn"]["query"]["bias"],
                                b_g["attn"]["query"]["bias"])
  np.testing.assert_allclose(u["embed"]["embedding"],
                             np_polar(g["embed"]["embedding"]), atol=2e-5)


def test_egdm_with_the_labels_gives_stacked_vectors_adamw_through_nnx_optimizer():
  model = Transformer(nnx.Rngs(0))
  tokens, labels = _tokens()
  tx = egdm(0.1, momentum=0.0, scale="none", method="svd", rtol=RTOL,
            dimension_numbers=flax_dimension_numbers(model))
  before = _np(nnx.state(model, nnx.Param))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = _grads(model, tokens, labels)
  optimizer.update(model, grads)
  delta = jax.tree.map(lambda a, b: a - b, _np(nnx.state(model, nnx.Param)), before)
  g = _np(grads)
  # AdamW's first step on a vector entry: -lr·sign(g) (for |g| >> eps).
  bias_g, bias_d = g["blocks"]["up"]["bias"], delta["blocks"]["up"]["bias"]
  big = np.abs(bias_g) > 1e-5
  np.testing.assert_allclose(bias_d[big], -0.1 * np.sign(bias_g[big]), rtol=1e-3)
  for layer in range(LAYERS):
    np.testing.assert_allclose(delta["blocks"]["down"]["kernel"][layer],
                               -0.1 * np_polar(g["blocks"]["down"]["kernel"][layer]),
                               atol=2e-5)


def test_a_cnn_kernel_is_one_matrix():
  model = CNN(nnx.Rngs(0))
  dims = flax_dimension_numbers(model)
  assert dims == {"conv": {"kernel": DimensionNumbers((-4, -3, -2), -1),
                           "bias": NOT_A_MATRIX},
                  "dense": {"kernel": DimensionNumbers(-2, -1), "bias": NOT_A_MATRIX}}
  x = jax.random.normal(jax.random.key(2), (8, 5, 5, 2))
  grads = _grads(model, x, jnp.arange(8) % 5)
  tx = egd(method="svd", rtol=RTOL, dimension_numbers=dims)
  updates, _ = tx.update(grads, tx.init(nnx.state(model, nnx.Param)))
  k = np.asarray(grads["conv"]["kernel"])
  np.testing.assert_allclose(np.asarray(updates["conv"]["kernel"]),
                             np_polar(k.reshape(18, 4)).reshape(k.shape), atol=2e-5)


def test_conv_transpose_and_a_linear_general_batch_axis():
  convt = nnx.ConvTranspose(2, 4, (3, 3), transpose_kernel=True, rngs=nnx.Rngs(0))
  assert convt.kernel.shape == (3, 3, 4, 2)  # (h, w, out, in)
  assert flax_dimension_numbers(convt)["kernel"] == DimensionNumbers(
      (-4, -3, -1), -2)
  general = nnx.LinearGeneral((3, 4), 5, axis=(-2, -1), batch_axis={0: 6},
                              rngs=nnx.Rngs(0))
  assert general.kernel.shape == (6, 3, 4, 5)
  assert flax_dimension_numbers(general)["kernel"] == DimensionNumbers((-3, -2), -1)


class _Custom(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones((3, 4)))
    self.v = nnx.Param(jnp.ones(3))  # fewer than two axes: not a matrix


def test_unknown_layers_raise_unless_overridden():
  with pytest.raises(ValueError, match=r"w \(3, 4\) \(_Custom\).*overrides="):
    flax_dimension_numbers(_Custom())
  dims = flax_dimension_numbers(_Custom(), overrides={("w",): DimensionNumbers(0, 1)})
  assert dims == {"w": DimensionNumbers(0, 1), "v": NOT_A_MATRIX}
  with pytest.raises(ValueError, match="overrides name no parameter"):
    flax_dimension_numbers(_Custom(), overrides={("w",): NOT_A_MATRIX,
                                                 ("nope",): NOT_A_MATRIX})
  with pytest.raises(TypeError, match="overrides keys"):
    flax_dimension_numbers(_Custom(), overrides={"w": NOT_A_MATRIX})
  with pytest.raises(TypeError, match="overrides values"):
    flax_dimension_numbers(_Custom(), overrides={("w",): None})
  with pytest.raises(TypeError, match="takes a flax.nnx.Module"):
    flax_dimension_numbers({"w": jnp.ones((2, 2))})
  with pytest.raises(TypeError, match="embeddings must be a bool"):
    flax_dimension_numbers(_Custom(), embeddings=1)


def test_a_stack_along_another_axis_raises():
  @nnx.vmap(in_axes=0, out_axes=1)
  def make(key):
    return nnx.Linear(4, 5, rngs=nnx.Rngs(key))

  layers = make(jax.random.split(jax.random.key(0), 3))
  assert layers.kernel.shape == (4, 3, 5)
  with pytest.raises(ValueError, match=r"kernel has shape \(4, 3, 5\).*leading"):
    flax_dimension_numbers(layers)


# ----------------------------------------------- warnings of the defaults ---


def _only_warning(record):
  assert len(record) == 1, [str(w.message) for w in record]
  return record[0]


@pytest.mark.parametrize("make_tx", [lambda: egd(), lambda: egdm(0.1)],
                         ids=["egd", "egdm"])
def test_default_warns_at_the_users_line_through_nnx_optimizer(make_tx):
  model = CNN(nnx.Rngs(0))
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    nnx.Optimizer(model, make_tx(), wrt=nnx.Param)  # the line warned about
  w = _only_warning(record)
  assert w.filename == __file__, w.filename
  assert re.search(r"\['conv'\]\['kernel'\]\S* \(3, 3, 2, 4\)", str(w.message))
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    make_tx().init(nnx.state(model, nnx.Param))
  assert _only_warning(record).filename == __file__


def test_default_warns_about_stacked_biases_and_norm_scales():
  model = Transformer(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  for who, make_tx in (("egd", egd), ("egdm", lambda: egdm(0.1))):
    with pytest.warns(UserWarning) as record:
      make_tx().init(params)
    message = str(_only_warning(record).message)
    assert re.search(
        rf"{who}: with dimension_numbers=None these 2-D leaves get EGD as matrices,"
        r".*\['blocks'\]\['down'\]\['bias'\]\S* \(3, 8\)", message), message


def _suggested(message: str) -> list[str]:
  """The ``dimension_numbers=...`` expressions a warning suggests (in backticks)."""
  return re.findall(r"`dimension_numbers=([^`]+)`", message)


@pytest.mark.parametrize("who", ["egd", "egdm"])
def test_the_fixes_a_warning_suggests_run_when_pasted(who):
  model = Transformer(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  make = (lambda dims: egd(dimension_numbers=dims)) if who == "egd" else (
      lambda dims: egdm(0.1, dimension_numbers=dims))
  with pytest.warns(UserWarning) as record:
    make(None).init(params)
  fixes = _suggested(str(record[0].message))
  assert len(fixes) == 3, fixes  # the Flax helper, any params, keep the default
  for fix in fixes:
    namespace = {"jax": jax, "optax_egd": optax_egd, "model": model}
    dims = eval(fix, namespace)  # noqa: S307 - the text a user pastes
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      state = make(dims).init(params)
    assert jax.tree.leaves(state)


# ------------------------------------------------------------------ linen ---

import flax.linen as nn  # noqa: E402


class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(nn.LayerNorm()(x))
    return x + nn.Dense(D)(jax.nn.relu(nn.Dense(2 * D)(x))), None


class LinenTransformer(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(11, D)(tokens)
    x, _ = nn.scan(LinenBlock, variable_axes={"params": 0},
                   split_rngs={"params": True}, length=LAYERS)()(x, None)
    x = nn.Conv(4, (3,))(x)  # a 1-D conv kernel (3, D, 4)
    return nn.Dense(11)(x).mean(axis=1)


def test_linen_scanned_transformer_is_labelled_from_its_layers():
  tokens, labels = _tokens()
  model = LinenTransformer()
  dims = flax_dimension_numbers(model, tokens)
  blocks = dims["params"]["ScanLinenBlock_0"]
  attn = blocks["MultiHeadDotProductAttention_0"]
  assert attn["query"]["kernel"] == DimensionNumbers(-3, (-2, -1))
  assert attn["out"]["kernel"] == DimensionNumbers((-3, -2), -1)
  assert attn["query"]["bias"] is NOT_A_MATRIX
  assert blocks["Dense_0"] == {"kernel": DimensionNumbers(-2, -1), "bias": NOT_A_MATRIX}
  assert blocks["LayerNorm_0"] == {"scale": NOT_A_MATRIX, "bias": NOT_A_MATRIX}
  assert dims["params"]["Conv_0"]["kernel"] == DimensionNumbers((-3, -2), -1)
  variables = model.init(jax.random.key(0), tokens)
  grads = jax.grad(lambda v: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(v, tokens), labels).mean())(variables)
  tx = egd(method="svd", rtol=RTOL, dimension_numbers=dims)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    state = tx.init(variables)
  updates, _ = tx.update(grads, state)
  g, u = _np(grads["params"]), _np(updates["params"])
  for layer in range(LAYERS):
    k = g["ScanLinenBlock_0"]["Dense_1"]["kernel"][layer]
    np.testing.assert_allclose(u["ScanLinenBlock_0"]["Dense_1"]["kernel"][layer],
                               np_polar(k), atol=2e-5)
  np.testing.assert_array_equal(u["ScanLinenBlock_0"]["Dense_0"]["bias"],
                                g["ScanLinenBlock_0"]["Dense_0"]["bias"])
  k = g["Conv_0"]["kernel"]
  np.testing.assert_allclose(u["Conv_0"]["kernel"],
                             np_polar(k.reshape(3 * D, 4)).reshape(k.shape), atol=2e-5)
  # dims["params"] fits variables["params"].
  egd(dimension_numbers=dims["params"]).init(variables["params"])


def test_linen_needs_example_inputs_and_nnx_takes_none():
  with pytest.raises(TypeError, match="needs example inputs for a linen module"):
    flax_dimension_numbers(nn.Dense(3))
  with pytest.raises(TypeError, match="inputs for a linen module only"):
    flax_dimension_numbers(CNN(nnx.Rngs(0)), jnp.ones((1, 5, 5, 2)))
  with pytest.raises(TypeError, match="wrt is for NNX"):
    flax_dimension_numbers(nn.Dense(3), jnp.ones((1, 2)), wrt=nnx.Param)
