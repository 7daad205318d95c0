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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import shutil
import statistics
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, cast

# JAX, Flax, Orbax and matplotlib are imported where they are used, so that
# ``--help`` and usage errors come before (and without) them.
from experiments import _cli, _threads, registry
from experiments._machine import json_safe
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

if TYPE_CHECKING:
  import jax
  from matplotlib.figure import Figure

  from experiments import models, tasks
  from experiments.checkpoint import Checkpointer
  from experiments.train import RunResult, TrainConfig

argv = _argv  # the command-line options of a run's values
# Options a resumed run may change; any other option must match the checkpoint's.
RESUMABLE_CHANGES = frozenset(
  {"max_epochs", "no_stop", "checkpoint_every", "resume", "overwrite", "no_progress"}
  | {"out"}
  | {"seed", "seeds", "optimizer", "optimizers"}
)
# Options that steer the command, not the runs: left out of results.json.
PLUMBING = frozenset({"overwrite", "resume", "no_progress", "optimizer", "preset"})
# What a run writes into --out; --overwrite deletes these (and nothing else).
OUTPUTS = ("results.json", "curves.png", "spectrum.png", "checkpoints")


def build_parser() -> argparse.ArgumentParser:
  """The command line's parser, generated from :class:`RunConfig`'s fields
  (:func:`experiments.run_config.build_parser`); every numeric option checks
  its range."""
  return _build_parser(__doc__.splitlines()[0])


def make_data(args: RunConfig, key: jax.Array) -> tasks.Dataset:
  """The task's data set."""
  from experiments import tasks

  if args.task == "grokfast_mul":
    return tasks.grokfast_multiplication(key, given(args.p), given(args.train_fraction))
  if args.task.startswith("mod_"):
    op = cast("tasks.Operation", args.task.removeprefix("mod_"))
    return tasks.modular_arithmetic(
      key,
      op,
      given(args.p),
      given(args.train_fraction),
      given(args.encoding),
      0.0 if args.label_noise is None else args.label_noise,
    )
  if args.task == "parity":
    return tasks.sparse_parity(
      key, given(args.n), given(args.k), given(args.n_train), given(args.n_test)
    )
  return tasks.mnist(key, given(args.n_train))


def make_model(args: RunConfig, data: tasks.Dataset, key: jax.Array) -> models.Model:
  """The model, initialized from ``key``."""
  from flax import nnx

  from experiments import models

  rngs = nnx.Rngs(params=key)
  out = data.num_classes or 1
  if args.model == "grokfast":
    if data.vocab_size != data.num_classes:
      raise SystemExit("--model grokfast needs --task grokfast_mul")
    return models.GrokfastDecoder(
      data.vocab_size,
      d_model=given(args.d_model),
      num_heads=given(args.heads),
      num_layers=given(args.layers),
      rngs=rngs,
    )
  if args.model == "transformer":
    if not data.vocab_size:
      raise SystemExit("the transformer needs token inputs: --encoding tokens")
    seq_len = data.x_train.shape[-1]
    return models.Transformer(
      data.vocab_size,
      out,
      seq_len,
      d_model=given(args.d_model),
      num_heads=given(args.heads),
      num_layers=given(args.layers),
      rngs=rngs,
    )
  if not data.num_features:
    raise SystemExit(f"--model {args.model} needs feature inputs: --encoding onehot")
  if args.model == "omnigrok":
    return models.OmnigrokMLP(
      data.num_features,
      given(args.width),
      out,
      depth=given(args.depth),
      init_scale=given(args.init_scale),
      rngs=rngs,
    )
  bias_init = (
    models.parity_bias_init(data.num_features)
    if args.task == "parity"
    else models.ZEROS
  )
  return models.MLP(
    data.num_features, given(args.hidden), out, hidden_bias_init=bias_init, rngs=rngs
  )


