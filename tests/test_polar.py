"""Correctness tests for optax_egd.polar against a float64 NumPy reference.

The reference is the float64 SVD polar factor, with the module's cutoff map
σ ↦ σ/max(σ, rtol·σ_max), of the input as the code sees it (rounded to its
dtype), never the code's own output. Matrix shapes are few and small on
purpose: every new (method, shape) pair costs a compile.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_egd.polar import (
  AUTO_CHOICES,
  METHODS,
  PRECISION_RTOL,
  PRECISIONS,
  auto_method,
  compute_dtype,
  default_rtol,
  polar,
  polar_express_lower,
  polar_express_schedule,
)

F32_EPS = float(np.finfo(np.float32).eps)
EXACT = ("svd", "qdwh", "rsvd", "eigh", "polar_express_exact")
ALL = ("svd", "qdwh", "rsvd", "eigh", "polar_express", "newton_schulz",
       "polar_express_exact")
ZOO_SHAPES = ((16, 16), (24, 8), (8, 24))
EDGE_SHAPES = ((1, 1), (1, 9), (9, 1), (2, 2000), (2000, 2))
PROP_SHAPES = ZOO_SHAPES + ((1, 9), (9, 1), (1, 1))

# Documented behaviour per method (see the guarantees in docs/guide/polar_methods.md):
#   resolved: which reference directions count as resolved, as
#     (threshold, "max" | "fro"): σ ≥ threshold·σ_max or ≥ threshold·‖G‖_F;
#   band: the singular values resolved directions land in;
#   dev: max |UᵀYV − I| on resolved directions (None: approximate method);
#   max_sv: no output singular value exceeds this;
#   noise: spectral norm of the output outside the signal of a rank-k input.
SPEC: dict[str, dict[str, Any]] = {
  "svd": dict(resolved=(1e-3, "max"), band=(1 - 1e-5, 1 + 1e-5), dev=1e-4,
              max_sv=1 + 1e-5, noise=0.1),
  "rsvd": dict(resolved=(1e-3, "max"), band=(1 - 1e-5, 1 + 1e-5), dev=1e-4,
               max_sv=1 + 1e-5, noise=0.1),
  "qdwh": dict(resolved=(1e-3, "max"), band=(1 - 1e-5, 1 + 1e-5), dev=1e-4,
               max_sv=1 + 1e-5, noise=0.1),
  "polar_express_exact": dict(resolved=(1e-3, "max"),
                              band=(1 - 1e-5, 1 + 1e-5), dev=1e-4,
                              max_sv=1 + 1e-5, noise=0.1),
  "eigh": dict(resolved=(1e-2, "max"), band=(1 - 1e-3, 1 + 1e-3), dev=1e-3,
               max_sv=1.1, noise=1e-3),
  "polar_express": dict(resolved=(1e-3, "fro"), band=(1 - 1e-5, 1 + 1e-5),
                        dev=1e-4, max_sv=1 + 1e-5, noise=1e-3),
  "newton_schulz": dict(resolved=(2e-3, "fro"), band=(0.68, 1.21), dev=None,
                        max_sv=1.21, noise=1e-3),
}


# Distance to the float64 reference (relative, Frobenius) where a method's
# rounding differs from the SVD's 1e-5: polar_express_exact runs 8-13 float32
# matrix-product steps (1e-4 documented).
REF_TOL = {"polar_express_exact": 1e-4}


# ----------------------------------------------------------------- helpers ---


def _orth(rng: np.random.Generator, n: int) -> np.ndarray:
  q, r = np.linalg.qr(rng.standard_normal((n, n)))
  return q * np.sign(np.diag(r))


def _with_sv(rng, m: int, n: int, s) -> np.ndarray:
  k = min(m, n)
  return (_orth(rng, m)[:, :k] * s) @ _orth(rng, n)[:, :k].T


def _well_conditioned(rng, m: int, n: int) -> np.ndarray:
  """Orthogonal × singular values in [0.1, 1] × orthogonal, in float32."""
  s = rng.uniform(0.1, 1.0, min(m, n))
  return _with_sv(rng, m, n, s).astype(np.float32)


def _ref(x, rtol: float | None = None, eps: float = F32_EPS) -> np.ndarray:
  """float64 SVD polar factor of ``x`` with the module's cutoff map."""
  x = np.asarray(x, np.float64)
  if rtol is None:
    rtol = max(x.shape[-2:]) * eps
  u, s, vh = np.linalg.svd(x, full_matrices=False)
  den = np.maximum(s, rtol * s[..., :1])
  f = np.where(den == 0, 0.0, s / np.where(den == 0, 1.0, den))
  return (u * f[..., None, :]) @ vh


def _relerr(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  nb = np.linalg.norm(b)
  return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


def _sv(y) -> np.ndarray:
  return np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)


def _polar(x, method: str, **kw) -> np.ndarray:
  x = jnp.asarray(x)
  if method == "rsvd":
    kw.setdefault("rank", min(x.shape[-2:]))
    kw.setdefault("key", jax.random.key(0))
  return np.asarray(polar(x, method, **kw))


