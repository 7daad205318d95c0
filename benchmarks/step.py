"""Time per training step with EGD against plain SGD: ``python -m benchmarks.step``.

Models (from :mod:`experiments`): the EGD paper's MLP on ``(a + b) mod 97``
(one-hot input, 194 → 512 ReLU → 97) and the experiments' transformer
(2 layers, d_model 128, on the token form ``a + b =``), batch 512 for both.

Per optimizer two compiled functions are timed, interleaved so that the
shared machine's load hits all of them alike:

* ``step``: a whole training step (gradient of the experiments' objective,
  optimizer update, apply), the loop body of :mod:`experiments.train`;
* ``update``: ``optimizer.update`` alone, on a fixed real gradient.

Optimizers: ``sgd`` (lr 0.7); ``egd`` (the experiments' ``egd``: ``egd()``
defaults, method ``auto``, on every kernel) and ``egd-off`` (the same with
``state.enabled = False``: should cost what ``sgd`` costs); ``official``
(exact SVD, first kernel only, via ``optax.masked``); ``egd-<method>`` for
every polar method. ``ratio`` is time / sgd's time: the EGD overhead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import sys
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from benchmarks import _common
from experiments import models, optimizers, tasks, train
import optax_egd
from optax_egd.polar import QR_ASPECT

MODELS = ("mlp", "transformer")
POLAR_METHODS = tuple(m for m in optax_egd.METHODS if m != "auto")
OPTIMIZERS = ("sgd", "egd", "egd-off", "official", *(f"egd-{m}" for m in POLAR_METHODS))
QUICK_OPTIMIZERS = ("sgd", "egd", "egd-off", "official")


@dataclasses.dataclass
class Row:
  """Seconds per call of one optimizer on one model."""

  model: str
  optimizer: str
  step_s: float
  step_min_s: float
  update_s: float
  update_min_s: float
  repeats: int
  step_ratio: float | None = None
  update_ratio: float | None = None


def model_and_data(
  name: str, seed: int
) -> tuple[nnx.Module, tasks.Dataset, models.Path]:
  """The model ``name`` (see ``MODELS``), its ``(a + b) mod 97`` data and
  the path of its first kernel."""
  if name == "mlp":
    data, mlp = _common.paper_mlp_task(seed)
    return mlp, data, models.MLP.first_kernel
  data = tasks.modular_arithmetic(
    jax.random.key(seed), "add", 97, 0.5, encoding="tokens"
  )
  transformer = models.Transformer(
    data.vocab_size, data.num_classes, data.x_train.shape[-1], rngs=nnx.Rngs(seed)
  )
  return transformer, data, models.Transformer.first_kernel


def optimizer(
  name: str, config: optimizers.OptimizerConfig, first_kernel: models.Path
) -> optax.GradientTransformation:
  """The optimizer ``name`` (see ``OPTIMIZERS``); ``egd-off`` is ``egd``."""
  if name == "sgd":
    return optimizers.build("sgd", config, first_kernel)
  if name in ("egd", "egd-off"):
    return optimizers.build("egd", config, first_kernel)
  if name == "official":
    return _common.egd_sgd("svd", config, only=first_kernel)
  return _common.egd_sgd(name.removeprefix("egd-"), config)


def first_batch_gradient(
  model: nnx.Module, data: tasks.Dataset, config: train.TrainConfig
) -> Any:
  """The gradient of the experiments' objective on the first training batch."""
  loss, params = _common.make_loss(model, data, config)
  head = slice(0, config.batch_size)
  return jax.jit(jax.grad(loss))(params, data.x_train[head], data.y_train[head])


def run(
  model_names: Sequence[str],
  optimizer_names: Sequence[str],
  *,
  batch_size: int,
  repeats: int,
  min_seconds: float,
  seed: int,
) -> list[Row]:
  """Times every (model, optimizer); returns the rows."""
  config = optimizers.OptimizerConfig(seed=seed)
  train_config = train.TrainConfig(batch_size=batch_size)
  rows: list[Row] = []
  for model_name in model_names:
    model, data, first_kernel = model_and_data(model_name, seed)
    x, y = data.x_train[:batch_size], data.y_train[:batch_size]
    grads = first_batch_gradient(model, data, train_config)
    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for name in optimizer_names:
      tx = optimizer(name, config, first_kernel)
      step, params = _common.make_train_step(model, tx, data, train_config)
      state = tx.init(params)
      if name == "egd-off":
        state = train.disable_egd(state)
      step_fn, _ = _common.compile_fn(step, params, state, x, y)
      update_fn, _ = _common.compile_fn(tx.update, grads, state, params)
      calls[("step", name)] = functools.partial(step_fn, params, state, x, y)
      calls[("update", name)] = functools.partial(update_fn, grads, state, params)
      print(f"  {model_name}: compiled {name}", file=sys.stderr, flush=True)
    timings = _common.time_interleaved(
      {f"{kind}/{name}": call for (kind, name), call in calls.items()},
      repeats=repeats,
      min_seconds=min_seconds,
    )
    for name in optimizer_names:
      step_t, update_t = timings[f"step/{name}"], timings[f"update/{name}"]
      rows.append(
        Row(
          model_name,
          name,
          step_t.median,
          step_t.min,
          update_t.median,
          update_t.min,
          step_t.repeats,
        )
      )
  for r in rows:
    sgd = next((s for s in rows if s.model == r.model and s.optimizer == "sgd"), None)
    if sgd is not None:
      r.step_ratio = r.step_s / sgd.step_s
      r.update_ratio = r.update_s / sgd.update_s
  return rows