def train_config(args: RunConfig) -> TrainConfig:
  """The loop's configuration from the (resolved) options."""
  from experiments.train import TrainConfig

  return TrainConfig(
    batch_size=given(args.batch_size),
    drop_last=given(args.drop_last),
    l2=given(args.l2),
    loss=given(args.loss),
    max_epochs=args.max_epochs,
    target_accuracy=given(args.target_accuracy),
    stop_at_target=not args.no_stop,
    egd_off_at=args.egd_off_at,
    train_metrics=args.train_metrics,
  )


class Setup(NamedTuple):
  """What a seed fixes of a run: the data split, the initialized model and
  the key of the epochs' shuffles."""

  data: tasks.Dataset
  model: Any
  shuffle_key: Any


def setup(args: RunConfig, seed: int) -> Setup:
  """The data, model and shuffle key of ``seed`` for the (resolved) options:
  the one place a seed becomes a run, so that every optimizer, command and
  benchmark given a seed starts from the same split, weights and shuffles."""
  import jax

  data_key, init_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  data = make_data(args, data_key)
  return Setup(data, make_model(args, data, init_key), shuffle_key)


def run_one(args: RunConfig, name: str, seed: int) -> RunResult:
  """Train optimizer ``name`` with ``seed``, checkpointing and resuming as asked."""
  from tqdm import tqdm

  from experiments import optimizers
  from experiments.checkpoint import CheckpointError
  from experiments.train import Run, start, train

  data, model, shuffle_key = setup(args, seed)
  optimizer = optimizers.build(
    name, optimizer_config(args, seed), type(model).first_kernel
  )
  config = train_config(args)
  if args.spectrum:
    config = dataclasses.replace(config, spectrum_of=type(model).first_kernel)
  compiled, state = start(model, optimizer, data, config)
  checkpointer = _checkpointer(args, name, seed)
  if checkpointer is not None and args.resume:
    try:
      state = checkpointer.restore(state)
    except CheckpointError as error:
      _error(f"--resume: {error}")
  bar = tqdm(
    total=config.max_epochs,
    initial=state.result.history.epochs,
    desc=f"{name} s{seed}",
    disable=args.no_progress,
    dynamic_ncols=True,
    mininterval=0.5,
  )

  def on_epoch(run: Run) -> None:
    h = run.result.history
    bar.update(1)
    bar.set_postfix_str(
      f"train {h.train_loss[-1]:.3g}/{h.train_acc[-1]:.3f} "
      f"test {h.test_loss[-1]:.3g}/{h.test_acc[-1]:.3f}",
      refresh=False,
    )
    if checkpointer is not None:
      checkpointer.save(run)

  state = train(compiled, state, shuffle_key, config, on_epoch)
  bar.close()
  if checkpointer is not None:
    checkpointer.save(state, force=True)
    checkpointer.close()
  return state.result


def _checkpoint_dir(args: RunConfig, name: str, seed: int) -> pathlib.Path:
  return args.out / "checkpoints" / f"{name}-seed{seed}"


def run_vectorized(args: RunConfig, name: str, seeds: list[int]) -> list[RunResult]:
  """:func:`run_one` for every seed of ``seeds`` in one vectorized program
  (same data, weights, shuffles and results per seed; no checkpoints)."""
  from tqdm import tqdm

  from experiments import optimizers
  from experiments.train import Run, start_vectorized, train_vectorized

  models_, optimizers_, datas, shuffle_keys = [], [], [], []
  for seed in seeds:
    data, model, shuffle_key = setup(args, seed)
    models_.append(model)
    optimizers_.append(
      optimizers.build(name, optimizer_config(args, seed), type(model).first_kernel)
    )
    datas.append(data)
    shuffle_keys.append(shuffle_key)
  config = train_config(args)
  if args.spectrum:
    config = dataclasses.replace(config, spectrum_of=type(models_[0]).first_kernel)
  compiled, runs, consts = start_vectorized(models_, optimizers_, datas, config)
  bar = tqdm(
    total=config.max_epochs,
    desc=f"{name} s{seeds[0]}-{seeds[-1]}",
    disable=args.no_progress,
    dynamic_ncols=True,
    mininterval=0.5,
  )

  def on_epoch(runs: list[Run]) -> None:
    accs = [r.result.history.test_acc[-1] for r in runs]
    bar.update(1)
    bar.set_postfix_str(f"test acc {min(accs):.3f}-{max(accs):.3f}", refresh=False)

  runs = train_vectorized(compiled, runs, shuffle_keys, consts, config, on_epoch)
  bar.close()
  return [r.result for r in runs]


