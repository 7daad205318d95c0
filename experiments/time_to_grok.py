"""Epochs and seconds to grok, per optimizer: ``python -m experiments.time_to_grok``.

In one process, with the same data split and the same initialization for
every optimizer (per seed), the EGD paper's MLP (one-hot ``a ‖ b`` → 512 ReLU
→ p, batch 512, l2 1e-4, cross-entropy, 50% train split) is trained with the
experiments' loop (:mod:`experiments.train`: one compiled function per
epoch; seconds exclude compilation) until the test accuracy reaches 95% or
``--max-epochs``.

Optimizers: ``sgd`` (lr 0.7); ``official`` (the official scripts: EGD with an
exact SVD on the first layer only, via ``optax.masked``, then SGD); ``egd``
(``egd()`` defaults on every kernel, as :mod:`experiments.optimizers`);
``egd-<method>`` for every polar method; ``column-norm``, ``grokfast-ema``,
``orthograd`` (each chained with SGD); ``adamw-wd1`` (AdamW, lr 1e-3, weight
decay 1.0); ``muon`` (``optax.contrib.muon``, lr 0.02). Hyperparameters are
:class:`experiments.optimizers.OptimizerConfig`'s defaults.

Speedups are ``baseline / this`` for epochs and for seconds to 95%; where the
baseline did not reach 95% within the cap the speedup is a lower bound (``≥``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import pathlib
import statistics
import sys
from typing import Any

import optax

from experiments import _cli, _report, models, optimizers, registry, tasks, train
import optax_egd

NAME = "time_to_grok"
RUNS_DIR = pathlib.Path("runs")
"""Default parent of a run's output folder (relative to the working directory)."""
POLAR_METHODS = tuple(m for m in optax_egd.METHODS if m != "auto")
OPTIMIZERS = (
  "sgd",
  "official",
  "egd",
  *(f"egd-{m}" for m in POLAR_METHODS),
  "column-norm",
  "grokfast-ema",
  "orthograd",
  "adamw-wd1",
  "muon",
)
BASELINES = ("sgd", "official")
# Also every optimizer of the experiments' registry, at its defaults.
CHOICES = (*OPTIMIZERS, *(n for n in registry.NAMES if n not in OPTIMIZERS))
_POLAR = tuple(f"egd-{m}" for m in POLAR_METHODS)


@dataclasses.dataclass
class Row:
  """One training run (``epochs``/``seconds`` to 95%: None if not reached)."""

  optimizer: str
  seed: int
  epochs: int | None
  seconds: float | None
  epochs_run: int
  seconds_run: float
  seconds_per_epoch: float
  compile_s: float
  best_test_acc: float


@dataclasses.dataclass
class Summary:
  """Per optimizer over seeds: medians of the runs that reached 95%."""

  optimizer: str
  reached: int
  runs: int
  epochs: float | None
  seconds: float | None
  seconds_per_epoch: float
  speedups: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def build_optimizer(
  name: str, config: optimizers.OptimizerConfig, first_kernel: models.Path
) -> optax.GradientTransformation:
  """The optimizer ``name``: one of ``OPTIMIZERS``, or of
  :data:`experiments.registry.NAMES`."""
  if name == "official":
    return _report.egd_sgd("svd", config, only=first_kernel)
  if name in _POLAR:
    return _report.egd_sgd(name.removeprefix("egd-"), config)
  if name == "adamw-wd1":
    return optimizers.build(
      "adamw", dataclasses.replace(config, adam_weight_decay=1.0), first_kernel
    )
  return optimizers.build(name, config, first_kernel)


def run_one(
  name: str,
  op: tasks.Operation,
  p: int,
  seed: int,
  config: train.TrainConfig,
  log_every: int,
) -> Row:
  """Trains the MLP on ``a op b mod p`` with optimizer ``name``."""
  data, model, shuffle_key = _report.paper_mlp_setup(seed, p, op)
  tx = build_optimizer(
    name, optimizers.OptimizerConfig(seed=seed), models.MLP.first_kernel
  )
  compiled, run = train.start(model, tx, data, config)

  def log(run: train.Run) -> None:
    h = run.result.history
    if h.epochs % log_every == 0:
      print(
        f"    {name} seed {seed}: epoch {h.epochs} test acc "
        f"{h.test_acc[-1]:.3f} ({sum(h.seconds):.1f} s)",
        file=sys.stderr,
        flush=True,
      )

  run = train.train(compiled, run, shuffle_key, config, log)
  h, result = run.result.history, run.result
  return Row(
    name,
    seed,
    result.epochs_to_target,
    result.seconds_to_target,
    h.epochs,
    sum(h.seconds),
    sum(h.seconds) / max(h.epochs, 1),
    result.compile_seconds,
    max(h.test_acc, default=0.0),
  )


def _median(values: Sequence[float | None]) -> float | None:
  known = [v for v in values if v is not None]
  return statistics.median(known) if known else None


