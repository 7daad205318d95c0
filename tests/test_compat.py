"""Compatibility matrix for optax_egd.egd: optax combinators, Flax, JAX
transformations, determinism and checkpoint/resume."""

from __future__ import annotations

import warnings

from _helpers import count_compiles
from flax import nnx
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from optax_egd import EGDState, egd

STEPS = 10


def _data(seed: int = 0, batch: int = 32):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, 8)).astype(np.float32)
  w_true = rng.standard_normal((8, 4)).astype(np.float32)
  y = x @ w_true + 0.5
  return jnp.asarray(x), jnp.asarray(y)


def _params(seed: int = 1):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(0.3 * rng.standard_normal(s), jnp.float32)
  return {"l1": {"w": f(8, 8), "b": f(8)}, "l2": {"w": f(8, 4), "b": f(4)}}


def _apply(params, x):
  h = x @ params["l1"]["w"] + params["l1"]["b"]
  return h @ params["l2"]["w"] + params["l2"]["b"]


def _loss(params, x, y):
  return jnp.mean((_apply(params, x) - y) ** 2)


def _make_step(tx, loss=_loss):

  def step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  return step


def _train(tx, steps: int = STEPS, params=None, data=None, **jit_kwargs):
  params = _params() if params is None else params
  x, y = _data() if data is None else data
  state = tx.init(params)
  step = jax.jit(_make_step(tx), **jit_kwargs)
  losses = []
  for _ in range(steps):
    params, state, value = step(params, state, x, y)
    losses.append(float(value))
  losses.append(float(_loss(params, x, y)))
  return params, state, losses


def _assert_decreases(losses, factor: float = 0.8):
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < factor * losses[0], losses


def _tree_equal(a, b) -> None:
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------------
# optax.chain with the optimizer that owns the learning rate.


@pytest.mark.parametrize("inner", [
    pytest.param(lambda: optax.sgd(0.05), id="sgd"),
    pytest.param(lambda: optax.sgd(0.03, momentum=0.9), id="momentum"),
    pytest.param(lambda: optax.adam(0.03), id="adam"),
    pytest.param(lambda: optax.adamw(0.03, weight_decay=1e-4), id="adamw"),
    pytest.param(lambda: optax.lion(0.01), id="lion"),
])
def test_chain_decreases_loss(inner):
  _, state, losses = _train(optax.chain(egd(), inner()))
  _assert_decreases(losses)
  assert int(state[0].count) == STEPS


def test_inject_hyperparams_static_args():
  def make(learning_rate, method):
    return optax.chain(egd(method=method), optax.sgd(learning_rate))

  tx = optax.inject_hyperparams(make, static_args=("method",))(
      learning_rate=0.05, method="svd")
  step = jax.jit(_make_step(tx))
  x, y = _data()
  params = _params()
  state = tx.init(params)
  losses = []
  for _ in range(STEPS):
    params, state, value = step(params, state, x, y)
    losses.append(float(value))
  _assert_decreases(losses)
  # The learning rate is state: setting it to 0 needs no recompilation.
  state.hyperparams["learning_rate"] = jnp.zeros_like(
      state.hyperparams["learning_rate"])
  with count_compiles() as compiles:
    new_params, state, _ = step(params, state, x, y)
  assert not compiles
  _tree_equal(new_params, params)
  # egd itself under inject_hyperparams: rank static, rtol and key arrays.
  inner = optax.inject_hyperparams(egd, static_args=("method", "rank"))(
      method="rsvd", rank=4, rtol=1e-4, key=3)
  _, state, losses = _train(optax.chain(inner, optax.sgd(0.05)))
  _assert_decreases(losses)
  assert set(state[0].hyperparams) == {"rtol", "key"}


def test_masked_first_layer_only():
  mask = {"l1": {"w": True, "b": False}, "l2": {"w": False, "b": False}}
  tx = optax.chain(optax.masked(egd(), mask), optax.sgd(0.05))
  _, state, losses = _train(tx)
  _assert_decreases(losses)
  assert isinstance(state[0].inner_state, EGDState)


def test_multi_transform():
  tx = optax.multi_transform(
      {"egd": optax.chain(egd(), optax.sgd(0.05)), "adam": optax.adam(0.03)},
      {"l1": {"w": "egd", "b": "adam"}, "l2": {"w": "egd", "b": "adam"}})
  _, _, losses = _train(tx)
  _assert_decreases(losses)


def test_multi_steps():
  tx = optax.MultiSteps(optax.chain(egd(), optax.sgd(0.05)),
                        every_k_schedule=2)
  _, state, losses = _train(tx, steps=2 * STEPS)
  _assert_decreases(losses)
  assert int(state.inner_opt_state[0].count) == STEPS


