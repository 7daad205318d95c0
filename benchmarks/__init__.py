"""Benchmarks for optax-egd: ``python -m benchmarks.NAME`` (``polar``, ``step``,
``layer_parallel``, ``fsdp``, ``cost_model``, ``accelerator``): speed and
accuracy.

Importing the package pins the BLAS/OpenMP thread pools to one thread unless
the user set them (:mod:`experiments._threads`), before anything loads JAX.
"""

from experiments import _threads

__all__ = ["_threads"]
