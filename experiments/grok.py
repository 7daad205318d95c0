"""``python -m experiments.grok``: grokking runs from the command line.

Example::

    python -m experiments.grok --task mod_add --p 97 --optimizer egd,sgd,column-norm \\
        --seeds 3 --max-epochs 2000 --out runs/add97

Every optimizer of ``--optimizer`` trains from the same data split and the
same initial weights for a given seed; ``--seeds N`` repeats that for seeds
``seed .. seed+N-1``. The output folder gets ``results.json`` (the resolved
configuration, and per run: epochs and seconds (compilation excluded) to the
target test accuracy, final metrics, per-epoch curves, the epoch EGD was
switched off) and ``curves.png``; ``--spectrum`` adds the first kernel's
gradient singular values per epoch and ``spectrum.png``. Runs are
checkpointed with Orbax every ``--checkpoint-every`` epochs; ``--resume``
continues them exactly.

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
recipe (``experiments.optimizers.GROKFAST_DEFAULT``); each run reports
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
from typing import Any

from flax import nnx
import jax
from matplotlib import cm
from matplotlib.figure import Figure
from tqdm import tqdm

from experiments import _threads, models, optimizers, tasks
from experiments.checkpoint import Checkpointer
from experiments.train import Run, RunResult, TrainConfig, start, train

TASKS = ("mod_add", "mod_sub", "mod_mul", "mod_div", "grokfast_mul", "parity", "mnist")
MODELS = ("mlp", "transformer", "grokfast", "omnigrok")
PRESETS = {"grokfast": "grokfast_mul"}

# Hyperparameters per task (and model) from the papers; see the module docstring.
_MODULAR_MLP = dict(hidden=512, lr=0.7, l2=1e-4, batch_size=512, loss="cross_entropy")
_MODULAR_TRANSFORMER = dict(
  l2=0.0, batch_size=512, loss="cross_entropy", warmup_steps=10
)
# Grokfast's main.py (its own default: Adam without weight decay).
_GROKFAST = dict(
  l2=0.0,
  batch_size=512,
  drop_last=False,
  loss="cross_entropy",
  warmup_steps=10,
  target_accuracy=0.95,
  optimizer=optimizers.GROKFAST_DEFAULT,
  # egdm: the best learning rate of experiments/results/grokfast_sweep.json
  # (no weight decay on the matrices: 0.3 did not reach 95% in 1,000 steps).
  lr=0.06,
  weight_decay=0.0,
)
_PARITY = {
  2: dict(hidden=50, lr=1e-2, l2=1e-3),
  3: dict(hidden=100, lr=0.0416239, l2=1e-2),
  4: dict(hidden=100, lr=0.0230841, l2=1e-2),
}
_PARITY_COMMON = dict(batch_size=32, loss="mse")
_MNIST = dict(
  batch_size=200,
  loss="mse",
  l2=0.0,
  adam_weight_decay=0.01,
  b2=0.999,
  target_accuracy=0.85,
  n_train=1000,
)
_FALLBACK = dict(
  hidden=512,
  l2=0.0,
  batch_size=512,
  drop_last=True,
  loss="cross_entropy",
  target_accuracy=0.95,
  optimizer="egd",
)
_OPTIMIZER_FIELDS = {
  f.name: int if "int" in str(f.type) else float
  for f in dataclasses.fields(optimizers.OptimizerConfig)
  if f.name != "seed"
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Parse the command line; task-dependent options stay None until :func:`resolve`."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  task = p.add_argument_group("task")
  task.add_argument(
    "--preset",
    choices=tuple(PRESETS),
    help="grokfast: Grokfast's modular multiplication and transformer "
    "(sets --task grokfast_mul)",
  )
  task.add_argument("--task", choices=TASKS, default="mod_add")
  task.add_argument("--p", type=int, default=97, help="prime modulus")
  task.add_argument("--train-fraction", type=float, default=0.5)
  task.add_argument("--encoding", choices=("onehot", "tokens"), default="onehot")
  task.add_argument(
    "--n", type=int, help="parity: input bits (default from --k: 400, 100, 50)"
  )
  task.add_argument(
    "--k", type=int, help="parity: secret bits (2, 3 or 4 have presets; default 4)"
  )
  task.add_argument(
    "--n-train", type=int, default=None, help="parity: 2000; MNIST: 1000"
  )
  task.add_argument("--n-test", type=int, default=10000, help="parity test examples")
  model = p.add_argument_group("model")
  model.add_argument(
    "--model",
    choices=MODELS,
    help="default: mlp, transformer for tokens, grokfast for grokfast_mul, "
    "omnigrok for mnist",
  )
  model.add_argument("--hidden", type=int, help="MLP hidden width")
  model.add_argument("--layers", type=int, default=2, help="transformer layers")
  model.add_argument("--d-model", type=int, default=128)
  model.add_argument("--heads", type=int, default=4)
  model.add_argument("--depth", type=int, default=3, help="Omnigrok MLP depth")
  model.add_argument("--width", type=int, default=200, help="Omnigrok MLP width")
  model.add_argument(
    "--init-scale", type=float, default=8.0, help="Omnigrok init multiplier"
  )
  opt = p.add_argument_group("optimization")
  opt.add_argument(
    "--optimizer",
    help=f"comma-separated, from: {', '.join(optimizers.NAMES)} (default egd; "
    f"{optimizers.GROKFAST_DEFAULT} for --preset grokfast)",
  )
  for name, kind in _OPTIMIZER_FIELDS.items():
    default = getattr(optimizers.OptimizerConfig(), name)
    opt.add_argument(
      f"--{name.replace('_', '-')}",
      type=kind,
      help=f"default {default} unless the task sets it",
    )
  opt.add_argument("--l2", type=float, help="weight decay as 0.5·l2·Σ‖W‖² in the loss")
  opt.add_argument("--batch-size", type=int)
  opt.add_argument("--loss", choices=("cross_entropy", "mse"))
  run = p.add_argument_group("run")
  run.add_argument("--max-epochs", type=int, default=2000)
  run.add_argument(
    "--target-accuracy", type=float, help="test accuracy to reach (0.95; MNIST 0.85)"
  )
  run.add_argument(
    "--no-stop", action="store_true", help="keep training after the target accuracy"
  )
  run.add_argument(
    "--egd-off-at", type=float, help="switch EGD off once test accuracy reaches this"
  )
  run.add_argument(
    "--spectrum",
    action="store_true",
    help="record the first kernel's gradient singular values every epoch (on the "
    "first batch of the training set) and draw spectrum.png",
  )
  run.add_argument(
    "--train-metrics",
    choices=("minibatch", "full"),
    default="minibatch",
    help="train loss/accuracy per epoch: the mean over the epoch's minibatches "
    "(free) or a pass over the whole training set after the epoch",
  )
  run.add_argument("--seed", type=int, default=0)
  run.add_argument(
    "--seeds", type=int, default=1, help="number of seeds, from --seed on"
  )
  run.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/grok"))
  run.add_argument(
    "--checkpoint-every",
    type=int,
    default=500,
    help="epochs between checkpoints; 0: none",
  )
  run.add_argument(
    "--resume", action="store_true", help="continue from the checkpoints in --out"
  )
  run.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def task_defaults(args: argparse.Namespace) -> dict[str, Any]:
  """The papers' hyperparameters for ``args.task`` and ``args.model``."""
  if args.task == "grokfast_mul":
    return _GROKFAST
  if args.task.startswith("mod_"):
    return _MODULAR_MLP if args.model == "mlp" else _MODULAR_TRANSFORMER
  if args.task == "parity":
    k = args.k or 4
    n = tasks.PARITY_PRESETS[k][0] if k in tasks.PARITY_PRESETS else None
    return _PARITY_COMMON | _PARITY.get(k, _PARITY[4]) | dict(k=k, n=n, n_train=2000)
  return _MNIST