def profile(
  model_name: str, *, batch_size: int, repeats: int, min_seconds: float, seed: int
) -> list[dict[str, Any]]:
  """Where ``egd()``'s update time goes: per kernel, its polar factor and the
  LAPACK calls behind it, timed interleaved on the model's real gradient.

  Parts: ``polar`` (``optax_egd.polar``, method ``auto``, what ``egd()`` runs
  per kernel), ``qr`` (the Householder QR of the long side that ``svd`` takes
  first when the aspect ratio is ≥ ``QR_ASPECT``), ``svd_square`` (the SVD of
  the min(m, n)-square factor left after it), ``jnp_svd`` (one
  ``jnp.linalg.svd`` of the whole matrix).
  """
  model, data, _ = model_and_data(model_name, seed)
  grads = first_batch_gradient(model, data, train.TrainConfig(batch_size))
  calls: dict[str, Callable[[], Any]] = {}
  labels: dict[str, dict[str, str]] = {}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    if g.ndim != 2:
      continue
    kernel, shape = jax.tree_util.keystr(path), "×".join(map(str, g.shape))
    wide = g if g.shape[0] <= g.shape[1] else g.T
    svd = functools.partial(jnp.linalg.svd, full_matrices=False)
    parts: dict[str, tuple[Callable[..., Any], jax.Array]] = {
      "polar": (optax_egd.polar, g),
      "jnp_svd": (svd, g),
    }
    if wide.shape[1] >= QR_ASPECT * wide.shape[0]:
      _, r = jnp.linalg.qr(wide.T)
      parts["qr"] = (jnp.linalg.qr, wide.T)
      parts["svd_square"] = (svd, r)
    for part, (fn, arg) in parts.items():
      compiled, _ = _common.compile_fn(fn, arg)
      calls[f"{kernel}/{part}"] = functools.partial(compiled, arg)
      labels[f"{kernel}/{part}"] = dict(kernel=kernel, shape=shape, part=part)
  timings = _common.time_interleaved(calls, repeats=repeats, min_seconds=min_seconds)
  return [
    dict(model=model_name, **labels[key], ms=t.median * 1e3, min_ms=t.min * 1e3)
    for key, t in timings.items()
  ]


def print_report(rows: Sequence[Row]) -> None:
  """Prints the table (milliseconds)."""
  table = [
    dict(
      dataclasses.asdict(r),
      step_ms=r.step_s * 1e3,
      step_min_ms=r.step_min_s * 1e3,
      update_ms=r.update_s * 1e3,
      update_min_ms=r.update_min_s * 1e3,
    )
    for r in rows
  ]
  print(
    _common.markdown_table(
      table,
      [
        ("model", "model", "s"),
        ("optimizer", "optimizer", "s"),
        ("step_ms", "step ms (median)", ".3f"),
        ("step_min_ms", "min", ".3f"),
        ("step_ratio", "step / sgd", ".2f"),
        ("update_ms", "update ms (median)", ".3f"),
        ("update_min_ms", "min", ".3f"),
        ("update_ratio", "update / sgd", ".1f"),
        ("repeats", "repeats", "d"),
      ],
    )
  )


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point."""
  parser = _common.parser("step", __doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="optimizers " + ", ".join(QUICK_OPTIMIZERS) + "; 5 repeats",
  )
  parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
  parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS)
  parser.add_argument("--batch-size", type=int, default=512)
  parser.add_argument(
    "--repeats", type=int, default=20, help="timed calls at least (default 20)"
  )
  parser.add_argument(
    "--min-seconds",
    type=float,
    default=2.0,
    help="keep timing until this much time (default 2)",
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  names = args.optimizers or (QUICK_OPTIMIZERS if args.quick else OPTIMIZERS)
  if "sgd" not in names:
    names = ["sgd", *names]
  repeats = min(args.repeats, 5) if args.quick else args.repeats
  min_seconds = min(args.min_seconds, 0.2) if args.quick else args.min_seconds

  out = _common.out_dir(args.out, "step")
  stem = _common.result_stem("step", args.quick)
  with _common.tee_stdout(out / f"{stem}.txt"):
    info = _common.machine_info()
    _common.print_header("Per-step time: EGD vs plain SGD", info)
    print(
      f"egd() default method 'auto' resolves to "
      f"{optax_egd.auto_method((194, 512))!r} for the MLP's first kernel\n"
    )
    rows = run(
      args.models,
      names,
      batch_size=args.batch_size,
      repeats=repeats,
      min_seconds=min_seconds,
      seed=args.seed,
    )
    print_report(rows)
    parts = []
    if "mlp" in args.models:
      parts = profile(
        "mlp",
        batch_size=args.batch_size,
        repeats=repeats,
        min_seconds=min_seconds,
        seed=args.seed,
      )
      print("\nWhere egd()'s update goes on the MLP (per kernel gradient, ms):\n")
      print(
        _common.markdown_table(
          parts,
          [
            ("kernel", "kernel", "s"),
            ("shape", "shape", "s"),
            ("part", "part", "s"),
            ("ms", "median ms", ".3f"),
            ("min_ms", "min", ".3f"),
          ],
        )
      )
    config = dict(
      vars(args), optimizers=names, repeats=repeats, min_seconds=min_seconds
    )
    path = _common.write_json(
      out / f"{stem}.json", info, config, rows, summary=dict(mlp_profile=parts)
    )
    print(f"\nwrote {path} and {stem}.txt")


if __name__ == "__main__":
  main()
