"""Helpers shared by the benchmarks: timing, and (from
:mod:`experiments._report`) output folders, machine description, JSON, tables.

Import this module (or anything in :mod:`benchmarks`) before JAX: the package
``__init__`` sets the BLAS and XLA thread pools first.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import pathlib
import statistics
import time
from typing import Any

from flax import nnx
import jax
import numpy as np
import optax

from experiments import _report, tasks, train

# Shared with the experiments' measurement commands.
MLP_HIDDEN = _report.MLP_HIDDEN
MLP_LR = _report.MLP_LR
egd_sgd = _report.egd_sgd
machine_info = _report.machine_info
markdown_table = _report.markdown_table
paper_mlp_setup = _report.paper_mlp_setup
paper_mlp_task = _report.paper_mlp_task
print_header = _report.print_header
result_stem = _report.result_stem
tee_stdout = _report.tee_stdout
write_json = _report.write_json

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
"""The committed reference results; written only when ``--out`` names it."""
RUNS_DIR = pathlib.Path("runs") / "bench"
"""Default parent of a run's output folder (relative to the working directory)."""


def parser(name: str, description: str) -> argparse.ArgumentParser:
  """The argument parser of ``python -m benchmarks.<name>``, with ``--out``."""
  return _report.parser(
    f"benchmarks.{name}", description, RUNS_DIR, "benchmarks/results"
  )


def out_dir(out: pathlib.Path | None, name: str) -> pathlib.Path:
  """``out``, or a new timestamped folder under :data:`RUNS_DIR`."""
  return _report.out_dir(out, name, RUNS_DIR)


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall-clock seconds per call of an already-compiled function."""

  median: float
  min: float
  repeats: int


def compile_fn(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """``jax.jit(fn)`` lowered and compiled for ``args``, with compile seconds."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def time_interleaved(
  calls: dict[str, Callable[[], Any]],
  *,
  repeats: int = 5,
  min_seconds: float = 0.2,
  max_repeats: int = 200,
) -> dict[str, Timing]:
  """Times each zero-argument call (compiled already) in interleaved rounds.

  One warm-up call each, then rounds that call every entry once, each call
  timed on its own with ``block_until_ready``: at least ``repeats`` rounds,
  more (up to ``max_repeats``) until ``min_seconds`` have run in total.
  Interleaving spreads the load of a shared machine evenly over the entries,
  so their ratios stay meaningful when absolute times drift.
  """
  for call in calls.values():
    jax.block_until_ready(call())
  times: dict[str, list[float]] = {name: [] for name in calls}
  total, rounds = 0.0, 0
  while rounds < repeats or (total < min_seconds and rounds < max_repeats):
    for name, call in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - t0)
      total += times[name][-1]
    rounds += 1
  return {
    name: Timing(statistics.median(t), min(t), len(t)) for name, t in times.items()
  }


def make_loss(
  model: nnx.Module, data: tasks.Dataset, config: train.TrainConfig
) -> tuple[Callable[[Any, jax.Array, jax.Array], jax.Array], Any]:
  """The training objective ``loss(params, x, y)`` of :mod:`experiments.train`
  (data loss plus ``0.5·l2·Σ‖W‖²``) and the model's parameters."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]

  def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    outputs = nnx.merge(graphdef, params, rest)(x)
    value, _ = train.loss_and_accuracy(outputs, y, data.num_classes, config.loss)
    return value + config.l2 * train.l2_penalty(params)

  return loss, params


def make_train_step(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  data: tasks.Dataset,
  config: train.TrainConfig,
) -> tuple[Callable[..., Any], Any]:
  """One training step ``step(params, opt_state, x, y) -> (params, opt_state)``
  (gradient of :func:`make_loss`'s objective, optimizer update, apply) and
  the initial parameters; the loop body of :func:`experiments.train`."""
  loss, params = make_loss(model, data, config)

  def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step, params


def paper_mlp_gradients(sgd_epochs: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
  """Real gradients of the paper's MLP early in training.

  Trains ``sgd_epochs`` epochs of plain SGD (lr 0.7, batch 512, l2 1e-4, 9
  steps per epoch) with :func:`experiments.train.train`, then returns the
  gradients of the two kernels on the next minibatch of 512, keyed by path
  (``"hidden"``: 194×512, ``"out"``: 512×97), as float32 NumPy arrays.
  """
  data, model, shuffle_key = paper_mlp_setup(seed)
  config = train.TrainConfig(max_epochs=sgd_epochs, stop_at_target=False)
  compiled, run = train.start(model, optax.sgd(MLP_LR), data, config)
  run = train.train(compiled, run, shuffle_key, config)
  loss, _ = make_loss(model, data, config)
  batch = jax.random.permutation(jax.random.key(seed + 1), data.x_train.shape[0])[
    : config.batch_size
  ]
  grads = jax.jit(jax.grad(loss))(run.params, data.x_train[batch], data.y_train[batch])
  return {name: np.asarray(grads[name]["kernel"]) for name in ("hidden", "out")}
