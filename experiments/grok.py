"""``python -m experiments.grok``: grokking runs from the command line.

Example::

    python -m experiments.grok --task mod_add --p 97 --optimizer egd,sgd,column-norm \\
        --seeds 3 --max-epochs 2000 --out runs/add97

Every optimizer of ``--optimizer`` trains from the same data split and the
same initial weights for a given seed; ``--seeds N`` repeats that for seeds
``seed .. seed+N-1``. The output folder gets ``results.json`` (the resolved
configuration, each optimizer's hyperparameters, what ran: the command line,
date, commit, versions and machine; and per run: epochs and seconds
(compilation excluded) to the target test accuracy, final metrics,
per-epoch curves, the epoch EGD was switched off) and ``curves.png``;
``--spectrum`` adds the first kernel's gradient singular values per epoch
and ``spectrum.png``. Runs are
checkpointed with Orbax every ``--checkpoint-every`` epochs, with the
options that made them; ``--resume`` continues them exactly (to a larger
``--max-epochs``, or past the target with ``--no-stop``). It refuses, with a
usage error and before any training, an ``--out`` without checkpoints,
changed options (naming them) and unreadable checkpoints (naming the file);
runs of the command that have no checkpoint yet start from epoch 0. An
``--out`` that already holds files is refused unless ``--resume`` continues
the run there or ``--overwrite`` replaces it (deleting the files a run writes:
``results.json``, the plots and the checkpoints; nothing else). Every option
is checked first: a bad value, or an option the task, model or optimizers do
not use, is a one-line usage error naming the option (exit code 2).

Hyperparameters left unset take the papers' values for the task: EGD's for
modular arithmetic with the MLP and for sparse parity, Grokfast's for the
transformer, Omnigrok's for MNIST.

``--preset grokfast`` (the same as ``--task grokfast_mul``) is Grokfast's
modular-multiplication experiment (``ironjr/grokfast``'s ``main.py``) in
every detail: ``x·y mod 97`` with ``y ≠ 0`` (9,312 equations, half for
training), its 2-layer decoder (:class:`experiments.models.GrokfastDecoder`)
with PyTorch's default initialization, batch 512 with the last partial batch
kept (10 steps an epoch), a 10-step linear warmup, Adam β = (0.9, 0.98),
AdamW's decay on every parameter. Its default optimizer is the shipped EGD
recipe (``experiments.optimizers.GROKFAST_DEFAULT``: ``egdm`` at lr 0.03 with
momentum 0.9 and weight decay 0.1 on the matrices); each run reports
``steps_to_target`` (optimizer steps).

This module is the command: it parses the options into a
:class:`experiments.run_config.RunConfig` (whose fields generate the parser),
resolves it, checks ``--out`` and calls :func:`train_and_evaluate`. The
config, its defaults and checks are :mod:`experiments.run_config`; data,
model and training of one run :mod:`experiments.runs`; checkpoints and
``--resume`` :mod:`experiments.resume`; results.json's records and the plots
:mod:`experiments.records`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any

# JAX, Flax, Orbax and matplotlib are imported where they are used, so that
# ``--help`` and usage errors come before (and without) them.
from experiments import _cli, _threads
from experiments._machine import json_safe
from experiments.records import (  # noqa: F401 (re-exported)
  PLUMBING,
  plot,
  plot_spectrum,
  plot_title,
  print_summary,
  results_config,
  run_record,
  summarize,
)
from experiments.resume import (  # noqa: F401 (re-exported)
  RESUMABLE_CHANGES,
  check_resume,
  run_config,
)
from experiments.run_config import (  # noqa: F401 (re-exported)
  KNOB_OPTIONS,
  MODEL_OPTIONS,
  MODELS,
  MODULAR,
  OPTION_DEFAULTS,
  PRESETS,
  PROG,
  TASK_OPTIONS,
  TASKS,
  RunConfig,
  flag_of,
  given,
  knobs,
  optimizer_config,
  options,
  parse_args,
  resolve,
  task_defaults,
  train_size,
)
from experiments.run_config import argv as _argv
from experiments.run_config import build_parser as _build_parser
from experiments.run_config import error as _error
from experiments.runs import (  # noqa: F401 (re-exported)
  Setup,
  make_data,
  make_model,
  run_one,
  run_vectorized,
  setup,
  train_config,
)

argv = _argv  # the command-line options of a run's values
# What a run writes into --out; --overwrite deletes these (and nothing else).
OUTPUTS = ("results.json", "curves.png", "spectrum.png", "checkpoints")


def build_parser() -> argparse.ArgumentParser:
  """The command line's parser, generated from :class:`RunConfig`'s fields
  (:func:`experiments.run_config.build_parser`); every numeric option checks
  its range."""
  return _build_parser(__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
  """Run every (optimizer, seed) pair and write results.json and curves.png."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = resolve(parse_args(argv))
  if args.vectorize_seeds and args.resume:
    _error("argument --vectorize-seeds: not with --resume (it writes no checkpoints)")
  problem = _cli.out_in_use(
    args.out, OUTPUTS, overwrite=args.overwrite, resume=args.resume
  )
  if problem:  # the reason alone: the usage lines say nothing about --out's files
    _cli.refuse(PROG, problem)
  if args.resume:
    check_resume(args)
  problem = _cli.unwritable(args.out)  # before any training
  if problem:
    _cli.refuse(PROG, f"argument --out: {problem}")
  if args.overwrite:
    _cli.clear_outputs(args.out, OUTPUTS)
  train_and_evaluate(args, args.out, argv)