def test_apply_if_finite():
  tx = optax.apply_if_finite(optax.chain(egd(), optax.sgd(0.05)), 3)
  params, state, losses = _train(tx)
  _assert_decreases(losses)
  # A NaN batch is skipped.
  step = jax.jit(_make_step(tx))
  x, y = _data()
  new_params, state, _ = step(params, state, x.at[0, 0].set(jnp.nan), y)
  _tree_equal(new_params, params)
  assert int(state.total_notfinite) == 1


def test_schedule_free():
  lr = 0.05
  tx = optax.contrib.schedule_free(optax.chain(egd(), optax.sgd(lr)),
                                   learning_rate=lr, b1=0.9)
  params, state, losses = _train(tx, steps=2 * STEPS)
  x, y = _data()
  eval_params = optax.contrib.schedule_free_eval_params(state, params)
  _assert_decreases(losses)
  assert float(_loss(eval_params, x, y)) < 0.8 * losses[0]


# --------------------------------------------------------------------------
# Flax.


def test_nnx_optimizer():
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(8, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.l1(x))

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(egd(), optax.sgd(0.05)),
                            wrt=nnx.Param)
  x, y = _data()

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
    value, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return value

  losses = [float(step(model, optimizer)) for _ in range(STEPS)]
  losses.append(float(jnp.mean((model(x) - y) ** 2)))
  _assert_decreases(losses)


def test_linen_train_state():
  class Model(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.Dense(4)(nn.Dense(8)(x))

  model = Model()
  x, y = _data()
  variables = model.init(jax.random.key(0), x)
  tx = optax.chain(egd(), optax.sgd(0.05))
  ts = train_state.TrainState.create(apply_fn=model.apply,
                                     params=variables["params"], tx=tx)

  @jax.jit
  def step(ts):
    loss_fn = lambda p: jnp.mean((ts.apply_fn({"params": p}, x) - y) ** 2)
    value, grads = jax.value_and_grad(loss_fn)(ts.params)
    return ts.apply_gradients(grads=grads), value

  losses = []
  for _ in range(STEPS):
    ts, value = step(ts)
    losses.append(float(value))
  _assert_decreases(losses)
  assert int(ts.opt_state[0].count) == STEPS


# --------------------------------------------------------------------------
# JAX transformations.


def test_jit_donate_argnums():
  tx = optax.chain(egd(), optax.sgd(0.05))
  ref, ref_state, _ = _train(tx, steps=3)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "donated buffers were not usable"
    params, state, losses = _train(tx, steps=3, donate_argnums=(0, 1))
  _tree_equal(params, ref)
  _tree_equal(state, ref_state)
  assert losses[-1] < losses[0]


def test_vmap_over_independent_models():
  models = 3
  params = jax.tree.map(lambda *xs: jnp.stack(xs),
                        *[_params(seed) for seed in range(models)])
  xs, ys = zip(*[_data(seed) for seed in range(models)], strict=True)
  x, y = jnp.stack(xs), jnp.stack(ys)
  tx = optax.chain(egd(method="svd"), optax.sgd(0.05))
  state = jax.vmap(tx.init)(params)
  assert state[0].count.shape == (models,)
  step = jax.jit(jax.vmap(_make_step(tx)))
  one = jax.jit(_make_step(tx))
  single = [(_params(i), tx.init(_params(i))) for i in range(models)]
  for _ in range(3):
    params, state, _ = step(params, state, x, y)
    single = [one(p, s, x[i], y[i])[:2] for i, (p, s) in enumerate(single)]
  for i, (p, _) in enumerate(single):
    jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(
        a[i], b, rtol=1e-5, atol=1e-6), params, p)
  # Switch EGD off for one model only.
  state = optax.tree.set(state, enabled=jnp.array([True, False, True]))
  p0 = params
  params, _, _ = step(params, state, x, y)
  grads = jax.grad(_loss)(jax.tree.map(lambda a: a[1], p0), x[1], y[1])
  np.testing.assert_allclose(params["l1"]["w"][1],
                             p0["l1"]["w"][1] - 0.05 * grads["l1"]["w"],
                             rtol=1e-5, atol=1e-6)


def test_remat_loss():
  tx = optax.chain(egd(), optax.sgd(0.05))
  remat_loss = jax.checkpoint(_loss)
  params = _params()
  x, y = _data()
  np.testing.assert_allclose(
      jax.grad(remat_loss)(params, x, y)["l1"]["w"],
      jax.grad(_loss)(params, x, y)["l1"]["w"], rtol=1e-6)
  state = tx.init(params)
  step = jax.jit(_make_step(tx, loss=remat_loss))
  losses = []
  for _ in range(STEPS):
    params, state, value = step(params, state, x, y)
    losses.append(float(value))
  _assert_decreases(losses)


