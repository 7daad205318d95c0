"""Tests for optax_egd.egd against a float64 NumPy SVD polar factor."""

from __future__ import annotations

import collections
import math
import os
import subprocess
import sys
import textwrap

from _helpers import count_compiles
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_egd
from optax_egd import DimensionNumbers, EGDState, egd
from optax_egd import transform as transform_module

F32_EPS = float(np.finfo(np.float32).eps)


def _randn(seed: int, *shape: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def np_polar(a, rtol: float | None = None) -> np.ndarray:
  """UVᵀ of the last two axes in float64, σ ↦ σ/max(σ, rtol·σ_max)."""
  a = np.asarray(a, np.float64)
  u, s, vt = np.linalg.svd(a, full_matrices=False)
  if rtol is None:
    rtol = max(a.shape[-2:]) * F32_EPS
  den = np.maximum(s, rtol * s[..., :1])
  d = np.divide(s, den, out=np.zeros_like(s), where=den > 0)
  return (u * d[..., None, :]) @ vt


def assert_polar(actual, a, atol: float = 2e-5, rtol: float | None = None):
  np.testing.assert_allclose(np.asarray(actual, np.float64),
                             np_polar(a, rtol), atol=atol, rtol=0)


def run(tx, grads, state=None, params=None):
  state = tx.init(grads if params is None else params) if state is None \
      else state
  return jax.jit(tx.update)(grads, state, params)


# --------------------------------------------------------------------------
# What the transform computes.


@pytest.mark.parametrize("method", ["auto", "svd", "eigh"])
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_matrix_leaf_is_polar_factor(method, shape):
  g = {"w": _randn(0, *shape)}
  updates, _ = run(egd(method=method), g)
  assert updates["w"].shape == shape
  assert_polar(updates["w"], g["w"], atol=2e-4 if method == "eigh" else 2e-5)


def _truncated_polar(a: np.ndarray, k: int) -> np.ndarray:
  u, _, vt = np.linalg.svd(np.asarray(a, np.float64), full_matrices=False)
  return u[:, :k] @ vt[:k]


def test_rsvd_is_exact_for_low_rank_leaf():
  a = _randn(1, 12, 2) @ _randn(2, 2, 10)  # rank 2 (up to float32 rounding)
  updates, _ = run(egd(method="rsvd", rank=2, key=3), {"w": a})
  np.testing.assert_allclose(updates["w"], _truncated_polar(a, 2), atol=1e-5)


def test_low_rank_leaf_close_to_reference():
  # Rounding makes a float32 rank-k matrix have further singular values near
  # eps·σ_max, right at the default cutoff max(m, n)·eps·σ_max, so the soft
  # rule σ/max(σ, rtol·σ_max) lets a few percent of those directions through
  # (see the report). Documents the current accuracy of the default method.
  a = np.outer(np.arange(1.0, 7.0), [1.0, -2.0, 3.0, 0.5]).astype(np.float32)
  b = _randn(1, 12, 2) @ _randn(2, 2, 10)
  updates, _ = run(egd(), {"a": a, "b": b})
  np.testing.assert_allclose(updates["a"], _truncated_polar(a, 1), atol=5e-2)
  np.testing.assert_allclose(updates["b"], _truncated_polar(b, 2), atol=5e-2)
  assert np.linalg.matrix_rank(np.asarray(updates["a"]), tol=0.1) == 1
  assert np.linalg.matrix_rank(np.asarray(updates["b"]), tol=0.1) == 2


def test_vector_and_scalar_leaves_unchanged():
  g = {"b": _randn(0, 5), "s": jnp.float32(3.0), "w": _randn(1, 5, 3)}
  updates, _ = run(egd(method="svd"), g)
  np.testing.assert_array_equal(updates["b"], g["b"])
  np.testing.assert_array_equal(updates["s"], g["s"])
  assert updates["s"].shape == ()
  assert_polar(updates["w"], g["w"])


def test_zero_gradient_gives_zero_update():
  updates, _ = run(egd(method="svd"), {"w": jnp.zeros((4, 3))})
  np.testing.assert_array_equal(updates["w"], 0.0)


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-5),
                                        (jnp.bfloat16, 2e-2)])
