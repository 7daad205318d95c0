"""Helpers shared by the measurement commands of :mod:`experiments` and
:mod:`benchmarks`: output folder, machine description, JSON, tables, and the
EGD paper's MLP.

Each command writes into ``--out``, or without it into a new timestamped folder
under ``runs/``; the committed references are written only when ``--out``
names their folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
from typing import Any, TextIO

import jax
import numpy as np
import optax

from experiments import _threads, grok, models, optimizers, tasks
from experiments._machine import cpu_model, json_safe


def parser(
  module: str, description: str, runs_dir: pathlib.Path, references: str
) -> argparse.ArgumentParser:
  """The argument parser of ``python -m <module>``, with ``--out`` (default: a
  new folder under ``runs_dir``; ``references`` is the committed results'
  folder, named in the help)."""
  name = module.rsplit(".", 1)[-1]
  p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
  p.add_argument(
    "--out",
    type=pathlib.Path,
    metavar="DIR",
    help=f"folder for the results (default: {runs_dir}/{name}-<date>-<time>); "
    f"`--out {references}` refreshes the committed references",
  )
  return p


def out_dir(
  out: pathlib.Path | None, name: str, runs_dir: pathlib.Path
) -> pathlib.Path:
  """``out``, or a new timestamped folder ``<name>-<date>-<time>`` under
  ``runs_dir``."""
  if out is not None:
    return out
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return runs_dir / f"{name}-{stamp}"


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
