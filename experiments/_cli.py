"""Argument types shared by the experiments' command lines.

Each type turns a bad value into argparse's one-line error naming the option
and the accepted range (exit code 2, no traceback)::

  python -m experiments.grok: error: argument --lr: must be a number > 0, got '-0.5'
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import math
import pathlib
import shutil
import sys
import tempfile
from typing import NoReturn

SEED_MAX = 2**31 - 1


def is_prime(p: int) -> bool:
  """Whether ``p`` is prime (here, not from :mod:`experiments.tasks`, which
  imports JAX: the command lines parse without it).

  >>> [p for p in range(12) if is_prime(p)]
  [2, 3, 5, 7, 11]
  """
  return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def _bounds(
  low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
  if low is not None and high is not None:
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  if low is not None:
    return f"{'>' if low_open else '>='} {low}"
  if high is not None:
    return f"{'<' if high_open else '<='} {high}"
  return "finite"


def _check(
  value: float, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> bool:
  if low is not None and (value <= low if low_open else value < low):
    return False
  return high is None or (value < high if high_open else value <= high)


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
  """An argparse type: an integer in ``[low, high]`` (either end may be None).

  >>> integer(1)("3")
  3
  >>> integer(1)("0")
  Traceback (most recent call last):
  argparse.ArgumentTypeError: must be an integer >= 1, got '0'
  """
  wanted = f"an integer {_bounds(low, high, False, False)}".removesuffix(" finite")

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not _check(value, low, high, False, False):
      raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value

  parse.range = _bounds(low, high, False, False)  # type: ignore[attr-defined]
  return parse


def number(
  low: float | None = None,
  high: float | None = None,
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> Callable[[str], float]:
  """An argparse type: a finite float between ``low`` and ``high`` (open ends
  with ``low_open``/``high_open``); NaN and infinities are refused.

  >>> number(0, 1, high_open=True)("0.9")
  0.9
  >>> number(0, low_open=True)("nan")
  Traceback (most recent call last):
  argparse.ArgumentTypeError: must be a number > 0, got 'nan'
  """
  wanted = f"a number {_bounds(low, high, low_open, high_open)}"
  if wanted == "a number finite":
    wanted = "a finite number"

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not math.isfinite(value) or not _check(value, low, high, low_open, high_open):
      raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value

  parse.range = _bounds(low, high, low_open, high_open)  # type: ignore[attr-defined]
  return parse


def prime(low: int = 2) -> Callable[[str], int]:
  """An argparse type: a prime ``>= low``.

  >>> prime()("4")
  Traceback (most recent call last):
  argparse.ArgumentTypeError: must be a prime >= 2, got '4'
  """
  as_int = integer(low)

  def parse(text: str) -> int:
    try:
      value = as_int(text)
    except argparse.ArgumentTypeError:
      value = None
    if value is None or not is_prime(value):
      raise argparse.ArgumentTypeError(f"must be a prime >= {low}, got {text!r}")
    return value

  return parse


def name_list(text: str) -> list[str]:
  """Comma-separated names, stripped, empty ones dropped (``"a, b,"``: a, b)."""
  return [name.strip() for name in text.split(",") if name.strip()]


def check_names(option: str, names: list[str], known: tuple[str, ...]) -> str | None:
  """Why ``names`` (given to ``option``) is not a non-empty list of distinct
  ``known`` names; None if it is."""
  unknown = [name for name in names if name not in known]
  if unknown:
    listed = ", ".join(map(repr, unknown))
    return f"{option}: unknown {listed}; choose from {', '.join(known)}"
  if not names:
    return f"{option}: give at least one of {', '.join(known)}"
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    return f"{option}: {', '.join(map(repr, repeated))} given more than once"
  return None


def unwritable(directory: pathlib.Path) -> str | None:
  """Why files cannot be written in ``directory`` (created if missing); None
  if they can. Checked before training, so a finished run is never lost to an
  output folder that cannot be written."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
      pass
  except OSError as error:
    return f"cannot write to {directory}: {error.strerror or error}"
  return None


def out_in_use(
  directory: pathlib.Path,
  outputs: tuple[str, ...],
  *,
  overwrite: bool,
  resume: bool | None = None,
) -> str | None:
  """Why a run may not write into ``directory``; None if it may.

  A folder that holds files is refused, so a finished run is never replaced by
  accident: ``--resume`` (where the command has it; ``resume=None`` where not)
  continues the run there, ``--overwrite`` replaces it (:func:`clear_outputs`
  deletes its ``outputs`` first). Files the command does not write are never
  deleted: with them, the answer is another folder.
  """
  if resume and overwrite:
    return (
      "argument --overwrite: not with --resume (--resume continues the run in "
      "--out, --overwrite deletes it)"
    )
  if resume or not directory.is_dir():
    return None
  entries = sorted(p.name for p in directory.iterdir())
  foreign = [name for name in entries if name not in outputs]
  if foreign:
    listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
    which = "argument --overwrite" if overwrite else "argument --out"
    return (
      f"{which}: {directory} is not empty (it has {listed}, which this command "
      "did not write); give another --out"
    )
  if not entries or overwrite:
    return None
  continue_it = "--resume to continue it, " if resume is not None else ""
  return (
    f"argument --out: {directory} already holds a run ({', '.join(entries)}); "
    f"give {continue_it}--overwrite to replace it, or another --out"
  )


def refuse(prog: str, message: str) -> NoReturn:
  """Exit with ``prog: error: message`` alone (exit code 2, no usage lines):
  for a refusal about the files in ``--out``, which argparse's usage would
  bury under every option of the command."""
  print(f"{prog}: error: {message}", file=sys.stderr)
  raise SystemExit(2)


def clear_outputs(directory: pathlib.Path, outputs: tuple[str, ...]) -> None:
  """Delete the ``outputs`` (files or folders) of an earlier run in ``directory``."""
  for name in outputs:
    path = directory / name
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
      path.unlink()
