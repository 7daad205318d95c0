"""The training loop: one compiled function per epoch, no host sync inside it.

:func:`make_epoch_fn` builds ``epoch(params, opt_state, key, epoch) ->
(params, opt_state, metrics)``: it shuffles the training set with
``jax.random.fold_in(key, epoch)``, runs every full minibatch with
``jax.lax.scan`` (the last partial batch is dropped, as the official EGD
scripts do with ``len(train) // batch_size`` steps, unless
``TrainConfig.drop_last`` is False: then it is one more step, on the mean
loss of its examples, as Grokfast's ``torch.split`` loop does), then evaluates loss and
accuracy on the whole test set on device. Train loss and accuracy are by default the
means over the epoch's minibatches, each taken by the step's own forward pass
before its update (as the official transformer script does): they cost
nothing, where a second pass over the training set
(``TrainConfig.train_metrics="full"``, ``--train-metrics full``) adds 10-20%
to the paper's epoch on CPU. The model is used in NNX functional style:
``nnx.split`` once outside, ``nnx.merge`` inside the traced function (free at
run time: the two give the same compiled program as hand-written JAX).

:func:`start` compiles the epoch function ahead of time (and runs one
throwaway warm-up epoch), so the per-epoch seconds that :func:`train` records
exclude compilation; :func:`train` runs epochs until the test accuracy
reaches ``target_accuracy`` (``TrainConfig.stop_rule="first"``), until it has held
there from its last crossing at epoch ``s`` through epoch ``2·s``
(``"stable"``, which measures stable grokking), or until ``max_epochs``.
It can switch EGD off (``optax.tree.set(opt_state, enabled=False)``, same
shapes, no recompilation) once the test accuracy crosses ``egd_off_at``, as
the official scripts do at 95%.

The loss is the data loss plus ``0.5 · l2 · Σ‖W‖²`` over the kernels (as the
official scripts' ``W1``, ``W2``; biases are not decayed); reported losses are
the data loss alone.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import time
from typing import Any, Literal

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from experiments.models import is_kernel, path_keys
from experiments.tasks import Dataset
from optax_egd.spectrum import spectrum

LossKind = Literal["cross_entropy", "mse", "stablemax_cross_entropy"]
StopRule = Literal["first", "stable"]
Metrics = dict[str, jax.Array]
EpochFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[Any, Any, Metrics]]
METRIC_NAMES = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of the loop (the optimizer is built separately).

  Attributes:
    batch_size: minibatch size; ``len(train) // batch_size`` steps per epoch
      (``ceil(len(train) / batch_size)`` when ``drop_last`` is False).
    drop_last: drop the last partial batch of every epoch (the official EGD
      scripts); False keeps it as a smaller step (Grokfast).
    l2: coefficient of the ``0.5·l2·Σ‖W‖²`` term added to the loss.
    loss: ``"cross_entropy"`` on class labels, ``"stablemax_cross_entropy"``
      (:func:`stablemax_cross_entropy`, Prieto et al. 2025), or ``"mse"`` on
      one-hot targets (on the ±1 target for a sign task).
    max_epochs: epochs to run at most.
    target_accuracy: test accuracy whose first epoch is recorded (and where
      training stops when ``stop_at_target``).
    stop_at_target: stop at ``target_accuracy`` (by ``stop_rule``).
    stop_rule: ``"first"``: stop at the first epoch at the target;
      ``"stable"``: stop once the target has held at every epoch from the
      start ``s`` of the current run of epochs at the target through epoch
      ``2·s`` (or at ``max_epochs``), so that
      :meth:`RunResult.stable_epochs_to_target` is measured.
    egd_off_at: switch EGD off once test accuracy reaches this; None: never.
    train_metrics: ``"minibatch"``: train loss and accuracy are the means of
      the epoch's minibatches, each taken before its update (free);
      ``"full"``: a pass over the whole training set after the epoch, like
      the test metrics (costs a forward pass over the training set).
    spectrum_of: path of a kernel (e.g. ``model.first_kernel``) whose gradient
      singular values are recorded after every epoch, on the first
      ``batch_size`` training examples (the paper's spectrum figure); None:
      not recorded.
  """

  batch_size: int = 512
  drop_last: bool = True
  l2: float = 1e-4
  loss: LossKind = "cross_entropy"
  max_epochs: int = 2000
  target_accuracy: float = 0.95
  stop_at_target: bool = True
  stop_rule: StopRule = "first"
  egd_off_at: float | None = None
  train_metrics: Literal["minibatch", "full"] = "minibatch"
  spectrum_of: tuple[str | int, ...] | None = None