def _checkpointer(args: RunConfig, name: str, seed: int) -> Checkpointer | None:
  from experiments.checkpoint import Checkpointer

  if args.checkpoint_every <= 0:
    return None
  directory = _checkpoint_dir(args, name, seed)
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


def results_config(args: RunConfig) -> dict[str, Any]:
  """The resolved options, as results.json records them: the task and run
  settings that apply (options the task, model or run does not use are None
  and left out), the optimizer options that some of ``args.optimizers``
  reads, and none of the command's plumbing (:data:`PLUMBING`)."""
  read = {knob for name in given(args.optimizers) for knob in registry.KNOBS[name]}
  return {
    k: str(v) if isinstance(v, pathlib.Path) else v
    for k, v in vars(args).items()
    if v is not None and k not in PLUMBING and (k not in KNOB_OPTIONS or k in read)
  }


def check_resume(args: RunConfig) -> None:
  """Before any training, exit with a usage error unless ``--resume`` has
  something to continue: at least one run's checkpoint in ``--out``, every
  such checkpoint readable and made with the same options. Runs without a
  checkpoint train from epoch 0, with a notice."""
  from experiments.checkpoint import Checkpointer, CheckpointError, config_differences

  if args.checkpoint_every == 0:
    _error("--resume needs checkpoints: give --checkpoint-every N with N >= 1, not 0")
  found, missing = 0, []
  for seed in range(args.seed, args.seed + args.seeds):
    for name in given(args.optimizers):
      directory = _checkpoint_dir(args, name, seed)
      if not directory.is_dir():
        missing.append(f"{name} seed {seed}")
        continue
      checkpointer = Checkpointer(directory, args.checkpoint_every)
      try:
        if checkpointer.latest_step() is None:
          missing.append(f"{name} seed {seed}")
          continue
        stored = checkpointer.check()
      except CheckpointError as error:
        _error(f"--resume: {error}")
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
        _error(
          f"--resume: {directory} was trained with other options: {changes}; "
          "give the checkpoint's options, or drop --resume (or use another --out) "
          "to start afresh"
        )
      found += 1
  if not found:
    folder = args.out / "checkpoints"
    there = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    _error(
      f"--resume: no checkpoint of these runs in {folder}"
      + (f" (it has {', '.join(there)})" if there else "")
      + "; drop --resume to start afresh"
    )
  for run in missing:
    print(f"--resume: no checkpoint of {run}: it trains from epoch 0")


def run_record(name: str, seed: int, result: RunResult) -> dict[str, Any]:
  """One run as a JSON-ready dict."""
  h = result.history
  curves = dataclasses.asdict(h)
  has_egd = any(flag is not None for flag in h.egd_enabled)
  if not has_egd:  # no EGD transform in this optimizer
    del curves["egd_enabled"]
  if not h.grad_spectrum:  # recorded with --spectrum only
    del curves["grad_spectrum"]
  record = {
    "optimizer": name,
    "seed": seed,
    "epochs_to_target": result.epochs_to_target,
    "steps_to_target": result.steps_to_target,
    "steps_per_epoch": result.steps_per_epoch,
    "seconds_to_target": result.seconds_to_target,
    "compile_seconds": result.compile_seconds,
    "epochs": h.epochs,
    "final": {
      m: getattr(h, m)[-1] for m in ("train_loss", "train_acc", "test_loss", "test_acc")
    },
    "curves": curves,
  }
  if has_egd:
    record["egd_off_epoch"] = result.egd_off_epoch
  return record


