"""``python -m experiments.demo``: EGD groks (a + b) mod 97 in seconds.

The EGD paper's setup: one-hot(a) ‖ one-hot(b) inputs (194 features), a
random 50% training split, the MLP 194 → 512 ReLU → 97 (He init, bias on the
hidden layer), cross-entropy plus 1e-4 · ½‖W‖² in the loss, batch 512, and
``optax.chain(optax_egd.egd(), optax.sgd(0.7))``: EGD on every weight matrix.
Each epoch is one compiled function (shuffle, ``lax.scan`` over the batches,
test evaluation); the seconds reported exclude compilation. ``--compare`` also
runs plain SGD (thousands of epochs: minutes).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import statistics

from flax import nnx
import jax
import optax

from experiments import _cli, _threads
from experiments.models import MLP
from experiments.tasks import modular_arithmetic
from experiments.train import Run, RunResult, TrainConfig, start, train
import optax_egd

PROGRESS_EVERY = 1000  # epochs between progress lines of long runs
BATCH = 512  # the paper's batch; the training half of the p² pairs must fill it
MIN_P = 37  # the smallest prime whose 50% split has BATCH examples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Command-line options."""
  parser = argparse.ArgumentParser(
    prog="python -m experiments.demo", description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    "--p",
    type=_cli.prime(MIN_P),
    default=97,
    help=f"prime modulus >= {MIN_P} (the 50%% training split fills a batch of {BATCH})",
  )
  parser.add_argument(
    "--seed",
    type=_cli.integer(0, _cli.SEED_MAX),
    default=0,
    help="seed of the split, init and shuffles",
  )
  parser.add_argument(
    "--seeds",
    type=_cli.integer(1),
    default=1,
    help="run seeds --seed .. --seed + N - 1",
  )
  parser.add_argument(
    "--lr",
    type=_cli.number(0, low_open=True),
    default=0.7,
    help="SGD learning rate > 0 (0.7: the paper's)",
  )
  parser.add_argument(
    "--max-epochs",
    type=_cli.integer(1),
    default=20000,
    help="give up after this many epochs",
  )
  parser.add_argument(
    "--method",
    default="auto",
    choices=[m for m in optax_egd.METHODS if m != "rsvd"],
    help="EGD's polar-factor algorithm (default: egd()'s own, 'auto')",
  )
  parser.add_argument(
    "--compare",
    action="store_true",
    help="also run plain SGD (slow: thousands of epochs)",
  )
  args = parser.parse_args(argv)
  if args.seed + args.seeds - 1 > _cli.SEED_MAX:
    parser.error(f"--seed + --seeds - 1 must be <= {_cli.SEED_MAX}")
  return args


def run(
  name: str,
  optimizer: optax.GradientTransformation,
  args: argparse.Namespace,
  seed: int,
) -> RunResult:
  """Train the paper's MLP with ``optimizer`` to 95% test accuracy."""
  data_key, init_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  data = modular_arithmetic(data_key, "add", args.p, train_fraction=0.5)
  model = MLP(data.num_features, 512, args.p, rngs=nnx.Rngs(params=init_key))
  config = TrainConfig(
    batch_size=BATCH, l2=1e-4, max_epochs=args.max_epochs, target_accuracy=0.95
  )
  compiled, state = start(model, optimizer, data, config)
  result = train(compiled, state, shuffle_key, config, _progress(name)).result
  _report(name, result)
  return result


def _progress(name: str) -> Callable[[Run], None]:
  """A callback printing a line every ``PROGRESS_EVERY`` epochs."""

  def on_epoch(run: Run) -> None:
    history = run.result.history
    if history.epochs % PROGRESS_EVERY == 0:
      print(
        f"  {name} epoch {history.epochs}: test accuracy {history.test_acc[-1]:.3f}"
      )

  return on_epoch


def _report(name: str, result: RunResult) -> None:
  history = result.history
  per_epoch_ms = 1e3 * sum(history.seconds) / history.epochs
  if result.epochs_to_target is None:
    best = max(history.test_acc)
    print(f"{name}: no 95% test accuracy in {history.epochs} epochs (best {best:.3f})")
  else:
    print(
      f"{name}: 95% test accuracy after {result.epochs_to_target} epochs, "
      f"{result.seconds_to_target:.2f} s (test accuracy {history.test_acc[-1]:.3f})"
    )
  print(
    f"    {per_epoch_ms:.1f} ms per epoch; "
    f"compilation and one warm-up epoch {result.compile_seconds:.2f} s, not counted"
  )


def main(argv: list[str] | None = None) -> None:
  """Run the demo."""
  args = parse_args(argv)
  print(_threads.describe())
  device = jax.devices()[0]
  print(
    f"JAX {jax.__version__}, backend {jax.default_backend()} "
    f"({device.device_kind}, {jax.device_count()} device)"
  )
  seeds = range(args.seed, args.seed + args.seeds)
  print(
    f"Task (a + b) mod {args.p}, 50% train split, MLP {2 * args.p}-512-{args.p}, "
    f"batch {BATCH}, seed{'s' if len(seeds) > 1 else ''} " + ", ".join(map(str, seeds))
  )
  egd = optax_egd.egd() if args.method == "auto" else optax_egd.egd(args.method)
  label = "egd()" if args.method == "auto" else f"egd({args.method!r})"
  egd_results, sgd_results = [], []
  for seed in seeds:
    tag = f" [seed {seed}]" if len(seeds) > 1 else ""
    egd_results.append(
      run(
        f"EGD: chain({label}, sgd({args.lr})){tag}",
        optax.chain(egd, optax.sgd(args.lr)),
        args,
        seed,
      )
    )
    if args.compare:
      sgd_results.append(
        run(f"SGD: sgd({args.lr}){tag}", optax.sgd(args.lr), args, seed)
      )
  if len(seeds) > 1:
    _summary("EGD", egd_results)
    if args.compare:
      _summary("SGD", sgd_results)


def _summary(name: str, results: list[RunResult]) -> None:
  """Median and range of epochs and seconds to 95% over seeds."""
  done = [r for r in results if r.epochs_to_target is not None]
  line = f"{name}: {len(done)}/{len(results)} seeds reached 95%"
  if done:
    epochs = [r.epochs_to_target or 0 for r in done]
    seconds = [r.seconds_to_target or 0.0 for r in done]
    line += (
      f"; epochs median {statistics.median(epochs):g} [{min(epochs)}-{max(epochs)}],"
      f" seconds median {statistics.median(seconds):.2f}"
      f" [{min(seconds):.2f}-{max(seconds):.2f}]"
    )
  print(line)


if __name__ == "__main__":
  main()