def _signal_split(x, y, k: int | None, method: str):
  """(C, E): y on x's resolved (or top-k) singular pairs, and the rest."""
  u, s, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  if k is None:
    thr, rel = SPEC[method]["resolved"]
    scale = s[0] if rel == "max" else np.linalg.norm(s)
    keep = s >= thr * scale
  else:
    keep = np.arange(len(s)) < k
  u, vh = u[:, keep], vh[keep]
  y = np.asarray(y, np.float64)
  c = u.T @ y @ vh.T
  return c, y - u @ c @ vh


def _check_resolved(x, y, method: str, k: int | None = None) -> None:
  spec = SPEC[method]
  c, _ = _signal_split(x, y, k, method)
  lo, hi = spec["band"]
  sc = _sv(c)
  assert lo <= sc.min() and sc.max() <= hi, (method, sc.min(), sc.max())
  if spec["dev"] is not None:
    dev = np.abs(c - np.eye(len(c))).max()
    assert dev <= spec["dev"], (method, dev)


# ------------------------------------------------------- the adversarial zoo ---


def _zoo(m: int, n: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(m * 100 + n)
  k = min(m, n)
  wc = _well_conditioned(rng, m, n)
  nan, inf = wc.copy(), wc.copy()
  nan[m // 2, n // 2] = np.nan
  inf[0, -1], inf[-1, 0] = np.inf, -np.inf
  items = {
    "wellcond": wc,
    "gauss": rng.standard_normal((m, n)),
    "rank1": np.outer(rng.standard_normal(m), rng.standard_normal(n)),
    "rank3": rng.standard_normal((m, 3)) @ rng.standard_normal((3, n)),
    "const": np.full((m, n), 0.3),
    "zero": np.zeros((m, n)),
    "cond1e6": _with_sv(rng, m, n, np.logspace(0, -6, k)),
    "cond1e12": _with_sv(rng, m, n, np.logspace(0, -12, k)),
    "huge": wc * np.float32(1e30),
    "tiny": wc * np.float32(1e-30),
    "nan": nan,
    "inf": inf,
  }
  return {name: np.asarray(v, np.float32) for name, v in items.items()}


LOW_RANK = {"rank1": 1, "rank3": 3, "const": 1}
FINITE = ("wellcond", "gauss", "rank1", "rank3", "const", "zero", "cond1e6",
          "cond1e12", "huge", "tiny")


@functools.cache
def _zoo_out(shape: tuple[int, int], method: str):
  xs = _zoo(*shape)
  return xs, {name: _polar(x, method) for name, x in xs.items()}


zoo_cases = pytest.mark.parametrize(
  "shape,method", [(s, m) for s in ZOO_SHAPES for m in ALL],
  ids=[f"{s[0]}x{s[1]}-{m}" for s in ZOO_SHAPES for m in ALL])


@zoo_cases
def test_zoo_finite_nan_zero(shape, method):
  xs, ys = _zoo_out(shape, method)
  for name, y in ys.items():
    assert y.shape == shape and y.dtype == np.float32, name
  for name in FINITE:
    assert np.isfinite(ys[name]).all(), name
  for name in ("nan", "inf"):
    assert np.isnan(ys[name]).all(), name  # Whole matrix NaN, not just a row.
  np.testing.assert_array_equal(ys["zero"], 0)


@zoo_cases
def test_zoo_resolved_directions(shape, method):
  xs, ys = _zoo_out(shape, method)
  for name in FINITE:
    if name != "zero":
      _check_resolved(xs[name], ys[name], method, LOW_RANK.get(name))


@zoo_cases
def test_zoo_never_above_one_plus_delta(shape, method):
  _, ys = _zoo_out(shape, method)
  for name in FINITE:
    top = _sv(ys[name])[0]
    assert top <= SPEC[method]["max_sv"], (name, top)


@zoo_cases
def test_zoo_null_directions_stay_small(shape, method):
  xs, ys = _zoo_out(shape, method)
  for name, k in LOW_RANK.items():
    _, e = _signal_split(xs[name], ys[name], k, method)
    noise = np.linalg.norm(e, 2)
    assert noise <= SPEC[method]["noise"], (name, noise)


@zoo_cases
def test_zoo_matches_reference(shape, method):
  xs, ys = _zoo_out(shape, method)
  names = ["wellcond", "huge", "tiny"]
  if method in ("svd", "qdwh", "rsvd") or (method == "eigh" and
                                            shape[0] != shape[1]):
    names.append("gauss")  # Rectangular Gaussians are well-conditioned.
  if method == "newton_schulz":
    names = []
  for name in names:
    err = _relerr(ys[name], _ref(xs[name]))
    assert err <= REF_TOL.get(method, 1e-4), (name, err)


@zoo_cases
def test_zoo_scale_invariance(shape, method):
  _, ys = _zoo_out(shape, method)
  for name in ("huge", "tiny"):  # 1e30² overflows, 1e-30² underflows float32.
    assert _relerr(ys[name], ys["wellcond"]) <= REF_TOL.get(method, 1e-5), name


@pytest.mark.parametrize("method", ALL)
def test_power_of_two_scaling_is_bitwise(method):
  x = _zoo(16, 16)["wellcond"]
  y = _polar(x, method)
  for e in (-100, -1, 3, 100):  # 2**±120 would reach float32 subnormals.
    np.testing.assert_array_equal(_polar(np.ldexp(x, e), method), y)


# ------------------------------------------------------------------ shapes ---


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=str)
@pytest.mark.parametrize("method", ALL)
def test_edge_shapes(shape, method):
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  y = _polar(x, method)
  assert y.shape == shape and y.dtype == np.float32
  if method == "newton_schulz":
    _check_resolved(x, y, method)
  else:
    assert _relerr(y, _ref(x)) <= 1e-5
  if shape == (1, 1):
    np.testing.assert_allclose(y, np.sign(x), rtol=0.33 if method ==
                               "newton_schulz" else 1e-6)


@pytest.mark.parametrize("method", ALL)
def test_batch_is_per_matrix(method):
  """4-D leaves: each matrix is decomposed on its own; NaN stays local."""
  zoo = _zoo(8, 24)
  names = ["wellcond", "nan", "rank3", "zero", "huge", "inf"]
  x = np.stack([zoo[n] for n in names]).reshape(2, 3, 8, 24)
  y = _polar(x, method, rank=8) if method == "rsvd" else _polar(x, method)
  assert y.shape == x.shape
  _, single = _zoo_out((8, 24), method)
  for i, name in enumerate(names):
    got = y.reshape(6, 8, 24)[i]
    if name in ("nan", "inf"):
      assert np.isnan(got).all(), name
    elif method == "rsvd" and name == "rank3":
      # Its kept noise directions depend on the sketch, which is drawn per
      # matrix of the batch; the signal is checked by the rsvd tests.
      continue
    else:
      # eigh squares the condition number: a rank-deficient matrix's noise
      # directions move by ~4e-5 between a stacked and a single call.
      atol = 1e-4 if method == "eigh" and name == "rank3" else 1e-5
      np.testing.assert_allclose(got, single[name], atol=atol, err_msg=name)


def _lapack_calls(fn, *args) -> list[str]:
  """The LAPACK custom calls in ``fn``'s compiled CPU program, one line each."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return [line for line in hlo.splitlines() if 'custom_call_target="lapack_' in line]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU program layout")
@pytest.mark.parametrize("method", [m for m in EXACT if m != "polar_express_exact"])
def test_cpu_decomposes_stacks_one_matrix_at_a_time(method):
  """No batched LAPACK call on CPU: several in one program can deadlock
  jaxlib's thread pool (see optax_egd.per_matrix), unbatched ones do not."""
  stacks = (jnp.ones((3, 8, 24)) + jnp.eye(8, 24),
            jnp.ones((2, 16, 6)) + jnp.eye(16, 6))
  kw = dict(rank=4, key=jax.random.key(0)) if method == "rsvd" else {}
  fn = lambda a, b: [polar(x, method, **kw) for x in (a, b)]
  calls = _lapack_calls(fn, *stacks)
  assert calls, "expected LAPACK calls"
  for line in calls:
    operand = line.split("custom-call(")[0]
    assert not re.search(r"f32\[\d+,\d+,\d+\]", operand), line[:200]
  if method != "rsvd":  # rsvd draws its sketch for the whole stack
    np.testing.assert_allclose(fn(*stacks)[0][1], polar(stacks[0][1], method),
                               atol=1e-5)


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (3, 5, 1)])
def test_vectors_are_normalized_without_a_decomposition(method, shape):
  x = jax.random.normal(jax.random.key(1), shape)
  kw = dict(rank=1, key=jax.random.key(0)) if method == "rsvd" else {}
  got = polar(x, method, **kw)
  np.testing.assert_allclose(
      got, x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True), rtol=1e-6)
  if jax.default_backend() == "cpu":
    assert not _lapack_calls(lambda a: polar(a, method, **kw), x)


