"""optax's own test harnesses, run for every transform optax_egd exports.

Ported from optax 0.2.8 (``optax/`` in ``.venv``); each test names the optax
test it comes from, and keeps its assertions. Adaptations, all for one reason:
these transforms are preconditioners without a learning rate.

* Where a harness needs an optimizer that minimizes, the transform is chained
  with ``optax.sgd`` (:meth:`Case.optimizer`); where optax's expected values
  are sgd's (masking, ``apply_if_finite``), they are recomputed by running the
  unwrapped transform.
* Parameters get a matrix leaf where optax's have only vectors or scalars, so
  that ``egd`` and ``column_norm`` do more than pass leaves through.
* Compilations are counted with ``_helpers.count_compiles`` (optax's
  ``test_utils.log_compilations`` is private).

A skip says why the test cannot apply. In ``make test``: ``egd()`` and the
four baselines in every test, and of the other cases (``column_norm(axis=-1)``,
``grokfast_ma(warmup=False)``, and every other egd method in the tests where
the method matters: numerics, dtypes, meshes; not the tree handling, which is
the same code for every method) one per test, taken in turn so that each runs
somewhere (marked ``slow``). The rest, and eight of the nine dtype pairs of
the mixed-precision test, run in ``make test-full`` (marked ``full``).
The explicit-mesh checks (optax's
``_src/sharding_test.py``) need 8 devices: this file runs itself in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(see ``_mesh_worker``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import functools
import inspect
import json
import os
from pathlib import Path
import subprocess
import sys
import traceback
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_egd
from optax_egd.dimension_numbers import DimensionNumbers, Matrixify

try:  # Under pytest; the 8-device subprocess runs this file as a script.
  from _helpers import count_compiles
except ImportError:  # pragma: no cover
  sys.path.insert(0, str(Path(__file__).parent))
  from _helpers import count_compiles

slow = pytest.mark.slow
full = pytest.mark.full


@dataclasses.dataclass(frozen=True)
class Case:
  """One exported transform with its arguments."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Arguments that optax.inject_hyperparams must keep static (shapes,
  # algorithm choices): as ContribTest's `uninjectable_hparam` list.
  static_args: tuple[str, ...] = ()
  # "fast": not slow; "extra": slow, in every test; "method": slow, the
  # other egd methods, in the tests that name them.
  group: str = "method"

  def make(self) -> optax.GradientTransformation:
    return self.factory(**self.kwargs)

  def optimizer(self, learning_rate: float = 1e-3, momentum: float | None = 0.9
                ) -> optax.GradientTransformation:
    """The transform in front of sgd: an optimizer that minimizes."""
    return optax.chain(self.make(), optax.sgd(learning_rate, momentum=momentum))

  @property
  def is_egd(self) -> bool:
    return self.factory is optax_egd.egd

  @property
  def method(self) -> str:
    return self.kwargs.get("method", "auto")


def _egd_kwargs(method: str, rank: int = 2) -> dict[str, Any]:
  return {"method": method, **({"rank": rank} if method == "rsvd" else {})}


EGD_STATIC = ("rank", "ns_steps", "oversample", "power_iters")
CASES = (
    Case("egd", optax_egd.egd, {}, EGD_STATIC, "fast"),
    *(Case(f"egd-{m}", optax_egd.egd, _egd_kwargs(m), EGD_STATIC)
      for m in optax_egd.METHODS if m != "auto"),
    Case("column_norm", optax_egd.column_norm, {}, ("axis",), "fast"),
    Case("column_norm-rows", optax_egd.column_norm, {"axis": -1}, ("axis",),
         "extra"),
    Case("grokfast_ema", optax_egd.grokfast_ema, {}, (), "fast"),
    Case("grokfast_ma", optax_egd.grokfast_ma, {"window": 4}, ("window",),
         "fast"),
    Case("grokfast_ma-nowarmup", optax_egd.grokfast_ma,
         {"window": 4, "warmup": False}, ("window", "warmup"), "extra"),
    Case("orthograd", optax_egd.orthograd, {}, (), "fast"),
)
BY_NAME = {c.name: c for c in CASES}


# How many tests keep each slow case in `make test` (see _params).
_KEPT: collections.Counter[str] = collections.Counter()


def _params(*, egd_only: bool = False, methods: bool = False,
            extra: bool = True, only: tuple[str, ...] = ()) -> list[Any]:
  """Cases as pytest params: the fast ones, with ``extra`` the extra
  baselines, with ``methods`` every egd method (or the ``only`` ones).

  The fast cases run in ``make test``. Of the others (the same tree handling
  with another egd method or baseline option) each test keeps one there,
  the one kept by the fewest tests so far (so every case runs in some test of
  the default suite), and the ``only`` ones; the rest run in
  ``make test-full`` (``-m full``).
  """
  chosen = [c for c in CASES
            if (c.is_egd or not egd_only) and (
                c.group == "fast" or (c.group == "extra" and extra)
                or (c.group == "method" and (methods or c.name in only)))]
  others = [c for c in chosen if c.group != "fast" and c.name not in only]
  # The one kept so far in the fewest tests (the first such, in CASES order).
  kept = min(others, key=lambda c: _KEPT[c.name]) if others else None
  if kept is not None:
    _KEPT[kept.name] += 1
  return [pytest.param(c, id=c.name, marks=(
              () if c.group == "fast" else (slow,) if c is kept or c.name in only
              else (full,)))
          for c in chosen]


def test_every_exported_transform_is_under_test() -> None:
  """Each public factory of a GradientTransformation, and each egd method."""
  factories = set()
  for name in optax_egd.__all__:
    obj = getattr(optax_egd, name)
    if not inspect.isfunction(obj):
      continue
    try:
      made = obj()
    except TypeError:  # Needs arguments: not a factory (polar, spectrum, ...).
      continue
    if isinstance(made, optax.GradientTransformation):
      factories.add(obj)
  assert factories == {c.factory for c in CASES}
  assert {c.method for c in CASES if c.is_egd} == set(optax_egd.METHODS)