def test_dtype_kept(dtype, atol):
  g = {"w": jnp.asarray(_randn(2, 6, 4), dtype),
       "b": jnp.asarray(_randn(3, 4), dtype)}
  updates, _ = run(egd(method="svd"), g)
  assert updates["w"].dtype == dtype and updates["b"].dtype == dtype
  assert_polar(np.asarray(updates["w"], np.float32),
               np.asarray(g["w"], np.float32), atol=atol)


def test_mixed_dtypes_same_shape():
  g = {"a": jnp.asarray(_randn(0, 5, 3), jnp.bfloat16),
       "b": jnp.asarray(_randn(1, 5, 3), jnp.float32)}
  updates, _ = run(egd(method="svd"), g)
  assert updates["a"].dtype == jnp.bfloat16
  assert updates["b"].dtype == jnp.float32
  assert_polar(updates["b"], g["b"])
  assert_polar(np.asarray(updates["a"], np.float32),
               np.asarray(g["a"], np.float32), atol=2e-2)


# --------------------------------------------------------------------------
# Leaves with more than two axes.


def test_default_dims_leading_axes_are_a_batch():
  g = {"stack": _randn(4, 3, 5, 4)}
  updates, _ = run(egd(method="svd"), g)
  for i in range(3):
    assert_polar(updates["stack"][i], g["stack"][i])


CONV = DimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)


def _conv_reference(k: np.ndarray) -> np.ndarray:
  h, w, i, o = k.shape
  return np_polar(k.reshape(h * w * i, o)).reshape(k.shape)


def test_conv_kernel_dimension_numbers():
  k = _randn(5, 3, 3, 2, 4)
  updates, _ = run(egd(method="svd", dimension_numbers=CONV), {"k": k})
  np.testing.assert_allclose(updates["k"], _conv_reference(k), atol=2e-5)
  # Not what the default (last two axes) gives.
  default, _ = run(egd(method="svd"), {"k": k})
  assert not np.allclose(default["k"], updates["k"], atol=1e-2)


def _mixed_tree():
  return {"conv": _randn(6, 3, 3, 2, 4), "stack": _randn(7, 2, 5, 4),
          "dense": {"w": _randn(8, 6, 5), "b": _randn(9, 5)}}


def _check_mixed(updates, g):
  np.testing.assert_allclose(updates["conv"], _conv_reference(g["conv"]),
                             atol=2e-5)
  for i in range(2):
    assert_polar(updates["stack"][i], g["stack"][i])
  assert_polar(updates["dense"]["w"], g["dense"]["w"])
  np.testing.assert_array_equal(updates["dense"]["b"], g["dense"]["b"])


def test_tree_of_dimension_numbers():
  g = _mixed_tree()
  dims = {"conv": CONV, "stack": None, "dense": {"w": None, "b": None}}
  updates, _ = run(egd(method="svd", dimension_numbers=dims), g)
  _check_mixed(updates, g)


def test_callable_dimension_numbers():
  g = _mixed_tree()
  seen = []

  def dims_fn(tree):
    seen.append(jax.tree.structure(tree))
    return jax.tree.map(lambda x: CONV if x.ndim == 4 else None, tree)

  updates, _ = run(egd(method="svd", dimension_numbers=dims_fn), g)
  _check_mixed(updates, g)
  assert seen and seen[0] == jax.tree.structure(g)


def test_transposed_layout_and_muon_scale():
  # A (fan_out, fan_in) = (8, 4) kernel, as PyTorch stores it.
  w = _randn(10, 8, 4)
  dims = DimensionNumbers(reduction_axis=1, output_axis=0)
  updates, _ = run(egd(method="svd", scale="muon", dimension_numbers=dims),
                   {"w": w})
  # polar(wᵀ)ᵀ = polar(w); fan_in 4, fan_out 8 → × sqrt(2).
  np.testing.assert_allclose(updates["w"], math.sqrt(2) * np_polar(w),
                             atol=3e-5)
  default, _ = run(egd(method="svd", scale="muon"), {"w": w})
  assert_polar(default["w"], w)  # fan_in 8 ≥ fan_out 4 → × 1.


