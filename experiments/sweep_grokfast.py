"""``python -m experiments.sweep_grokfast``: optimizers × learning rates on the preset.

Runs every (configuration, learning rate, seed) cell of a grid on
``python -m experiments.grok --preset grokfast`` (same data split, initial
weights and shuffles per seed as the CLI), each until 95% validation accuracy
or ``--max-steps``, and appends each finished cell to a JSON file at once (a
partial sweep is usable; a rerun skips the cells already there). One
compilation per configuration: the learning rate is an
``optax.inject_hyperparams`` value in the optimizer state and the data are
arguments, so every seed and learning rate reuses the compiled epoch.

The learning rate is warmed up as the preset does (linearly over the first 10
steps), here by scaling the whole update, which equals a warmed-up learning
rate for every configuration below (their updates are linear in it).

Example::

    python -m experiments.sweep_grokfast --configs muon,egdm --lrs 0.02,0.04 \\
        --seeds 3 --out experiments/results/grokfast_sweep.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import functools
import json
import pathlib
import shlex
import statistics
import sys
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from experiments import _threads, grok, models, registry, tasks
from experiments.train import TrainConfig, make_epoch_fn, steps_per_epoch
import optax_egd
from optax_egd import baselines

WARMUP_STEPS = 10
TARGET = 0.95
Factory = Callable[..., optax.GradientTransformation]


def _egdm(**fixed: Any) -> Factory:
  def make(learning_rate: Any) -> optax.GradientTransformation:
    return optax_egd.egdm(learning_rate, **fixed)

  return make


def _naive(weight_decay: float) -> Factory:
  """``chain(egd(), adamw(lr, 0.9, 0.98, weight_decay=weight_decay))``:
  EGD on every 2-D leaf (kernels and embeddings), AdamW decaying every leaf."""

  def make(learning_rate: Any) -> optax.GradientTransformation:
    return optax.chain(
      optax_egd.egd(),
      optax.adamw(learning_rate, 0.9, 0.98, weight_decay=weight_decay),
    )

  return make


def _egd_sgd(learning_rate: Any) -> optax.GradientTransformation:
  """``chain(egd(), sgd(lr))``: EGD on every 2-D leaf."""
  return optax.chain(optax_egd.egd(), optax.sgd(learning_rate))


def _adamw(weight_decay: float) -> Factory:
  def make(learning_rate: Any) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, 0.9, 0.98, weight_decay=weight_decay)

  return make


def _adam_egd(weight_decay: float) -> Factory:
  """``adam-egd``: Adam moments → EGD → decay → lr on the kernels, AdamW 1e-3
  with β = (0.9, 0.98) and the same decay elsewhere."""

  def make(learning_rate: Any) -> optax.GradientTransformation:
    matrices = optax.chain(
      optax.scale_by_adam(0.9, 0.98),
      optax_egd.egd(dimension_numbers=models.matrix_dimension_numbers),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
    )
    rest = optax.adamw(1e-3, 0.9, 0.98, weight_decay=weight_decay)

    def labels(params: Any) -> Any:
      return jax.tree.map(lambda k: "egd" if k else "adamw", models.kernel_mask(params))

    return optax.partition({"egd": matrices, "adamw": rest}, labels)

  return make


def _decayed(factory: Factory, steps: int, final: float) -> Factory:
  """``factory``'s updates times a factor falling linearly from 1 to ``final``
  over ``steps`` steps (a decaying learning rate for updates linear in it)."""

  def make(learning_rate: Any) -> optax.GradientTransformation:
    return optax.chain(
      factory(learning_rate),
      optax.scale_by_schedule(optax.schedules.linear_schedule(1.0, final, steps)),
    )

  return make


def _grokfast_egdm(alpha: float, lamb: float, **fixed: Any) -> Factory:
  """Grokfast's EMA filter on the gradients, then ``egdm``: the slow component
  is amplified before the momentum buffer is orthogonalized."""

  def make(learning_rate: Any) -> optax.GradientTransformation:
    return optax.chain(
      baselines.grokfast_ema(alpha, lamb), optax_egd.egdm(learning_rate, **fixed)
    )

  return make


def _muon(**fixed: Any) -> Factory:
  def make(learning_rate: Any) -> optax.GradientTransformation:
    return optax.contrib.muon(learning_rate, **fixed)

  return make


# Every configuration of the sweep: name -> (description, factory of the lr).
CONFIGS: dict[str, tuple[str, Factory]] = {
  "muon": ("optax.contrib.muon(lr) (defaults: no weight decay, 2-D leaves)", _muon()),
  "muon-wd0.1": ("optax.contrib.muon(lr, weight_decay=0.1)", _muon(weight_decay=0.1)),
  "muon-wd0.3": ("optax.contrib.muon(lr, weight_decay=0.3)", _muon(weight_decay=0.3)),
  "muon-m0.9": ("optax.contrib.muon(lr, beta=0.9)", _muon(beta=0.9)),
  "egdm": ("optax_egd.egdm(lr) (defaults: no weight decay, 2-D leaves)", _egdm()),
  "egdm-wd0.1": ("optax_egd.egdm(lr, weight_decay=0.1)", _egdm(weight_decay=0.1)),
  "egdm-wd0.3": ("optax_egd.egdm(lr, weight_decay=0.3)", _egdm(weight_decay=0.3)),
  "egdm-wd1": ("optax_egd.egdm(lr, weight_decay=1.0)", _egdm(weight_decay=1.0)),
  "egdm-wd0.3-adamwd": (
    "optax_egd.egdm(lr, weight_decay=0.3, adam_weight_decay=0.3)",
    _egdm(weight_decay=0.3, adam_weight_decay=0.3),
  ),
  "egdm-kernels-wd0.3": (
    "optax_egd.egdm(lr, weight_decay=0.3, dimension_numbers="
    "models.matrix_dimension_numbers): embeddings to AdamW at lr",
    _egdm(weight_decay=0.3, dimension_numbers=models.matrix_dimension_numbers),
  ),
  "egdm-m0.9-wd0.3": (
    "optax_egd.egdm(lr, momentum=0.9, weight_decay=0.3)",
    _egdm(momentum=0.9, weight_decay=0.3),
  ),
  "adamw-wd1": ("optax.adamw(lr, 0.9, 0.98, weight_decay=1.0)", _adamw(1.0)),
  "adamw-wd0": ("optax.adamw(lr, 0.9, 0.98, weight_decay=0)", _adamw(0.0)),
  "egd-sgd": ("chain(egd(), sgd(lr))", _egd_sgd),
  "egdm-rtol0.02": ("optax_egd.egdm(lr, rtol=0.02)", _egdm(rtol=0.02)),
  "egdm-rtol0.05": ("optax_egd.egdm(lr, rtol=0.05)", _egdm(rtol=0.05)),
  "egdm-wd0.03": ("optax_egd.egdm(lr, weight_decay=0.03)", _egdm(weight_decay=0.03)),
  "egdm-rtol0.02-wd0.3": (
    "optax_egd.egdm(lr, weight_decay=0.3, rtol=0.02)",
    _egdm(weight_decay=0.3, rtol=0.02),
  ),
  "egdm-pee": (
    "optax_egd.egdm(lr, method='polar_express_exact') (the GPU/TPU default)",
    _egdm(method="polar_express_exact"),
  ),
  "egdm-m0.9": ("optax_egd.egdm(lr, momentum=0.9)", _egdm(momentum=0.9)),
  "egdm-decay": (
    "optax_egd.egdm(lr) with the lr falling linearly to lr/10 over 1,000 steps",
    _decayed(_egdm(), 1000, 0.1),
  ),
  "egdm-m0.9-decay": (
    "optax_egd.egdm(lr, momentum=0.9), the lr falling linearly to lr/10 over "
    "1,000 steps",
    _decayed(_egdm(momentum=0.9), 1000, 0.1),
  ),
  "egdm-kernels": (
    "optax_egd.egdm(lr, dimension_numbers=models.matrix_dimension_numbers): EGD on "
    "every kernel (the 3-D attention ones too), embeddings to AdamW at lr",
    _egdm(dimension_numbers=models.matrix_dimension_numbers),
  ),
  "egdm-adam1e-3": (
    "optax_egd.egdm(lr, adam_learning_rate=1e-3): AdamW at 1e-3 off the matrices",
    _egdm(adam_learning_rate=1e-3),
  ),
  "grokfast-egdm": (
    "chain(grokfast_ema(0.98, 2.0), optax_egd.egdm(lr)): Grokfast's filter first",
    _grokfast_egdm(0.98, 2.0),
  ),
  "naive-wd1": ("chain(egd(), adamw(lr, 0.9, 0.98, weight_decay=1.0))", _naive(1.0)),
  "naive-wd0": ("chain(egd(), adamw(lr, 0.9, 0.98, weight_decay=0))", _naive(0.0)),
  "adam-egd-wd0.1": ("adam-egd (kernel lr = lr, decay 0.1)", _adam_egd(0.1)),
}


def factory(name: str) -> Factory:
  """The learning-rate factory of configuration ``name``: one of
  :data:`CONFIGS`, else an optimizer of :mod:`experiments.registry` (a plugin
  too, once loaded) at its defaults, the learning rate setting the first knob
  its grids tune (``lr``, ``adam_lr``, ``muon_lr``, ...).

  >>> factory("egd-first-layer").__name__, describe("egd-first-layer")
  ('make', "experiments.registry's egd-first-layer at its defaults, lr = lr")
  """
  if name in CONFIGS:
    return CONFIGS[name][1]
  spec = registry.get(name)
  build, knob = spec.builder(), spec.tuned[0]

  def make(learning_rate: Any) -> optax.GradientTransformation:
    config = dataclasses.replace(registry.OptimizerConfig(), **{knob: learning_rate})
    return build(config, models.GrokfastDecoder.first_kernel)

  return make


def describe(name: str) -> str:
  """What configuration ``name`` runs (see :func:`factory`)."""
  if name in CONFIGS:
    return CONFIGS[name][0]
  knob = registry.get(name).tuned[0]
  return f"experiments.registry's {name} at its defaults, {knob} = lr"


@functools.cache
def _preset() -> Any:
  """The resolved options of ``python -m experiments.grok --preset grokfast``."""
  return grok.resolve(grok.options(preset="grokfast"))


def seed_setup(seed: int) -> tuple[tasks.Dataset, models.GrokfastDecoder, jax.Array]:
  """Data, model and shuffle key of ``seed``: ``experiments.grok``'s own
  (:func:`experiments.grok.setup` of the preset)."""
  return tuple(grok.setup(_preset(), seed))  # type: ignore[return-value]


def warmed_up(factory: Factory, lr: float) -> optax.GradientTransformation:
  """``factory`` with an injected learning rate and the preset's warmup."""
  return optax.chain(
    optax.inject_hyperparams(factory)(learning_rate=lr),
    optax.scale_by_schedule(
      optax.schedules.warmup_constant_schedule(0.0, 1.0, WARMUP_STEPS)
    ),
  )


