"""egd, egdm and the baselines on Flax models and the trees Flax makes.

The library's own tests (test_transform, test_recipe, test_baselines, ...)
need no Flax; these check the same transforms through ``nnx.Optimizer``, on
NNX ``State``s, linen params and ``FrozenDict``s, and on scanned (stacked)
layers and CNNs. References are float64 NumPy polar factors.
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings

from flax import nnx
from flax.core import FrozenDict
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_baselines
import test_recipe
from test_transform import CONV, _conv_reference, assert_polar, run

from optax_egd import DimensionNumbers, egd, egdm

TRANSFORMS = test_baselines.TRANSFORMS
_randn = test_recipe._randn
np_polar = test_recipe.np_polar


def test_dimension_numbers_may_be_a_frozen_dict():
  egd(dimension_numbers=FrozenDict({"a": CONV})).init({"a": jnp.ones((3, 3, 2, 4))})


# ------------------------------------------------------------------- egd ---


def test_egd_through_nnx_optimizer():
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 6, rngs=rngs)
      self.l2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  model = Model(nnx.Rngs(0))
  x, y = jnp.asarray(_randn(44, 8, 4)), jnp.asarray(_randn(45, 8, 3))
  tx = optax.chain(egd(method="svd"), optax.sgd(0.1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
  before = nnx.state(model, nnx.Param)
  before = jax.tree.map(np.asarray, before)
  grads = nnx.grad(loss_fn)(model)
  optimizer.update(model, grads)
  after = nnx.state(model, nnx.Param)
  np.testing.assert_allclose(
      after["l1"]["kernel"][...] - before["l1"]["kernel"][...],
      -0.1 * np_polar(grads["l1"]["kernel"][...]), atol=2e-5)
  np.testing.assert_allclose(
      after["l2"]["bias"][...] - before["l2"]["bias"][...],
      -0.1 * np.asarray(grads["l2"]["bias"][...]), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------
# dimension_numbers on the trees Flax NNX and linen produce: a CNN with a conv
# layer and a dense layer, each with a kernel and a bias.


def _nnx_cnn_params():
  class CNN(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
      self.dense = nnx.Linear(4, 5, rngs=rngs)

  return nnx.state(CNN(nnx.Rngs(0)), nnx.Param)  # an nnx.State of nnx.Params


def _linen_cnn_params():
  import flax.linen as nn

  class CNN(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      return nn.Dense(5)(x.mean(axis=(1, 2)))

  return CNN().init(jax.random.key(0), jnp.ones((1, 6, 6, 2)))


def _check_cnn(updates, grads, conv_kernel, dense_kernel, biases):
  np.testing.assert_allclose(conv_kernel(updates),
                             _conv_reference(np.asarray(conv_kernel(grads))),
                             atol=2e-5)
  assert_polar(dense_kernel(updates), dense_kernel(grads))
  for bias in biases:
    np.testing.assert_array_equal(bias(updates), bias(grads))


_BY_NDIM = lambda params: jax.tree.map(  # noqa: E731
    lambda p: CONV if p.ndim == 4 else None, params)


@pytest.mark.parametrize("form", ["subtree", "per_leaf", "callable"])
def test_conv_dimension_numbers_on_an_nnx_cnn(form):
  params = _nnx_cnn_params()
  grads = jax.tree.map(lambda p: jnp.asarray(_randn(p.size, *p.shape)), params)
  dims = {"subtree": {"conv": CONV, "dense": None},
          "per_leaf": {"conv": {"kernel": CONV, "bias": None}, "dense": None},
          "callable": _BY_NDIM}[form]
  updates, _ = run(egd(method="svd", dimension_numbers=dims), grads)
  _check_cnn(updates, grads, lambda t: t["conv"]["kernel"][...],
             lambda t: t["dense"]["kernel"][...],
             [lambda t: t["conv"]["bias"][...], lambda t: t["dense"]["bias"][...]])


@pytest.mark.parametrize("form", ["subtree", "per_leaf", "callable"])
def test_conv_dimension_numbers_on_a_linen_cnn(form):
  params = _linen_cnn_params()
  grads = jax.tree.map(lambda p: jnp.asarray(_randn(p.size, *p.shape)), params)
  dims = {"subtree": {"params": {"Conv_0": CONV, "Dense_0": None}},
          "per_leaf": {"params": {"Conv_0": {"kernel": CONV, "bias": None},
                                  "Dense_0": None}},
          "callable": _BY_NDIM}[form]
  updates, _ = run(egd(method="svd", dimension_numbers=dims), grads)
  _check_cnn(updates, grads, lambda t: t["params"]["Conv_0"]["kernel"],
             lambda t: t["params"]["Dense_0"]["kernel"],
             [lambda t: t["params"]["Conv_0"]["bias"],
              lambda t: t["params"]["Dense_0"]["bias"]])


@pytest.mark.parametrize("dims,match", [
    # The conv numbers for a subtree that also holds a dense kernel.
    ({"conv": CONV, "dense": CONV},
     r"\['dense'\]\['kernel'\].*of shape \(4, 5\): axis 2 is out of range.*"
     r"\{'conv': \{'kernel': conv, 'bias': None\}.*lambda params: jax.tree.map"),
    # A name the params do not have (a typo) and a leaf with no entry.
    ({"conv": CONV, "Dense": None}, r"no entry for leaf \['dense'\]\['bias'\]"),
    ({"conv": CONV, "dense": None, "head": None},
     r"names \['head'\], which is not in the params"),
])
def test_dimension_numbers_messages_give_the_fix(dims, match):
  tx = egd(method="svd", dimension_numbers=dims)
  with pytest.raises(ValueError, match=match):
    tx.init(_nnx_cnn_params())


# ------------------------------------------------------------------ egdm ---


def test_egdm_through_nnx_optimizer():
  class Model(nnx.Module):

    def __init__(self, rngs: nnx.Rngs) -> None:
      self.l1 = nnx.Linear(4, 6, rngs=rngs)
      self.l2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
      return self.l2(jnp.tanh(self.l1(x)))

  model = Model(nnx.Rngs(0))
  x, y = jnp.asarray(_randn(44, 8, 4)), jnp.asarray(_randn(45, 8, 3))
  optimizer = nnx.Optimizer(model, egdm(0.1, momentum=0.0), wrt=nnx.Param)
  loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  grads = nnx.grad(loss_fn)(model)
  optimizer.update(model, grads)
  after = nnx.state(model, nnx.Param)
  kernel = np.asarray(grads["l1"]["kernel"][...])
  np.testing.assert_allclose(
    after["l1"]["kernel"][...] - before["l1"]["kernel"][...],
    -0.1 * math.sqrt(6 / 4) * np_polar(kernel),
    atol=2e-5,
  )
  bias = np.asarray(grads["l2"]["bias"][...])
  np.testing.assert_allclose(
    after["l2"]["bias"][...] - before["l2"]["bias"][...], -0.1 * np.sign(bias),
    rtol=1e-4,
  )

  @nnx.jit
  def step(model: Model, optimizer: nnx.Optimizer) -> jax.Array:
    value, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return value

  losses = [float(step(model, optimizer)) for _ in range(20)]
  assert losses[-1] < losses[0]


# --------------------------------------------------------------------------
# Leaves with more than two axes, on real Flax NNX models: a model that scans
# over stacked layers and a CNN.

CONV = DimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)


def kernels_by_name(params):
  """The guide's callable: kernels are matrices (conv kernels flattened to
  (h·w·in, out), stacked kernels a batch over the leading axis), the rest
  (biases, also the 2-D stacked ones) AdamW."""

  def dims(path, p):
    if "kernel" not in jax.tree_util.keystr(path):
      return None
    return CONV if p.ndim == 4 else DimensionNumbers(-2, -1)

  return jax.tree_util.tree_map_with_path(dims, params)


class _Block(nnx.Module):

  def __init__(self, d: int, rngs: nnx.Rngs) -> None:
    self.linear = nnx.Linear(d, d, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.tanh(self.linear(x))


class _Scanned(nnx.Module):
  """Flax's scan-over-layers: LAYERS blocks created with nnx.vmap (kernels
  (LAYERS, d, d), biases (LAYERS, d)) and applied with nnx.scan."""

  def __init__(self, d: int, layers: int, rngs: nnx.Rngs) -> None:
    @nnx.split_rngs(splits=layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> _Block:
      return _Block(d, rngs)

    self.blocks = make(rngs)
    self.head = nnx.Linear(d, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x: jax.Array, block: _Block) -> jax.Array:
      return block(x)

    return self.head(body(x, self.blocks))


class _CNN(nnx.Module):

  def __init__(self, rngs: nnx.Rngs) -> None:
    self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(4, 5, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dense(jax.nn.relu(self.conv(x)).mean(axis=(1, 2)))


def _adamw_first_step(lr, g):
  return -lr * g / (np.abs(g) + 1e-8)


def _one_step(model, tx, x, y):
  """Gradients, and the update one ``optimizer.update`` applies."""
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  grads = nnx.grad(loss_fn)(model)
  optimizer.update(model, grads)
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  return (jax.tree.map(np.asarray, grads),
          jax.tree.map(lambda a, b: a - b, after, before))


def test_default_warns_that_scanned_layers_take_adamw():
  model = _Scanned(6, 3, nnx.Rngs(0))
  with pytest.warns(UserWarning, match=r"egdm: with dimension_numbers=None.*take"
                    r" AdamW, not EGD: \['blocks'\]\['linear'\]\['kernel'\]\S*"
                    r" \(3, 6, 6\).*tree_map_with_path"):
    nnx.Optimizer(model, egdm(0.1), wrt=nnx.Param)


def test_scanned_layers_each_get_egd_with_kernels_by_name():
  model = _Scanned(6, 3, nnx.Rngs(0))
  x, y = jnp.asarray(_randn(50, 8, 6)), jnp.asarray(_randn(51, 8, 3))
  with warnings.catch_warnings():
    warnings.filterwarnings("error", message="egdm")  # explicit: no warning
    grads, delta = _one_step(
        model, egdm(0.1, momentum=0.0, dimension_numbers=kernels_by_name), x, y)
  g, d = grads["blocks"]["linear"], delta["blocks"]["linear"]
  for layer in range(3):  # each layer its own 6x6 polar factor (scale 1)
    np.testing.assert_allclose(d["kernel"][layer],
                               -0.1 * np_polar(g["kernel"][layer]), atol=2e-5)
  # The stacked biases are 2-D but no matrices: AdamW's first step.
  np.testing.assert_allclose(d["bias"], _adamw_first_step(0.1, g["bias"]),
                             rtol=1e-4)
  np.testing.assert_allclose(delta["head"]["kernel"],
                             -0.1 * np_polar(grads["head"]["kernel"]), atol=2e-5)


def test_default_warns_about_a_conv_kernel_and_a_callable_gives_it_egd():
  x, y = jnp.asarray(_randn(52, 8, 5, 5, 2)), jnp.asarray(_randn(53, 8, 5))
  with pytest.warns(UserWarning, match=r"\['conv'\]\['kernel'\]\S* \(3, 3, 2, 4\)"):
    grads, delta = _one_step(_CNN(nnx.Rngs(0)), egdm(0.1, momentum=0.0), x, y)
  # The default: AdamW on the conv kernel (optax.contrib.muon's choice).
  np.testing.assert_allclose(delta["conv"]["kernel"],
                             _adamw_first_step(0.1, grads["conv"]["kernel"]),
                             rtol=1e-4)
  # (The per-leaf tree form is checked on the same tree in test_transform.)
  for dims in (kernels_by_name, {"conv": CONV, "dense": DimensionNumbers(0, 1)}):
    grads, delta = _one_step(
        _CNN(nnx.Rngs(0)), egdm(0.1, momentum=0.0, dimension_numbers=dims), x, y)
    k = grads["conv"]["kernel"]  # one (3·3·2) x 4 matrix; muon scale 1
    np.testing.assert_allclose(
        delta["conv"]["kernel"],
        -0.1 * np_polar(k.reshape(18, 4)).reshape(k.shape), atol=2e-5)
    for layer in ("conv", "dense"):  # biases: AdamW
      np.testing.assert_allclose(delta[layer]["bias"],
                                 _adamw_first_step(0.1, grads[layer]["bias"]),
                                 rtol=1e-4)
    np.testing.assert_allclose(
        delta["dense"]["kernel"],
        -0.1 * math.sqrt(5 / 4) * np_polar(grads["dense"]["kernel"]), atol=2e-5)


# ------------------------------------------------------------- baselines ---

@pytest.mark.parametrize("name", TRANSFORMS)
def test_flax_nnx_state(name):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = TRANSFORMS[name]()
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.structure(out) == jax.tree.structure(params)


# The library's tests: they import no Flax, so they run where only the library
# (jax, optax, chex) is installed.
LIBRARY_TESTS = ("test_polar.py", "test_transform.py", "test_recipe.py",
                 "test_baselines.py", "test_spectrum.py", "test_sharding.py",
                 "test_vmap.py", "test_export.py", "test_optax_harness.py")


def test_the_library_and_its_tests_import_no_flax(tmp_path):
  """With ``import flax`` made to fail, ``optax_egd`` imports and the library
  tests collect (a test module importing Flax at the top would not)."""
  tests = pathlib.Path(__file__).parent
  script = textwrap.dedent(f"""
      import sys
      sys.modules["flax"] = None  # any `import flax...` raises ImportError
      import optax_egd
      import pytest
      sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                            *{[str(tests / name) for name in LIBRARY_TESTS]!r}]))
      """)
  done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                        capture_output=True, text=True, timeout=600, check=False,
                        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                            [str(tests.parent), os.environ.get("PYTHONPATH", "")])))
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  assert "error" not in done.stdout.lower().split("\n")[-2]