def resolve(args: argparse.Namespace) -> argparse.Namespace:
  """Fill every unset option with the task's default."""
  if getattr(args, "preset", None) is not None:
    args.task = PRESETS[args.preset]
  if args.model is None:
    args.model = {"mnist": "omnigrok", "grokfast_mul": "grokfast"}.get(
      args.task, "transformer" if args.encoding == "tokens" else "mlp"
    )
  for name, value in (_FALLBACK | task_defaults(args)).items():
    if getattr(args, name, None) is None:
      setattr(args, name, value)
  for name in _OPTIMIZER_FIELDS:
    if getattr(args, name) is None:
      setattr(args, name, getattr(optimizers.OptimizerConfig(), name))
  if args.task == "parity" and args.n is None:
    raise SystemExit(f"--task parity --k {args.k} has no preset: give --n")
  args.optimizers = [name.strip() for name in args.optimizer.split(",") if name.strip()]
  unknown = [name for name in args.optimizers if name not in optimizers.NAMES]
  if unknown:
    raise SystemExit(
      f"unknown optimizer(s) {unknown}; choose from {', '.join(optimizers.NAMES)}"
    )
  return args


def make_data(args: argparse.Namespace, key: jax.Array) -> tasks.Dataset:
  """The task's data set."""
  if args.task == "grokfast_mul":
    return tasks.grokfast_multiplication(key, args.p, args.train_fraction)
  if args.task.startswith("mod_"):
    op = args.task.removeprefix("mod_")
    return tasks.modular_arithmetic(key, op, args.p, args.train_fraction, args.encoding)
  if args.task == "parity":
    return tasks.sparse_parity(key, args.n, args.k, args.n_train, args.n_test)
  return tasks.mnist(key, args.n_train)