def test_shape_only_init():
  params = _params()
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          params)
  tx = optax.chain(egd(method="rsvd", rank=2, key=5), optax.adamw(1e-3))
  real = tx.init(params)
  for shapes in (jax.eval_shape(tx.init, params),
                 jax.eval_shape(tx.init, abstract)):
    assert jax.tree.structure(shapes) == jax.tree.structure(real)
    jax.tree.map(lambda s, r: (s.shape, s.dtype) == (r.shape, r.dtype)
                 or pytest.fail(f"{s} vs {r}"), shapes, real)
  # egd's own init reads only dtypes: ShapeDtypeStructs give a real state.
  state = egd(key=5).init(abstract)
  _tree_equal(state, real[0])
  with pytest.raises(TypeError, match="steps"):
    egd().init({"steps": jax.ShapeDtypeStruct((2, 2), jnp.int32)})


# --------------------------------------------------------------------------
# Determinism, checkpoint and resume, switching off.


def test_same_seed_bit_identical():
  make = lambda key: optax.chain(
      egd(method="rsvd", rank=2, oversample=1, key=key), optax.adam(0.03))
  p1, s1, _ = _train(make(11), steps=5)
  p2, s2, _ = _train(make(11), steps=5)
  _tree_equal(p1, p2)
  _tree_equal(s1, s2)
  # Another seed, same compiled step (the key is state): another trajectory.
  step = jax.jit(_make_step(make(11)))
  params, state = _params(), make(12).init(_params())
  x, y = _data()
  for _ in range(5):
    params, state, _ = step(params, state, x, y)
  assert not np.array_equal(p1["l1"]["w"], params["l1"]["w"])


@pytest.mark.parametrize("switch_off", [False, True])
def test_checkpoint_resume(tmp_path, switch_off):
  tx = optax.chain(egd(method="rsvd", rank=2, oversample=1, key=4),
                   optax.adam(0.03))
  step = jax.jit(_make_step(tx))
  x, y = _data()

  def run(params, state, n):
    for _ in range(n):
      params, state, _ = step(params, state, x, y)
    return params, state

  def maybe_switch_off(state):
    return optax.tree.set(state, enabled=False) if switch_off else state

  # Never stopping.
  params, state = run(_params(), tx.init(_params()), 3)
  ref_params, ref_state = run(params, maybe_switch_off(state), 3)

  # Stopping after 3 steps, saving, restoring into a fresh process's state.
  params, state = run(_params(), tx.init(_params()), 3)
  state = maybe_switch_off(state)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    ckptr.wait_until_finished()
    fresh = {"params": _params(seed=9), "opt_state": tx.init(_params())}
    restored = ckptr.restore(tmp_path / "ckpt", jax.tree.map(
        ocp.utils.to_shape_dtype_struct, fresh))
  egd_state = restored["opt_state"][0]
  assert isinstance(egd_state, EGDState)
  np.testing.assert_array_equal(egd_state.key, state[0].key)
  assert bool(egd_state.enabled) is (not switch_off)
  assert int(egd_state.count) == 3
  params, state = run(restored["params"], restored["opt_state"], 3)
  _tree_equal(params, ref_params)
  _tree_equal(state, ref_state)


def test_switching_enabled_does_not_recompile():
  tx = optax.chain(egd(method="svd"), optax.sgd(0.05))
  traces = []

  def counted_step():
    base = _make_step(tx)

    def counted(*args):
      traces.append(1)
      return base(*args)

    return jax.jit(counted)

  x, y = _data()
  params = _params()
  state = tx.init(params)

  # As documented: an array keeps the jit cache at one entry.
  step = counted_step()
  params, state, _ = step(params, state, x, y)
  on, off = jnp.asarray(True), jnp.asarray(False)
  with count_compiles() as compiles:
    for enabled in (off, on, off):
      state = optax.tree.set(state, enabled=enabled)
      params, state, _ = step(params, state, x, y)
  assert len(traces) == 1 and not compiles
  assert step._cache_size() == 1

  # A plain Python bool is not retraced or recompiled either (bool has no weak
  # type, so the abstract signature is the same), but the dispatch cache keeps
  # a second entry for a Python-scalar argument. egd's update returns an
  # array again, so later steps reuse the first entry.
  traces.clear()
  step = counted_step()
  params, state, _ = step(params, state, x, y)
  with count_compiles() as compiles:
    for enabled in (False, True, False):
      state = optax.tree.set(state, enabled=enabled)
      params, state, _ = step(params, state, x, y)
      assert isinstance(state[0].enabled, jax.Array)
  assert len(traces) == 1 and not compiles
  assert step._cache_size() == 2
