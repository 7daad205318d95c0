"""``jax.vmap`` over ``polar`` and ``egd`` (issue 11, item 1).

On jaxlib 0.10.2 CPU, several batched LAPACK calls in one program can
deadlock; ``polar`` decomposes stacks one matrix at a time there, and ``vmap``
over it (over models, seeds, ...) must fold the mapped axes into that loop
instead of batching the calls again. Anything that runs a vectorized program
runs in a subprocess with a hard timeout (``tests/_vmap_worker.py``); the
compiled-program checks run here (compiling cannot hang).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_egd
from optax_egd import polar

WORKER = Path(__file__).with_name("_vmap_worker.py")
EXACT = ("svd", "eigh", "rsvd", "qdwh", "auto")
ALL = EXACT + ("newton_schulz", "polar_express", "polar_express_exact")


def _run_worker(*args: str, timeout: float) -> dict[str, Any]:
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
             MKL_NUM_THREADS="1")
  env.pop("NPROC", None)  # A large XLA pool hides the deadlock.
  try:
    done = subprocess.run([sys.executable, str(WORKER), *args], env=env,
                          text=True, capture_output=True, timeout=timeout,
                          check=False)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"{args} did not finish in {timeout} s (hung?):\n"
                f"{(e.stderr or b'')[-2000:]!r}")
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------ the issue's example, end to end ---


full = pytest.mark.full


@pytest.mark.slow
@pytest.mark.parametrize("variant,rep", [
    ("plain", 0), *(pytest.param(v, r, marks=full) for v, r in (
        ("plain", 1), ("plain", 2), ("nested", 0), ("nested", 1), ("scan", 0),
        ("scan", 1)))])
def test_issue_example_finishes_and_matches_per_model_updates(variant, rep):
  """``jit(vmap(tx.update))`` of ``egd() + sgd`` over 4 models, 20 steps
  (hung 3/3 before); nested ``vmap`` and ``vmap`` inside ``scan`` too, and
  repetitions (a deadlock is a race), in ``make test-full``; the compiled
  programs of all three are checked in ``make test`` below."""
  del rep  # Repetitions: a deadlock is a race, one run proves little.
  report = _run_worker("issue", variant, timeout=300)
  assert report["max_diff"] <= 1e-5, report


# ------------------------------- every method, every way of vectorizing it ---


class _MethodsReport:
  """The worker's report, one worker run per method, on first use."""

  def __init__(self) -> None:
    self.found: dict[str, Any] = {}

  def of(self, method: str) -> dict[str, Any]:
    if not any(k.startswith(method + "/") for k in self.found):
      self.found |= _run_worker("methods", method, timeout=600)
    return self.found


@pytest.fixture(scope="module")
def methods_report() -> _MethodsReport:
  return _MethodsReport()


# The default method's programs in `make test`; the others in test-full.
BY_METHOD = [m if m == "svd" else pytest.param(m, marks=full) for m in ALL]


@pytest.mark.slow
@pytest.mark.parametrize("method", BY_METHOD)
def test_vectorized_polar_equals_per_model_results(methods_report, method):
  """vmap, nested vmap, vmap in scan, scan in vmap, vmap in/around
  shard_map, batched/unbatched key and traced rtol: same as one by one."""
  mine = {k.split("/", 1)[1]: v for k, v in methods_report.of(method).items()
          if k.startswith(method + "/")}
  expected = {"vmap", "vmap_shared_key", "nested_vmap", "vmap_in_scan"}
  if method != "qdwh":
    # jax.lax.linalg.qdwh's while_loop starts its convergence flag unvarying,
    # which shard_map's varying-axes check rejects (a jax limitation,
    # independent of vmap).
    expected.add("vmap_in_shard_map")
  if method in EXACT:
    expected.add("scan_in_vmap")
  if method == "svd":
    expected.add("shard_map_in_vmap")
  if method not in ("qdwh", "newton_schulz", "polar_express",
                    "polar_express_exact"):
    expected |= {"vmap_batched_rtol", "vmap_traced_shared_rtol"}
  assert expected <= set(mine), sorted(mine)
  errors = {k: v for k, v in mine.items() if isinstance(v, str) and k in expected}
  assert not errors, "\n".join(f"{k}: {v}" for k, v in errors.items())
  for name in expected:
    assert mine[name] <= 1e-5, (name, mine[name])


