"""Tests for optax_egd.egdm: EGD on momentum for matrices, AdamW for the rest."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_egd
from optax_egd import DimensionNumbers, egdm


def _randn(seed: int, *shape: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def np_polar(a: np.ndarray) -> np.ndarray:
  u, _, vt = np.linalg.svd(np.asarray(a, np.float64), full_matrices=False)
  return u @ vt


def _params() -> dict[str, jax.Array]:
  # A (fan_in 3, fan_out 12) matrix, a square one, a vector and a 3-D leaf.
  return {
    "wide": jnp.asarray(_randn(0, 3, 12)),
    "square": jnp.asarray(_randn(1, 5, 5)),
    "bias": jnp.asarray(_randn(2, 5)),
    "stack": jnp.asarray(_randn(3, 2, 4, 4)),
  }


def _grads(step: int) -> dict[str, jax.Array]:
  return jax.tree.map(
    lambda p: jnp.asarray(_randn(100 + step, *p.shape)), _params()
  )


def _run(tx: optax.GradientTransformation, steps: int = 3) -> list[dict]:
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for i in range(steps):
    updates, state = update(_grads(i), state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def test_first_step_matrices_and_the_rest():
  lr, wd = 0.1, 0.5
  params = _params()
  tx = egdm(lr, weight_decay=wd)
  with pytest.warns(UserWarning, match=r"take AdamW, not EGD: \['stack'\] \(2, 4, 4\)"):
    state = tx.init(params)
  updates, _ = tx.update(_grads(0), state, params)
  g = _grads(0)
  # Matrices: -lr·(muon scale · polar(g + 0.95·g) + wd·W); wide: sqrt(12/3) = 2.
  np.testing.assert_allclose(
    updates["wide"], -lr * (2.0 * np_polar(g["wide"]) + wd * params["wide"]), atol=2e-6
  )
  np.testing.assert_allclose(
    updates["square"],
    -lr * (np_polar(g["square"]) + wd * params["square"]),
    atol=2e-6,
  )
  # Default partition: only 2-D leaves are matrices. The vector and the 3-D
  # leaf take AdamW (first step: -lr·sign(g)), no weight decay by default.
  for name in ("bias", "stack"):
    np.testing.assert_allclose(updates[name], -lr * np.sign(g[name]), rtol=1e-5)


def test_equals_the_hand_built_chain():
  lr, momentum, wd, adam_lr, adam_wd = 0.05, 0.9, 0.2, 3e-3, 0.01
  dims = {
    "wide": DimensionNumbers(0, 1),
    "square": DimensionNumbers(0, 1),
    "bias": None,
    "stack": DimensionNumbers(1, 2),
  }
  tx = egdm(
    lr,
    momentum=momentum,
    weight_decay=wd,
    adam_learning_rate=adam_lr,
    adam_b1=0.8,
    adam_b2=0.98,
    adam_weight_decay=adam_wd,
    dimension_numbers=dims,
    method="svd",
  )
  matrices = optax.chain(
    optax.trace(momentum, nesterov=True),
    optax_egd.egd("svd", scale="muon", dimension_numbers=dims),
    optax.add_decayed_weights(wd),
    optax.scale_by_learning_rate(lr),
  )
  rest = optax.adamw(adam_lr, 0.8, 0.98, weight_decay=adam_wd)
  labels = {"wide": "egd", "square": "egd", "bias": "adam", "stack": "egd"}
  reference = optax.partition({"egd": matrices, "adam": rest}, labels)
  for got, want in zip(_run(tx), _run(reference), strict=True):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want
    )
  # The 3-D leaf is a stack of two 4x4 matrices here: unit singular values.
  first = _run(tx, 1)[0]["stack"]
  for k in range(2):
    s = np.linalg.svd(np.asarray(first[k]) / -lr - wd * _params()["stack"][k],
                      compute_uv=False)
    np.testing.assert_allclose(s, 1.0, atol=1e-4)


def test_callable_dimension_numbers_send_embeddings_to_adamw():
  def dims(params):
    return {k: (DimensionNumbers(0, 1) if k in ("wide", "square") else None)
            for k in params}

  params = _params()
  tx = egdm(0.1, dimension_numbers=dims)
  updates, state = tx.update(_grads(0), tx.init(params), params)
  assert isinstance(state, optax.transforms.PartitionState)
  np.testing.assert_allclose(updates["stack"], -0.1 * np.sign(_grads(0)["stack"]),
                             rtol=1e-5)
  np.testing.assert_allclose(updates["wide"], -0.1 * 2.0 * np_polar(_grads(0)["wide"]),
                             atol=2e-6)


def test_momentum_buffer_is_what_egd_sees():
  # Without Nesterov, step 2 is the polar factor of g2 + m·g1.
  params = {"w": jnp.asarray(_randn(5, 4, 4))}
  tx = egdm(1.0, momentum=0.5, nesterov=False)
  state = tx.init(params)
  g1, g2 = jnp.asarray(_randn(6, 4, 4)), jnp.asarray(_randn(7, 4, 4))
  _, state = tx.update({"w": g1}, state, params)
  updates, _ = tx.update({"w": g2}, state, params)
  np.testing.assert_allclose(updates["w"], -np_polar(g2 + 0.5 * g1), atol=2e-6)


def test_disable_egd_through_the_state():
  params = {"w": jnp.asarray(_randn(5, 4, 4))}
  tx = egdm(1.0, momentum=0.0)
  state = optax.tree.set(tx.init(params), enabled=False)
  g = jnp.asarray(_randn(6, 4, 4))
  updates, _ = tx.update({"w": g}, state, params)
  np.testing.assert_allclose(updates["w"], -g, rtol=1e-6)


def test_inject_hyperparams_traced_learning_rate():
  tx = optax.inject_hyperparams(egdm)(learning_rate=0.1, weight_decay=0.0)
  params = _params()
  with pytest.warns(UserWarning, match="take AdamW"):
    state = tx.init(params)
  update = jax.jit(tx.update)
  first, _ = update(_grads(0), state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.3)
  second, _ = update(_grads(0), state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(3 * a, b, rtol=1e-5),
               first, second)


def test_schedule_learning_rate():
  schedule = optax.schedules.warmup_constant_schedule(0.0, 0.1, 10)
  params = {"w": jnp.asarray(_randn(5, 4, 4))}
  tx = egdm(schedule, momentum=0.0)
  state = tx.init(params)
  g = {"w": jnp.asarray(_randn(6, 4, 4))}
  zero, state = tx.update(g, state, params)
  np.testing.assert_allclose(zero["w"], 0.0)
  one, _ = tx.update(g, state, params)
  np.testing.assert_allclose(one["w"], -0.01 * np_polar(g["w"]), atol=1e-6)


@pytest.mark.parametrize("kwargs,error,name", [
  (dict(momentum=1.0), ValueError, "momentum"),
  (dict(momentum=-0.1), ValueError, "momentum"),
  (dict(weight_decay=-1.0), ValueError, "weight_decay"),
  (dict(adam_weight_decay=-1.0), ValueError, "adam_weight_decay"),
  (dict(learning_rate=-0.1), ValueError, "learning_rate"),
  (dict(adam_learning_rate=-0.1), ValueError, "adam_learning_rate"),
  (dict(nesterov="yes"), TypeError, "nesterov"),
  (dict(scale="wide"), ValueError, "scale"),
  (dict(method="polar"), ValueError, "method"),
  (dict(dimension_numbers=3), TypeError, "dimension_numbers"),
])
def test_bad_arguments_raise_at_construction(kwargs, error, name):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(error, match=name):
    egdm(**kwargs)


def test_a_single_dimension_numbers_makes_every_leaf_with_two_axes_a_matrix():
  params = _params()
  tx = egdm(0.1, momentum=0.0, dimension_numbers=DimensionNumbers(-2, -1))
  updates, _ = tx.update(_grads(0), tx.init(params), params)
  g = _grads(0)
  for k in range(2):  # the 3-D leaf: a stack of two 4x4 matrices
    np.testing.assert_allclose(updates["stack"][k], -0.1 * np_polar(g["stack"][k]),
                               atol=2e-6)
  np.testing.assert_allclose(updates["bias"], -0.1 * np.sign(g["bias"]), rtol=1e-5)