# Targets, from contrib/_common_test.py (and _src/alias_test.py for complex).


def _setup_parabola(dtype: Any) -> tuple[Any, Any, Callable[[Any], Any]]:
  initial_params = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
  final_params = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
  if jnp.iscomplexobj(jnp.zeros((), dtype)):  # As in _src/alias_test.py.
    final_params *= 1 + 1j

  def obj_fn(params: Any) -> Any:
    return jnp.sum(optax.tree.norm(params - final_params, squared=True))

  return initial_params, final_params, obj_fn


def _setup_rosenbrock(dtype: Any) -> tuple[Any, Any, Callable[[Any], Any]]:
  a, b = 1.0, 100.0
  if jnp.iscomplexobj(jnp.zeros((), dtype)):
    a *= 1 + 1j
  initial_params = jnp.array([0.0, 0.0], dtype=dtype)
  final_params = jnp.array([a, a**2], dtype=dtype)
  abs_sq = lambda x: jnp.real(x * jnp.conj(x))

  def obj_fn(params: Any) -> Any:
    return abs_sq(a - params[0]) + b * abs_sq(params[1] - params[0] ** 2)

  return initial_params, final_params, obj_fn


def _setup_matrix_parabola(dtype: Any
                           ) -> tuple[Any, Any, Callable[[Any], Any]]:
  initial_params = jnp.zeros((2, 2), dtype=dtype)
  final_params = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype=dtype)

  def obj_fn(params: Any) -> Any:
    return optax.tree.norm(params - final_params, squared=True)

  return initial_params, final_params, obj_fn


def _setup_mixed_tensor_target(dtype: Any
                               ) -> tuple[Any, Any, Callable[[Any], Any]]:
  initial_params = (jnp.zeros((3,), dtype=dtype), jnp.zeros((2, 2), dtype))
  final_params = (jnp.array([1.0, -1.0, 2.0], dtype=dtype),
                  jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype=dtype))

  def obj_fn(params: Any) -> Any:
    return optax.tree.norm(
        jax.tree.map(jnp.subtract, params, final_params), squared=True)

  return initial_params, final_params, obj_fn


TARGETS = {"parabola": _setup_parabola, "rosenbrock": _setup_rosenbrock,
           "matrix_parabola": _setup_matrix_parabola,
           "mixed": _setup_mixed_tensor_target}
REAL_ONLY = ("egd supports real leaves only (complex ones are rejected naming"
             " the leaf: test_egd_rejects_complex_leaves)")


@contextlib.contextmanager
def _x64(enabled: bool) -> Iterator[None]:
  """optax's utils.x64_precision (private there)."""
  if not enabled:
    yield
    return
  from _helpers import enable_x64

  with enable_x64(True):
    yield


# contrib/_common_test.py ContribTest and _src/alias_test.py AliasTest.


@pytest.mark.parametrize("case", _params())
def test_optimizers_accept_extra_args(case: Case) -> None:
  """ContribTest/AliasTest.test_optimizers_accept_extra_args.

  optax's target is Rosenbrock (vectors only); the mixed target has a matrix.
  """
  opt = case.optimizer()
  initial_params, _, objective = _setup_mixed_tensor_target(jnp.float32)

  @jax.jit
  def step(params: Any, state: Any) -> tuple[Any, Any]:
    _, updates = jax.value_and_grad(objective)(params)
    update_kwargs = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
    updates, state = opt.update(updates, state, params, **update_kwargs)
    return optax.apply_updates(params, updates), state

  # Test that update works with extra args.
  params, state = initial_params, opt.init(initial_params)
  for _ in range(2):
    params, state = step(params, state)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))

  # Test that the optimizer doesn't recompile on 2nd call.
  params = initial_params
  state = opt.init(params)
  params, state = step(params, state)
  with count_compiles() as compiles:
    _ = step(params, state)
  assert not compiles, 'Optimizer recompiles on second call to "update".'


# Learning rates of the chained sgd (momentum 0.9) for the convergence test:
# egd's and column_norm's updates do not shrink near the optimum (unit singular
# values / column norms), so the iterates settle within about lr/(1 - 0.9).
# grokfast_ma amplifies the gradient up to 1 + lamb = 6 times, with a delay:
# with momentum Rosenbrock diverges (also at lr 1e-3 / 6), so plain sgd.
def _convergence_optimizer(case: Case, target: str
                           ) -> optax.GradientTransformation:
  if case.factory is optax_egd.grokfast_ma:
    return case.optimizer(1e-3 / 6, momentum=None)
  if target == "rosenbrock" or not (case.is_egd or case.name.startswith(
      "column_norm")):
    return case.optimizer(1e-3)
  return case.optimizer(3e-4)


