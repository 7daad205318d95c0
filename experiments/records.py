"""What ``python -m experiments.grok`` records of its runs: results.json's
config, one record per run, the summary per optimizer, and the plots
(curves.png, spectrum.png). matplotlib is imported where a plot is drawn."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import statistics
from typing import TYPE_CHECKING, Any

from experiments import registry
from experiments.run_config import (
  KNOB_OPTIONS,
  MODULAR,
  RunConfig,
  given,
)

if TYPE_CHECKING:
  from matplotlib.figure import Figure

  from experiments.train import RunResult


# Options that steer the command, not the runs: left out of results.json.
PLUMBING = frozenset({"overwrite", "resume", "no_progress", "optimizer", "preset"})


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


def run_record(
  name: str, seed: int, result: RunResult, stop_rule: str = "first", max_epochs: int = 0
) -> dict[str, Any]:
  """One run as a JSON-ready dict; with ``stop_rule="stable"`` (the run went
  on until the target held from its last crossing ``s`` through ``2·s`` or
  ``max_epochs``) also the stable-grokking fields."""
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
  if stop_rule == "stable":
    stable = result.stable_epochs_to_target(max_epochs)
    record["stable_epochs_to_target"] = stable
    record["stable_steps_to_target"] = stable and stable * result.steps_per_epoch
    record["fell_back"] = result.fell_back
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


def print_summary(summary: dict[str, dict[str, Any]], target: float) -> None:
  header = f"epochs to {target:.0%} (median [range])"
  steps_header = "steps (median [range])"
  print(f"{'optimizer':24s} reached  {header:31s} {steps_header:25s} seconds")
  for name, s in summary.items():
    epochs = f"{s['epochs_median']} {s['epochs_range']}" if s["reached"] else "-"
    steps = f"{s['steps_median']} {s['steps_range']}" if s["reached"] else "-"
    seconds = f"{s['seconds_median']:.2f}" if s["reached"] else "-"
    reached = f"{s['reached']}/{s['runs']:<5d}"
    print(f"{name:24s} {reached} {epochs:31s} {steps:25s} {seconds}")