def train_and_evaluate(
  config: RunConfig, workdir: pathlib.Path, command: list[str] | None = None
) -> dict[str, Any]:
  """Run every (optimizer, seed) pair of the resolved ``config`` and write
  results.json and curves.png (spectrum.png with ``--spectrum``) into
  ``workdir`` (its ``--out``, whose use :func:`main` has checked); returns
  the results. ``command``: the command line recorded in the provenance
  (default: ``config``'s options, :func:`argv`)."""
  import jax

  from experiments._machine import provenance

  if workdir != config.out:
    config = dataclasses.replace(config, out=pathlib.Path(workdir))
  names = given(config.optimizers)
  target = given(config.target_accuracy)
  print(_threads.describe())
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}")
  head = {
    "config": results_config(config),
    "hyperparameters": {name: knobs(config, name) for name in names},
    "provenance": provenance(
      "experiments.grok", argv(config) if command is None else command
    ),
  }
  records: list[dict[str, Any]] = []
  results: dict[str, Any] = head
  seeds = list(range(config.seed, config.seed + config.seeds))
  stop = (config.stop_rule, config.max_epochs)
  if config.vectorize_seeds:
    print(
      f"--vectorize-seeds: seeds {seeds[0]}..{seeds[-1]} of each optimizer in "
      "one program; no checkpoints"
    )
    for name in names:
      for seed, result in zip(seeds, run_vectorized(config, name, seeds), strict=True):
        records.append(run_record(name, seed, result, *stop))
      records.sort(key=lambda r: (r["seed"], names.index(r["optimizer"])))
      results = _write_results(config.out, head, records, names)
  for seed in seeds if not config.vectorize_seeds else []:
    for name in names:
      result = run_one(config, name, seed)
      records.append(run_record(name, seed, result, *stop))
      results = _write_results(config.out, head, records, names)
  title = plot_title(config)
  plot(records, names, config.out / "curves.png", title, target)
  written = ["results.json", "curves.png"]
  if config.spectrum:
    plot_spectrum(records, names, config.out / "spectrum.png", title)
    written.append("spectrum.png")
  print_summary(results["summary"], target)
  print(f"wrote {', '.join(str(config.out / f) for f in written)}")
  return results


def _write_results(
  out: pathlib.Path,
  head: dict[str, Any],
  records: list[dict[str, Any]],
  names: list[str],
) -> dict[str, Any]:
  """Write results.json of the runs so far (after each run: a killed command
  keeps them); returns its content."""
  results = head | {"summary": summarize(records, names), "runs": records}
  (out / "results.json").write_text(json.dumps(json_safe(results), indent=1))
  return results


if __name__ == "__main__":
  main()
