"""The programs EGD's updates lower to on GPU and TPU, checked on this CPU.

``jax.export`` lowers a function for another platform without its hardware;
the custom calls in the exported StableHLO name the kernels the device would
run (``cusolver_gesvdj_ffi``, TPU ``Eigh`` …). ``"auto"`` resolves per
lowering platform, so the default ``egd()`` and ``egdm()`` must hold no
SVD/eigh/QR custom call for ``cuda`` and ``tpu`` while the CPU program keeps
LAPACK's SVD.
"""

from __future__ import annotations

import re
import warnings

import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_egd
from optax_egd import DimensionNumbers

DECOMPOSITIONS = re.compile(
    r"gesvd|gesdd|syevd|heevd|geqrf|orgqr|potrf|getrf|Eigh|Svd|Qr|"
    r"Householder|Cholesky|LuDecomposition", re.IGNORECASE)


def _gpt2_small_tree(layers: int = 12, d: int = 768):
  """GPT-2 small's matrices, stacked per layer (scanned), plus vectors."""
  f = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {"attn": {"qkv": f(layers, d, 3 * d), "proj": f(layers, d, d)},
          "mlp": {"fc": f(layers, d, 4 * d), "out": f(layers, 4 * d, d)},
          "ln": f(layers, d), "bias": f(layers, 4 * d)}


def _mlp_tree(p: int = 97, hidden: int = 512):
  f = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {"l1": {"kernel": f(2 * p, hidden), "bias": f(hidden)},
          "l2": {"kernel": f(hidden, p), "bias": f(p)}}


# The stacked layers' matrices, and their stacked vectors (2-D, no matrices).
_STACKED = lambda params: jax.tree.map(
    lambda p: DimensionNumbers(-2, -1) if p.ndim == 3 else optax_egd.NOT_A_MATRIX,
    params)

TRANSFORMS = {
    "egd()": lambda tree: optax.chain(optax_egd.egd(
        dimension_numbers=_STACKED if tree is GPT2 else None), optax.adamw(1e-3)),
    "egdm(0.02)": lambda tree: optax_egd.egdm(
        0.02, dimension_numbers=_STACKED if tree is GPT2 else None),
}
GPT2, MLP = _gpt2_small_tree(), _mlp_tree()
TREES = {"gpt2-small": GPT2, "paper-mlp": MLP}


def _custom_calls(tx, tree, platforms) -> list[str]:
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a default-axes warning: a bug here.
    state = jax.eval_shape(tx.init, params)
  exp = export.export(jax.jit(lambda g, s, p: tx.update(g, s, p)),
                      platforms=platforms)(tree, state, tree)
  return sorted(set(re.findall(r"stablehlo\.custom_call @(\w+)",
                               exp.mlir_module())))


@pytest.mark.parametrize("tree_name", TREES)
@pytest.mark.parametrize("tx_name", TRANSFORMS)
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_default_update_on_accelerators_has_no_decomposition(platform, tx_name,
                                                             tree_name):
  tree = TREES[tree_name]
  calls = _custom_calls(TRANSFORMS[tx_name](tree), tree, [platform])
  assert not [c for c in calls if DECOMPOSITIONS.search(c)], calls


@pytest.mark.parametrize("tx_name", TRANSFORMS)
def test_default_update_on_cpu_keeps_the_svd(tx_name):
  calls = _custom_calls(TRANSFORMS[tx_name](MLP), MLP, ["cpu"])
  assert "lapack_sgesdd_ffi" in calls, calls


def test_one_export_for_cpu_and_cuda_runs_the_svd_on_cpu():
  """A multi-platform export keeps both branches (jax also lowers the CPU
  branch's SVD for CUDA, in a branch CUDA never takes); called on this CPU it
  selects the CPU branch: the exact SVD update, bitwise."""
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape),
                                             s.dtype), MLP)
  tx = optax_egd.egd()
  state = tx.init(grads)
  exp = export.export(jax.jit(lambda g, s: tx.update(g, s)),
                      platforms=["cpu", "cuda"])(grads, state)
  assert exp.platforms == ("cpu", "cuda")
  got, _ = exp.call(grads, state)
  svd = optax_egd.egd("svd")
  want, _ = jax.jit(svd.update)(grads, svd.init(grads))
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("platform,svd", [("cuda", "cusolver_gesvdj_ffi"),
                                          ("tpu", "Eigh")])
def test_explicit_svd_and_traced_rtol_keep_the_svd(platform, svd):
  """What the previous default ran (the check is not vacuous), and what
  ``auto`` falls back to under ``inject_hyperparams`` (a traced rtol: the
  iteration's schedule needs a Python float)."""
  assert svd in _custom_calls(optax_egd.egd("svd"), MLP, [platform])
  injected = optax.inject_hyperparams(optax_egd.egd, static_args=("method",))(
      rtol=1e-4)
  assert svd in _custom_calls(injected, MLP, [platform])


def test_exported_cuda_program_is_what_cpu_runs_for_polar_express_exact():
  """The accelerators' branch computes polar_express_exact: run on CPU with
  the method forced, it is exact to the cutoff (tests/test_polar.py) and
  matches the CPU SVD's update on the paper's MLP gradient to 1e-3."""
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape),
                                             s.dtype), MLP)
  svd, pee = (optax_egd.egd(m) for m in ("svd", "polar_express_exact"))
  a, _ = svd.update(grads, svd.init(grads))
  b, _ = pee.update(grads, pee.init(grads))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(y, x, atol=1e-3)
