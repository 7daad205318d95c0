"""Tests for optax_egd.spectrum against float64 NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_egd.spectrum import SpectrumInfo, spectrum

RNG = np.random.default_rng(0)


def _np_effective_rank(s: np.ndarray) -> float:
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def _check_against_numpy(info: SpectrumInfo, a: np.ndarray) -> None:
  s = np.linalg.svd(a, compute_uv=False)
  tol = max(a.shape) * np.finfo(np.float32).eps * s[0]  # float32 compute.
  np.testing.assert_allclose(info.singular_values, s, rtol=1e-5, atol=1e-6)
  assert int(info.rank) == np.linalg.matrix_rank(a, tol=tol)
  np.testing.assert_allclose(info.condition_number, s[0] / s[s > tol][-1],
                             rtol=1e-4)
  np.testing.assert_allclose(info.effective_rank, _np_effective_rank(s),
                             rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_matches_numpy(shape):
  a = RNG.standard_normal(shape)
  info = spectrum(jnp.asarray(a, jnp.float32))
  assert info.singular_values.shape == (min(shape),)
  assert info.singular_values.dtype == jnp.float32
  assert info.rank.dtype == jnp.int32
  _check_against_numpy(info, a)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_identity_has_effective_rank_n(n):
  info = spectrum(jnp.eye(n))
  np.testing.assert_allclose(info.effective_rank, n, rtol=1e-5)
  assert int(info.rank) == n
  assert float(info.condition_number) == 1.0


def test_low_rank():
  rank1 = np.outer(RNG.standard_normal(6), RNG.standard_normal(5))
  info = spectrum(jnp.asarray(rank1, jnp.float32))
  assert int(info.rank) == 1
  np.testing.assert_allclose(info.condition_number, 1.0)
  np.testing.assert_allclose(info.effective_rank, 1.0, rtol=1e-5)
  rank2 = RNG.standard_normal((6, 2)) @ RNG.standard_normal((2, 5))
  info = spectrum(jnp.asarray(rank2, jnp.float32))
  assert int(info.rank) == 2
  s = np.linalg.svd(rank2, compute_uv=False)
  np.testing.assert_allclose(info.condition_number, s[0] / s[1], rtol=1e-4)


def test_rtol_cutoff():
  a = jnp.diag(jnp.array([4.0, 2.0, 1.0]))
  info = spectrum(a, rtol=0.5)  # Cutoff 2: only 4 is strictly above it.
  assert int(info.rank) == 1 and float(info.condition_number) == 1.0
  info = spectrum(a, rtol=0.0)
  assert int(info.rank) == 3 and float(info.condition_number) == 4.0
  traced = jax.jit(lambda x, r: spectrum(x, rtol=r))(a, 0.3)
  assert int(traced.rank) == 2 and float(traced.condition_number) == 2.0


def test_zero_matrix():
  info = spectrum(jnp.zeros((3, 4)))
  np.testing.assert_array_equal(info.singular_values, np.zeros(3))
  assert int(info.rank) == 0
  assert float(info.effective_rank) == 0.0
  assert float(info.condition_number) == np.inf


def test_batch_leaves():
  a = RNG.standard_normal((2, 3, 5, 4))
  a[1, 2] = np.outer(RNG.standard_normal(5), RNG.standard_normal(4))
  info = spectrum(jnp.asarray(a, jnp.float32))
  assert info.singular_values.shape == (2, 3, 4)
  assert info.rank.shape == info.effective_rank.shape == (2, 3)
  for idx in np.ndindex(2, 3):
    _check_against_numpy(SpectrumInfo(*(x[idx] for x in info)), a[idx])


def test_pytree_structure_and_non_matrix_leaves():
  grads = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
           "scale": jnp.array(1.0)}
  info = spectrum(grads)
  assert info["dense"]["bias"] is None and info["scale"] is None
  assert isinstance(info["dense"]["kernel"], SpectrumInfo)


def test_under_jit_matches_eager():
  grads = {"w": jnp.asarray(RNG.standard_normal((5, 3)), jnp.float32),
           "b": jnp.ones(3)}
  jitted = jax.jit(spectrum)(grads)
  eager = spectrum(grads)
  assert jitted["b"] is None
  for a, b in zip(jitted["w"], eager["w"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bfloat16_computed_in_float32():
  a = jnp.asarray(RNG.standard_normal((6, 4)), jnp.bfloat16)
  info = spectrum(a)
  assert info.singular_values.dtype == jnp.float32
  _check_against_numpy(info, np.asarray(a, np.float64))


def test_nan_propagates():
  a = jnp.ones((3, 3)).at[0, 1].set(jnp.nan)
  info = spectrum(a)
  assert np.isnan(info.condition_number)
  assert np.isnan(info.effective_rank)


@pytest.mark.parametrize(
    "rtol, error", [(-1.0, ValueError), (float("nan"), ValueError),
                    (True, TypeError)])
def test_bad_rtol(rtol, error):
  with pytest.raises(error, match="rtol"):
    spectrum(jnp.eye(2), rtol=rtol)