def with_lr(opt_state: Any, lr: float) -> Any:
  """``opt_state`` with its injected learning rate set to ``lr``."""
  inner = opt_state[0]
  hyper = dict(inner.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
  return (inner._replace(hyperparams=hyper), *opt_state[1:])


class Runner:
  """One compiled epoch per configuration, reused for every seed and lr."""

  def __init__(self, factory: Factory, config: TrainConfig) -> None:
    self.config = config
    self.optimizer = warmed_up(factory, 0.0)
    data, model, _ = seed_setup(0)
    self.template = data

    def epoch(
      params: Any, opt_state: Any, key: jax.Array, index: jax.Array, *arrays: jax.Array
    ) -> Any:
      batch = dataclasses.replace(
        self.template,
        x_train=arrays[0],
        y_train=arrays[1],
        x_test=arrays[2],
        y_test=arrays[3],
      )
      fn, _ = make_epoch_fn(model, self.optimizer, batch, config)
      return fn(params, opt_state, key, index)

    self.epoch = jax.jit(epoch)

  def run(self, seed: int, lr: float, max_epochs: int) -> dict[str, Any]:
    data, model, shuffle_key = seed_setup(seed)
    params = nnx.state(model, nnx.Param)
    opt_state = with_lr(self.optimizer.init(params), lr)
    arrays = (data.x_train, data.y_train, data.x_test, data.y_test)
    test_acc: list[float] = []
    t0 = time.perf_counter()
    epochs_to_target = None
    for index in range(max_epochs):
      params, opt_state, metrics = self.epoch(
        params, opt_state, shuffle_key, jnp.asarray(index, jnp.int32), *arrays
      )
      test_acc.append(float(metrics["test_acc"]))
      if test_acc[-1] >= TARGET:
        epochs_to_target = index + 1
        break
    per_epoch = steps_per_epoch(data.x_train.shape[0], self.config)
    return {
      "epochs_to_target": epochs_to_target,
      "steps_to_target": epochs_to_target and epochs_to_target * per_epoch,
      "epochs_run": len(test_acc),
      "final_test_acc": test_acc[-1],
      "best_test_acc": max(test_acc),
      "seconds": time.perf_counter() - t0,
    }


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per (config, lr): steps per seed (None: not within the cell's cap) and
  their median (None when it lies beyond the cap)."""
  groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
  for cell in cells:
    groups.setdefault((cell["config"], cell["lr"]), []).append(cell)
  rows = []
  for (name, lr), runs in groups.items():
    runs = sorted(runs, key=lambda r: r["seed"])
    steps = [r["steps_to_target"] for r in runs]
    cap = max(r["cap_steps"] for r in runs)
    values = [s if s is not None else cap + 1 for s in steps]
    median = statistics.median(values)
    rows.append(
      {
        "config": name,
        "lr": lr,
        "seeds": [r["seed"] for r in runs],
        "steps": steps,
        "cap_steps": cap,
        "median": None if median > cap else median,
      }
    )
  return rows


def markdown(record: dict[str, Any]) -> str:
  """The sweep as a markdown table: one row per (config, lr), every seed."""
  lines = [
    "| configuration | lr | steps to 95% (seed: steps) | median |",
    "|---|---|---|---|",
  ]
  for row in sorted(record["summary"], key=lambda r: (r["config"], r["lr"])):
    cap = row["cap_steps"]
    cells = ", ".join(
      f"{seed}: {steps if steps is not None else f'> {cap}'}"
      for seed, steps in zip(row["seeds"], row["steps"], strict=True)
    )
    if len(row["seeds"]) < 3:
      median = "–"
    else:
      median = f"{row['median']:g}" if row["median"] is not None else f"> {cap}"
    lines.append(f"| `{row['config']}` | {row['lr']:g} | {cells} | {median} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
    "--report",
    type=pathlib.Path,
    help="print the sweep file REPORT as a markdown table and exit",
  )
  p.add_argument(
    "--configs",
    help=f"comma-separated, NAME (at every --lrs) or NAME@LR: {', '.join(CONFIGS)}, "
    "or any optimizer of experiments.registry (python -m experiments.grok "
    "--optimizer's choices) at its defaults",
  )
  p.add_argument(
    "--plugin",
    action="append",
    metavar="FILE.py|MODULE",
    help="a file or module defining an experiments.registry.OptimizerSpec: its "
    "optimizers join the --configs choices (repeatable)",
  )
  p.add_argument("--lrs", default="", help="comma-separated learning rates")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--seed", type=int, default=0, help="first seed")
  p.add_argument("--max-steps", type=int, default=1500)
  p.add_argument("--out", type=pathlib.Path)
  args = p.parse_args(argv)
  if args.report is not None:
    print(markdown(json.loads(args.report.read_text())))
    return
  if not args.configs or args.out is None:
    p.error("--configs and --out are required (unless --report)")
  for source in args.plugin or ():
    try:
      registry.load_plugin(source)
    except ValueError as error:
      p.error(f"argument --plugin: {error}")
  lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else []
  plan: list[tuple[str, float]] = []
  for entry in (e.strip() for e in args.configs.split(",") if e.strip()):
    name, _, lr = entry.partition("@")
    if name not in CONFIGS and name not in registry.SPECS:
      p.error(
        f"--configs: unknown {name!r}; choose from {', '.join(CONFIGS)} or "
        f"{', '.join(n for n in registry.SPECS if n not in CONFIGS)}"
      )
    plan += [(name, float(lr))] if lr else [(name, v) for v in lrs]
  config = TrainConfig(batch_size=512, drop_last=False, l2=0.0, loss="cross_entropy")
  per_epoch = steps_per_epoch(4656, config)
  max_epochs = -(-args.max_steps // per_epoch)
  record = json.loads(args.out.read_text()) if args.out.exists() else {"cells": []}
  command = shlex.join(sys.argv[1:] if argv is None else argv)
  record.setdefault("commands", []).append(
    f"python -m experiments.sweep_grokfast {command}"
  )
  record["configs"] = {n: d for n, (d, _) in CONFIGS.items()}
  record["configs"].update({name: describe(name) for name, _ in plan})
  record["cap_steps"] = args.max_steps
  done = {(c["config"], c["lr"], c["seed"]) for c in record["cells"]}
  print(_threads.describe(), flush=True)
  runners: dict[str, Runner] = {}
  for seed in range(args.seed, args.seed + args.seeds):
    for name, lr in plan:
      if (name, lr, seed) in done:
        continue
      if name not in runners:
        runners[name] = Runner(factory(name), config)
      cell = {
        "config": name,
        "lr": lr,
        "seed": seed,
        "cap_steps": args.max_steps,
        **runners[name].run(seed, lr, max_epochs),
      }
      record["cells"].append(cell)
      record["summary"] = summarize(record["cells"])
      args.out.write_text(json.dumps(record, indent=1))
      print(
        f"{name:22s} lr {lr:<7g} seed {seed}: steps {cell['steps_to_target']} "
        f"({cell['epochs_run']} epochs, {cell['seconds']:.0f} s)",
        flush=True,
      )


if __name__ == "__main__":
  main()