@dataclasses.dataclass
class History:
  """Per-epoch curves: index ``i`` is epoch ``i + 1``.

  Train metrics are minibatch means over the epoch (each before its update)
  or, with ``TrainConfig.train_metrics="full"``, taken on the whole training
  set after the epoch; test metrics are taken on the whole test set after it.
  """

  train_loss: list[float] = dataclasses.field(default_factory=list)
  train_acc: list[float] = dataclasses.field(default_factory=list)
  test_loss: list[float] = dataclasses.field(default_factory=list)
  test_acc: list[float] = dataclasses.field(default_factory=list)
  seconds: list[float] = dataclasses.field(default_factory=list)
  egd_enabled: list[bool] = dataclasses.field(default_factory=list)
  grad_spectrum: list[list[float]] = dataclasses.field(default_factory=list)

  @property
  def epochs(self) -> int:
    """Epochs recorded so far."""
    return len(self.test_acc)


@dataclasses.dataclass
class RunResult:
  """Outcome of :func:`train`.

  ``epochs_to_target`` counts the epochs run until the test accuracy first
  reached the target; ``seconds_to_target`` is their summed wall time
  (training, evaluation and the host read of the metrics; compilation and the
  warm-up epoch are in ``compile_seconds``).
  ``egd_off_epoch`` is the epoch after which EGD was switched off.
  ``steps_per_epoch`` is the number of optimizer steps in an epoch.
  ``streak_start`` is the first epoch of the current run of epochs at the
  target (None when the last epoch is below it); ``fell_back`` says that the
  test accuracy fell below the target at some epoch after first reaching it.
  """

  history: History
  compile_seconds: float
  steps_per_epoch: int = 0
  epochs_to_target: int | None = None
  seconds_to_target: float | None = None
  egd_off_epoch: int | None = None
  streak_start: int | None = None
  fell_back: bool = False

  def stable_epochs_to_target(self, max_epochs: int) -> int | None:
    """The epoch stable grokking began: the start ``s`` of the run of epochs
    at the target that lasts through epoch ``min(2·s, max_epochs)`` (the
    horizon); None when the recorded epochs do not show one (a run stopped
    by ``stop_rule="first"`` shows none unless it went on to the horizon).

    >>> acc = [0.2, 0.96, 0.5, 0.97, 0.98, 0.99, 0.99]  # target 0.95
    >>> r = RunResult(History(test_acc=acc), 0.0, epochs_to_target=2,
    ...               streak_start=4, fell_back=True)
    >>> r.stable_epochs_to_target(max_epochs=100)  # epoch 8 not seen yet
    >>> r.stable_epochs_to_target(max_epochs=7)  # held to the cap
    4
    """
    s = self.streak_start
    if s is None or self.history.epochs < min(2 * s, max_epochs):
      return None
    return s

  @property
  def steps_to_target(self) -> int | None:
    """Optimizer steps until the target accuracy (``epochs_to_target`` times
    ``steps_per_epoch``)."""
    if self.epochs_to_target is None:
      return None
    return self.epochs_to_target * self.steps_per_epoch