def make_model(
  args: argparse.Namespace, data: tasks.Dataset, key: jax.Array
) -> models.Model:
  """The model, initialized from ``key``."""
  rngs = nnx.Rngs(params=key)
  out = data.num_classes or 1
  if args.model == "grokfast":
    if data.vocab_size != data.num_classes:
      raise SystemExit("--model grokfast needs --task grokfast_mul")
    return models.GrokfastDecoder(
      data.vocab_size,
      d_model=args.d_model,
      num_heads=args.heads,
      num_layers=args.layers,
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
      d_model=args.d_model,
      num_heads=args.heads,
      num_layers=args.layers,
      rngs=rngs,
    )
  if not data.num_features:
    raise SystemExit(f"--model {args.model} needs feature inputs: --encoding onehot")
  if args.model == "omnigrok":
    return models.OmnigrokMLP(
      data.num_features,
      args.width,
      out,
      depth=args.depth,
      init_scale=args.init_scale,
      rngs=rngs,
    )
  bias_init = (
    models.parity_bias_init(data.num_features)
    if args.task == "parity"
    else models.ZEROS
  )
  return models.MLP(
    data.num_features, args.hidden, out, hidden_bias_init=bias_init, rngs=rngs
  )


def train_config(args: argparse.Namespace) -> TrainConfig:
  """The loop's configuration from the (resolved) options."""
  return TrainConfig(
    batch_size=args.batch_size,
    drop_last=args.drop_last,
    l2=args.l2,
    loss=args.loss,
    max_epochs=args.max_epochs,
    target_accuracy=args.target_accuracy,
    stop_at_target=not args.no_stop,
    egd_off_at=args.egd_off_at,
    train_metrics=args.train_metrics,
  )


def run_one(args: argparse.Namespace, name: str, seed: int) -> RunResult:
  """Train optimizer ``name`` with ``seed``, checkpointing and resuming as asked."""
  data_key, init_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  data = make_data(args, data_key)
  model = make_model(args, data, init_key)
  opt_config = optimizers.OptimizerConfig(
    seed=seed, **{f: getattr(args, f) for f in _OPTIMIZER_FIELDS}
  )
  optimizer = optimizers.build(name, opt_config, type(model).first_kernel)
  config = train_config(args)
  if args.spectrum:
    config = dataclasses.replace(config, spectrum_of=type(model).first_kernel)
  compiled, state = start(model, optimizer, data, config)
  checkpointer = _checkpointer(args, name, seed)
  if checkpointer is not None and args.resume:
    state = checkpointer.restore(state)
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


def _checkpointer(
  args: argparse.Namespace, name: str, seed: int
) -> Checkpointer | None:
  if args.checkpoint_every <= 0:
    return None
  directory = args.out / "checkpoints" / f"{name}-seed{seed}"
  if not args.resume and directory.exists():
    shutil.rmtree(directory)
  return Checkpointer(directory, args.checkpoint_every)


