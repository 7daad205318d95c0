"""Grokking experiments for optax-egd: tasks, models, optimizers, training loop
and the ``demo`` / ``grok`` / ``paper_table`` / ``leaderboard`` /
``time_to_grok`` / ``equivalence`` command-line entry points
(see ``experiments/README.md``).

Importing the package first pins the BLAS thread pools (see
:mod:`experiments._threads`), so ``python -m experiments.<entry point>`` sets
them before anything loads JAX.
"""

from experiments import _threads as _threads