def test_empty_matrix_passes_through():
  x = jnp.zeros((3, 0, 5))
  assert polar(x, "svd").shape == (3, 0, 5)


# ------------------------------------------------------------------ dtypes ---


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("method", ALL)
def test_low_precision_computes_in_float32(dtype, method):
  x = jnp.asarray(_zoo(24, 8)["wellcond"], dtype)
  y = _polar(x, method)
  assert y.dtype == dtype
  # Decomposed in float32, rounded once at the end.
  y32 = _polar(x.astype(jnp.float32), method)
  np.testing.assert_array_equal(y, y32.astype(dtype))
  if method != "newton_schulz":
    eps = float(jnp.finfo(dtype).eps)
    assert _relerr(y, _ref(x.astype(jnp.float32))) <= eps


def _enable_x64():
  """``jax.enable_x64(True)``; jax < 0.8 has it as ``jax.experimental``'s."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64
  return enable_x64(True)


@pytest.mark.parametrize("method", ALL)
def test_float64_with_x64(method):
  rng = np.random.default_rng(64)
  xs = {"wellcond": _with_sv(rng, 16, 16, rng.uniform(0.1, 1, 16)),
        "cond1e6": _with_sv(rng, 16, 16, np.logspace(0, -6, 16)),
        "cond1e12": _with_sv(rng, 16, 16, np.logspace(0, -12, 16))}
  eps = float(np.finfo(np.float64).eps)
  with _enable_x64():  # A 3-D leaf: the three matrices as a batch.
    y3 = _polar(np.stack(list(xs.values())), method)
  assert y3.shape == (3, 16, 16)
  for name, y in zip(xs, y3, strict=True):
    assert y.dtype == np.float64, name
    ref = _ref(xs[name], eps=eps)
    if method == "newton_schulz":
      _check_resolved(xs[name], y, method)
    elif name == "wellcond":
      assert _relerr(y, ref) <= 1e-10, name
    elif method in ("svd", "qdwh", "rsvd"):
      # Condition 1e12 is ill-posed even in float64 (eps·κ ≈ 2e-4) except
      # for the SVD, which the reference also uses.
      tol = 1e-10 if method == "svd" or name == "cond1e6" else 1e-4
      assert _relerr(y, ref) <= tol, name
    elif method == "polar_express":  # Resolved directions only, σ ≥ 1e-3·‖G‖.
      c, _ = _signal_split(xs[name], y, None, method)
      assert np.abs(c - np.eye(len(c))).max() <= 1e-10, name


# ---------------------------------------------------------- rsvd specifics ---


@pytest.mark.parametrize("shape", [(24, 8), (8, 24)])
def test_rsvd_exact_on_rank_at_most_k(shape):
  zoo = _zoo(*shape)
  for name, k in LOW_RANK.items():
    y = _polar(zoo[name], "rsvd", rank=3)
    c, e = _signal_split(zoo[name], y, k, "rsvd")
    assert np.abs(c - np.eye(k)).max() <= 1e-5, name
    # rank = k drops the noise directions; rank > k keeps them damped.
    assert np.linalg.norm(e, 2) <= (1e-5 if k == 3 else 0.1), name


def test_rsvd_key():
  zoo = _zoo(24, 8)
  x = np.stack([zoo["rank3"], zoo["gauss"]])
  run = lambda seed: _polar(x, "rsvd", rank=3, oversample=0, power_iters=1,
                            key=jax.random.key(seed))
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)  # Same key, same result.
  # A different key is a different sketch: a truncated full-rank input
  # changes, an input of rank ≤ k does not.
  assert _relerr(a[1], c[1]) > 1e-3
  assert _relerr(a[0], c[0]) <= 1e-5


def _slow_decay(m: int = 64, n: int = 48) -> np.ndarray:
  """A float32 matrix with σ_i = i^-0.5: no gap for a sketch to lean on."""
  rng = np.random.default_rng(7)
  return _with_sv(rng, m, n, np.arange(1, n + 1) ** -0.5).astype(np.float32)


def _rsvd_topk_error(x: np.ndarray, k: int, **kw) -> float:
  """Mean error of rank-k rsvd, over 3 sketches, vs the float64 U_k V_kᵀ."""
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  ref = u[:, :k] @ vh[:k]
  # One call on three copies: each matrix of a stack gets its own sketch.
  ys = _polar(np.stack([x] * 3), "rsvd", rank=k, key=jax.random.key(0), **kw)
  return float(np.mean([_relerr(y, ref) for y in ys]))


def test_rsvd_power_iters_and_oversample_buy_accuracy():
  """On a slowly decaying spectrum each rsvd argument visibly pays off.

  Measured (64×48, σ_i = i^-0.5, rank 8, mean of 3 sketches): error vs the
  float64 top-8 polar factor ≈ 0.67 / 0.23 / 0.08 with 0 / 1 / 2 power
  iterations (oversample 10), and ≈ 0.54 / 0.24 / 0.08 with oversample
  0 / 4 / 10 (2 power iterations).
  """
  x, k = _slow_decay(), 8
  err = {(p, o): _rsvd_topk_error(x, k, power_iters=p, oversample=o)
         for p, o in ((0, 10), (1, 10), (2, 10), (2, 0), (2, 4))}
  assert err[0, 10] > 1.5 * err[1, 10] > 2.25 * err[2, 10], err
  assert err[2, 0] > 1.5 * err[2, 4] > 2.25 * err[2, 10], err
  assert err[2, 10] <= 0.15, err
  # The defaults are 2 power iterations and oversample 10.
  defaults = _polar(x, "rsvd", rank=k, key=jax.random.key(3))
  np.testing.assert_array_equal(
      defaults, _polar(x, "rsvd", rank=k, key=jax.random.key(3),
                       power_iters=2, oversample=10))


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_qdwh_noise_directions_at_svd_level(shape):
  """Rounding noise of a rank-1 input: ≤ 1/max(m, n) like the SVD (QDWH
  stopped after its schedule left it at 0.05-0.08 here before the filter)."""
  rng = np.random.default_rng(11)
  m, n = shape
  for _ in range(3):
    x = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    x = x.astype(np.float32)
    noise = {}
    for method in ("svd", "qdwh"):
      y = _polar(x, method)
      c, e = _signal_split(x, y, 1, method)
      assert abs(c.item() - 1) <= 1e-5, (method, c)
      noise[method] = np.linalg.norm(e, 2)
    # The SVD's noise is about 1/max(m, n) (0.024 = 1.15/48 measured on
    # this AMD EPYC build); QDWH's filter keeps it at that level or below.
    assert noise["svd"] <= 1.5 / max(m, n), noise
    assert noise["qdwh"] <= 1.5 / max(m, n), noise


# ------------------------------------------------------ iteration schedules ---

# Muon's quintic and the first Polar Express step (Amsel et al. 2025, with
# their 1.01 safety factor), written out here, not imported.
_MUON = (3.4445, -4.7750, 2.0315)
_PE_FIRST = (8.28721201814563 / 1.01, -23.595886519098837 / 1.01**3,
             17.300387312530933 / 1.01**5)


def _np_iteration(x: np.ndarray, coeffs) -> np.ndarray:
  """float64 odd-quintic iteration on x/(1.01·‖x‖_F), wide orientation."""
  x = np.asarray(x, np.float64)
  x = x / (1.01 * np.linalg.norm(x))
  for a, b, c in coeffs:
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
def test_ns_steps_sets_the_number_of_iterations(method):
  """Each step count is that many steps of the method's own quintics."""
  from optax_egd.polar import POLAR_EXPRESS_COEFFS
  assert POLAR_EXPRESS_COEFFS[0] == pytest.approx(_PE_FIRST, rel=1e-12)
  x = _zoo(8, 24)["cond1e6"]
  schedule = {"newton_schulz": [_MUON] * 6,
              "polar_express": list(POLAR_EXPRESS_COEFFS)}[method]
  outs = {}
  for steps in (1, 2, 3, 6):
    outs[steps] = _polar(x, method, ns_steps=steps)
    want = _np_iteration(x, schedule[:steps])
    assert _relerr(outs[steps], want) <= 1e-4, steps
  default = {"newton_schulz": 5, "polar_express": 8}[method]
  np.testing.assert_array_equal(_polar(x, method),
                                _polar(x, method, ns_steps=default))
  # Polar Express beyond its 8 tabulated steps repeats the last one.
  if method == "polar_express":
    want = _np_iteration(x, list(POLAR_EXPRESS_COEFFS) + [POLAR_EXPRESS_COEFFS[-1]])
    # Nine float32 steps: rounding reaches ~1.3e-4 on some XLA versions;
    # a missing or wrong step is off by far more.
    assert _relerr(_polar(x, method, ns_steps=9), want) <= 5e-4