@slow
@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("case", _params(methods=True))
def test_optimizers(case: Case, target: str, dtype: str) -> None:
  """ContribTest.test_optimizers and AliasTest.test_optimization.

  ContribTest runs 30,000 steps in a scan, AliasTest 10,000 in a Python loop
  checking that the second step does not recompile: here the second step is
  checked, then the rest runs in a scan (10,000 steps in all; ContribTest's
  30,000 for grokfast_ma, which without momentum is slower in Rosenbrock's
  valley).
  """
  if dtype == "complex64" and case.is_egd:
    pytest.skip(REAL_ONLY)
  if case.group == "method" and target != "matrix_parabola":
    pytest.skip("the other targets' leaves are vectors, which every egd"
                " method passes through (run for egd())")
  if dtype == "complex64" and target in ("matrix_parabola", "mixed"):
    pytest.skip("AliasTest's complex targets are parabola and rosenbrock")
  if case.factory is optax_egd.orthograd:
    pytest.skip("orthograd drops the radial part of the gradient: |w| only"
                " grows (by second-order steps), so it stalls on the sphere"
                " it reaches instead of at the minimizer (Rosenbrock: at"
                " (0.56, 0.31) for (1, 1))")
  initial_params, final_params, obj_fn = TARGETS[target](jnp.dtype(dtype))
  opt = _convergence_optimizer(case, target)

  @jax.jit
  def step(params: Any, state: Any) -> tuple[Any, Any]:
    _, updates = jax.value_and_grad(obj_fn)(params)
    # Complex gradients need to be conjugated before being added to params.
    updates = jax.tree.map(jnp.conj, updates)
    updates, state = opt.update(updates, state, params)
    return optax.apply_updates(params, updates), state

  params = initial_params
  state = opt.init(params)
  # Test that tree_map_params works (a no-op change).
  state = optax.tree.map_params(opt, lambda v: v, state)

  # Test that optimization works; the second step does not recompile.
  params, state = step(params, state)
  with count_compiles() as compiles:
    params, state = step(params, state)
  assert not compiles, 'Optimizer recompiles on second call to "update".'
  steps = 30_000 if case.factory is optax_egd.grokfast_ma else 10_000
  (params, state), _ = jax.lax.scan(
      lambda ps, _: (step(*ps), None), (params, state), length=steps - 2)
  chex.assert_trees_all_close(params, final_params, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("case", _params(only=("egd-rsvd",)))  # rsvd: the key
def test_optimizers_can_be_wrapped_in_inject_hyperparams(case: Case) -> None:
  """ContribTest/AliasTest.test_optimizers_can_be_wrapped_in_inject_hyperparams.

  ``static_args`` lists the arguments that set shapes or the algorithm
  (as ContribTest's ``uninjectable_hparam``); numbers are injected.
  """
  opt = case.make()
  opt_inject = optax.inject_hyperparams(
      case.factory, static_args=case.static_args)(**case.kwargs)

  params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
  # All-ones gradients are rank one: make the matrices generic.
  grads = [g + 0.1 * jax.random.normal(jax.random.key(i), g.shape)
           for i, g in enumerate(grads)]

  state = jax.jit(opt.init)(params)
  updates, new_state = jax.jit(opt.update)(grads, state, params)

  state_inject = jax.jit(opt_inject.init)(params)
  updates_inject, new_state_inject = jax.jit(opt_inject.update)(
      grads, state_inject, params)

  # Equality of updates.
  chex.assert_trees_all_close(updates_inject, updates, rtol=1e-5)
  # Equality of new optimizer states.
  chex.assert_trees_all_close(
      new_state_inject.inner_state, new_state, rtol=1e-5, atol=1e-5)


def _dtype_params(dtype: Any) -> dict[str, jax.Array]:
  """optax's ``jnp.array([1.0, 2.0])``, and a matrix."""
  return {"v": jnp.array([1.0, 2.0], dtype=dtype),
          "w": jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 2.0]], dtype=dtype)}


def _sq(tree: Any) -> Any:
  return sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("case", _params(methods=True))
def test_preserve_dtype(case: Case, dtype: str) -> None:
  """ContribTest/AliasTest.test_preserve_dtype."""
  dtype = jnp.dtype(dtype)
  opt = case.make()
  params = _dtype_params(dtype)
  grads = jax.grad(_sq)(params)
  state = jax.jit(opt.init)(params)
  updates, _ = jax.jit(opt.update)(grads, state, params)
  for k in params:
    assert updates[k].dtype == params[k].dtype == grads[k].dtype, k


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("case", _params(extra=False))
def test_gradient_accumulation(case: Case, dtype: str) -> None:
  """ContribTest/AliasTest.test_gradient_accumulation (optax.MultiSteps)."""
  dtype = jnp.dtype(dtype)
  opt = optax.MultiSteps(case.make(), every_k_schedule=4)
  params = _dtype_params(dtype)
  grads = jax.grad(_sq)(params)
  state = jax.jit(opt.init)(params)
  updates, _ = jax.jit(opt.update)(grads, state, params)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, grads))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64",
                                   "complex64", "complex128"])
@pytest.mark.parametrize("case", _params(methods=True))
def test_state_shape_dtype_shard_stability(case: Case, dtype: str) -> None:
  """ContribTest/AliasTest.test_state_shape_dtype_shard_stability.

  ContribTest has the real dtypes, AliasTest adds the complex ones; the target
  is the mixed one (a vector and a matrix) instead of the parabola.
  """
  if "complex" in dtype and case.is_egd:
    pytest.skip(REAL_ONLY)
  if case.group == "method" and dtype not in ("float16", "float64"):
    pytest.skip("bfloat16 and float32: test_preserve_dtype for this method")
  with _x64(dtype in ("float64", "complex128")):
    dtype = jnp.dtype(dtype)
    opt = case.optimizer()
    initial_params, _, objective = _setup_mixed_tensor_target(dtype)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
      _, updates = jax.value_and_grad(objective)(params)
      updates = jax.tree.map(jnp.conj, updates)
      # Defeat compiler optimization, use lax.cond to check for stability.
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
          cond, lambda: opt.update(updates, state, params),
          lambda: (params, state))
      return optax.apply_updates(params, updates), state

    params = initial_params
    state = opt.init(params)
    # Test that update is dtype stable.
    for _ in range(2):
      params, new_state = step(params, state)
      assert jax.tree.leaves(params)[0].dtype == dtype
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      state = jax.lax.cond(cond, lambda: state,  # noqa: B023
                           lambda: new_state)    # noqa: B023


def test_no_factory_takes_a_learning_rate() -> None:
  """ContribTest.test_optimizers_accept_learning_rate_schedule_if_...

  optax skips that test for factories without a ``learning_rate``; these are
  preconditioners, and this checks the skip is the right port. (AliasTest's
  test_explicit_dtype is sgd/adam-specific and not ported.)
  """
  for factory in {c.factory for c in CASES}:
    assert "learning_rate" not in inspect.signature(factory).parameters


# contrib/_muon_test.py MuonTest: the contract egd shares with muon (the
# matrix view of a leaf given by DimensionNumbers, orthogonal updates).


