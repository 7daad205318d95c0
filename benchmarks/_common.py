"""Helpers shared by the benchmarks: machine description, timing, JSON, tables.

Import this module (or anything in :mod:`benchmarks`) before JAX: the package
``__init__`` sets the BLAS and XLA thread pools first.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, TextIO

from flax import nnx
import jax
import numpy as np
import optax

from experiments import _threads, grok, models, optimizers, tasks, train
from experiments._machine import cpu_model, json_safe

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
"""The committed reference results; written only when ``--out`` names it."""
RUNS_DIR = pathlib.Path("runs") / "bench"
"""Default parent of a run's output folder (relative to the working directory)."""


def parser(name: str, description: str) -> argparse.ArgumentParser:
  """The argument parser of ``python -m benchmarks.<name>``, with ``--out``."""
  p = argparse.ArgumentParser(
    prog=f"python -m benchmarks.{name}", description=description
  )
  p.add_argument(
    "--out",
    type=pathlib.Path,
    metavar="DIR",
    help=f"folder for the results (default: {RUNS_DIR}/{name}-<date>-<time>); "
    "`--out benchmarks/results` refreshes the committed references",
  )
  return p


def out_dir(out: pathlib.Path | None, name: str) -> pathlib.Path:
  """``out``, or a new timestamped folder under :data:`RUNS_DIR`."""
  if out is not None:
    return out
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return RUNS_DIR / f"{name}-{stamp}"


def result_stem(name: str, quick: bool) -> str:
  """File name stem of a run's results: ``name`` or ``name_quick``."""
  return f"{name}_quick" if quick else name


class _Tee:
  """A text stream writing to two streams."""

  def __init__(self, *streams: TextIO) -> None:
    self.streams = streams

  def write(self, text: str) -> int:
    for s in self.streams:
      s.write(text)
    return len(text)

  def flush(self) -> None:
    for s in self.streams:
      s.flush()


@contextlib.contextmanager
def tee_stdout(path: str | pathlib.Path) -> Iterator[None]:
  """Copies everything printed to stdout inside the block into ``path``."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w") as f:
    old = sys.stdout
    sys.stdout = _Tee(old, f)  # type: ignore[assignment]
    try:
      yield
    finally:
      sys.stdout = old


def other_running_processes() -> int:
  """Processes other than this one that are running (state R) right now."""
  count = 0
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      pid, rest = stat.read_text().split(" ", 1)
    except OSError:
      continue
    state = rest.rsplit(")", 1)[-1].split()[0]
    if state == "R" and int(pid) != os.getpid():
      count += 1
  return count


def load() -> dict[str, Any]:
  """Load average (1, 5, 15 min) and the count of other running processes."""
  return {
    "loadavg": [round(x, 2) for x in os.getloadavg()],
    "other_running_processes": other_running_processes(),
  }


def pool_line() -> str:
  """The XLA CPU thread-pool size (``NPROC``) if the environment sets it."""
  value = os.environ.get("NPROC")
  return (
    f"XLA CPU pool: NPROC={value} (from the environment)"
    if value
    else ("XLA CPU pool: XLA's default size")
  )


def machine_info() -> dict[str, Any]:
  """Versions, device, CPU, thread settings and current load, for the header."""
  return {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "cpu_model": cpu_model(),
    "cpu_count": os.cpu_count(),
    "threads": {v: os.environ.get(v) for v in _threads.THREAD_VARIABLES},
    "threads_line": _threads.describe(),
    "pool_line": pool_line(),
    "load_start": load(),
  }


def print_header(title: str, info: dict[str, Any]) -> None:
  """Prints the machine description every benchmark starts with."""
  start = info["load_start"]
  print(f"# {title}")
  print(
    f"jax {info['jax']} | backend {info['backend']} | devices "
    f"{', '.join(info['devices'])}"
  )
  print(f"CPU: {info['cpu_model']} x{info['cpu_count']} | {info['threads_line']}")
  print(info["pool_line"])
  print(
    f"load average {start['loadavg']} | other running processes: "
    f"{start['other_running_processes']}"
    + (
      "  (shared machine: timings are noisy)"
      if start["loadavg"][0] > 0.5 or start["other_running_processes"]
      else ""
    )
  )
  print()


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


def write_json(
  path: str | pathlib.Path,
  info: dict[str, Any],
  config: dict[str, Any],
  results: Any,
  summary: Any = None,
) -> pathlib.Path:
  """Writes ``{"machine", "config", "results", "summary"}`` as JSON.

  ``info`` (from :func:`machine_info`) gets the load at the end of the run as
  ``load_end``. Non-finite floats become ``null``. Returns the path.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {
    "machine": {**info, "load_end": load()},
    "config": config,
    "results": results,
    "summary": summary,
  }
  path.write_text(json.dumps(json_safe(payload), indent=1) + "\n")
  return path


Column = tuple[str, str, str]
"""(key in the row dict, header, format spec such as ``".3g"``)."""


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
  """A Markdown (pipe) table of ``rows``; missing/None cells print ``-``."""

  def cell(row: dict[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    if value is None:
      return "-"
    if isinstance(value, float) and not np.isfinite(value):
      return str(value)
    return format(value, spec)

  body = [[cell(r, k, s) for k, _, s in columns] for r in rows]
  headers = [h for _, h, _ in columns]
  widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(headers)]
  line = lambda cells: (
    "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"
  )
  sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
  return "\n".join([line(headers), sep] + [line(b) for b in body])


# The EGD paper's modular-addition MLP: onehot(a) ‖ onehot(b) → 512 ReLU → p.
MLP_HIDDEN = 512
MLP_LR = 0.7


def paper_mlp_setup(seed: int = 0, p: int = 97, op: tasks.Operation = "add") -> Any:
  """``a op b mod p`` (one-hot, 50% train split), the paper's MLP and the
  shuffle key of ``seed``: :func:`experiments.grok.setup` of ``python -m
  experiments.grok --task mod_<op> --p <p>``, so a seed here is the same run
  as there."""
  config = grok.resolve(grok.options(task=f"mod_{op}", p=p, optimizer="sgd"))
  return grok.setup(config, seed)


def paper_mlp_task(
  seed: int = 0, p: int = 97, op: tasks.Operation = "add"
) -> tuple[tasks.Dataset, models.MLP]:
  """The data and model of :func:`paper_mlp_setup`."""
  data, model, _ = paper_mlp_setup(seed, p, op)
  return data, model


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


def egd_sgd(
  method: str, config: optimizers.OptimizerConfig, only: models.Path | None = None
) -> optax.GradientTransformation:
  """``egd(method)`` on every kernel (or only the kernel at path ``only``),
  chained with SGD: the registry's ``egd`` / ``egd-first-layer`` (``egd-rsvd``
  / ``egd-rsvd-first-layer`` for ``"rsvd"``) with polar method ``method``.

  ``only=first_kernel`` with ``method="svd"`` is the official scripts'
  configuration.
  """
  name = "egd-rsvd" if method == "rsvd" else "egd"
  if only is not None:
    name += "-first-layer"
  config = dataclasses.replace(config, polar_method=method)
  return optimizers.build(
    name, config, models.MLP.first_kernel if only is None else only
  )