@pytest.mark.parametrize("method", ["svd", "eigh", "rsvd", "qdwh", "auto"])
def test_rtol_is_used_by_every_method_with_a_cutoff(method):
  """Half the spectrum at 3e-3·σ_max: rtol = 0.1 damps it (SVD: to 0.03),
  the default (≈ 2e-6) lifts it to one."""
  rng = np.random.default_rng(5)
  x = _with_sv(rng, 16, 16, np.r_[np.ones(8), np.full(8, 3e-3)])
  x = x.astype(np.float32)
  low = _sv(_polar(x, method, rtol=0.1))
  # qdwh with a large rtol converges only to about 2e-2·rtol (see polar.py).
  top_tol = 5e-3 if method == "qdwh" else 1e-4
  assert np.all(low[8:] <= 0.05) and np.all(np.abs(low[:8] - 1) <= top_tol), low
  high = _sv(_polar(x, method))
  assert np.all(high >= 0.9), high


# ---------------------------------------------------------- rtol and auto ---


@pytest.mark.parametrize("method", ["svd", "rsvd"])
def test_custom_rtol(method):
  x = _zoo(16, 16)["cond1e6"]
  for rtol in (1e-3, 0.5):
    assert _relerr(_polar(x, method, rtol=rtol), _ref(x, rtol)) <= 1e-4