_CONV_AND_DENSE = {"conv": jnp.ones((3, 3, 2, 4)),
                   "dense": {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}}


@pytest.mark.parametrize("dims,params,match", [
    # Out-of-range axes were wrapped around (3 on a 3-D leaf acted as 0).
    (DimensionNumbers(reduction_axis=3, output_axis=1), {"w": jnp.ones((2, 3, 4))},
     r"leaf \['w'\] of shape \(2, 3, 4\): axis 3 is out of range"),
    # ... or reported as "axes must be disjoint".
    (DimensionNumbers(reduction_axis=5, output_axis=1), {"w": jnp.ones((2, 3))},
     r"leaf \['w'\] of shape \(2, 3\): axis 5 is out of range"),
    ({"w": DimensionNumbers(-1, -3)}, {"w": jnp.ones((2, 3))},
     r"axis -3 is out of range for 2 dimensions"),
    # The README's conv numbers as one value for a model with dense layers.
    (CONV, _CONV_AND_DENSE,
     r"\['dense'\]\['w'\] of shape \(8, 4\): axis 2 is out of range.*single"
     r" DimensionNumbers applies to every leaf with two or more dimensions.*give"
     r" each its own DimensionNumbers.*or pass a callable by ndim"),
    (lambda p: {"conv": CONV, "dense": {"w": CONV, "b": None}}, _CONV_AND_DENSE,
     r"\['dense'\]\['w'\] of shape \(8, 4\): axis 2 is out of range"),
    (DimensionNumbers(0, (0, 1)), {"w": jnp.ones((3, 4))}, "disjoint"),
    (DimensionNumbers((1, 1), 2), {"w": jnp.ones((3, 4, 5))}, "distinct"),
    ({"w": None, "v": None}, {"w": jnp.ones((3, 4))},
     r"names \['v'\], which is not in the params"),
])
def test_dimension_numbers_that_do_not_fit_raise_at_init(dims, params, match):
  tx = egd(method="svd", dimension_numbers=dims)
  with pytest.raises(ValueError, match=match):
    tx.init(params)


def test_negative_axes_count_from_the_end():
  g = {"stack": _randn(40, 3, 5, 4), "w": _randn(41, 6, 4), "b": _randn(42, 4)}
  tx = egd(method="svd", dimension_numbers=DimensionNumbers(-2, -1))
  updates, _ = run(tx, g)
  default, _ = run(egd(method="svd"), g)
  for name in g:
    np.testing.assert_array_equal(updates[name], default[name])
  # Fan-in last: polar(wᵀ)ᵀ = polar(w).
  updates, _ = run(egd(method="svd", dimension_numbers=DimensionNumbers(-1, -2)),
                   {"w": g["w"]})
  assert_polar(updates["w"], g["w"])


def test_same_shape_leaves_batched_equal_one_by_one():
  g = {"a": _randn(11, 6, 4), "b": _randn(12, 6, 4), "c": _randn(13, 2, 6, 4),
       "k": _randn(14, 2, 3, 4, 4), "v": _randn(15, 4)}
  dims = {"a": None, "b": None, "c": None,
          "k": DimensionNumbers((0, 1), (2, 3)), "v": None}
  tx = egd(method="svd", dimension_numbers=dims)
  together, _ = run(tx, g)
  for name, leaf in g.items():
    alone, _ = run(egd(method="svd", dimension_numbers={name: dims[name]}),
                   {name: leaf})
    np.testing.assert_allclose(together[name], alone[name], atol=1e-6)
  assert_polar(together["a"], g["a"])
  np.testing.assert_allclose(
      together["k"], np_polar(g["k"].reshape(6, 16)).reshape(2, 3, 4, 4),
      atol=2e-5)


def test_scale_factors():
  shapes = {"a": (4, 8), "b": (8, 4), "c": (6, 6)}  # (fan_in, fan_out)
  g = {k: _randn(16 + i, *s) for i, (k, s) in enumerate(shapes.items())}
  g["v"] = _randn(20, 5)
  base, _ = run(egd(method="svd"), g)
  muon, _ = run(egd(method="svd", scale="muon"), g)
  rms, _ = run(egd(method="svd", scale="rms"), g)
  for k, (m, n) in shapes.items():
    assert_polar(base[k], g[k])
    np.testing.assert_allclose(muon[k], math.sqrt(max(1.0, n / m)) * base[k],
                               rtol=1e-6)
    np.testing.assert_allclose(rms[k], 0.2 * math.sqrt(max(m, n)) * base[k],
                               rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(rms[k]))), 0.2,
                               rtol=1e-5)
  for u in (muon, rms):  # vectors are never scaled
    np.testing.assert_array_equal(u["v"], g["v"])


