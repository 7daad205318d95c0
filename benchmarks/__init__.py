"""Benchmarks for optax-egd: ``python -m benchmarks.polar|step|...``.

Importing the package pins the BLAS/OpenMP thread pools to one thread unless
the user set them (:mod:`experiments._threads`), before anything loads JAX.
"""

from experiments import _threads

__all__ = ["_threads"]