def test_traced_rtol():
  x = _zoo(16, 16)["cond1e6"]
  y = jax.jit(lambda x, r: polar(x, "svd", rtol=r))(x, 0.5)
  assert _relerr(y, _ref(x, 0.5)) <= 1e-4


def test_default_rtol_and_compute_dtype():
  assert default_rtol((3, 7, 5), jnp.bfloat16) == 7 * F32_EPS
  assert compute_dtype(jnp.float16) == jnp.float32
  assert compute_dtype(jnp.float32) == jnp.float32


def test_auto_method():
  assert auto_method((512, 97), "cpu") == "svd"
  for backend in ("gpu", "cuda", "rocm", "tpu"):
    assert auto_method((512, 97), backend) == "polar_express_exact"
  for backend in ("cpu", "gpu", "cuda", "tpu"):  # validate() relies on this list.
    assert auto_method((8, 24), backend) in AUTO_CHOICES
  chosen = auto_method((8, 24))
  assert chosen in METHODS and chosen != "auto"
  x = _zoo(8, 24)["gauss"]
  np.testing.assert_array_equal(_polar(x, "auto"), _polar(x, chosen))


def test_auto_with_traced_rtol_is_the_svd():
  """The accelerators' polar_express_exact needs a Python float rtol; a traced
  one (inject_hyperparams) gets the SVD on every platform instead of a
  TypeError (tests/test_export.py checks the exported GPU/TPU programs)."""
  x = _zoo(16, 16)["cond1e6"]
  y = jax.jit(lambda x, r: polar(x, "auto", rtol=r))(x, 0.5)
  assert _relerr(y, _ref(x, 0.5)) <= 1e-4
  np.testing.assert_array_equal(
      y, jax.jit(lambda x, r: polar(x, "svd", rtol=r))(x, 0.5))


# -------------------------------------------------------------- validation ---


