"""Orbax checkpoints of a training run, for ``--resume``.

A checkpoint holds every array of ``(params, opt_state)`` (optimizer moments,
EGD's RNG key and ``enabled`` flag included) and the run's history as JSON.
The per-epoch shuffle keys are ``fold_in(key, epoch)``, so a run restored at
epoch ``e`` continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from experiments.train import History, Run, RunResult


def _arrays(run: Run) -> dict[str, jax.Array]:
  return {
    str(i): leaf for i, leaf in enumerate(jax.tree.leaves((run.params, run.opt_state)))
  }


def result_from_dict(data: dict[str, Any]) -> RunResult:
  """Inverse of ``dataclasses.asdict`` for :class:`RunResult`."""
  return RunResult(**{**data, "history": History(**data["history"])})


class Checkpointer:
  """Saves a run every ``every`` epochs (and on demand) under ``directory``."""

  def __init__(self, directory: str | pathlib.Path, every: int) -> None:
    if every < 1:
      raise ValueError(f"checkpoint interval must be >= 1 epoch, got {every}")
    self.every = every
    self.manager = ocp.CheckpointManager(
      pathlib.Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False
      ),
    )

  def save(self, run: Run, force: bool = False) -> None:
    """Save ``run`` if its epoch count is a multiple of ``every`` (or ``force``)."""
    epoch = run.result.history.epochs
    if not (force or epoch % self.every == 0) or epoch == self.manager.latest_step():
      return
    self.manager.save(
      epoch,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(_arrays(run)),
        result=ocp.args.JsonSave(dataclasses.asdict(run.result)),
      ),
    )

  def restore(self, run: Run) -> Run:
    """The latest saved state into ``run``'s structure; ``run`` if none."""
    step = self.manager.latest_step()
    if step is None:
      return run
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(_arrays(run)),
        result=ocp.args.JsonRestore(),
      ),
    )
    leaves = [restored.arrays[str(i)] for i in range(len(restored.arrays))]
    params, opt_state = jax.tree.unflatten(
      jax.tree.structure((run.params, run.opt_state)), leaves
    )
    return Run(params, opt_state, result_from_dict(restored.result))

  def close(self) -> None:
    """Wait for pending writes and release the manager."""
    self.manager.close()