# --------------------------------------------------------------------------
# State: keys, count, switch-off.


def test_count_increments_and_key_advances():
  g = {"w": _randn(18, 6, 5)}
  tx = egd(method="svd", key=5)
  state = tx.init(g)
  assert state.count == 0 and state.count.dtype == jnp.int32
  assert state.key.dtype == jnp.uint32 and state.key.shape == (2,)
  assert bool(state.enabled)
  update = jax.jit(tx.update)
  keys = [np.asarray(state.key)]
  for step in range(1, 4):
    _, state = update(g, state)
    assert int(state.count) == step
    keys.append(np.asarray(state.key))
  assert len({k.tobytes() for k in keys}) == len(keys)


def test_rsvd_same_key_same_result_different_key_different_sketch():
  a = {"w": jnp.asarray(_randn(19, 16, 12))}  # full rank > sketch rank
  kw = dict(method="rsvd", rank=2, oversample=0, power_iters=0)
  update = jax.jit(egd(key=0, **kw).update)  # the key lives in the state

  def first_two_steps(key):
    state = egd(key=key, **kw).init(a)
    u1, state = update(a, state)
    u2, _ = update(a, state)
    return np.asarray(u1["w"]), np.asarray(u2["w"])

  same1, same2 = first_two_steps(7), first_two_steps(7)
  np.testing.assert_array_equal(same1[0], same2[0])
  np.testing.assert_array_equal(same1[1], same2[1])
  # Every step draws a new sketch.
  assert not np.allclose(same1[0], same1[1], atol=1e-3)
  # A typed key or its raw data is the same seed.
  typed = first_two_steps(jax.random.key(7))
  raw = first_two_steps(jax.random.key_data(jax.random.key(7)))
  np.testing.assert_array_equal(typed[0], same1[0])
  np.testing.assert_array_equal(raw[1], same1[1])
  other = first_two_steps(8)
  assert not np.allclose(other[0], same1[0], atol=1e-3)
  assert update._cache_size() == 1


def test_switch_off_is_identity_and_skips_decomposition(monkeypatch):
  calls = []
  real_polar = transform_module.polar

  def counting_polar(x, *args, **kwargs):
    jax.debug.callback(lambda: calls.append(1))
    return real_polar(x, *args, **kwargs)

  monkeypatch.setattr(transform_module, "polar", counting_polar)
  g = {"w": _randn(20, 6, 4), "b": _randn(21, 4)}
  tx = egd(method="newton_schulz")
  update = jax.jit(tx.update)
  state = tx.init(g)
  on, state = update(g, state)
  jax.effects_barrier()
  assert len(calls) == 1
  assert not np.allclose(on["w"], g["w"], atol=1e-2)

  state = optax.tree.set(state, enabled=False)
  off, state = update(g, state)
  jax.effects_barrier()
  assert len(calls) == 1  # the decomposition did not run
  np.testing.assert_array_equal(off["w"], g["w"])
  np.testing.assert_array_equal(off["b"], g["b"])
  assert int(state.count) == 2 and not bool(state.enabled)
  assert isinstance(state.enabled, jax.Array)  # Python bool normalised

  # An inf gradient passes through untouched: no NaN from a decomposition.
  bad = {"w": jnp.asarray(g["w"]).at[0, 0].set(jnp.inf), "b": g["b"]}
  off, state = update(bad, state)
  np.testing.assert_array_equal(off["w"], bad["w"])
  assert not np.isnan(np.asarray(off["w"])).any()

  state = optax.tree.set(state, enabled=True)
  on2, _ = update(g, state)
  jax.effects_barrier()
  assert len(calls) == 2
  np.testing.assert_allclose(on2["w"], on["w"], atol=1e-6)