def run_record(name: str, seed: int, result: RunResult) -> dict[str, Any]:
  """One run as a JSON-ready dict."""
  h = result.history
  return {
    "optimizer": name,
    "seed": seed,
    "epochs_to_target": result.epochs_to_target,
    "steps_to_target": result.steps_to_target,
    "steps_per_epoch": result.steps_per_epoch,
    "seconds_to_target": result.seconds_to_target,
    "compile_seconds": result.compile_seconds,
    "egd_off_epoch": result.egd_off_epoch,
    "epochs": h.epochs,
    "final": {
      m: getattr(h, m)[-1] for m in ("train_loss", "train_acc", "test_loss", "test_acc")
    },
    "curves": dataclasses.asdict(h),
  }


def _json_safe(value: Any) -> Any:
  """``value`` with NaN and infinities (a diverged loss) replaced by None."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_safe(v) for v in value]
  return value


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


def plot(
  records: list[dict[str, Any]],
  optimizer_names: list[str],
  path: pathlib.Path,
  title: str,
) -> None:
  """Train/test accuracy and loss against epoch (log x), one color per optimizer."""
  fig = Figure(figsize=(11, 7))
  axes = fig.subplots(2, 2, sharex=True)
  panels = [
    ("train_acc", "train accuracy"),
    ("test_acc", "test accuracy"),
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
  ]
  for i, name in enumerate(optimizer_names):
    for j, record in enumerate(r for r in records if r["optimizer"] == name):
      epochs = range(1, record["epochs"] + 1)
      for ax, (metric, _) in zip(axes.flat, panels, strict=True):
        ax.plot(
          epochs,
          record["curves"][metric],
          color=f"C{i}",
          alpha=0.9 if j == 0 else 0.4,
          label=name if j == 0 else None,
        )
  for ax, (metric, label) in zip(axes.flat, panels, strict=True):
    ax.set_xscale("log")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if metric.endswith("loss"):
      ax.set_yscale("log")
  for ax in axes[1]:
    ax.set_xlabel("epoch")
  axes[0, 0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def plot_spectrum(
  records: list[dict[str, Any]],
  optimizer_names: list[str],
  path: pathlib.Path,
  title: str,
) -> None:
  """The paper's figure: the first kernel's gradient singular values σᵢ/σ₁
  against epoch (log-log), one panel per optimizer (its first seed), one line
  per index i, colored from the largest (dark) to the smallest (light)."""
  fig = Figure(figsize=(5 * len(optimizer_names), 4))
  axes = fig.subplots(1, len(optimizer_names), squeeze=False)[0]
  for ax, name in zip(axes, optimizer_names, strict=True):
    record = next(r for r in records if r["optimizer"] == name)
    values = record["curves"]["grad_spectrum"]
    epochs = range(1, len(values) + 1)
    count = len(values[0]) if values else 0
    for i in range(count):
      ratio = [row[i] / row[0] if row[0] > 0 else float("nan") for row in values]
      ax.plot(epochs, ratio, color=cm.viridis(i / max(count - 1, 1)), lw=0.7)
    ax.set(
      xscale="log",
      yscale="log",
      xlabel="epoch",
      ylabel="σᵢ / σ₁",
      title=f"{name} (seed {record['seed']})",
    )
    ax.grid(True, alpha=0.3)
  fig.suptitle(f"{title}: first-layer gradient spectrum")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


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
  args = resolve(parse_args(argv))
  print(_threads.describe())
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}")
  args.out.mkdir(parents=True, exist_ok=True)
  config = {
    k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
  }
  records = []
  for seed in range(args.seed, args.seed + args.seeds):
    for name in args.optimizers:
      records.append(run_record(name, seed, run_one(args, name, seed)))
      summary = summarize(records, args.optimizers)
      results = {"config": config, "summary": summary, "runs": records}
      (args.out / "results.json").write_text(json.dumps(_json_safe(results), indent=1))
  title = f"{args.task} ({args.model})"
  plot(records, args.optimizers, args.out / "curves.png", title)
  written = ["results.json", "curves.png"]
  if args.spectrum:
    plot_spectrum(records, args.optimizers, args.out / "spectrum.png", title)
    written.append("spectrum.png")
  _print_summary(summary, args.target_accuracy)
  print(f"wrote {', '.join(str(args.out / f) for f in written)}")


if __name__ == "__main__":
  main()