def summarize(
  records: list[dict[str, Any]], optimizer_names: list[str]
) -> dict[str, dict[str, Any]]:
  """Per optimizer: runs reaching the target; median and range of epochs, seconds."""
  summary = {}
  for name in optimizer_names:
    runs = [r for r in records if r["optimizer"] == name]
    epochs = [r["epochs_to_target"] for r in runs if r["epochs_to_target"] is not None]
    steps = [r["steps_to_target"] for r in runs if r.get("steps_to_target") is not None]
    seconds = [
      r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None
    ]
    summary[name] = {
      "runs": len(runs),
      "reached": len(epochs),
      "epochs_median": statistics.median(epochs) if epochs else None,
      "epochs_range": [min(epochs), max(epochs)] if epochs else None,
      "steps_median": statistics.median(steps) if steps else None,
      "steps_range": [min(steps), max(steps)] if steps else None,
      "seconds_median": statistics.median(seconds) if seconds else None,
      "seconds_range": [min(seconds), max(seconds)] if seconds else None,
    }
  return summary


def _finite(values: list[Any]) -> list[float]:
  """``values`` as floats, with None, NaN and infinities (a diverged run) as
  NaN, which matplotlib leaves out of a line."""
  return [float(v) if v is not None and math.isfinite(v) else math.nan for v in values]


def _scale_y(ax: Any, values: list[float], log: bool) -> None:
  """A log y axis (if ``log``) when some of ``values`` is positive, else linear;
  a note on a panel with no finite value at all (a run diverged from epoch 1)."""
  if log and any(v > 0 for v in values if math.isfinite(v)):
    ax.set_yscale("log", nonpositive="mask")
  if not any(math.isfinite(v) for v in values):
    ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")


_OPERATIONS = {"mod_add": "a + b", "mod_sub": "a − b", "mod_mul": "a · b",
               "mod_div": "a / b", "grokfast_mul": "x · y"}  # fmt: skip


def plot_title(args: RunConfig) -> str:
  """The task with its parameters (p, n, k, training set) and the model."""
  if args.task in MODULAR:
    task = (
      f"({_OPERATIONS[args.task]}) mod {args.p}, p = {args.p}, "
      f"{args.train_fraction:.0%} train"
    )
  elif args.task == "parity":
    task = f"sparse parity, n = {args.n}, k = {args.k}, {args.n_train} train"
  else:
    task = f"MNIST, {args.n_train} train"
  model = {
    "mlp": lambda: f"MLP, hidden {args.hidden}",
    "transformer": lambda: f"transformer, {args.layers} layers, d_model {args.d_model}",
    "grokfast": lambda: f"Grokfast decoder, {args.layers} layers",
    "omnigrok": lambda: f"Omnigrok MLP, depth {args.depth}, width {args.width}",
  }[given(args.model)]()
  return f"{task}; {model}"