def test_enabled_false_at_construction():
  g = {"w": _randn(22, 5, 3)}
  tx = egd(method="svd", enabled=False)
  state = tx.init(g)
  assert not bool(state.enabled)
  updates, state = run(tx, g, state=state)
  np.testing.assert_array_equal(updates["w"], g["w"])
  assert int(state.count) == 1


def test_non_finite_matrix_gives_nan_and_does_not_poison_neighbours():
  # jnp.linalg.svd (LAPACK gesdd) can hang on inf input; egd must return NaN.
  ok = _randn(23, 6, 4)
  bad_inf = _randn(24, 6, 4)
  bad_inf[0, 0] = np.inf
  bad_nan = _randn(25, 6, 4)
  bad_nan[1, 2] = np.nan
  g = {"inf": bad_inf, "nan": bad_nan, "ok": ok}
  updates, _ = run(egd(method="svd"), g)
  assert np.isnan(np.asarray(updates["inf"])).all()
  assert np.isnan(np.asarray(updates["nan"])).all()
  assert_polar(updates["ok"], ok)


def test_jit_compiles_once_over_steps():
  traces = []
  g = {"w": jnp.asarray(_randn(26, 6, 4)), "b": jnp.asarray(_randn(27, 4))}
  tx = optax.chain(egd(method="svd"), optax.sgd(0.1))

  def step(params, state):
    traces.append(1)
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  jstep = jax.jit(step)
  params, state = g, tx.init(g)
  params, state = jstep(params, state)
  with count_compiles() as compiles:
    for _ in range(4):
      params, state = jstep(params, state)
  assert len(traces) == 1 and not compiles
  assert jstep._cache_size() == 1


# --------------------------------------------------------------------------
# optax wrappers and Flax NNX.


def test_inject_hyperparams_static_method():
  g = {"w": _randn(28, 6, 4)}
  tx = optax.inject_hyperparams(egd, static_args=("method",))(method="svd")
  updates, state = run(tx, g)
  assert_polar(updates["w"], g["w"])
  assert int(state.inner_state.count) == 1


def test_inject_hyperparams_rejects_unused_static_argument_at_init():
  g = {"w": _randn(43, 6, 4)}
  tx = optax.inject_hyperparams(egd, static_args=("method", "ns_steps"))(
      method="svd", ns_steps=5)
  with pytest.raises(ValueError, match="ns_steps=5 is used only by"):
    tx.init(g)
  tx = optax.inject_hyperparams(egd, static_args=("method", "ns_steps"))(
      method="polar_express", ns_steps=5)
  updates, _ = run(tx, g)
  np.testing.assert_allclose(
      updates["w"], optax_egd.polar(g["w"], "polar_express", ns_steps=5),
      atol=1e-5)


def test_inject_hyperparams_rtol_becomes_array():
  # σ = (4, 1, 0.5): with rtol = 0.5 the cutoff is 2, so 1 → 1/2, 0.5 → 1/4.
  q1, _ = np.linalg.qr(_randn(29, 6, 3))
  q2, _ = np.linalg.qr(_randn(30, 3, 3))
  a = (q1 * np.array([4.0, 1.0, 0.5])) @ q2.T
  g = {"w": a.astype(np.float32)}
  tx = optax.inject_hyperparams(egd, static_args=("method",))(
      method="svd", rtol=0.5)
  state = tx.init(g)
  assert isinstance(state.hyperparams["rtol"], jax.Array)
  update = jax.jit(tx.update)
  updates, state = update(g, state)
  assert_polar(updates["w"], a, rtol=0.5, atol=2e-5)
  sv = np.linalg.svd(np.asarray(updates["w"]), compute_uv=False)
  np.testing.assert_allclose(sv, [1.0, 0.5, 0.25], atol=1e-5)
  # Changing the traced hyperparameter needs no recompilation.
  state.hyperparams["rtol"] = jnp.asarray(1e-3, jnp.float32)
  with count_compiles() as compiles:
    updates, state = update(g, state)
  assert not compiles
  assert_polar(updates["w"], a, atol=2e-5)


