"""Single-threaded BLAS/OpenMP unless the user says otherwise, set before JAX.

On small shared CPU machines a multi-threaded OpenBLAS/MKL can make the SVDs
that EGD runs every step tens of times slower. Importing this module sets
``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to
``"1"`` where they are unset; :func:`describe` says which setting is in force
and where it came from. The libraries read these variables when they load, so
this must run before JAX (or NumPy) is imported: ``experiments/__init__.py``
imports it first, which every ``python -m experiments.<entry point>`` runs
before the entry point's own imports.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SET_HERE: tuple[str, ...] = tuple(v for v in THREAD_VARIABLES if v not in os.environ)
for _variable in SET_HERE:
  os.environ[_variable] = "1"


def describe() -> str:
  """One line naming the BLAS thread settings and who chose them."""
  settings = " ".join(f"{v}={os.environ[v]}" for v in THREAD_VARIABLES)
  if not SET_HERE:
    origin = "all from the environment"
  elif len(SET_HERE) == len(THREAD_VARIABLES):
    origin = "set by experiments since unset; export them to override"
  else:
    origin = f"{', '.join(SET_HERE)} set by experiments, the rest from the environment"
  return f"BLAS threads: {settings} ({origin})"
