"""Tests of ``experiments.sweep_grokfast``'s configurations: every one builds
and initializes on Grokfast's decoder, the recipe variants update it, and
each variant is what its name says (the filter is applied, the method and
momentum are passed through)."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
import optax
import pytest

from experiments import models, sweep_grokfast
from optax_egd import baselines


@pytest.fixture(scope="module")
def params():
  model = models.GrokfastDecoder(
    11, d_model=16, num_heads=2, num_layers=1, rngs=nnx.Rngs(params=0)
  )
  return nnx.state(model, nnx.Param)


def _grads(params, seed):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    tree,
    [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
  )


def _jitted(name, lr=0.05):
  tx = sweep_grokfast.warmed_up(sweep_grokfast.CONFIGS[name][1], lr)
  return tx, jax.jit(tx.update)


def _two_updates(jitted, params, grads=None):
  """The second update of ``jitted`` (a transform and its jitted update) on
  ``grads`` (default: two fixed random gradients), and its state."""
  tx, step = jitted
  g1, g2 = grads or (_grads(params, 1), _grads(params, 2))
  state = tx.init(params)
  _, state = step(g1, state, params)
  return step(g2, state, params)


@pytest.fixture(scope="module")
def egdm(params):
  """egdm's transform and jitted update, and its second update."""
  jitted = _jitted("egdm")
  return jitted, _two_updates(jitted, params)[0]


def test_every_configuration_initializes(params):
  for name, (description, factory) in sweep_grokfast.CONFIGS.items():
    assert description, name
    state = sweep_grokfast.warmed_up(factory, 0.01).init(params)
    assert jax.tree.leaves(state), name


def _leaves(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_egdm_momentum_variant_changes_the_update(params, egdm):
  update, _ = _two_updates(_jitted("egdm-m0.9"), params)
  assert np.all(np.isfinite(_leaves(update)))
  assert np.max(np.abs(_leaves(update) - _leaves(egdm[1]))) > 1e-4


def test_egdm_pee_is_egdm_without_an_svd(params, egdm):
  """The GPU/TPU default inside egdm: no SVD in the program, the same update
  to float32 rounding on full-rank gradients."""
  (tx, step), reference = egdm
  pee_tx, pee_step = jitted = _jitted("egdm-pee")
  update, _ = _two_updates(jitted, params)
  np.testing.assert_allclose(_leaves(update), _leaves(reference), atol=1e-5)
  assert "gesdd" in step.lower(params, tx.init(params), params).as_text()
  assert "gesdd" not in pee_step.lower(params, pee_tx.init(params), params).as_text()


def test_grokfast_egdm_filters_before_egdm(params, egdm):
  """``grokfast-egdm``'s update is ``egdm``'s update of Grokfast's filtered
  gradient, the filter's average kept in the state."""
  update, state = _two_updates(_jitted("grokfast-egdm"), params)
  is_ema = lambda x: isinstance(x, baselines.GrokfastEmaState)  # noqa: E731
  assert sum(map(is_ema, jax.tree.leaves(state, is_leaf=is_ema))) == 1
  filt = baselines.grokfast_ema(0.98, 2.0)
  fstate = filt.init(params)
  g1, fstate = filt.update(_grads(params, 1), fstate)
  g2, fstate = filt.update(_grads(params, 2), fstate)
  jitted, reference = egdm
  expected, _ = _two_updates(jitted, params, (g1, g2))
  assert np.max(np.abs(_leaves(expected) - _leaves(reference))) > 1e-4
  np.testing.assert_allclose(_leaves(update), _leaves(expected), rtol=1e-5, atol=1e-6)


def test_egdm_decay_scales_egdm_linearly(params, egdm):
  """``egdm-decay``: egdm's update times 1 - 0.9·t/1000 at step t."""
  update, _ = _two_updates(_jitted("egdm-decay"), params)
  np.testing.assert_allclose(
    _leaves(update), _leaves(egdm[1]) * (1 - 0.9 / 1000), rtol=1e-6, atol=1e-9
  )


def test_muon_momentum_variant_is_muon_with_beta_09(params):
  """muon-m0.9 is optax.contrib.muon(lr, beta=0.9), not the default 0.95."""
  update, _ = _two_updates(_jitted("muon-m0.9"), params)
  default, _ = _two_updates(_jitted("muon"), params)
  tx = sweep_grokfast.warmed_up(
    lambda learning_rate: optax.contrib.muon(learning_rate, beta=0.9), 0.05)
  expected, _ = _two_updates((tx, jax.jit(tx.update)), params)
  np.testing.assert_allclose(_leaves(update), _leaves(expected), atol=1e-6)
  assert np.max(np.abs(_leaves(update) - _leaves(default))) > 1e-4


def test_a_registry_optimizer_runs_at_the_swept_learning_rate():
  """A name outside CONFIGS is the registry's optimizer at its defaults, the
  swept lr setting the knob its grids tune: sgd's update is -lr·g (times the
  warmup's 1/10 at the second step), adamw's lr is adam_lr."""
  params = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
  tx = sweep_grokfast.warmed_up(sweep_grokfast.factory("sgd"), 0.05)
  update, _ = _two_updates((tx, tx.update), params)
  g2 = _grads(params, 2)
  np.testing.assert_allclose(_leaves(update), -0.05 * 0.1 * _leaves(g2), rtol=1e-6)
  adamw = sweep_grokfast.warmed_up(sweep_grokfast.factory("adamw"), 0.05)
  expected = sweep_grokfast.warmed_up(
    lambda learning_rate: optax.adamw(learning_rate, 0.9, 0.98, weight_decay=0.0),
    0.05)
  np.testing.assert_allclose(
    _leaves(_two_updates((adamw, adamw.update), params)[0]),
    _leaves(_two_updates((expected, expected.update), params)[0]),
    rtol=1e-6)
  assert sweep_grokfast.describe("adamw").endswith("adam_lr = lr")


def test_an_unknown_configuration_is_a_usage_error(capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    sweep_grokfast.main(["--configs", "nope", "--out", str(tmp_path / "s.json")])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--configs: unknown 'nope'; choose from muon," in err and "sgd" in err