def test_masked_first_layer_only():
  g = {"layer0": {"w": _randn(31, 6, 4), "b": _randn(32, 4)},
       "layer1": {"w": _randn(33, 4, 6), "b": _randn(34, 6)}}
  mask = {"layer0": {"w": True, "b": False}, "layer1": {"w": False, "b": False}}
  tx = optax.masked(egd(method="svd"), mask)
  state = tx.init(g)
  assert isinstance(state.inner_state, EGDState)
  updates, state = run(tx, g, state=state)
  assert_polar(updates["layer0"]["w"], g["layer0"]["w"])
  for path in (("layer0", "b"), ("layer1", "w"), ("layer1", "b")):
    np.testing.assert_array_equal(updates[path[0]][path[1]],
                                  g[path[0]][path[1]])
  assert int(state.inner_state.count) == 1


def test_masked_with_full_tree_of_dimension_numbers():
  # The dimension-number tree covers all params; optax.masked hands egd
  # MaskedNode placeholders in place of the masked-out leaves.
  g = {"conv": _randn(35, 3, 3, 2, 4), "dense": {"w": _randn(36, 4, 5),
                                                 "b": _randn(37, 5)}}
  dims = {"conv": CONV, "dense": {"w": None, "b": None}}
  for mask in ({"conv": True, "dense": {"w": False, "b": False}},
               {"conv": False, "dense": {"w": True, "b": False}}):
    tx = optax.masked(egd(method="svd", dimension_numbers=dims), mask)
    updates, _ = run(tx, g)
    if mask["conv"]:
      np.testing.assert_allclose(updates["conv"], _conv_reference(g["conv"]),
                                 atol=2e-5)
      np.testing.assert_array_equal(updates["dense"]["w"], g["dense"]["w"])
    else:
      np.testing.assert_array_equal(updates["conv"], g["conv"])
      assert_polar(updates["dense"]["w"], g["dense"]["w"])
    np.testing.assert_array_equal(updates["dense"]["b"], g["dense"]["b"])
  # A callable sees the masked tree (with MaskedNode placeholders).
  tx = optax.masked(
      egd(method="svd",
          dimension_numbers=lambda t: jax.tree.map(
              lambda x: CONV if x.ndim == 4 else None, t)),
      {"conv": True, "dense": {"w": True, "b": False}})
  updates, _ = run(tx, g)
  np.testing.assert_allclose(updates["conv"], _conv_reference(g["conv"]),
                             atol=2e-5)
  assert_polar(updates["dense"]["w"], g["dense"]["w"])


def test_multi_transform():
  g = {"enc": {"w": _randn(38, 6, 4)}, "head": {"w": _randn(39, 4, 3)}}
  tx = optax.multi_transform(
      {"egd": optax.chain(egd(method="svd"), optax.sgd(0.5)),
       "plain": optax.sgd(0.5)},
      {"enc": {"w": "egd"}, "head": {"w": "plain"}})
  updates, _ = run(tx, g, params=g)
  np.testing.assert_allclose(updates["enc"]["w"], -0.5 * np_polar(g["enc"]["w"]),
                             atol=2e-5)
  np.testing.assert_allclose(updates["head"]["w"], -0.5 * g["head"]["w"],
                             rtol=1e-6)


def test_multi_steps_polar_of_mean_gradient():
  g1, g2 = {"w": _randn(40, 6, 4)}, {"w": _randn(41, 6, 4)}
  tx = optax.MultiSteps(optax.chain(egd(method="svd"), optax.sgd(1.0)),
                        every_k_schedule=2)
  state = tx.init(g1)
  update = jax.jit(tx.update)
  u1, state = update(g1, state, g1)
  np.testing.assert_array_equal(u1["w"], 0.0)
  u2, state = update(g2, state, g1)
  assert_polar(-np.asarray(u2["w"]), (g1["w"] + g2["w"]) / 2)
  assert int(state.inner_opt_state[0].count) == 1


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_apply_if_finite_skips_nan_gradient(where):
  params = {"w": jnp.asarray(_randn(42, 6, 4)), "b": jnp.zeros(4)}
  good = {"w": jnp.asarray(_randn(43, 6, 4)), "b": jnp.ones(4)}
  bad = {"w": good["w"].at[2, 1].set(jnp.nan), "b": good["b"]}
  if where == "outside":
    tx = optax.apply_if_finite(optax.chain(egd(method="svd"), optax.sgd(0.1)),
                               max_consecutive_errors=3)
  else:  # egd runs first: its NaN output is what apply_if_finite sees.
    tx = optax.chain(egd(method="svd"),
                     optax.apply_if_finite(optax.sgd(0.1), 3))
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, state = update(bad, state, params)
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(leaf, 0.0)
  finite_state = state if where == "outside" else state[1]
  assert int(finite_state.total_notfinite) == 1
  updates, state = update(good, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * np_polar(good["w"]),
                             atol=2e-5)