def steps_per_epoch(n_train: int, config: TrainConfig) -> int:
  """Optimizer steps in one epoch over ``n_train`` examples."""
  if config.drop_last:
    return n_train // config.batch_size
  return -(-n_train // config.batch_size)


def epoch_batches(
  key: jax.Array, n_train: int, config: TrainConfig
) -> tuple[jax.Array, jax.Array]:
  """One epoch's minibatches: example indices and 0/1 weights, both
  ``(steps_per_epoch, batch_size)``.

  A random permutation of the training set cut into batches; without
  ``drop_last`` the last batch is padded with example 0 at weight 0, so its
  loss is the mean over its real examples.
  """
  n_batches = steps_per_epoch(n_train, config)
  padded = n_batches * config.batch_size
  perm = jax.random.permutation(key, n_train)
  perm = jnp.pad(perm, (0, max(padded - n_train, 0)))[:padded]
  weights = (jnp.arange(padded) < n_train).astype(jnp.float32)
  shape = (n_batches, config.batch_size)
  return perm.reshape(shape), weights.reshape(shape)


def l2_penalty(params: Any) -> jax.Array:
  """``0.5 · Σ‖W‖²`` over the kernels (weight matrices) of ``params``."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return 0.5 * sum(
    (jnp.sum(w**2) for path, w in leaves if is_kernel(path)), jnp.zeros([])
  )


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy of StableMax (Prieto et al. 2025, "Grokking at the edge of
  numerical stability"): ``s(x) = x + 1`` for ``x >= 0``, ``1 / (1 - x)``
  below, ``p_i = s(x_i) / Σ_j s(x_j)``; per example ``-log p_label``.

  >>> import jax.numpy as jnp
  >>> float(stablemax_cross_entropy(jnp.array([[1.0, -1.0]]), jnp.array([0]))[0])
  0.2231...
  """
  s = jnp.where(logits >= 0, logits + 1.0, 1.0 / (1.0 - jnp.minimum(logits, 0.0)))
  chosen = jnp.take_along_axis(s, labels[..., None], axis=-1)[..., 0]
  return jnp.log(jnp.sum(s, axis=-1)) - jnp.log(chosen)


def loss_and_accuracy(
  outputs: jax.Array,
  labels: jax.Array,
  num_classes: int,
  loss: LossKind,
  weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Mean data loss and accuracy of a batch.

  ``num_classes == 0`` is a sign task: ``outputs`` and ``labels`` are ±1
  scalars per example and a prediction is right when their signs agree.
  ``weights`` (0/1 per example) restricts both means to the examples it marks.
  """
  if num_classes == 0:
    if loss != "mse":
      raise ValueError("a ±1 (sign) task needs loss='mse'")
    value, correct = (outputs - labels) ** 2, outputs * labels > 0
  else:
    correct = jnp.argmax(outputs, axis=-1) == labels
    if loss == "cross_entropy":
      value = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
    elif loss == "stablemax_cross_entropy":
      value = stablemax_cross_entropy(outputs, labels)
    else:
      value = optax.squared_error(outputs, jax.nn.one_hot(labels, num_classes))
      value = value.sum(axis=-1) / num_classes
  if weights is None:
    return jnp.mean(value), jnp.mean(correct)
  total = jnp.sum(weights)
  return jnp.sum(weights * value) / total, jnp.sum(weights * correct) / total


def make_epoch_fn(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  data: Dataset,
  config: TrainConfig,
) -> tuple[EpochFn, Any]:
  """The (unjitted) epoch function and the model's initial parameters."""
  body, params, consts = _epoch_body(model, optimizer, data, config)

  def epoch(
    params: Any, opt_state: Any, key: jax.Array, index: jax.Array
  ) -> tuple[Any, Any, Metrics]:
    return body(params, opt_state, key, index, consts)

  return epoch, params


def _epoch_body(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  data: Dataset,
  config: TrainConfig,
) -> tuple[Callable[..., tuple[Any, Any, Metrics]], Any, Any]:
  """``epoch(params, opt_state, key, index, consts)``, the initial params,
  and ``consts``: the data arrays and the model's non-parameter state, as
  arguments so seeds (different splits and models) can be ``vmap``-ped."""
  graphdef, params, *rest = nnx.split(model, nnx.Param, ...)
  consts = (rest, data.x_train, data.y_train, data.x_test, data.y_test)
  n_train = data.x_train.shape[0]
  n_batches = steps_per_epoch(n_train, config)
  if n_batches == 0:
    raise ValueError(
      f"batch_size {config.batch_size} exceeds the training set "
      f"({data.x_train.shape[0]} examples)"
    )

  def epoch(
    params: Any, opt_state: Any, key: jax.Array, index: jax.Array, consts: Any
  ) -> tuple[Any, Any, Metrics]:
    rest, x_train, y_train, x_test, y_test = consts

    def forward(params: Any, x: jax.Array) -> jax.Array:
      return nnx.merge(graphdef, params, *rest)(x)

    def objective(
      params: Any, x: jax.Array, y: jax.Array, weights: jax.Array | None = None
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
      metrics = loss_and_accuracy(
        forward(params, x), y, data.num_classes, config.loss, weights
      )
      return metrics[0] + config.l2 * l2_penalty(params), metrics

    def step(
      carry: tuple[Any, Any], batch: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[Any, Any], tuple[jax.Array, jax.Array]]:
      params, opt_state = carry
      index, weights = batch
      x, y = x_train[index], y_train[index]
      grads, metrics = jax.grad(objective, has_aux=True)(
        params, x, y, None if config.drop_last else weights
      )
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), metrics

    def gradient_spectrum(params: Any) -> jax.Array:
      head = slice(0, config.batch_size)
      grads = jax.grad(objective, has_aux=True)(params, x_train[head], y_train[head])[0]
      kernel = [
        g
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if path_keys(path) == config.spectrum_of
      ]
      if len(kernel) != 1:
        raise ValueError(f"spectrum_of={config.spectrum_of} names no parameter")
      info: Any = spectrum(kernel[0])
      return info.singular_values

    batches, weights = epoch_batches(jax.random.fold_in(key, index), n_train, config)
    (params, opt_state), (losses, accs) = jax.lax.scan(
      step, (params, opt_state), (batches, weights)
    )
    # Each batch's metrics weighted by its number of examples.
    counts = weights.sum(axis=-1) / weights.sum()
    test_loss, test_acc = loss_and_accuracy(
      forward(params, x_test), y_test, data.num_classes, config.loss
    )
    if config.train_metrics == "full":
      train_loss, train_acc = loss_and_accuracy(
        forward(params, x_train), y_train, data.num_classes, config.loss
      )
    else:
      train_loss, train_acc = (losses * counts).sum(), (accs * counts).sum()
    metrics = {
      "train_loss": train_loss,
      "train_acc": train_acc,
      "test_loss": test_loss,
      "test_acc": test_acc,
    }
    if config.spectrum_of is not None:
      metrics["grad_spectrum"] = gradient_spectrum(params)
    return params, opt_state, metrics

  return epoch, params, consts


def egd_enabled(opt_state: Any) -> bool | None:
  """Whether the EGD transforms in ``opt_state`` are on; None if there are none."""
  flags = [bool(flag) for _, flag in optax.tree.get_all_with_path(opt_state, "enabled")]
  return all(flags) if flags else None


def disable_egd(opt_state: Any) -> Any:
  """``opt_state`` with every EGD ``enabled`` flag off (same tree and dtypes)."""
  return optax.tree.set(opt_state, enabled=jnp.asarray(False))


@dataclasses.dataclass
class Run:
  """Mutable state of one training run, so it can be checkpointed and resumed."""

  params: Any
  opt_state: Any
  result: RunResult


def start(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  data: Dataset,
  config: TrainConfig,
) -> tuple[Callable[..., Any], Run]:
  """Compile the epoch function and set up a fresh :class:`Run`.

  The compiled function also runs one throwaway warm-up epoch (its outputs are
  discarded), so first-call costs stay out of the timed epochs too; both are
  counted in ``compile_seconds``.
  """
  epoch_fn, params = make_epoch_fn(model, optimizer, data, config)
  opt_state = optimizer.init(params)
  t0 = time.perf_counter()
  args = (params, opt_state, jax.random.key(0), jnp.zeros([], jnp.int32))
  compiled = jax.jit(epoch_fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  result = RunResult(
    History(),
    compile_seconds=time.perf_counter() - t0,
    steps_per_epoch=steps_per_epoch(data.x_train.shape[0], config),
  )
  return compiled, Run(params, opt_state, result)


def finished(result: RunResult, config: TrainConfig) -> bool:
  """Whether a run stops after its recorded epochs (``max_epochs``, or the
  target by ``config.stop_rule`` when ``config.stop_at_target``)."""
  epochs = result.history.epochs
  if epochs >= config.max_epochs:
    return True
  if not config.stop_at_target:
    return False
  if config.stop_rule == "first":
    return result.epochs_to_target is not None
  return result.streak_start is not None and epochs >= 2 * result.streak_start


def train(
  compiled: Callable[..., Any],
  run: Run,
  key: jax.Array,
  config: TrainConfig,
  on_epoch: Callable[[Run], None] | None = None,
) -> Run:
  """Run epochs from ``run.result.history.epochs`` until the stop rule.

  ``key`` seeds the per-epoch shuffles (epoch ``i`` uses ``fold_in(key, i)``),
  so a resumed run repeats an uninterrupted one. ``on_epoch`` is called after
  every epoch with the updated run (progress bars, checkpoints).
  """
  result = run.result
  while not finished(result, config):
    t0 = time.perf_counter()
    run.params, run.opt_state, metrics = compiled(
      run.params, run.opt_state, key, jnp.asarray(result.history.epochs, jnp.int32)
    )
    metrics = jax.device_get(metrics)
    seconds = time.perf_counter() - t0
    if _after_epoch(result, metrics, seconds, egd_enabled(run.opt_state), config):
      run.opt_state = disable_egd(run.opt_state)
    if on_epoch is not None:
      on_epoch(run)
  return run


def _after_epoch(
  result: RunResult,
  metrics: dict[str, Any],
  seconds: float,
  egd_on: bool | None,
  config: TrainConfig,
) -> bool:
  """Record one epoch in ``result``: its curves, the target epoch, and the
  epoch EGD goes off; True when the caller must switch EGD off now."""
  history = result.history
  _record(history, metrics, seconds, egd_on)
  at_target = metrics["test_acc"] >= config.target_accuracy
  if result.epochs_to_target is None and at_target:
    result.epochs_to_target = history.epochs
    result.seconds_to_target = sum(history.seconds)
  if not at_target:
    result.fell_back = result.fell_back or result.epochs_to_target is not None
    result.streak_start = None
  elif result.streak_start is None:
    result.streak_start = history.epochs
  if (
    config.egd_off_at is not None
    and result.egd_off_epoch is None
    and metrics["test_acc"] >= config.egd_off_at
    and egd_on
  ):
    result.egd_off_epoch = history.epochs
    return True
  return False


def _record(
  history: History, metrics: dict[str, Any], seconds: float, egd_on: bool | None
) -> None:
  for name in METRIC_NAMES:
    getattr(history, name).append(float(metrics[name]))
  if "grad_spectrum" in metrics:
    history.grad_spectrum.append([float(v) for v in metrics["grad_spectrum"]])
  history.seconds.append(seconds)
  history.egd_enabled.append(bool(egd_on))


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[i], tree)


def start_vectorized(
  models: list[nnx.Module],
  optimizers: list[optax.GradientTransformation],
  datas: list[Dataset],
  config: TrainConfig,
) -> tuple[Callable[..., Any], list[Run], Any]:
  """:func:`start` for several seeds of one configuration, in one program.

  ``models``, ``optimizers`` and ``datas`` are one per seed (same
  architecture, optimizer and data shapes; different initial weights,
  optimizer seeds and data splits). Returns the compiled ``jax.vmap`` of the
  epoch over seeds, a :class:`Run` per seed (unstacked initial state), and
  the stacked per-seed constants (data and model state) the compiled
  function takes as its last argument. ``optimizers[0].update`` serves every
  seed: an optimizer's seed lives in its state (``egd``'s ``key``).
  """
  bodies = [
    _epoch_body(m, o, d, config)
    for m, o, d in zip(models, optimizers, datas, strict=True)
  ]
  body = bodies[0][0]
  params = _stack([b[1] for b in bodies])
  consts = _stack([b[2] for b in bodies])
  opt_state = _stack([o.init(b[1]) for o, b in zip(optimizers, bodies, strict=True)])
  t0 = time.perf_counter()
  keys = jax.random.split(jax.random.key(0), len(models))
  args = (params, opt_state, keys, jnp.zeros([], jnp.int32), consts)
  compiled = jax.jit(jax.vmap(body, in_axes=(0, 0, 0, None, 0))).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - t0
  runs = [
    Run(
      _unstack(params, i),
      _unstack(opt_state, i),
      RunResult(
        History(),
        compile_seconds=seconds,
        steps_per_epoch=steps_per_epoch(datas[0].x_train.shape[0], config),
      ),
    )
    for i in range(len(models))
  ]
  return compiled, runs, consts


def _set_egd_off(opt_state: Any, seed_index: int) -> Any:
  """Stacked ``opt_state`` with EGD switched off for seed ``seed_index`` only."""
  flags = optax.tree.get_all_with_path(opt_state, "enabled")
  if not flags:
    return opt_state
  enabled = jnp.asarray(flags[0][1]).at[seed_index].set(False)
  return optax.tree.set(opt_state, enabled=enabled)


def train_vectorized(
  compiled: Callable[..., Any],
  runs: list[Run],
  keys: list[jax.Array],
  consts: Any,
  config: TrainConfig,
  on_epoch: Callable[[list[Run]], None] | None = None,
) -> list[Run]:
  """:func:`train` for the seeds of :func:`start_vectorized`, in lockstep.

  Every epoch runs all seeds in one call; each seed's curves, stop rule
  (target accuracy, ``max_epochs``) and EGD switch-off are its own, as in
  :func:`train`, so its history and epochs to target equal a sequential
  run's. A seed that has stopped is still computed (the program is one) but
  no longer recorded; its ``params``/``opt_state`` are those at its stop.
  Each epoch's recorded seconds are the wall time of the whole vectorized
  epoch. Fresh runs only (no resume).
  """
  n = len(runs)
  params = _stack([r.params for r in runs])
  opt_state = _stack([r.opt_state for r in runs])
  key = jnp.stack(keys)

  def still_going(i: int) -> bool:
    return not finished(runs[i].result, config)

  active = [still_going(i) for i in range(n)]
  epoch = 0
  while any(active):
    t0 = time.perf_counter()
    params, opt_state, metrics = compiled(
      params, opt_state, key, jnp.asarray(epoch, jnp.int32), consts
    )
    metrics = jax.device_get(metrics)
    seconds = time.perf_counter() - t0
    flags = optax.tree.get_all_with_path(opt_state, "enabled")
    enabled = jax.device_get(flags[0][1]) if flags else None
    epoch += 1
    for i in range(n):
      if not active[i]:
        continue
      mine = {k: v[i] for k, v in metrics.items()}
      egd_on = None if enabled is None else bool(enabled[i])
      if _after_epoch(runs[i].result, mine, seconds, egd_on, config):
        opt_state = _set_egd_off(opt_state, i)
      active[i] = still_going(i)
      if not active[i]:
        runs[i].params, runs[i].opt_state = _unstack(params, i), _unstack(opt_state, i)
    if on_epoch is not None:
      on_epoch(runs)
  return runs
