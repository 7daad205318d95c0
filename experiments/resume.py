"""The checkpoint policy of ``python -m experiments.grok``: where a run's
checkpoints go, the options saved with them, and what ``--resume`` accepts
(checkpoints of the same options, older versions' included). Orbax is
imported where a checkpoint is read or written."""

from __future__ import annotations

import pathlib
import shutil
from typing import TYPE_CHECKING, Any

from experiments import registry
from experiments._machine import json_safe
from experiments.records import PLUMBING, results_config
from experiments.run_config import (
  KNOB_OPTIONS,
  RunConfig,
  error,
  flag_of,
  given,
  knobs,
)

if TYPE_CHECKING:
  from experiments.checkpoint import Checkpointer


# Options a resumed run may change; any other option must match the checkpoint's.
RESUMABLE_CHANGES = frozenset(
  {"max_epochs", "no_stop", "stop_rule", "checkpoint_every", "resume", "overwrite"}
  | {"no_progress"}
  | {"out"}
  | {"seed", "seeds", "optimizer", "optimizers"}
)


def checkpoint_dir(args: RunConfig, name: str, seed: int) -> pathlib.Path:
  """Where run (``name``, ``seed``) keeps its checkpoints, in ``--out``."""
  return args.out / "checkpoints" / f"{name}-seed{seed}"


def make_checkpointer(args: RunConfig, name: str, seed: int) -> Checkpointer | None:
  """The checkpointer of run (``name``, ``seed``), None without checkpoints
  (``--checkpoint-every 0``); a fresh run (no ``--resume``) first deletes
  the run's old checkpoints."""
  from experiments.checkpoint import Checkpointer

  if args.checkpoint_every <= 0:
    return None
  directory = checkpoint_dir(args, name, seed)
  if not args.resume and directory.exists():
    shutil.rmtree(directory)
  return Checkpointer(directory, args.checkpoint_every, run_config(args, name, seed))


def run_config(args: RunConfig, name: str, seed: int) -> dict[str, Any]:
  """The options that make run (``name``, ``seed``): saved with its checkpoints,
  and what ``--resume`` must match (all but :data:`RESUMABLE_CHANGES`): the
  task and run settings and the hyperparameters optimizer ``name`` reads."""
  config = {
    k: v
    for k, v in results_config(args).items()
    if k not in RESUMABLE_CHANGES and k not in KNOB_OPTIONS
  }
  return json_safe(config | knobs(args, name) | {"optimizer": name, "seed": seed})


def check_resume(args: RunConfig) -> None:
  """Before any training, exit with a usage error unless ``--resume`` has
  something to continue: at least one run's checkpoint in ``--out``, every
  such checkpoint readable and made with the same options. Runs without a
  checkpoint train from epoch 0, with a notice."""
  from experiments.checkpoint import Checkpointer, CheckpointError, config_differences

  if args.checkpoint_every == 0:
    error("--resume needs checkpoints: give --checkpoint-every N with N >= 1, not 0")
  found, missing = 0, []
  for seed in range(args.seed, args.seed + args.seeds):
    for name in given(args.optimizers):
      directory = checkpoint_dir(args, name, seed)
      if not directory.is_dir():
        missing.append(f"{name} seed {seed}")
        continue
      checkpointer = Checkpointer(directory, args.checkpoint_every)
      try:
        if checkpointer.latest_step() is None:
          missing.append(f"{name} seed {seed}")
          continue
        stored = checkpointer.check()
      except CheckpointError as problem:
        error(f"--resume: {problem}")
      finally:
        checkpointer.close()
      current = run_config(args, name, seed)
      # Checkpoints of older versions also hold the options the optimizer does
      # not read, and the command's plumbing: neither changed the run.
      ignored = PLUMBING | (set(KNOB_OPTIONS) - set(registry.KNOBS[name]))
      differ = [f for f in config_differences(stored, current) if f not in ignored]
      if differ:
        changes = ", ".join(
          f"{flag_of(f)} {stored.get(f, '(unset)')} (now {current.get(f, '(unset)')})"
          for f in differ
        )
        error(
          f"--resume: {directory} was trained with other options: {changes}; "
          "give the checkpoint's options, or drop --resume (or use another --out) "
          "to start afresh"
        )
      found += 1
  if not found:
    folder = args.out / "checkpoints"
    there = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    error(
      f"--resume: no checkpoint of these runs in {folder}"
      + (f" (it has {', '.join(there)})" if there else "")
      + "; drop --resume to start afresh"
    )
  for run in missing:
    print(f"--resume: no checkpoint of {run}: it trains from epoch 0")
