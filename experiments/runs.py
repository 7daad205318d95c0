"""One run of a :class:`experiments.run_config.RunConfig`: the task's data,
the model, the loop's configuration, and the training of one optimizer and
seed (:func:`run_one`), or of several seeds in one vectorized program
(:func:`run_vectorized`). JAX is imported where it is used."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from experiments.resume import make_checkpointer
from experiments.run_config import RunConfig, error, given, optimizer_config

if TYPE_CHECKING:
  import jax

  from experiments import models, tasks
  from experiments.train import RunResult, TrainConfig


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
    stop_rule=args.stop_rule,
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
  checkpointer = make_checkpointer(args, name, seed)
  if checkpointer is not None and args.resume:
    try:
      state = checkpointer.restore(state)
    except CheckpointError as problem:
      error(f"--resume: {problem}")
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