@pytest.mark.parametrize("input_shape, dim_nums, expected_flat_shape", [
    ((2, 3), DimensionNumbers(reduction_axis=0, output_axis=1), (1, 2, 3)),
    ((2, 3, 4), DimensionNumbers(reduction_axis=0, output_axis=2), (3, 2, 4)),
    ((2, 3, 4), DimensionNumbers(reduction_axis=-3, output_axis=-1),
     (3, 2, 4)),
    ((2, 3, 4, 5), DimensionNumbers(reduction_axis=2, output_axis=3),
     (6, 4, 5)),
    ((2, 3, 4, 5), DimensionNumbers(reduction_axis=2, output_axis=(0, 3)),
     (3, 4, 10)),
], ids=["2d_tuple_axes", "3d_batch_axis", "3d_negative_axes_indices",
        "4d_multiple_batch_axes", "4d_multiple_output_axes"])
def test_reshape_inverse(input_shape: tuple[int, ...], dim_nums: Any,
                         expected_flat_shape: tuple[int, ...]) -> None:
  """MuonTest.test_reshape_inverse (egd's Matrixify for _compute_muon_reshape)."""
  x = jnp.arange(np.prod(input_shape), dtype=jnp.float32).reshape(input_shape)
  layout = Matrixify.of(input_shape, dim_nums)
  reshaped_x = layout.to_stack(x)
  reconstructed_x = layout.from_stack(reshaped_x)
  # Check flat shape (batch, reduction, output).
  assert reshaped_x.shape == expected_flat_shape
  # Check inverse shape and value.
  assert reconstructed_x.shape == x.shape
  chex.assert_trees_all_close(reconstructed_x, x)


def _get_updates(case: Case, params: Any, **egd_kwargs: Any) -> tuple[Any, Any]:
  """MuonTest's get_updates: one step on loss = 1/2·sum(params²)."""
  opt = optax.chain(case.factory(**{**case.kwargs, **egd_kwargs}),
                    optax.sgd(1e-3))
  state = opt.init(params)
  grad = params
  return jax.jit(opt.update)(grad, state, params)


@pytest.mark.parametrize("case", _params(egd_only=True))
def test_callable_weight_dim_nums(case: Case) -> None:
  """MuonTest.test_callable_weight_dim_nums."""
  params = {"w1": jnp.ones((10, 10)), "w2": jnp.ones((2, 10))}

  # Case 1: a dim nums for all weights, no matter if they're muon.
  def weight_dim_nums_fn(params: Any) -> Any:
    fn_ = lambda x: DimensionNumbers(0, 1) if x.ndim == 2 else None
    return jax.tree.map(fn_, params)

  _get_updates(case, params, dimension_numbers=weight_dim_nums_fn)

  # Case 2: a None inserted for parameters that are not muon (in egd: take
  # the default).
  def weight_dim_nums_fn2(params: Any) -> Any:
    del params
    return {"w1": DimensionNumbers(), "w2": None}

  _get_updates(case, params, dimension_numbers=weight_dim_nums_fn2)


@pytest.mark.parametrize("case", _params(egd_only=True))
def test_reshape_update_for_square_parameter_matches_without_dim_nums(
    case: Case) -> None:
  """MuonTest.test_reshape_update_for_square_parameter_matches_muon_without_dim_nums."""
  params_sq = {"w": jax.random.normal(jax.random.key(0), shape=(10, 10))}
  updates_sq, _ = _get_updates(case, params_sq)
  dim_nums = {"w": DimensionNumbers(reduction_axis=0, output_axis=1)}
  reshape_updates_sq, _ = _get_updates(case, params_sq,
                                       dimension_numbers=dim_nums)
  chex.assert_trees_all_close(updates_sq, reshape_updates_sq, rtol=1e-8,
                              atol=1e-8)


