"""The machine a measurement ran on, for the JSON and tables that report it."""

from __future__ import annotations

import pathlib
import platform


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