@pytest.mark.parametrize("kwargs,exc,match", [
  (dict(method="newton"), ValueError, "method"),
  (dict(method="rsvd", rank=0, key=jax.random.key(0)), ValueError, "rank"),
  (dict(method="rsvd", rank=2.0, key=jax.random.key(0)), TypeError, "rank"),
  (dict(method="rsvd", rank=True, key=jax.random.key(0)), TypeError, "rank"),
  (dict(method="rsvd", key=jax.random.key(0)), ValueError, "rank"),
  (dict(method="rsvd", rank=2), ValueError, "key"),
  (dict(method="rsvd", rank=2, oversample=-1, key=jax.random.key(0)),
   ValueError, "oversample"),
  (dict(method="rsvd", rank=2, power_iters=-1, key=jax.random.key(0)),
   ValueError, "power_iters"),
  (dict(method="newton_schulz", ns_steps=0), ValueError, "ns_steps"),
  (dict(method="qdwh", rtol=jnp.float32(1e-3)), TypeError, "rtol"),
  # Arguments the method does not use are rejected, naming who uses them.
  (dict(method="svd", rank=2), ValueError, "rank=2 is used only by method 'rsvd'"),
  (dict(method="auto", oversample=10), ValueError,
   r"oversample=10 is used only by method 'rsvd'; method='auto' \(which picks"),
  (dict(method="newton_schulz", power_iters=2), ValueError,
   "power_iters=2 is used only by method 'rsvd'"),
  (dict(method="rsvd", rank=2, ns_steps=5, key=jax.random.key(0)), ValueError,
   "ns_steps=5 is used only by method 'newton_schulz' or 'polar_express'"),
  (dict(method="qdwh", ns_steps=5), ValueError, "ns_steps"),
  (dict(method="polar_express", rtol=1e-3), ValueError,
   "rtol is not used by method='polar_express'"),
  (dict(method="newton_schulz", rtol=1e-3), ValueError, "rtol"),
  (dict(method="polar_express_exact", rtol=jnp.float32(1e-3)), TypeError,
   "needs rtol as a Python float"),
  (dict(method="polar_express_exact", ns_steps=5), ValueError, "ns_steps"),
  (dict(method="svd", precision="bfloat16"), ValueError,
   "precision='bfloat16' is used only by the matrix-product methods"),
  (dict(method="qdwh", precision="tf32"), ValueError, "precision"),
  (dict(method="polar_express_exact", precision="fp8"), ValueError,
   "precision must be one of"),
  (dict(method="auto", precision=16), ValueError, "precision must be one of"),
])
def test_validation(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    polar(jnp.ones((4, 3)), **kwargs)


# One rule for rtol (check_rtol), the same in polar, egd and egdm: each case
# either constructs and runs under jit in all three, or raises the same error,
# naming rtol, where the argument is given (the call, the construction).
_NAN = float("nan")
RTOL_CASES = [
  ("svd", 0.0, None), ("svd", 0, None), ("eigh", 0.0, None),
  ("svd", 0.5, None), ("qdwh", 1e-3, None), ("polar_express_exact", 1e-3, None),
  ("auto", 1e-3, None), ("svd", np.float32(1e-3), None),
  ("qdwh", np.float64(1e-3), None), ("svd", jnp.asarray(0.5), None),
  ("auto", 0.0, (ValueError, r"rtol must be in \(0, 1\) for method='auto',"
                 r" got 0.0 \(rtol = 0, no cutoff, is for method 'svd'")),
  ("qdwh", 0.0, (ValueError, r"rtol must be in \(0, 1\)")),
  ("polar_express_exact", 0, (ValueError, r"rtol must be in \(0, 1\)")),
  ("svd", -1, (ValueError, r"rtol must be in \[0, 1\), got -1.0")),
  ("auto", -1e-3, (ValueError, "rtol must be in")),
  ("svd", 1, (ValueError, r"rtol must be in \[0, 1\), got 1.0")),
  ("svd", 2.0, (ValueError, r"rtol must be in \[0, 1\), got 2.0")),
  ("polar_express_exact", 1, (ValueError, r"rtol must be in \(0, 1\)")),
  ("auto", 1, (ValueError, r"rtol must be in \(0, 1\)")),
  ("svd", _NAN, (ValueError, "rtol must be in .*, got nan")),
  ("qdwh", _NAN, (ValueError, "rtol must be in .*, got nan")),
  ("svd", jnp.asarray(_NAN), (ValueError, "rtol must be in .*, got nan")),
  ("svd", jnp.asarray(2.0), (ValueError, "rtol must be in")),
  ("svd", jnp.ones(2), (TypeError, "rtol must be a float, a scalar")),
  ("svd", jnp.asarray(1, jnp.int32), (TypeError, "rtol must be a float, a")),
  ("svd", True, (TypeError, "rtol must be a float")),
  ("svd", "1e-3", (TypeError, "rtol must be a float")),
  ("qdwh", jnp.asarray(1e-3), (TypeError, "method='qdwh' needs rtol as a")),
  ("polar_express", 1e-3, (ValueError, "rtol is not used")),
]


def _rtol_outcome(call):
  try:
    out = call()
  except (TypeError, ValueError) as e:
    return type(e), str(e)
  assert bool(jnp.all(jnp.isfinite(jnp.asarray(out))))
  return None


@pytest.mark.parametrize("method,rtol,expected", RTOL_CASES,
                         ids=[f"{m}-{r!r}" for m, r, _ in RTOL_CASES])
def test_one_rtol_rule_in_polar_egd_and_egdm(method, rtol, expected):
  from optax_egd import egd, egdm
  x = jnp.array([[3.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
  params = {"w": jnp.ones_like(x)}

  def with_egd():
    tx = egd(method=method, rtol=rtol)
    return jax.jit(tx.update)({"w": x}, tx.init(params))[0]["w"]

  def with_egdm():
    tx = egdm(0.1, method=method, rtol=rtol)
    return jax.jit(tx.update)({"w": x}, tx.init(params), params)[0]["w"]

  outcomes = [_rtol_outcome(lambda: jax.jit(lambda x: polar(x, method, rtol=rtol))(x)),
              _rtol_outcome(with_egd), _rtol_outcome(with_egdm)]
  if expected is None:
    assert outcomes == [None] * 3
  else:
    exc, match = expected
    assert outcomes[0] == outcomes[1] == outcomes[2], outcomes
    assert outcomes[0][0] is exc and re.search(match, outcomes[0][1]), outcomes[0]
    assert "rtol" in outcomes[0][1]


def test_traced_rtol_out_of_range_gives_nan_not_a_wrong_factor():
  """A traced rtol cannot be checked at the call: out of [0, 1) (or NaN) the
  result is NaN, never a silently rescaled factor (rtol = 2 halves every σ)."""
  x = _zoo(16, 16)["cond1e6"]
  f = jax.jit(lambda x, r: polar(x, "svd", rtol=r))
  for bad in (2.0, 1.0, -0.5, _NAN):
    assert bool(jnp.all(jnp.isnan(f(x, bad)))), bad
  assert bool(jnp.all(jnp.isfinite(f(x, 0.0))))
  # inject_hyperparams: checked at init (concrete), NaN when set out of range.
  from optax_egd import egd
  tx = optax.inject_hyperparams(egd, static_args=("method",))
  with pytest.raises(ValueError, match="rtol must be in"):
    tx(method="svd", rtol=2.0).init({"w": x})
  tx = tx(method="svd", rtol=1e-3)
  state = tx.init({"w": x})
  state.hyperparams["rtol"] = jnp.asarray(2.0)
  updates, _ = jax.jit(tx.update)({"w": x}, state)
  assert bool(jnp.all(jnp.isnan(updates["w"])))


@pytest.mark.parametrize("x", [jnp.ones(3), jnp.float32(1.0)])
def test_needs_a_matrix(x):
  with pytest.raises(ValueError, match="ndim"):
    polar(x, "svd")


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_needs_a_floating_dtype(dtype):
  with pytest.raises(TypeError, match="x with a floating dtype"):
    polar(jnp.ones((4, 3), dtype), "svd")


# ------------------------------------------------------ hypothesis properties ---

PROPS = settings(max_examples=25, deadline=None, derandomize=True,
                 database=None)
matrices = st.tuples(st.sampled_from(PROP_SHAPES), st.integers(0, 2**32 - 1))


def _draw(spec) -> tuple[np.ndarray, np.random.Generator]:
  shape, seed = spec
  rng = np.random.default_rng(seed)
  return _well_conditioned(rng, *shape), rng


def _close(a, b, tol: float) -> None:
  assert _relerr(a, b) <= tol, _relerr(a, b)


@pytest.mark.parametrize("method", ALL)
@PROPS
@given(spec=matrices, log_c=st.floats(-30, 30))
def test_equivariance(method, spec, log_c):
  """polar(cG) = polar(G), polar(QGR) = Q polar(G) R, polar(Gᵀ) = polar(G)ᵀ."""
  g, rng = _draw(spec)
  m, n = g.shape
  p = _polar(g, method).astype(np.float64)
  c = np.float32(10.0**log_c)
  tight, loose = REF_TOL.get(method, 1e-5), REF_TOL.get(method, 1e-4)
  _close(_polar(c * g, method), p, tight)
  q, r = _orth(rng, m), _orth(rng, n)
  _close(_polar((q @ g).astype(np.float32), method), q @ p, loose)
  _close(_polar((g @ r).astype(np.float32), method), p @ r, loose)
  _close(_polar(g.T, method), p.T, tight)


@pytest.mark.parametrize("method", EXACT + ("polar_express",))
@PROPS
@given(spec=matrices)
def test_idempotent(method, spec):
  g, _ = _draw(spec)
  p = _polar(g, method)
  _close(_polar(p, method), p, REF_TOL.get(method, 1e-5))


@PROPS
@given(spec=matrices)
def test_exact_methods_agree(spec):
  g, _ = _draw(spec)
  ref = _ref(g)
  for method in EXACT + ("polar_express",):
    _close(_polar(g, method), ref, REF_TOL.get(method, 1e-5))


# ------------------------------------------------- polar_express_exact ---


def _apply_schedule(steps, x: np.ndarray) -> np.ndarray:
  for a, b, c in steps:
    x = a * x + b * x**3 + c * x**5
  return x


@pytest.mark.parametrize("lower", [1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
def test_polar_express_schedule_lifts_everything_above_lower(lower):
  """In exact arithmetic the schedule maps [lower, 1] within 1e-6 of one and
  never above one; values well below lower come out below their input's
  share of lower (damped, not lifted)."""
  steps = polar_express_schedule(lower)
  xs = np.geomspace(lower, 1.0, 20001)
  ys = _apply_schedule(steps, xs)
  assert np.abs(ys - 1).max() <= 1e-6, np.abs(ys - 1).max()
  assert ys.max() <= 1 + 1e-12
  small = _apply_schedule(steps, np.array([0.01 * lower, 0.05 * lower]))
  assert small[0] <= 1e-3 and small[1] <= 0.1, small
  assert len(steps) <= 14  # 1e-6 takes 13 steps (with the damping step).


@pytest.mark.parametrize("lower", [1e-3, 1e-5])
def test_polar_express_steps_are_minimax(lower):
  """Each Remez step equioscillates (Amsel et al., Thm 4.1): the error 1 − p
  has four extrema of equal size and alternating sign on [ℓ, u], and no
  point of the interval is worse. Checked on the first step (u = 1) before
  the 1.01 safety factor."""
  polar_module = importlib.import_module("optax_egd.polar_schedules")
  (a, b, c), err = polar_module._odd_quintic_minimax(lower, 1.0)
  xs = np.geomspace(lower, 1.0, 200001)
  e = 1 - (a * xs + b * xs**3 + c * xs**5)
  assert np.abs(e).max() <= err * (1 + 1e-9)
  y = np.roots([5 * c, 3 * b, a])
  inner = np.sort(np.sqrt(np.real(y[np.isreal(y) & (np.real(y) > 0)])))
  pts = np.array([lower, *inner[(inner > lower) & (inner < 1)], 1.0])
  e_pts = 1 - (a * pts + b * pts**3 + c * pts**5)
  np.testing.assert_allclose(e_pts, err * np.array([1, -1, 1, -1]), rtol=1e-9)
  # Close to Polar Express's published first step (designed for ℓ = 1e-3).
  np.testing.assert_allclose(a, _PE_FIRST[0] * 1.01, rtol=3e-2)


def test_polar_express_lower_accounts_for_the_norm_bound():
  assert polar_express_lower((256, 256), 1e-3) == pytest.approx(1e-3 / 2)
  assert polar_express_lower((97, 512), 1e-4) == pytest.approx(1e-4 / 97**0.125)
  with pytest.raises(ValueError, match="lower"):
    polar_express_schedule(0.0)


@pytest.mark.parametrize("shape", [(64, 64), (97, 512), (512, 194)])
def test_polar_express_exact_to_the_cutoff_against_float64(shape):
  """The accelerators' default keeps EGD's contract: every direction with
  σ ≥ rtol·σ_max (default rtol, a condition-1e6 spectrum) lands within 1e-5
  of one, like the float64 SVD (measured ≤ 6e-7); rank-1 rounding noise
  stays below the SVD's."""
  rng = np.random.default_rng(sum(shape))
  m, n = shape
  k = min(m, n)
  x = _with_sv(rng, m, n, np.logspace(0, -6, k)).astype(np.float32)
  u, s, vh = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  y = _polar(x, "polar_express_exact").astype(np.float64)
  d = np.einsum("ik,ij,kj->k", u, y, vh)
  keep = s >= default_rtol(shape, jnp.float32) * s[0]
  assert np.abs(d[keep] - 1).max() <= 1e-5
  assert _sv(y).max() <= 1 + 1e-5
  r1 = np.outer(rng.standard_normal(m), rng.standard_normal(n)).astype(np.float32)
  noise = {meth: np.linalg.norm(_signal_split(r1, _polar(r1, meth), 1, meth)[1], 2)
           for meth in ("svd", "polar_express_exact")}
  assert noise["polar_express_exact"] <= max(noise["svd"], 1e-3), noise


# Resolved directions (σ ≥ rtol·σ_max) stay within `tol` of one at the
# precision's default cutoff (PRECISION_RTOL, 1e-3): measured 1e-4-2e-4 for
# tf32 and 8e-4-1.5e-3 for bfloat16 on 64² to 512×194 condition-1e6 spectra.
_PRECISION_TOL = {"float32": 1e-5, "tf32": 1e-3, "bfloat16": 3e-3}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_accuracy_against_float64(precision):
  rng = np.random.default_rng(5)
  x = _with_sv(rng, 64, 96, np.logspace(0, -6, 64)).astype(np.float32)
  u, s, vh = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  rtol = max(default_rtol(x.shape, jnp.float32),
             PRECISION_RTOL.get(precision, 0.0))
  y = _polar(x, "polar_express_exact", precision=precision)
  d = np.einsum("ik,ij,kj->k", u, y.astype(np.float64), vh)
  err = np.abs(d[s >= rtol * s[0]] - 1).max()
  assert err <= _PRECISION_TOL[precision], (precision, err)
  if precision != "float32":  # The lower precision really changes the result.
    assert err > 1e-6, err
    assert not np.array_equal(y, _polar(x, "polar_express_exact"))


def test_tf32_rounding_keeps_ten_mantissa_bits():
  polar_module = importlib.import_module("optax_egd.polar_methods")
  x = jnp.array([1 + 2.0**-10, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-12,
                 jnp.inf, -3.0], jnp.float32)
  y = np.asarray(polar_module._round_to_tf32(x))
  # Ties go to even: 1 + 2^-11 -> 1, 1 + 3·2^-11 -> 1 + 2^-9.
  np.testing.assert_array_equal(
      y, np.array([1 + 2.0**-10, 1.0, 1 + 2.0**-9, 1.0, np.inf, -3.0],
                  np.float32))


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
def test_precision_applies_to_the_other_iterations(method):
  x = _zoo(16, 16)["gauss"]
  full = _polar(x, method)
  low = _polar(x, method, precision="bfloat16")
  assert not np.array_equal(full, low)
  assert _relerr(low, full) <= 0.05
  np.testing.assert_array_equal(full, _polar(x, method, precision="float32"))
