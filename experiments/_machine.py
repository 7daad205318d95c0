"""The machine a measurement ran on, and what ran it, for the JSON and
tables that report it (``results.json`` of ``python -m experiments.grok``,
the leaderboard's rows)."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import importlib
import math
import os
import pathlib
import platform
import shlex
import subprocess
from typing import Any

from experiments import _threads

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The packages whose versions a record names (import name: distribution).
PACKAGES = {"jax": "jax", "jaxlib": "jaxlib", "optax": "optax",
            "optax_egd": "optax-egd", "flax": "flax"}  # fmt: skip


def cpu_model() -> str:
  """The CPU's model name from ``/proc/cpuinfo``, else ``platform``'s guess.

  >>> isinstance(cpu_model(), str) and cpu_model() != ""
  True
  """
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
  """Where a run was measured: CPU, core count, load, BLAS threads, JAX
  backend and its first device's kind (e.g. ``"NVIDIA H100 80GB HBM3"``,
  ``"cpu"``).

  >>> sorted(machine())
  ['backend', 'blas_threads', 'cpu', 'cpus', 'device', 'load_average']
  """
  import jax

  return {
    "cpu": cpu_model(),
    "cpus": os.cpu_count(),
    "load_average": round(os.getloadavg()[0], 2),
    "blas_threads": _threads.describe(),
    "backend": jax.default_backend(),
    "device": jax.devices()[0].device_kind,
  }


def versions() -> dict[str, str | None]:
  """Python's version and those of :data:`PACKAGES` as imported (None: not
  installed).

  >>> sorted(versions())
  ['flax', 'jax', 'jaxlib', 'optax', 'optax-egd', 'python']
  """
  found: dict[str, str | None] = {"python": platform.python_version()}
  for module, distribution in PACKAGES.items():
    try:
      found[distribution] = str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
      found[distribution] = None
  return found


def commit(root: pathlib.Path = ROOT) -> dict[str, Any] | None:
  """The git commit of the checkout ``root`` (this code's by default) and
  whether tracked files differ from it; None outside a checkout (an installed
  copy) or without git."""

  def git(*args: str) -> str:
    return subprocess.run(
      ["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
      timeout=30,
    ).stdout.strip()  # fmt: skip

  if not (root / ".git").exists():
    return None
  try:
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return None
  return {"id": head, "dirty": dirty}


def provenance(module: str, argv: Sequence[str]) -> dict[str, Any]:
  """What ran, where and when: the exact command line (``python -m module``
  and ``argv``), the UTC date, the commit, the versions and the machine."""
  return {
    "command": shlex.join(["python", "-m", module, *argv]),
    "argv": list(argv),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "commit": commit(),
    "versions": versions(),
    "machine": machine(),
  }


def json_safe(value: Any) -> Any:
  """``value`` as JSON can hold it: NaN and infinities (a diverged loss)
  become None, dataclasses dicts, tuples lists, NumPy values Python ones,
  paths and dict keys strings. The one sanitizer of every record the
  experiments and benchmarks write.

  >>> import numpy as np
  >>> json_safe({"loss": float("nan"), 1: (np.float32(0.5), pathlib.Path("a"))})
  {'loss': None, '1': [0.5, 'a']}
  """
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return json_safe(dataclasses.asdict(value))
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  if type(value).__module__ == "numpy":  # a NumPy scalar or array
    return json_safe(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, pathlib.Path):
    return str(value)
  return value