@pytest.mark.parametrize("case", _params(egd_only=True))
def test_reshape_and_update_single_param(case: Case) -> None:
  """MuonTest.test_reshape_and_update_single_param."""
  w = jax.random.normal(jax.random.key(0), shape=(10, 12))
  updates, _ = _get_updates(case, {"w": w})

  # 2D with dimension numbers, (10, 12).
  dim_nums = {"w": DimensionNumbers(reduction_axis=0, output_axis=1)}
  reshape_updates, _ = _get_updates(case, {"w": w}, dimension_numbers=dim_nums)
  chex.assert_trees_all_close(updates, reshape_updates, rtol=1e-8, atol=1e-8)

  # 4D with dim nums, (10, 12) -> (4, 1, 10, 3).
  reshape_fn = lambda x: x.reshape(10, 3, 1, 4).transpose(3, 2, 0, 1)
  dim_nums = {"w": DimensionNumbers(reduction_axis=(2,), output_axis=(0, 3))}
  reshape_updates, _ = _get_updates(case, {"w": reshape_fn(w)},
                                    dimension_numbers=dim_nums)
  chex.assert_trees_all_close(jax.tree.map(reshape_fn, updates),
                              reshape_updates, rtol=1e-8, atol=1e-8)

  # 4D with dim_nums, (10, 12) -> (5, 12, 1, 2).
  reshape_fn = lambda x: x.reshape(2, 1, 5, 12).transpose(2, 3, 1, 0)
  dim_nums = {"w": DimensionNumbers(reduction_axis=(0, 3), output_axis=(1,))}
  reshape_updates, _ = _get_updates(case, {"w": reshape_fn(w)},
                                    dimension_numbers=dim_nums)
  chex.assert_trees_all_close(jax.tree.map(reshape_fn, updates),
                              reshape_updates, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", _params(egd_only=True))
def test_dim_nums_combinations(case: Case) -> None:
  """MuonTest.test_dim_nums_combinations, Tests 4 and 5: prefix trees.

  Muon keeps per-leaf state and marks non-muon leaves MaskedNode; egd has no
  per-leaf state and ``None`` means "the default matrix view" (the last two
  axes), not "skip". Tests 1-3 check muon's state and its 2-D-only default,
  which egd does not share. Kept: a ``None`` or a DimensionNumbers may stand
  for a whole subtree, and each leaf then gets the update it gets alone.
  """
  w = jax.random.normal(jax.random.key(1), (4, 2, 3))
  params = {"w1": {"a": w[0], "b": w[1]}, "w2": {"a": w[2], "b": w[3]}}
  dim_num = DimensionNumbers()
  alone = {k: {j: _get_updates(case, {"x": v})[0]["x"] for j, v in sub.items()}
           for k, sub in params.items()}
  # Test 4: prefix None, full dim_nums.
  updates, _ = _get_updates(case, params, dimension_numbers={
      "w1": None, "w2": {"a": dim_num, "b": None}})
  chex.assert_trees_all_close(updates, alone, rtol=1e-6, atol=1e-6)
  # Test 5: prefix None and dim_nums.
  updates, _ = _get_updates(case, params,
                            dimension_numbers={"w1": dim_num, "w2": None})
  chex.assert_trees_all_close(updates, alone, rtol=1e-6, atol=1e-6)


# Methods whose polar factor is exact to float32 rounding (polar.py's
# "Guarantees"); rsvd with rank >= min(m, n).
APPROXIMATE = {"newton_schulz": "Muon's quintic iteration is approximate by"
               " design (singular values in [0.68, 1.21]); its bound is"
               " checked in test_orthogonalization_modes"}


@pytest.mark.parametrize("case", _params(egd_only=True, methods=True))
def test_newton_schulz(case: Case) -> None:
  """MuonTest.test_newton_schulz: the update is orthonormal (real part).

  The complex half does not apply: egd supports real leaves only.
  """
  if case.method in APPROXIMATE:
    pytest.skip(APPROXIMATE[case.method])
  mat_real = jax.random.normal(jax.random.key(0), (4, 3), dtype=jnp.float32)
  tx = case.factory(**{**case.kwargs, **_egd_kwargs(case.method, rank=3)})
  mat_real_orth = jax.jit(tx.update)({"w": mat_real},
                                     tx.init({"w": mat_real}))[0]["w"]
  atol = rtol = 1e-2 if jax.default_backend() == "tpu" else 1e-5
  gram_real = mat_real_orth.T @ mat_real_orth
  np.testing.assert_allclose(gram_real, jnp.eye(mat_real.shape[1]), atol=atol,
                             rtol=rtol, err_msg=f"Gram:\n{gram_real}")


@pytest.mark.parametrize("shape", [(100, 100), (100, 50), (50, 100)],
                         ids=["square", "tall", "wide"])
@pytest.mark.parametrize("case", _params(egd_only=True, methods=True))
def test_orthogonalization_modes(case: Case, shape: tuple[int, int]) -> None:
  """MuonTest.test_muon_orthogonalization_modes (lr 1, no weight decay)."""
  if case.group == "method" and shape[0] != shape[1]:
    pytest.skip("tall and wide only check the shape: run for egd()")
  params = {"w": jax.random.normal(jax.random.key(42), shape)}
  updates, _ = _get_updates(case, params, **_egd_kwargs(case.method,
                                                       rank=min(shape)))
  updates = jax.tree.map(lambda u: u / -1e-3, updates)  # Undo sgd's -lr.
  # Check shape preservation.
  assert updates["w"].shape == shape
  # Check near-orthogonality (spectral norm constraint).
  if shape[0] == shape[1]:
    s = jnp.linalg.svd(updates["w"], compute_uv=False)
    assert jnp.max(s) < 2.0, f"Max singular value {jnp.max(s)} too high"
    assert jnp.min(s) > 0.1, f"Min singular value {jnp.min(s)} too low"


@pytest.mark.parametrize("case", _params(egd_only=True, methods=True))
def test_orthogonality(case: Case) -> None:
  """MuonTest.test_orthogonality: UᵀU ≈ I for 2·eye(8).

  (MuonTest.test_aol_numerical_difference and test_complex_mixed_target do
  not apply: egd has no AOL preconditioning and supports real leaves only.)
  """
  params = {"w": jnp.eye(8) * 2.0}
  updates, _ = _get_updates(case, params, **_egd_kwargs(case.method, rank=8))
  w_update = updates["w"]
  assert not any(bool(jnp.isnan(x).any()) for x in jax.tree.leaves(updates))
  gram = jnp.dot(w_update.T, w_update)
  gram = gram / jnp.max(gram)
  ortho_error = jnp.linalg.norm(gram - jnp.eye(gram.shape[0]))
  assert ortho_error < 1e-3, f"Orthogonality error too high: {ortho_error}"


def test_egd_rejects_complex_leaves() -> None:
  """What MuonTest's complex tests meet in egd: a clear error."""
  tx = optax_egd.egd()
  with pytest.raises(TypeError, match=r"real leaves only.*\['w'\].*complex64"):
    tx.init({"w": jnp.ones((2, 2), jnp.complex64)})


# transforms/_masking_test.py MaskedTest, with `_build_sgd` replaced by the
# transform in front of sgd(1.0) (its `stateful_sgd` variant: the stateful
# transforms here). Expected updates: the transform applied alone to the
# masked-in leaves (masked-out ones become None: no leaf, as MaskedNode).


def _mat(x: float, shape: tuple[int, int] = (3, 2)) -> jax.Array:
  base = jax.random.normal(jax.random.key(7), shape)
  return base + x


def _masked_reference(opt: optax.GradientTransformation, mask: Any,
                      updates_seq: list[Any], params: Any) -> list[Any]:
  """``opt`` run alone on the masked-in subtrees; the rest passed through."""
  keep = lambda tree: jax.tree.map(lambda m, t: t if m else None, mask, tree)
  state = opt.init(keep(params))
  out = []
  for updates in updates_seq:
    new, state = jax.jit(opt.update)(keep(updates), state, keep(params))
    out.append(jax.tree.map(lambda m, u, n: n if m else u, mask, updates, new,
                            is_leaf=lambda x: x is None))
  return out


def _masked_update(case: Case, update_fn: Callable[..., Any], updates: Any,
                   state: Any, params: Any) -> tuple[Any, Any]:
  """MaskedTest's second call, 'this time with no params' (orthograd needs
  params, by design)."""
  if case.factory is optax_egd.orthograd:
    return update_fn(updates, state, params)
  return update_fn(updates, state)


@pytest.mark.parametrize("use_fn", [False, True], ids=["mask", "mask_fn"])
@pytest.mark.parametrize("case", _params(extra=False))
def test_masked(case: Case, use_fn: bool) -> None:
  """MaskedTest.test_masked."""
  mask = {"a": True, "b": [False, True], "c": {"d": True, "e": (False, True)}}
  mask_arg = (lambda _: mask) if use_fn else mask
  params = {"a": _mat(1.0), "b": [_mat(2.0), _mat(3.0)],
            "c": {"d": _mat(4.0), "e": (_mat(5.0), _mat(6.0))}}
  input_updates = jax.tree.map(lambda x: x / 10.0, params)
  opt = case.optimizer(1.0, momentum=None)
  first, = _masked_reference(opt, mask, [input_updates], params)

  init_fn, update_fn = optax.masked(opt, mask_arg)
  update_fn = jax.jit(update_fn)
  state = jax.jit(init_fn)(params)

  # tree_map_params.
  result = optax.tree.map_params(init_fn, lambda v: v, state)
  chex.assert_trees_all_equal_structs(result, state)

  updates, state = update_fn(input_updates, state, params)
  chex.assert_trees_all_close(updates, first, rtol=1e-5, atol=1e-6)

  # Check repeated application, this time with no params.
  want = _masked_reference(opt, mask, [input_updates, first], params)[1]
  updates, _ = _masked_update(case, update_fn, updates, state, params)
  chex.assert_trees_all_close(updates, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", _params(extra=False))
def test_prefix_mask(case: Case) -> None:
  """MaskedTest.test_prefix_mask: the mask is a prefix of the updates."""
  mask = {"a": True, "b": False, "c": {"d": False, "e": True}}
  params = {"a": _mat(1.0), "b": {"f": _mat(2.0)},
            "c": {"d": _mat(3.0), "e": ([_mat(4.0), _mat(5.0)], _mat(6.0))}}
  input_updates = jax.tree.map(lambda x: x / 10.0, params)
  opt = case.optimizer(1.0, momentum=None)
  first, second = _masked_reference(opt, mask, [input_updates, input_updates],
                                    params)

  init_fn, update_fn = optax.masked(opt, mask)
  update_fn = jax.jit(update_fn)
  state = jax.jit(init_fn)(params)
  updates, state = update_fn(input_updates, state, params)
  chex.assert_trees_all_close(updates, first, rtol=1e-5, atol=1e-6)

  # Check repeated application, this time with no params (optax feeds the
  # first updates back in; the same gradients again here, one reference run).
  updates, _ = _masked_update(case, update_fn, input_updates, state, params)
  chex.assert_trees_all_close(updates, second, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", _params(extra=False))
def test_nested_mask(case: Case) -> None:
  """MaskedTest.test_nested_mask (optax issue 271)."""
  params = {
      "linear_1": {"w": _mat(0.0, (1, 1)), "b": jnp.zeros(1)},
      "linear_2": {"w": _mat(0.0, (1, 2)), "b": jnp.zeros(2)},
      "linear_3": {"w": _mat(0.0, (2, 3)), "b": jnp.zeros(3)},
  }
  outer_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  inner_mask = jax.tree.map(lambda _: True, params)
  inner_mask["linear_2"] = False

  opt = case.optimizer(1.0, momentum=None)
  inner = optax.masked(opt, inner_mask)
  init_fn, update_fn = optax.masked(inner, outer_mask)

  input_updates = jax.tree.map(lambda x: x + 1.0, params)
  both = {k: {"w": k != "linear_2", "b": False} for k in params}
  correct_updates, = _masked_reference(opt, both, [input_updates], params)
  assert not np.allclose(correct_updates["linear_1"]["w"],
                         input_updates["linear_1"]["w"])

  state = jax.jit(init_fn)(params)
  updates, _ = jax.jit(update_fn)(input_updates, state, params)
  chex.assert_trees_all_close(updates, correct_updates, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", _params(extra=False))
def test_masked_state_structure(case: Case) -> None:
  """MaskedTest.test_masked_state_structure (optax issue 271).

  optax checks sgd's momentum ``trace``; here the per-leaf state of each
  transform (grokfast's ``ema``, ``buffer`` and ``kept_sum``); the others keep none.
  """
  params = {"a": [jnp.ones(1), (jnp.ones(2), _mat(0.0))],
            "b": {"c": jnp.ones(4), "d": jnp.ones(5)}}
  mask = {"a": [True, (True, False)], "b": False}
  tx = optax.masked(case.make(), mask)
  inner = jax.jit(tx.init)(params).inner_state
  per_leaf = [x for x in inner if isinstance(x, (dict, list, tuple))]
  masked_node = optax.MaskedNode()
  if case.factory in (optax_egd.grokfast_ema, optax_egd.grokfast_ma):
    expected = {"a": [jnp.zeros(1), (jnp.zeros(2), masked_node)],
                "b": masked_node}
    # ema: the average; ma: the ring buffer and its running sum.
    assert len(per_leaf) == (1 if case.factory is optax_egd.grokfast_ema else 2)
    for tree in per_leaf:
      chex.assert_trees_all_equal_structs(tree, expected)
  else:
    assert per_leaf == [], "a transform with per-leaf state: check it here"


@pytest.mark.parametrize("container", [list, tuple, dict])
@pytest.mark.parametrize("case", _params(extra=False))
def test_empty(case: Case, container: type) -> None:
  """MaskedTest.test_empty (with sgd there)."""
  init_fn, update_fn = optax.masked(case.optimizer(), container())
  update_fn(container(), init_fn(container()), container())


# transforms/_conditionality_test.py ConditionalityTest.test_apply_if_finite,
# with a matrix parameter and sgd(1.0)'s known values recomputed.


@pytest.mark.parametrize("case", _params(extra=False))
def test_apply_if_finite(case: Case) -> None:
  """ConditionalityTest.test_apply_if_finite."""
  one, nan = jnp.array(1.0), jnp.array(jnp.nan)
  coef = _mat(0.5)

  def fn(p: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.sum(p * x * coef)

  params = jnp.zeros((3, 2))
  base = case.optimizer(1.0, momentum=None)
  opt = optax.apply_if_finite(base, 2)
  state = opt.init(params)
  grads_fn = jax.grad(jax.jit(fn))
  update = jax.jit(opt.update)

  # What the params must be: the transform run on the finite gradients only.
  ref_update = jax.jit(base.update)
  ref_params, ref_state, expected = params, base.init(params), []
  for _ in range(2):
    u, ref_state = ref_update(grads_fn(ref_params, one), ref_state,
                              ref_params)
    ref_params = optax.apply_updates(ref_params, u)
    expected.append(ref_params)

  # Do one successful param update.
  updates, state = update(grads_fn(params, one), state, params)
  params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, expected[0], rtol=1e-6)
  assert bool(state.last_finite)
  # Check 2 rejected param updates.
  for step in range(2):
    updates, state = update(grads_fn(params, nan), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, expected[0], rtol=1e-6)
    assert not bool(state.last_finite)
    assert step + 1 == int(state.notfinite_count)
  # Next successful param update.
  updates, state = update(grads_fn(params, one), state, params)
  params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, expected[1], rtol=1e-6)
  assert bool(state.last_finite)
  # Again 2 rejected param updates.
  for step in range(2):
    updates, state = update(grads_fn(params, nan), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, expected[1], rtol=1e-6)
    assert not bool(state.last_finite)
    assert step + 1 == int(state.notfinite_count)
  # Next param update with NaN is accepted since we reached maximum.
  updates, state = update(grads_fn(params, nan), state, params)
  params = optax.apply_updates(params, updates)
  assert bool(jnp.isnan(params).any())
  assert 5 == int(state.total_notfinite)


# transforms/_accumulation_test.py
# AccumulationTest.test_multi_steps_mixed_precision, with the transform in
# front of its adam(0.1). Jitted (optax runs it eagerly).


_MIXED = ("float32", "float16", "bfloat16")
_MIXED_PAIRS = [(u, p) for u in _MIXED for p in _MIXED]


def _mixed_precision_params() -> list[Any]:
  """(case, update dtype, param dtype): optax loops over all nine dtype
  pairs in one test; here each is a case of its own, and ``make test`` keeps
  one mixed pair per transform (in turn), the rest run with ``-m full``."""
  out = []
  for i, case in enumerate(_params(extra=False)):
    keep = [pr for pr in _MIXED_PAIRS if pr[0] != pr[1]][i % 6]
    for pair in _MIXED_PAIRS:
      marks = (*case.marks, *(() if pair == keep else (full,)))
      out.append(pytest.param(case.values[0], *pair, marks=marks,
                              id=f"{case.id}-{pair[0]}-{pair[1]}"))
  return out


@slow
@pytest.mark.parametrize("case, upd_dtype, param_dtype",
                         _mixed_precision_params())
def test_multi_steps_mixed_precision(case: Case, upd_dtype: str,
                                     param_dtype: str) -> None:
  """AccumulationTest.test_multi_steps_mixed_precision, one dtype pair."""
  flax_linen = pytest.importorskip("flax.linen")

  class Loss(flax_linen.Module):

    @flax_linen.compact
    def __call__(self, x: Any, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32) -> Any:
      return jnp.sum(flax_linen.Dense(10, dtype=dtype,
                                      param_dtype=param_dtype)(x) ** 2)

  batch_size, x_size, k_steps = 32, 7, 4
  data = jnp.ones([batch_size, x_size])
  loss = Loss()
  opt = optax.chain(case.make(), optax.adam(0.1))
  ms_opt = optax.MultiSteps(opt, k_steps)

  def train_step(data: Any, opt_state: Any, params: Any, upd_dtype: Any,
                 opt_update_fn: Callable[..., Any]) -> Any:
    grad = jax.grad(lambda p, d: loss.apply({"params": p}, d))(params, data)
    grad = jax.tree.map(lambda x: x.astype(upd_dtype), grad)
    return opt_update_fn(grad, opt_state, params)

  steps = {f: jax.jit(functools.partial(train_step, opt_update_fn=f),
                      static_argnums=3)
           for f in (opt.update, ms_opt.update)}
  compare_dtypes = lambda t1, t2: jax.tree.all(
      jax.tree.map(lambda x, y: x.dtype == y.dtype, t1, t2))
  get_dtypes = lambda tree: jax.tree.map(lambda x: x.dtype, tree)

  upd_dtype, param_dtype = jnp.dtype(upd_dtype), jnp.dtype(param_dtype)
  data = data.astype(param_dtype)
  params = loss.init({"params": jax.random.key(0)}, data,
                     param_dtype=param_dtype)["params"]
  opt_state = opt.init(params)
  ms_opt_state = ms_opt.init(params)
  for _ in range(k_steps + 1):
    updates, opt_state = steps[opt.update](data, opt_state, params,
                                           upd_dtype)
    ms_updates, ms_opt_state = steps[ms_opt.update](
        data, ms_opt_state, params, upd_dtype)
    assert compare_dtypes(updates, ms_updates), (
        "Underlying optimizer and MultiSteps updates dtype must match."
        f" Got ({get_dtypes(updates)}) vs ({get_dtypes(ms_updates)}).")
    new_params = optax.apply_updates(params, ms_updates)
    assert compare_dtypes(params, new_params), (
        "Updates parameters dtypes must match."
        f" Got ({get_dtypes(params)}) vs ({get_dtypes(new_params)}).")
    params = new_params


# _src/sharding_test.py ShardingTest (the "contrib/_sharding_test.py";
# in optax 0.2.8 it lives in _src/). test_microbatch_with_explicit_sharding
# tests optax.microbatching, not an optimizer: not ported.


def _sharding_cases() -> dict[str, Callable[[], optax.GradientTransformation]]:
  """Each transform alone, and egd (each method) in front of sgd."""
  found: dict[str, Callable[[], optax.GradientTransformation]] = {}
  for case in CASES:
    if case.group != "method":  # The method does not change egd's state.
      found[case.name] = case.make
    if case.is_egd:
      found[f"{case.name}+sgd"] = functools.partial(case.optimizer, 1.0)
  return found


@pytest.mark.parametrize("case", _params(methods=True))
def test_init_with_abstract_input(case: Case) -> None:
  """ShardingTest.test_init_with_abstract_input."""
  params = jax.ShapeDtypeStruct(shape=(2, 4, 8), dtype=jnp.float32)
  state = case.make().init(params)
  assert state is not None


def _type_mismatches(a: Any, b: Any) -> list[str]:
  ta = jax.tree_util.tree_leaves_with_path(jax.tree.map(jax.typeof, a))
  tb = jax.tree.leaves(jax.tree.map(jax.typeof, b))
  assert len(ta) == len(tb)
  bad = []
  for (path, x), y in zip(ta, tb, strict=True):
    if x != y:  # Types that print alike differ in their sharding's mesh.
      detail = f" ({x.sharding} != {y.sharding})" if str(x) == str(y) else ""
      bad.append(f"{jax.tree_util.keystr(path)}: {x} != {y}{detail}")
  return bad


def _mesh_checks(make: Callable[[], optax.GradientTransformation]) -> None:
  """ShardingTest's two sharding-in-types tests, and one compile per step.

  test_state_sharding_type_init_match_update and
  test_state_sharding_type_preserved_with_jit (optax's float16 params
  (2, 8, 4) sharded P(None, 'x') over an explicit 8-device mesh; the params
  double as the gradients), then: a jitted step run 3 times compiles once.
  """
  optimizer = make()
  mesh = jax.make_mesh((8,), ("x",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
  with jax.set_mesh(mesh):
    params = jnp.zeros((2, 8, 4), dtype=jnp.float16, out_sharding=sharding)
    # Generic gradients (zeros make every matrix transform trivial).
    grads = jax.random.normal(jax.random.key(0), params.shape, params.dtype,
                              out_sharding=sharding)
    params = params + 0.5 * grads[::-1]

    # test_state_sharding_type_init_match_update.
    state0 = optimizer.init(params)
    _, state1 = optimizer.update(grads, state0, params)
    bad = _type_mismatches(state0, state1)
    assert not bad, f"state types change after update: {bad}"

    # test_state_sharding_type_preserved_with_jit.
    state1 = jax.jit(optimizer.init)(params)
    bad = _type_mismatches(state0, state1)
    assert not bad, f"jitted init gives other state types: {bad}"
    _, state2 = optimizer.update(grads, state0, params)
    _, state3 = jax.jit(optimizer.update)(grads, state0, params)
    bad = _type_mismatches(state2, state3)
    assert not bad, f"jitted update gives other state types: {bad}"

    # Added: the types being stable, a jitted step compiles once.
    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    with count_compiles() as compiles:
      for _ in range(3):
        params, state = step(params, state)
      jax.block_until_ready(params)
    assert len(compiles) == 1, f"{len(compiles)} compilations for 3 steps"
    assert jax.typeof(params) == jax.typeof(grads), jax.typeof(params)


def _mesh_worker(names: list[str]) -> None:
  """Runs ``_mesh_checks`` per name; prints ``{name: traceback or null}``."""
  assert jax.device_count() >= 8, f"needs 8 devices, got {jax.devices()}"
  makers = _sharding_cases()
  report: dict[str, str | None] = {}
  for name in names:
    try:
      _mesh_checks(makers[name])
      report[name] = None
    except Exception:  # Reported, not raised: the parent shows each one.
      report[name] = traceback.format_exc(limit=6)
  print(json.dumps(report))


def _run_mesh_worker(names: list[str]) -> dict[str, str | None]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(
      [*flags, "--xla_force_host_platform_device_count=8"])
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("OPENBLAS_NUM_THREADS", "1")
  # The optax_egd this process tests (a script's sys.path starts at tests/).
  root = str(Path(optax_egd.__file__).resolve().parents[1])
  env["PYTHONPATH"] = os.pathsep.join(
      [root, *filter(None, [env.get("PYTHONPATH")])])
  done = subprocess.run(
      [sys.executable, __file__, "--mesh-worker", *names], env=env, text=True,
      capture_output=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


SHARDING_NAMES = list(_sharding_cases())
FAST_SHARDING = [n for n in SHARDING_NAMES
                 if BY_NAME[n.split("+")[0]].group == "fast"]
needs_sharding_in_types = pytest.mark.skipif(
    tuple(int(x) for x in jax.__version__.split(".")[:3]) < (0, 7, 2),
    reason="sharding in types needs jax >= 0.7.2 (as optax's test)")


@pytest.fixture(scope="module")
def mesh_report() -> dict[str, str | None]:
  return _run_mesh_worker(FAST_SHARDING)


@pytest.fixture(scope="module")
def slow_mesh_report() -> dict[str, str | None]:
  return _run_mesh_worker([n for n in SHARDING_NAMES if n not in FAST_SHARDING])


@needs_sharding_in_types
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in FAST_SHARDING else (full,))
    for n in SHARDING_NAMES])
def test_state_sharding_types_on_explicit_mesh(
    name: str, request: pytest.FixtureRequest) -> None:
  """ShardingTest.test_state_sharding_type_{init_match_update,preserved_with_jit}."""
  report = request.getfixturevalue(
      "mesh_report" if name in FAST_SHARDING else "slow_mesh_report")
  assert report[name] is None, report[name]


if __name__ == "__main__":
  if sys.argv[1:2] == ["--mesh-worker"]:
    _mesh_worker(sys.argv[2:])
