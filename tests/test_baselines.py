"""Tests for optax_egd.baselines against float64 NumPy re-implementations."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_egd.baselines import (
  GrokfastEmaState,
  GrokfastMaState,
  column_norm,
  grokfast_ema,
  grokfast_ma,
  orthograd,
)

RNG = np.random.default_rng(0)


def _randn(*shape: int) -> np.ndarray:
  return RNG.standard_normal(shape)


def _run(tx, grads_seq, params=None):
  """Applies ``tx`` to a sequence of gradient pytrees under jit."""
  params = grads_seq[0] if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  outs = []
  for g in grads_seq:
    u, state = update(g, state, params)
    outs.append(u)
  return outs, state


# NumPy references (float64), written from the official code.


def _np_column_norm(g, rtol=1e-6, axis=-2):
  norms = np.linalg.norm(g, axis=axis, keepdims=True)
  largest = norms.max(axis=-3 - axis, keepdims=True)
  return g / np.maximum(norms, rtol * largest)


def _np_grokfast_ema(grads, alpha, lamb):
  ema, outs = None, []
  for g in grads:  # gradfilter_ema: the dict is seeded with the first grad.
    ema = g if ema is None else ema
    ema = ema * alpha + g * (1 - alpha)
    outs.append(g + ema * lamb)
  return outs


def _np_grokfast_ma(grads, window, lamb, warmup):
  buf, outs = collections.deque(maxlen=window), []
  for g in grads:  # gradfilter_ma with filter_type="mean", trigger=False.
    buf.append(g)
    if not warmup or len(buf) == window:
      g = g + sum(buf) / len(buf) * lamb
    outs.append(g)
  return outs


def _np_orthograd(g, w):
  w, g = w.ravel(), g.ravel()  # OrthoGrad._orthogonalize_gradients.
  # vdot: the complex inner product sum(conj(w) g); np.dot for real inputs.
  perp = g - np.vdot(w, g) / (np.vdot(w, w).real + 1e-30) * w
  return perp * (np.linalg.norm(g) / (np.linalg.norm(perp) + 1e-30))


# column_norm


@pytest.mark.parametrize("axis", [-2, -1])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 4, 3)])
def test_column_norm_matches_numpy(axis, shape):
  g = _randn(*shape)
  (out,), _ = _run(column_norm(axis=axis), [jnp.asarray(g, jnp.float32)])
  np.testing.assert_allclose(out, _np_column_norm(g, axis=axis), rtol=1e-5)
  np.testing.assert_allclose(
      np.linalg.norm(out, axis=axis), np.ones(np.delete(shape, axis)),
      rtol=1e-5)


def test_column_norm_matches_official_flax_layout():
  # Official: gW1 / max(norm(gW1, axis=0), 0.01) on an (in, out) kernel.
  g = _randn(7, 4)
  official = g / np.maximum(np.linalg.norm(g, axis=0), 0.01)[None, :]
  (out,), _ = _run(column_norm(), [jnp.asarray(g, jnp.float32)])
  np.testing.assert_allclose(out, official, rtol=1e-5)


def test_column_norm_relative_floor_and_scale_invariance():
  g = _randn(4, 3)
  g[:, 1] *= 1e-9  # Far below rtol * largest column norm.
  tx = column_norm(rtol=1e-3)
  (out,), _ = _run(tx, [jnp.asarray(g, jnp.float32)])
  np.testing.assert_allclose(out, _np_column_norm(g, rtol=1e-3), rtol=1e-5)
  assert np.linalg.norm(out[:, 1]) < 1e-5
  for scale in (1e-12, 1e12):
    (scaled,), _ = _run(tx, [jnp.asarray(g * scale, jnp.float32)])
    np.testing.assert_allclose(scaled, out, rtol=1e-5, atol=1e-12)


def test_column_norm_leaves_vectors_and_scalars_unchanged():
  grads = {"b": jnp.array([3.0, -4.0]), "s": jnp.array(2.0),
           "w": jnp.ones((2, 2))}
  (out,), _ = _run(column_norm(), [grads])
  np.testing.assert_array_equal(out["b"], grads["b"])
  np.testing.assert_array_equal(out["s"], grads["s"])
  np.testing.assert_allclose(out["w"], np.full((2, 2), 2**-0.5), rtol=1e-6)


def test_column_norm_empty_matrix():
  (out,), _ = _run(column_norm(), [jnp.zeros((3, 0))])
  assert out.shape == (3, 0)


# grokfast_ema


def test_grokfast_ema_matches_official():
  grads = [{"w": _randn(3, 2), "b": _randn(2)} for _ in range(5)]
  outs, state = _run(grokfast_ema(alpha=0.8, lamb=2.0),
                     [jax.tree.map(jnp.float32, g) for g in grads])
  for key in ("w", "b"):
    ref = _np_grokfast_ema([g[key] for g in grads], 0.8, 2.0)
    for o, r in zip(outs, ref, strict=True):
      np.testing.assert_allclose(o[key], r, rtol=1e-5, atol=1e-6)
  assert isinstance(state, GrokfastEmaState) and int(state.count) == 5


def test_grokfast_ema_keeps_float32_state_for_bfloat16():
  params = {"w": jnp.zeros((3, 2), jnp.bfloat16)}
  state = grokfast_ema().init(params)
  assert state.ema["w"].dtype == jnp.float32


def test_grokfast_ema_inject_hyperparams():
  grads = [{"w": jnp.asarray(_randn(3, 2), jnp.float32)} for _ in range(4)]
  injected = optax.inject_hyperparams(grokfast_ema)(alpha=0.9, lamb=1.0)
  got, _ = _run(injected, grads)
  want, _ = _run(grokfast_ema(alpha=0.9, lamb=1.0), grads)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)


# grokfast_ma


@pytest.mark.parametrize("warmup", [True, False])
def test_grokfast_ma_matches_official(warmup):
  grads = [{"w": _randn(2, 3), "b": _randn(3)} for _ in range(8)]
  outs, state = _run(grokfast_ma(window=3, lamb=2.0, warmup=warmup),
                     [jax.tree.map(jnp.float32, g) for g in grads])
  for key in ("w", "b"):
    ref = _np_grokfast_ma([g[key] for g in grads], 3, 2.0, warmup)
    for o, r in zip(outs, ref, strict=True):
      np.testing.assert_allclose(o[key], r, rtol=1e-5, atol=1e-6)
  assert isinstance(state, GrokfastMaState) and int(state.count) == 8
  assert state.buffer["w"].shape == (3, 2, 3)
  # Ring buffer: step t lives in slot t % window.
  for t in (5, 6, 7):
    np.testing.assert_allclose(state.buffer["w"][t % 3], grads[t]["w"],
                               rtol=1e-6)


@pytest.mark.parametrize("window", [1, 2, 7])
def test_grokfast_ma_running_sum_matches_official_over_many_cycles(window):
  # The running sum (and its exact refresh once per cycle) must equal the
  # official mean of the buffer at every step, across many wrap-arounds.
  grads = [{"w": _randn(3, 2)} for _ in range(10 * window + 3)]
  outs, _ = _run(grokfast_ma(window=window, lamb=3.0),
                 [jax.tree.map(jnp.float32, g) for g in grads])
  ref = _np_grokfast_ma([g["w"] for g in grads], window, 3.0, True)
  for o, r in zip(outs, ref, strict=True):
    np.testing.assert_allclose(o["w"], r, rtol=1e-5, atol=1e-5)


def test_grokfast_ma_step_does_not_copy_or_sum_the_window():
  # A training step (in a scan, state donated) touches one slot of the ring
  # buffer: no copy of the (window, ...) buffer, and the only reduction over
  # it is the once-per-cycle refresh inside a conditional. Summing the whole
  # buffer every step made Grokfast-MA 3-10x slower than the EMA.
  window, n = 16, 4096
  tx = grokfast_ma(window=window)
  g = jnp.ones((n,))

  def step(carry, _):
    state, acc = carry
    u, state = tx.update(g, state)
    return (state, acc + u), None

  def steps(state):
    return jax.lax.scan(step, (state, jnp.zeros_like(g)), None, length=8)[0]

  hlo = jax.jit(steps, donate_argnums=0).lower(tx.init(g)).compile().as_text()
  buffer_type = f"f32[{window},{n}]"
  copies = [line for line in hlo.splitlines() if buffer_type in line.split("=")[-1]
            and " copy(" in line]
  assert not copies, copies
  # Outside the refresh's cond, no reduction reads the whole buffer.
  jaxpr = jax.make_jaxpr(tx.update)(g, tx.init(g)).jaxpr
  sums = [e for e in jaxpr.eqns if e.primitive.name.startswith("reduce")
          and any(getattr(v.aval, "shape", ())[:1] == (window,)
                  for v in e.invars)]
  assert not sums, sums


def test_grokfast_ma_warmup_passes_gradients_until_full():
  grads = [jnp.full((2,), float(t + 1)) for t in range(4)]
  outs, _ = _run(grokfast_ma(window=3, lamb=1.0), grads)
  np.testing.assert_array_equal(outs[0], grads[0])
  np.testing.assert_array_equal(outs[1], grads[1])
  np.testing.assert_allclose(outs[2], [3.0 + 2.0] * 2)  # 3 + mean(1, 2, 3)
  np.testing.assert_allclose(outs[3], [4.0 + 3.0] * 2)  # 4 + mean(2, 3, 4)


def test_grokfast_ma_inject_hyperparams():
  grads = [{"w": jnp.asarray(_randn(3, 2), jnp.float32)} for _ in range(4)]
  injected = optax.inject_hyperparams(grokfast_ma, static_args=("window",))(
      window=2, lamb=1.5)
  got, _ = _run(injected, grads)
  want, _ = _run(grokfast_ma(window=2, lamb=1.5), grads)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)
  with pytest.raises(TypeError, match="window"):
    optax.inject_hyperparams(grokfast_ma)(window=2).init(grads[0])


def test_grokfast_ma_buffer_in_params_dtype():
  state = grokfast_ma(window=4).init({"w": jnp.zeros((3, 2), jnp.bfloat16)})
  assert state.buffer["w"].shape == (4, 3, 2)
  assert state.buffer["w"].dtype == jnp.bfloat16


# orthograd


@pytest.mark.parametrize("shape", [(4, 3), (5,), (2, 3, 2)])
def test_orthograd_matches_official(shape):
  g, w = _randn(*shape), _randn(*shape)
  (out,), _ = _run(orthograd(), [jnp.asarray(g, jnp.float32)],
                   params=jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(
      np.ravel(out), _np_orthograd(g, w), rtol=1e-5, atol=1e-6)
  assert abs(np.vdot(out, w)) < 1e-5 * np.linalg.norm(w) * np.linalg.norm(g)
  np.testing.assert_allclose(np.linalg.norm(out), np.linalg.norm(g),
                             rtol=1e-5)


def test_orthograd_hand_example_and_degenerate_cases():
  tx = orthograd()
  w = jnp.array([1.0, 0.0])
  g = jnp.array([3.0, 4.0])
  (out,), _ = _run(tx, [g], params=w)
  np.testing.assert_allclose(out, [0.0, 5.0], atol=1e-6)
  (out,), _ = _run(tx, [g], params=jnp.zeros(2))  # Zero w: g unchanged.
  np.testing.assert_allclose(out, g, rtol=1e-6)
  (out,), _ = _run(tx, [2 * w], params=w)  # g parallel to w: no g⊥.
  np.testing.assert_array_equal(out, [0.0, 0.0])
  # A single-element leaf: g⊥ is rounding noise, damped rather than
  # blown up to |g| as with the official absolute guard.
  ws = jnp.asarray(RNG.uniform(0.5, 2.0, 200), jnp.float32)
  gs = jnp.asarray(RNG.uniform(0.5, 2.0, 200), jnp.float32)
  out = jax.vmap(lambda gi, wi: tx.update(gi, tx.init(wi), wi)[0])(gs, ws)
  assert np.all(np.abs(out) <= 1e-2 * np.abs(gs))


def test_orthograd_requires_params():
  tx = orthograd()
  g = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="params"):
    tx.update(g, tx.init(g))


# Shared behaviour of all four transforms.

TRANSFORMS = {
    "column_norm": column_norm,
    "grokfast_ema": grokfast_ema,
    "grokfast_ma": lambda: grokfast_ma(window=2),
    "orthograd": orthograd,
}


def _params(dtype=jnp.float32):
  return {"w": jnp.asarray(_randn(4, 3), dtype),
          "layer": {"b": jnp.asarray(_randn(3), dtype)}}


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_kept(name, dtype):
  params = _params(dtype)
  outs, _ = _run(TRANSFORMS[name](), [params] * 3, params=params)
  for out in outs:
    leaves = zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True)
    for leaf, ref in leaves:
      assert leaf.dtype == dtype and leaf.shape == ref.shape
      assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_zero_gradient_gives_zero_update(name):
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  outs, _ = _run(TRANSFORMS[name](), [zeros] * 3, params=params)
  for leaf in jax.tree.leaves(outs):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_nan_propagates(name):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  grads["w"] = grads["w"].at[1, 2].set(jnp.nan)
  grads["layer"]["b"] = grads["layer"]["b"].at[0].set(jnp.nan)
  outs, _ = _run(TRANSFORMS[name](), [grads] * 3, params=params)
  for out in outs:
    assert np.isnan(out["w"][1, 2])
    assert np.isnan(out["layer"]["b"][0])


@pytest.mark.parametrize("name", TRANSFORMS)
def test_chain_with_sgd_under_jit(name):
  x = jnp.asarray(_randn(8, 4), jnp.float32)
  y = jnp.asarray(_randn(8, 3), jnp.float32)

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["w"] + p["layer"]["b"]) - y) ** 2)

  params = _params()
  tx = optax.chain(TRANSFORMS[name](), optax.sgd(0.1))
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  start = loss(params)
  for _ in range(4):
    params, state = step(params, state)
  assert np.isfinite(loss(params)) and loss(params) < start


@pytest.mark.parametrize(
    "factory, kwargs, error, match",
    [
        (column_norm, {"rtol": -1e-3}, ValueError, "rtol"),
        (column_norm, {"rtol": 2.0}, ValueError, "rtol"),
        (column_norm, {"rtol": "small"}, TypeError, "rtol"),
        (column_norm, {"axis": 0}, ValueError, "axis"),
        (column_norm, {"axis": -2.0}, TypeError, "axis"),
        (grokfast_ema, {"alpha": 1.5}, ValueError, "alpha"),
        (grokfast_ema, {"alpha": True}, TypeError, "alpha"),
        (grokfast_ema, {"lamb": -1.0}, ValueError, "lamb"),
        (grokfast_ema, {"lamb": float("inf")}, ValueError, "lamb"),
        (grokfast_ma, {"window": 0}, ValueError, "window"),
        (grokfast_ma, {"window": 2.0}, TypeError, "window"),
        (grokfast_ma, {"lamb": float("nan")}, ValueError, "lamb"),
        (grokfast_ma, {"warmup": 1}, TypeError, "warmup"),
        (orthograd, {"rtol": -1.0}, ValueError, "rtol"),
    ],
)
def test_bad_arguments(factory, kwargs, error, match):
  with pytest.raises(error, match=match):
    factory(**kwargs)


def test_column_norm_inject_hyperparams_says_static_args():
  grads = [{"w": jnp.asarray(_randn(3, 2), jnp.float32)} for _ in range(2)]
  with pytest.raises(TypeError, match=r"axis must be a Python int.*static_args"):
    optax.inject_hyperparams(column_norm)(axis=-1).init(grads[0])
  injected = optax.inject_hyperparams(column_norm, static_args=("axis",))(
      axis=-1, rtol=1e-3)
  got, _ = _run(injected, grads)
  want, _ = _run(column_norm(axis=-1, rtol=1e-3), grads)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)


def _crandn(*shape):
  return _randn(*shape) + 1j * _randn(*shape)


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_complex_leaves_match_numpy(dtype):
  """Complex gradients work (as in optax.contrib.muon), in the leaf's dtype."""
  grads = [{"w": _crandn(4, 3), "b": _crandn(3)} for _ in range(3)]
  w = {"w": _crandn(4, 3), "b": _crandn(3)}
  cast = lambda t: jax.tree.map(lambda x: jnp.asarray(x, dtype), t)
  refs = {
      "column_norm": (column_norm(), lambda gs, k: [
          _np_column_norm(g) if g.ndim >= 2 else g for g in gs]),
      "grokfast_ema": (grokfast_ema(alpha=0.8, lamb=2.0),
                       lambda gs, k: _np_grokfast_ema(gs, 0.8, 2.0)),
      "grokfast_ma": (grokfast_ma(window=2, lamb=1.5, warmup=False),
                      lambda gs, k: _np_grokfast_ma(gs, 2, 1.5, False)),
      "orthograd": (orthograd(rtol=0.0), lambda gs, k: [
          _np_orthograd(g, w[k]).reshape(g.shape) for g in gs]),
  }
  rtol = 1e-5 if dtype == jnp.complex64 else 1e-12
  from _helpers import enable_x64

  with enable_x64(dtype == jnp.complex128):
    for name, (tx, ref) in refs.items():
      outs, _ = _run(tx, [cast(g) for g in grads], params=cast(w))
      for k in ("w", "b"):
        want = ref([g[k] for g in grads], k)
        for o, r in zip(outs, want, strict=True):
          assert o[k].dtype == dtype, name
          np.testing.assert_allclose(o[k], r, rtol=rtol, atol=rtol,
                                     err_msg=name)
    out = _run(orthograd(), [cast(grads[0])], params=cast(w))[0][0]["w"]
    assert abs(np.vdot(w["w"], out)) < 1e-5 * np.linalg.norm(w["w"]) * (
        np.linalg.norm(grads[0]["w"]))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_non_float_leaves_are_rejected_naming_transform_and_leaf(name):
  tx = TRANSFORMS[name]()
  params = {"w": jnp.ones((2, 2)), "steps": jnp.ones((2, 2), jnp.int32)}
  with pytest.raises(TypeError, match=rf"{name}.*\['steps'\].*int32"):
    tx.init(params)
  good = {"w": jnp.ones((2, 2))}
  state = tx.init(good)
  with pytest.raises(TypeError, match=rf"{name}.*\['w'\].*int32"):
    tx.update({"w": jnp.ones((2, 2), jnp.int32)}, state, good)