def summarize(rows: Sequence[Row], max_epochs: int) -> list[Summary]:
  """Medians per optimizer and speedups against ``BASELINES``.

  A baseline run that did not reach 95% counts as ``max_epochs`` epochs and
  its full run time, so speedups against such a baseline are lower bounds.
  """
  summaries = []
  for name in dict.fromkeys(r.optimizer for r in rows):
    mine = [r for r in rows if r.optimizer == name]
    done = [r for r in mine if r.epochs is not None]
    summaries.append(
      Summary(
        name,
        len(done),
        len(mine),
        _median([r.epochs for r in done]),
        _median([r.seconds for r in done]),
        statistics.median(r.seconds_per_epoch for r in mine),
      )
    )
  by_name = {s.optimizer: s for s in summaries}
  for base in BASELINES:
    b = by_name.get(base)
    if b is None:
      continue
    base_rows = [r for r in rows if r.optimizer == base]
    b_epochs = statistics.median(
      max_epochs if r.epochs is None else r.epochs for r in base_rows
    )
    b_seconds = statistics.median(
      r.seconds_run if r.seconds is None else r.seconds for r in base_rows
    )
    for s in summaries:
      if s.epochs is None or s.seconds is None:
        continue
      s.speedups[base] = {
        "epochs": b_epochs / s.epochs,
        "seconds": b_seconds / s.seconds,
        "lower_bound": b.reached < b.runs,
      }
  return summaries


def markdown(summaries: Sequence[Summary], max_epochs: int) -> str:
  """The summary as a Markdown table."""

  def speedup(s: Summary, base: str, key: str) -> str | None:
    v = s.speedups.get(base)
    if v is None:
      return None
    return ("≥" if v["lower_bound"] else "") + f"{v[key]:.2f}"

  table = []
  for s in summaries:
    table.append(
      {
        "optimizer": s.optimizer,
        "reached": f"{s.reached}/{s.runs}",
        "epochs": (
          f"{s.epochs:g}"
          if s.epochs is not None
          else f"did not reach 95% within {max_epochs}"
        ),
        "seconds": s.seconds,
        "s_per_epoch": s.seconds_per_epoch * 1e3,
        **{
          f"{base}_{key}": speedup(s, base, key)
          for base in BASELINES
          for key in ("epochs", "seconds")
        },
      }
    )
  return _report.markdown_table(
    table,
    [
      ("optimizer", "optimizer", "s"),
      ("reached", "reached 95%", "s"),
      ("epochs", "epochs to 95%", "s"),
      ("seconds", "s to 95%", ".1f"),
      ("s_per_epoch", "ms/epoch", ".1f"),
      ("sgd_epochs", "×sgd (epochs)", "s"),
      ("sgd_seconds", "×sgd (s)", "s"),
      ("official_epochs", "×official (epochs)", "s"),
      ("official_seconds", "×official (s)", "s"),
    ],
  )


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point."""
  parser = _report.parser(
    f"experiments.{NAME}", __doc__.split("\n")[0], RUNS_DIR, "experiments/results"
  )
  parser.add_argument(
    "--task", choices=tasks.OPERATIONS, default="add", help="a ∘ b mod p (default add)"
  )
  parser.add_argument(
    "--p", type=_cli.prime(), default=97, help="a prime modulus (default 97)"
  )
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=CHOICES,
    default=list(OPTIMIZERS),
    metavar="NAME",
    help=f"from {', '.join(OPTIMIZERS)}, or any optimizer of "
    "experiments.registry (python -m experiments.grok "
    "--optimizer's choices); default: the former",
  )
  parser.add_argument("--seeds", type=_cli.integer(0), nargs="+", default=[0])
  parser.add_argument("--batch-size", type=_cli.integer(1), default=512)
  parser.add_argument("--max-epochs", type=_cli.integer(1), default=10000)
  parser.add_argument(
    "--quick", action="store_true", help="cap at 200 epochs (plain SGD needs ~5000)"
  )
  parser.add_argument(
    "--log-every",
    type=_cli.integer(1),
    default=500,
    help="progress line every N epochs (stderr)",
  )
  args = parser.parse_args(argv)
  max_epochs = min(args.max_epochs, 200) if args.quick else args.max_epochs
  config = train.TrainConfig(batch_size=args.batch_size, max_epochs=max_epochs)

  out = _report.out_dir(args.out, NAME, RUNS_DIR)
  stem = _report.result_stem(NAME, args.quick)
  with _report.tee_stdout(out / f"{stem}.txt"):
    info = _report.machine_info()
    _report.print_header(
      f"Grokking: epochs and seconds to 95% test accuracy on "
      f"a {args.task} b mod {args.p}",
      info,
    )
    print(
      f"cap: {max_epochs} epochs; seeds {args.seeds}; egd() 'auto' → "
      f"{optax_egd.auto_method((2 * args.p, _report.MLP_HIDDEN))!r}\n"
    )
    rows = []
    for seed in args.seeds:
      for name in args.optimizers:
        rows.append(run_one(name, args.task, args.p, seed, config, args.log_every))
        r = rows[-1]
        reached = (
          f"95% at epoch {r.epochs} ({r.seconds:.1f} s)"
          if r.epochs
          else f"did not reach 95% within {max_epochs} epochs "
          f"(best {r.best_test_acc:.3f})"
        )
        print(f"  {name:>18} seed {seed}: {reached}", file=sys.stderr, flush=True)
    summaries = summarize(rows, max_epochs)
    table = markdown(summaries, max_epochs)
    print(table)
    run_config = dict(vars(args), max_epochs=max_epochs)
    path = _report.write_json(out / f"{stem}.json", info, run_config, rows, summaries)
    md = path.with_suffix(".md")
    md.write_text(
      f"a {args.task} b mod {args.p}, seeds {args.seeds}, cap "
      f"{max_epochs} epochs; {info['cpu_model']}, load "
      f"{info['load_start']['loadavg']}\n\n{table}\n"
    )
    print(f"\nwrote {path}, {md.name} and {stem}.txt")


if __name__ == "__main__":
  main()