# --------------------------------------------------------------------------
# Bad configuration.


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(method="polar"), ValueError, "method"),
    (dict(method=None), ValueError, "method"),
    (dict(method="rsvd"), ValueError, "rank"),
    (dict(method="rsvd", rank=0), ValueError, "rank"),
    (dict(method="rsvd", rank=-3), ValueError, "rank"),
    (dict(method="rsvd", rank=2.0), TypeError, "rank"),
    (dict(method="rsvd", rank=True), TypeError, "rank"),
    (dict(method="rsvd", rank=2, oversample=-1), ValueError, "oversample"),
    (dict(method="rsvd", rank=2, power_iters=1.5), TypeError, "power_iters"),
    (dict(method="newton_schulz", ns_steps=0), ValueError, "ns_steps"),
    (dict(rtol=-1e-3), ValueError, "rtol"),
    (dict(rtol=1.0), ValueError, "rtol"),
    (dict(rtol="1e-3"), TypeError, "rtol"),
    (dict(rtol=True), TypeError, "rtol"),
    (dict(method="qdwh", rtol=jnp.asarray(1e-3)), TypeError, "rtol"),
    (dict(key="0"), TypeError, "key"),
    (dict(key=1.5), TypeError, "key"),
    (dict(key=True), TypeError, "key"),
    (dict(key=jnp.asarray(1.5)), TypeError, "key"),
    (dict(key=jax.random.split(jax.random.key(0))), ValueError, "key"),
    (dict(key=jax.random.key(0, impl="rbg")), ValueError, "key"),
    (dict(scale="spectral"), ValueError, "scale"),
    (dict(scale=None), ValueError, "scale"),
    (dict(enabled=1), TypeError, "enabled"),
    (dict(enabled="yes"), TypeError, "enabled"),
    (dict(enabled=jnp.ones(2, bool)), TypeError, "enabled"),
    (dict(dimension_numbers=3), TypeError, "dimension_numbers"),
    (dict(dimension_numbers="rows"), TypeError, "dimension_numbers"),
    (dict(dimension_numbers={"w": (0, 1)}), TypeError, "dimension_numbers"),
    (dict(dimension_numbers=DimensionNumbers(1.5, 0)), TypeError, "ints"),
    (dict(dimension_numbers={"w": DimensionNumbers((), 0)}), ValueError,
     "reduction_axis must name at least one axis"),
    # An argument the method does not use is an error, never ignored.
    (dict(rank=4), ValueError, "rank=4 is used only by method 'rsvd'"),
    (dict(method="svd", power_iters=0), ValueError, "power_iters"),
    (dict(method="eigh", oversample=10), ValueError, "oversample"),
    (dict(method="polar_express", rank=8), ValueError, "rank"),
    (dict(ns_steps=5), ValueError,
     "ns_steps=5 is used only by method 'newton_schulz' or 'polar_express'"),
    (dict(method="rsvd", rank=2, ns_steps=5), ValueError, "ns_steps"),
    (dict(method="newton_schulz", rtol=1e-3), ValueError, "rtol is not used"),
    (dict(method="polar_express", rtol=jnp.asarray(1e-3)), ValueError, "rtol"),
    (dict(method="polar_express_exact", rtol=jnp.asarray(1e-3)), TypeError,
     "needs rtol as a Python float"),
    (dict(method="svd", precision="bfloat16"), ValueError,
     "precision='bfloat16' is used only by the matrix-product methods"),
    (dict(precision="float16"), ValueError, "precision must be one of"),
])
def test_bad_configuration_raises_at_construction(kwargs, error, name):
  with pytest.raises(error, match=name):
    egd(**kwargs)