def plot(
  records: list[dict[str, Any]],
  optimizer_names: list[str],
  path: pathlib.Path,
  title: str,
  target: float | None = None,
) -> Figure:
  """Train/test accuracy and loss against epoch (log x), one color per optimizer.

  The accuracy panels span [0, 1] whatever the curves do (noise near 0 stays
  near 0) and draw ``target`` as a dotted line. Returns the figure, also
  saved to ``path``.
  """
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 7))
  axes = fig.subplots(2, 2, sharex=True)
  panels = [
    ("train_acc", "train accuracy"),
    ("test_acc", "test accuracy"),
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
  ]
  drawn: dict[str, list[float]] = {metric: [] for metric, _ in panels}
  for i, name in enumerate(optimizer_names):
    for j, record in enumerate(r for r in records if r["optimizer"] == name):
      epochs = range(1, record["epochs"] + 1)
      for ax, (metric, _) in zip(axes.flat, panels, strict=True):
        values = _finite(record["curves"][metric])
        drawn[metric] += values
        ax.plot(
          epochs,
          values,
          color=f"C{i}",
          alpha=0.9 if j == 0 else 0.4,
          label=name if j == 0 else None,
        )
  for ax, (metric, label) in zip(axes.flat, panels, strict=True):
    ax.set_xscale("log")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    _scale_y(ax, drawn[metric], log=metric.endswith("loss"))
    if metric.endswith("acc"):
      ax.set_ylim(0, 1.02)
      if target is not None:
        ax.axhline(target, color="0.3", ls=":", lw=1, label=f"target {target:.0%}")
  for ax in axes[1]:
    ax.set_xlabel("epoch")
  axes[0, 0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return fig


def plot_spectrum(
  records: list[dict[str, Any]],
  optimizer_names: list[str],
  path: pathlib.Path,
  title: str,
) -> None:
  """The paper's figure: the first kernel's gradient singular values σᵢ/σ₁
  against epoch (log-log), one panel per optimizer (its first seed), one line
  per index i, colored from the largest (dark) to the smallest (light)."""
  from matplotlib import cm
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5 * len(optimizer_names), 4))
  axes = fig.subplots(1, len(optimizer_names), squeeze=False)[0]
  for ax, name in zip(axes, optimizer_names, strict=True):
    record = next(r for r in records if r["optimizer"] == name)
    values = record["curves"]["grad_spectrum"]
    epochs = range(1, len(values) + 1)
    count = len(values[0]) if values else 0
    ratios = []
    for i in range(count):
      ratio = _finite(
        [row[i] / row[0] if row[0] > 0 else math.nan for row in _rows(values)]
      )
      ratios += ratio
      ax.plot(epochs, ratio, color=cm.viridis(i / max(count - 1, 1)), lw=0.7)
    _scale_y(ax, ratios, log=True)
    ax.set(
      xscale="log",
      xlabel="epoch",
      ylabel="σᵢ / σ₁",
      title=f"{name} (seed {record['seed']})",
    )
    ax.grid(True, alpha=0.3)
  fig.suptitle(f"{title}: first-layer gradient spectrum")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _rows(values: list[list[Any]]) -> list[list[float]]:
  return [[v if v is not None else math.nan for v in row] for row in values]


def _print_summary(summary: dict[str, dict[str, Any]], target: float) -> None:
  header = f"epochs to {target:.0%} (median [range])"
  steps_header = "steps (median [range])"
  print(f"{'optimizer':24s} reached  {header:31s} {steps_header:25s} seconds")
  for name, s in summary.items():
    epochs = f"{s['epochs_median']} {s['epochs_range']}" if s["reached"] else "-"
    steps = f"{s['steps_median']} {s['steps_range']}" if s["reached"] else "-"
    seconds = f"{s['seconds_median']:.2f}" if s["reached"] else "-"
    reached = f"{s['reached']}/{s['runs']:<5d}"
    print(f"{name:24s} {reached} {epochs:31s} {steps:25s} {seconds}")


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
  if config.vectorize_seeds:
    print(
      f"--vectorize-seeds: seeds {seeds[0]}..{seeds[-1]} of each optimizer in "
      "one program; no checkpoints"
    )
    for name in names:
      for seed, result in zip(seeds, run_vectorized(config, name, seeds), strict=True):
        records.append(run_record(name, seed, result))
      records.sort(key=lambda r: (r["seed"], names.index(r["optimizer"])))
      results = _write_results(config.out, head, records, names)
  for seed in seeds if not config.vectorize_seeds else []:
    for name in names:
      records.append(run_record(name, seed, run_one(config, name, seed)))
      results = _write_results(config.out, head, records, names)
  title = plot_title(config)
  plot(records, names, config.out / "curves.png", title, target)
  written = ["results.json", "curves.png"]
  if config.spectrum:
    plot_spectrum(records, names, config.out / "spectrum.png", title)
    written.append("spectrum.png")
  _print_summary(results["summary"], target)
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
