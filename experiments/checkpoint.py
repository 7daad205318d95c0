"""Orbax checkpoints of a training run, for ``--resume``.

A checkpoint holds every array of ``(params, opt_state)`` (optimizer moments,
EGD's RNG key and ``enabled`` flag included), the run's history as JSON and
the run's configuration (the options that made it), so that a resume with
other options is refused (:func:`config_differences`). The per-epoch shuffle
keys are ``fold_in(key, epoch)``, so a run restored at epoch ``e`` continues
exactly as the uninterrupted run would have.

A checkpoint that cannot be read raises :class:`CheckpointError`, whose
one-line message names the file or folder and says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from experiments.train import History, Run, RunResult

ITEMS = ("arrays", "result", "config")  # the folders of a checkpoint


class CheckpointError(Exception):
  """A checkpoint that is missing, unreadable, or of another configuration."""


def _arrays(run: Run) -> dict[str, jax.Array]:
  return {
    str(i): leaf for i, leaf in enumerate(jax.tree.leaves((run.params, run.opt_state)))
  }


def result_from_dict(data: dict[str, Any]) -> RunResult:
  """Inverse of ``dataclasses.asdict`` for :class:`RunResult`."""
  return RunResult(**{**data, "history": History(**data["history"])})


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
  """``config`` as it reads back from JSON (tuples become lists, ...)."""
  return json.loads(json.dumps(config, default=str))


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Names of the fields whose values differ (or that only one side has).

  >>> config_differences({"lr": 0.7, "p": 97}, {"lr": 0.5, "p": 97, "k": 2})
  ['k', 'lr']
  """
  stored, current = _jsonable(stored), _jsonable(current)
  return sorted(
    name
    for name in stored.keys() | current.keys()
    if name not in stored or name not in current or stored[name] != current[name]
  )


def _reason(error: BaseException) -> str:
  """The first line of ``error``'s message, shortened."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= 160 else text[:157] + "..."


class Checkpointer:
  """Saves a run every ``every`` epochs (and on demand) under ``directory``.

  ``config`` (JSON-ready) is saved with every checkpoint; :meth:`check` reads
  it back.
  """

  def __init__(
    self,
    directory: str | pathlib.Path,
    every: int,
    config: dict[str, Any] | None = None,
  ) -> None:
    if every < 1:
      raise ValueError(f"checkpoint interval must be >= 1 epoch, got {every}")
    self.every = every
    self.directory = pathlib.Path(directory).absolute()
    self.config = _jsonable(config or {})
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False
      ),
    )

  @property
  def what_to_do(self) -> str:
    return (
      f"delete {self.directory} to train this run from epoch 0, "
      "or drop --resume to start every run afresh"
    )

  def latest_step(self) -> int | None:
    """The epoch of the latest checkpoint; None if there is none."""
    return self.manager.latest_step()

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
        config=ocp.args.JsonSave(self.config),
      ),
    )

  def _restore(self, step: int, into_run: bool = False, **item: Any) -> Any:
    """Restore one item of checkpoint ``step``; CheckpointError naming it."""
    folder = self.directory / str(step)
    missing = [name for name in ITEMS if not (folder / name).is_dir()]
    if missing == ["config"]:
      raise CheckpointError(
        f"checkpoint {folder} has no stored configuration (written by an older "
        f"version): {self.what_to_do}"
      )
    if missing:
      raise CheckpointError(
        f"checkpoint {folder} is incomplete: no {', '.join(missing)} folder: "
        f"{self.what_to_do}"
      )
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**item))
    except Exception as error:  # orbax and TensorStore raise many kinds
      (name,) = item
      fit = " or does not fit this run" if into_run else ""
      raise CheckpointError(
        f"checkpoint {folder / name} is unreadable{fit} ({_reason(error)}): "
        f"{self.what_to_do}"
      ) from error

  def check(self) -> dict[str, Any]:
    """Read the whole latest checkpoint; its stored configuration.

    Raises:
      CheckpointError: no checkpoint, or a part of it that cannot be read.
    """
    step = self.latest_step()
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    restored = self._restore(step, config=ocp.args.JsonRestore())
    config = restored.config
    if not isinstance(config, dict):
      raise CheckpointError(
        f"checkpoint {self.directory / str(step) / 'config'} is not a "
        f"configuration: {self.what_to_do}"
      )
    self._restore(step, result=ocp.args.JsonRestore())
    self._restore(step, arrays=ocp.args.StandardRestore())
    return config

  def restore(self, run: Run) -> Run:
    """The latest saved state into ``run``'s structure; ``run`` if none.

    Raises:
      CheckpointError: the checkpoint cannot be read, or does not fit ``run``
        (another model or optimizer).
    """
    step = self.manager.latest_step()
    if step is None:
      return run
    stored = self._restore(step, result=ocp.args.JsonRestore()).result
    arrays = self._restore(
      step, into_run=True, arrays=ocp.args.StandardRestore(_arrays(run))
    ).arrays
    try:
      leaves = [arrays[str(i)] for i in range(len(arrays))]
      params, opt_state = jax.tree.unflatten(
        jax.tree.structure((run.params, run.opt_state)), leaves
      )
      result = result_from_dict(stored)
    except Exception as error:
      raise CheckpointError(
        f"checkpoint {self.directory / str(step)} does not fit this run "
        f"({_reason(error)}): {self.what_to_do}"
      ) from error
    return Run(params, opt_state, result)

  def close(self) -> None:
    """Wait for pending writes and release the manager."""
    self.manager.close()