@pytest.mark.slow
@pytest.mark.parametrize("method", BY_METHOD)
def test_derivatives_still_work(methods_report, method):
  """The vmap rule must not cost ``jvp``/``grad`` (they worked before):
  ``jvp`` matches central differences, ``grad`` matches ``jvp``."""
  report = methods_report.of(method)
  if method != "rsvd":  # rank 3 of 5: truncation makes h=1e-2 differences
    # too coarse (0.05 off); grad-vs-jvp below.
    # Central differences at h=1e-2 in float32: ~3e-3 for the quintic ones.
    assert report[f"{method}/jvp_vs_fd"] <= 5e-3, report
  if method != "qdwh":  # qdwh is a while_loop: never reverse-differentiable
    assert report[f"{method}/grad_vs_jvp"] <= 1e-3, report


# ---------------------------------- compiled programs: no batched LAPACK ---


def _batched_lapack_calls(fn, *args) -> tuple[list[str], list[str]]:
  """(all LAPACK custom calls, those with a stacked operand) of ``fn``."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  calls = [line for line in hlo.splitlines()
           if 'custom_call_target="lapack_' in line]
  stacked = [line[:240] for line in calls
             if re.search(r"f(32|64)\[\d+,\d+,\d+", line.split("custom-call(")[0])]
  return calls, stacked


_X = jnp.ones((2, 3, 8, 24)) + jnp.eye(8, 24)  # 2 models of a 3-stack, wide
_KEYS = jax.random.split(jax.random.key(0), 2)


def _p(method):
  rank = 4 if method == "rsvd" else None  # only rsvd takes a rank
  return lambda a, k: polar(a, method, rank=rank, key=k)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU program layout")
@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("how", ["vmap", "nested_vmap", "vmap_in_scan",
                                 "vmap_of_one_matrix", "vmap_batched_rtol"])
def test_vmap_keeps_lapack_calls_one_matrix_at_a_time(method, how):
  """What used to deadlock: vmap turned the per-matrix loop back into
  batched LAPACK calls (the QR of the QR-first SVD in the issue)."""
  p = _p(method)
  if how == "vmap":
    fn, args = jax.vmap(p), (_X, _KEYS)
  elif how == "nested_vmap":
    fn, args = jax.vmap(jax.vmap(p, (0, None))), (_X, _KEYS)
  elif how == "vmap_in_scan":
    fn = lambda a, k: jax.lax.scan(
        lambda c, _: (c, jax.vmap(p)(a, k)), 0, length=2)[1]
    args = (_X, _KEYS)
  elif how == "vmap_of_one_matrix":  # a leaf of one matrix per model
    fn, args = jax.vmap(p), (_X[:, 0], _KEYS)
  else:
    if method == "qdwh":
      pytest.skip("qdwh takes rtol as a Python float")
    rank = 4 if method == "rsvd" else None
    fn = jax.vmap(lambda a, k, r: polar(a, method, rank=rank, key=k, rtol=r))
    args = (_X, _KEYS, jnp.array([1e-6, 1e-2]))
  calls, stacked = _batched_lapack_calls(fn, *args)
  assert calls, "expected LAPACK calls"
  assert not stacked, "\n".join(stacked)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU program layout")
@pytest.mark.parametrize("method", ["svd", "eigh", "qdwh"])
def test_vmapped_egd_update_keeps_lapack_calls_one_matrix_at_a_time(method):
  """The issue's program, compiled: jit(vmap(update)) of egd() + sgd over
  models with several matrix shapes."""
  params = {"w1": jnp.ones((3, 24, 8)) + jnp.eye(24, 8),
            "w2": jnp.ones((3, 8, 20)) + jnp.eye(8, 20),
            "w3": jnp.ones((3, 6, 6)) + jnp.eye(6)}
  tx = optax.chain(optax_egd.egd(method=method), optax.sgd(0.1))
  state = jax.vmap(tx.init)(params)
  calls, stacked = _batched_lapack_calls(jax.vmap(tx.update), params, state)
  assert calls, "expected LAPACK calls"
  assert not stacked, "\n".join(stacked)

