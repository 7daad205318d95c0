"""Draws the documentation's figures (docs/figures/*.png).

From the committed results (no training, a few seconds)::

    python docs/make_figures.py

reads ``benchmarks/results/{polar,step,layer_parallel}.json``,
``experiments/results/time_to_grok.json`` and
``experiments/results/paper_table_*.json``. With ``--runs`` it also trains the
runs behind the learning-curve and spectrum figures (a few minutes of CPU)::

    python docs/make_figures.py --runs

which runs::

    python -m experiments.grok --task mod_add --p 97 \\
        --optimizer egd,column-norm,egd-first-layer --max-epochs 300 \\
        --checkpoint-every 0 --out runs/docs/curves            # curves_add97.png
    python -m experiments.grok --task mod_add --p 97 --optimizer egd,sgd \\
        --max-epochs 150 --no-stop --spectrum --checkpoint-every 0 \\
        --out runs/docs/spectrum                               # spectrum_add97.png

draws the curves from the first run's ``results.json`` and copies the spectrum
figure ``experiments.grok`` draws.

The docs build never runs this script: the PNGs are committed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
BENCH = ROOT / "benchmarks" / "results"
EXPERIMENTS = ROOT / "experiments" / "results"

GROK_RUNS = {
    "curves_add97.png": (
        "curves", None,
        ["--task", "mod_add", "--p", "97",
         "--optimizer", "egd,column-norm,egd-first-layer",
         "--max-epochs", "300", "--checkpoint-every", "0"]),
    "spectrum_add97.png": (
        "spectrum", "spectrum.png",
        ["--task", "mod_add", "--p", "97", "--optimizer", "egd,sgd",
         "--max-epochs", "150", "--no-stop", "--spectrum",
         "--checkpoint-every", "0"]),
}
POLAR_METHODS = ("svd", "eigh", "rsvd", "newton_schulz", "polar_express", "qdwh",
                 "jnp_svd")


def _load(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text())


def _machine_note(machine: dict[str, Any]) -> str:
  date = str(machine.get("date", ""))[:10]
  cpu = machine.get("cpu_model") or machine.get("cpu") or "CPU"
  cores = machine.get("cpu_count") or machine.get("cpus")
  jax_version = machine.get("jax", "?")
  return f"{cpu}, {cores} cores, jax {jax_version}, {date}"


def polar_figure() -> None:
  """Median time per shape (Gaussian input) and worst error per input kind."""
  data = _load(BENCH / "polar.json")
  times = data["summary"]["time_ms"]
  errors = data["summary"]["worst_rel_err"]
  fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(12, 4.5))
  shapes = [row["shape"] for row in times]
  for method in POLAR_METHODS:
    ax_t.plot(range(len(shapes)), [row[method] for row in times], marker="o",
              label=method, linestyle="--" if method == "jnp_svd" else "-")
  ax_t.set_xticks(range(len(shapes)), shapes, rotation=45, ha="right")
  ax_t.set_yscale("log")
  ax_t.set_ylabel("median time (ms)")
  ax_t.set_title("time per polar factor, Gaussian input")
  ax_t.legend(fontsize=8)
  kinds = [row["kind"] for row in errors]
  width = 0.8 / len(POLAR_METHODS)
  for i, method in enumerate(POLAR_METHODS):
    ax_e.bar([k + (i - len(POLAR_METHODS) / 2) * width for k in range(len(kinds))],
             [row[method] for row in errors], width, label=method)
  ax_e.set_xticks(range(len(kinds)), kinds)
  ax_e.set_yscale("log")
  ax_e.set_ylabel("worst relative error vs float64")
  ax_e.set_title("accuracy (worst over all shapes)")
  fig.suptitle("python -m benchmarks.polar: " + _machine_note(data["machine"]),
               fontsize=10)
  fig.tight_layout()
  fig.savefig(FIGURES / "polar_speed_accuracy.png", dpi=110)
  plt.close(fig)


def step_figure() -> None:
  """Training-step time relative to SGD, per optimizer and model."""
  data = _load(BENCH / "step.json")
  rows = data["results"]
  models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4))
  for ax, model in zip(axes if len(models) > 1 else [axes], models, strict=True):
    mine = [r for r in rows if r["model"] == model]
    ax.barh([r["optimizer"] for r in mine], [r["step_ratio"] for r in mine])
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("step time / SGD's step time (median)")
    ax.set_title(model)
  fig.suptitle("python -m benchmarks.step: " + _machine_note(data["machine"]),
               fontsize=10)
  fig.tight_layout()
  fig.savefig(FIGURES / "step_overhead.png", dpi=110)
  plt.close(fig)


def grok_figure() -> None:
  """Epochs to 95% test accuracy on (a + b) mod 97 per optimizer."""
  data = _load(EXPERIMENTS / "time_to_grok.json")
  rows = data["summary"]
  cap = data["config"]["max_epochs"]
  names = [r["optimizer"] for r in rows]
  epochs = [r["epochs"] if r["reached"] else cap for r in rows]
  fig, ax = plt.subplots(figsize=(8, 5))
  bars = ax.barh(names, epochs,
                 color=["tab:gray" if not r["reached"] else "tab:blue" for r in rows])
  for bar, r in zip(bars, rows, strict=True):
    text = f"{r['epochs']}" if r["reached"] else f"> {cap} (not reached)"
    ax.text(bar.get_width() * 1.1, bar.get_y() + bar.get_height() / 2, text,
            va="center", fontsize=8)
  ax.set_xscale("log")
  ax.set_xlim(1, cap * 20)
  ax.invert_yaxis()
  ax.set_xlabel("epochs to 95% test accuracy (log scale), seed 0")
  ax.set_title("python -m experiments.time_to_grok, (a + b) mod 97\n"
               + _machine_note(data["machine"]), fontsize=10)
  fig.tight_layout()
  fig.savefig(FIGURES / "grok_benchmark.png", dpi=110)
  plt.close(fig)


def paper_table_figure() -> None:
  """Median epochs to 95% per task and optimizer over 3 seeds."""
  summary: list[dict[str, Any]] = []
  machine: dict[str, Any] = {}
  for name in ("paper_table_mod.json", "paper_table_parity_400_2.json",
               "paper_table_parity_small.json"):
    data = _load(EXPERIMENTS / name)
    machine = data["machine"]
    seen = {(r["task"], r["optimizer"]) for r in summary}
    summary += [r for r in data["summary"] if r["runs"] >= 3
                and (r["task"], r["optimizer"]) not in seen]
  tasks = list(dict.fromkeys(r["task"] for r in summary))
  optimizers = {"sgd": "SGD", "egd-first-layer": "EGD (first layer)",
                "egd": "EGD (every matrix)", "column-norm": "column norm",
                "momentum-egd-first-layer": "EGD on momentum (first layer)"}
  width = 0.8 / len(optimizers)
  fig, ax = plt.subplots(figsize=(12, 4.8))
  for i, (opt, label) in enumerate(optimizers.items()):
    xs, heights, capped = [], [], []
    for t, task in enumerate(tasks):
      row = next((r for r in summary if r["task"] == task and r["optimizer"] == opt),
                 None)
      if row is None:
        continue
      xs.append(t + (i - len(optimizers) / 2 + 0.5) * width)
      heights.append(row["epochs"]["median"]["value"])
      capped.append(not row["epochs"]["median"]["exact"])
    bars = ax.bar(xs, heights, width, label=label, color=f"C{i}")
    for bar, is_capped in zip(bars, capped, strict=True):
      if is_capped:
        bar.set_hatch("//")
        bar.set_alpha(0.5)
  ax.set_xticks(range(len(tasks)), tasks)
  ax.set_yscale("log")
  ax.set_ylabel("median epochs to 95% test (3 seeds)")
  ax.set_title("python -m experiments.paper_table; hatched: not reached within the "
               "cap (the bar is the cap)\n" + _machine_note(machine), fontsize=10)
  ax.legend(fontsize=8, ncol=3)
  fig.tight_layout()
  fig.savefig(FIGURES / "paper_table.png", dpi=110)
  plt.close(fig)


def layer_parallel_figure() -> None:
  """Per-device decomposition time against the number of devices."""
  data = _load(BENCH / "layer_parallel.json")
  rows = data["results"]["per_device"]
  devices = [r["devices"] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(devices, [r["polar_s"] for r in rows], marker="o",
          label="one device's share of the decompositions")
  ax.plot(devices, [rows[0]["polar_s"] / d for d in devices], linestyle="--",
          color="gray", label="1/D")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xticks(devices, [str(d) for d in devices])
  ax.set_xlabel("devices D (simulated on one CPU)")
  ax.set_ylabel("seconds")
  ax.legend(fontsize=8)
  ax.set_title("python -m benchmarks.layer_parallel\n"
               + _machine_note(data["machine"]), fontsize=10)
  fig.tight_layout()
  fig.savefig(FIGURES / "layer_parallel.png", dpi=110)
  plt.close(fig)


def curves_figure(results: pathlib.Path) -> None:
  """Train and test accuracy per epoch of each run in an experiments.grok folder."""
  data = _load(results)
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for i, run in enumerate(data["runs"]):
    curves = run["curves"]
    epochs = range(1, len(curves["test_acc"]) + 1)
    label = f"{run['optimizer']} ({run['epochs_to_target']} epochs to 95%)"
    ax.plot(epochs, curves["test_acc"], color=f"C{i}", label=label + ", test")
    ax.plot(epochs, curves["train_acc"], color=f"C{i}", linestyle=":",
            label=run["optimizer"] + ", train")
  ax.axhline(0.95, color="gray", linewidth=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("accuracy")
  ax.set_title("(a + b) mod 97, the paper's MLP, seed 0 (SGD alone: 5895 epochs)",
               fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(FIGURES / "curves_add97.png", dpi=110)
  plt.close(fig)


def grok_runs(out: pathlib.Path) -> None:
  """Trains the curve and spectrum runs and draws or copies their figures."""
  for figure, (folder, png, args) in GROK_RUNS.items():
    target = out / folder
    subprocess.run([sys.executable, "-m", "experiments.grok", *args, "--out",
                    str(target), "--overwrite", "--no-progress"], cwd=ROOT,
                   check=True)  # --overwrite: the runs of an earlier --runs
    if png is None:
      curves_figure(target / "results.json")
    else:
      shutil.copy(target / png, FIGURES / figure)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python docs/make_figures.py",
      description="Draw docs/figures/*.png from the committed results.")
  parser.add_argument("--runs", action="store_true",
                      help="also train the learning-curve and spectrum runs")
  parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "docs",
                      help="where --runs writes its run folders")
  parser.add_argument("--curves-from", type=pathlib.Path, metavar="RESULTS_JSON",
                      help="draw curves_add97.png from this results.json (no run)")
  args = parser.parse_args(argv)
  FIGURES.mkdir(parents=True, exist_ok=True)
  polar_figure()
  step_figure()
  grok_figure()
  paper_table_figure()
  layer_parallel_figure()
  if args.curves_from:
    curves_figure(args.curves_from)
  if args.runs:
    grok_runs(args.out)
  print(f"figures in {FIGURES.relative_to(ROOT)}:",
        " ".join(sorted(p.name for p in FIGURES.glob("*.png"))))


if __name__ == "__main__":
  main()