def test_good_configurations_construct():
  egd(key=np.int64(3))
  egd(key=jnp.asarray(3))
  egd(key=jax.random.key(0))
  egd(method="svd", rtol=0.0)
  egd(rtol=jnp.asarray(1e-3))
  egd(method="qdwh", rtol=1e-3)
  egd(enabled=jnp.asarray(False))
  egd(dimension_numbers=DimensionNumbers())
  egd(dimension_numbers={"a": CONV, "b": None, "c": [None, CONV]})
  # Any pytree of DimensionNumbers, not only dicts (also FrozenDict and
  # nnx.State: tests/test_flax_models.py).
  egd(dimension_numbers=collections.OrderedDict({"a": CONV}))
  # Arguments given with the method that uses them, defaults spelled out.
  egd(method="rsvd", rank=2, oversample=10, power_iters=2)
  egd(method="newton_schulz", ns_steps=5)
  egd(method="polar_express", ns_steps=8)
  egd(method="auto", rtol=1e-3)
  egd(method="polar_express_exact", rtol=1e-3, precision="bfloat16")
  egd(precision="tf32")  # auto: the precision of its GPU/TPU iteration.


@pytest.mark.parametrize("phase", ["init", "update"])
def test_integer_leaf_raises_naming_path(phase):
  good = {"net": {"w": jnp.ones((3, 2)), "steps": jnp.ones((3, 2))}}
  bad = {"net": {"w": jnp.ones((3, 2)), "steps": jnp.ones((3, 2), jnp.int32)}}
  tx = egd(method="svd")
  with pytest.raises(TypeError, match=r"\['net'\]\['steps'\].*int32"):
    if phase == "init":
      tx.init(bad)
    else:
      tx.update(bad, tx.init(good))


def test_public_names():
  assert optax_egd.egd is egd and optax_egd.EGDState is EGDState
  assert optax_egd.DimensionNumbers is optax.contrib.MuonDimensionNumbers


HANG_REPRO = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax, optax_egd
    shapes = [(8, 128, 128), (2, 512, 128), (2, 128, 512), (128, 97)]
    grads = [jnp.asarray(np.random.default_rng(i).standard_normal(s), jnp.float32)
             for i, s in enumerate(shapes)]
    tx = optax.chain(optax_egd.egd("svd"), optax.sgd(0.1))
    step = jax.jit(tx.update)
    state = tx.init(grads)
    for _ in range(40):
      updates, state = step(grads, state)
      jax.block_until_ready(updates)
    print("done")
""")


def test_several_stacked_shapes_do_not_hang():
  """Regression: with batched LAPACK calls this program hung on CPU in most
  runs (jax/jaxlib 0.10.2, 2 cores); polar now decomposes stacks one matrix
  at a time there. Run in a fresh process with a deadline, without NPROC."""
  env = {k: v for k, v in os.environ.items() if k != "NPROC"}
  done = subprocess.run([sys.executable, "-c", HANG_REPRO], env=env, timeout=120,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "done"


def test_a_dimension_numbers_given_for_a_vector_leaf_itself_must_fit_it():
  tx = egd(dimension_numbers={"w": None, "b": DimensionNumbers(0, 1)})
  with pytest.raises(ValueError, match=r"leaf \['b'\] of shape \(3,\): axis 1"):
    tx.init({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})


@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_precision_reaches_the_iteration(precision):
  g = {"w": jax.random.normal(jax.random.key(0), (12, 20)), "b": jnp.ones(3)}
  tx = egd(method="polar_express_exact", precision=precision)
  updates, _ = jax.jit(tx.update)(g, tx.init(g))
  same = jax.jit(lambda w: optax_egd.polar(w, "polar_express_exact",
                                           precision=precision))(g["w"])
  full = jax.jit(lambda w: optax_egd.polar(w, "polar_express_exact"))(g["w"])
  near = float(jnp.max(jnp.abs(updates["w"] - same)))
  far = float(jnp.max(jnp.abs(updates["w"] - full)))
  assert near <= 1e-5 < far, (near, far)
