"""Benchmarks for optax-egd: ``python -m benchmarks.polar|step|grok``.

Importing the package, before anything loads JAX:

* pins the BLAS/OpenMP thread pools to one thread unless the user set them
  (:mod:`experiments._threads`);
* sets ``NPROC=64`` unless the user set it: the size of XLA's CPU intra-op
  thread pool. jaxlib's batched LAPACK kernels (SVD, eigh, QR of a stack of
  matrices) block a pool thread while they wait on work queued to the same
  pool; when XLA runs several of them at once (``egd`` on a model with several
  matrix shapes, e.g. the transformer) a pool the size of the core count runs
  out of threads and the step deadlocks intermittently (jax/jaxlib 0.10.2).
  See ``benchmarks/README.md``, "Known issue".
"""

import os

from experiments import _threads

POOL_VARIABLE = "NPROC"
POOL_SIZE = "64"
POOL_SET_HERE = POOL_VARIABLE not in os.environ
os.environ.setdefault(POOL_VARIABLE, POOL_SIZE)

__all__ = ["POOL_SET_HERE", "POOL_VARIABLE", "_threads"]
