"""``--preset grokfast``: Grokfast's data, model, batching and warmup (no training)."""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import grok, models, optimizers, tasks, train

P = 97


def test_data_is_grokfasts_multiplication():
  data = tasks.grokfast_multiplication(jax.random.key(0))
  x = np.concatenate([data.x_train, data.x_test])
  y = np.concatenate([data.y_train, data.y_test])
  assert len(x) == 9312 and len(data.x_train) == len(data.x_test) == 4656
  # x op y =, with '=' = p and op = p + 1; y != 0; the label is x·y mod p.
  assert (x[:, 1] == P + 1).all() and (x[:, 3] == P).all()
  assert x[:, 2].min() == 1 and x[:, 0].min() == 0 and x[:, [0, 2]].max() == P - 1
  np.testing.assert_array_equal(y, x[:, 0] * x[:, 2] % P)
  # Every pair exactly once, split in disjoint halves.
  assert len({(a, b) for a, _, b, _ in x.tolist()}) == 9312
  assert data.vocab_size == data.num_classes == P + 2
  other = tasks.grokfast_multiplication(jax.random.key(1))
  assert not np.array_equal(other.x_train, data.x_train)


def _reference_forward(model: models.GrokfastDecoder, tokens: jax.Array) -> jax.Array:
  """Grokfast's Decoder.forward written out on the model's parameters."""

  def ln(m: nnx.LayerNorm, x: jax.Array) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * m.scale[...] + m.bias[...]

  def linear(m: nnx.Linear, x: jax.Array) -> jax.Array:
    y = x @ m.kernel[...]
    return y if m.bias is None else y + m.bias[...]

  length = tokens.shape[-1]
  h = model.token_embed.embedding[...][tokens] + model.pos_embed.embedding[...][
    :length
  ]
  causal = np.tril(np.ones((length, length), bool))
  for block in model.blocks:
    x = ln(block.ln1, h)
    q, k, v = np.split(linear(block.attn.qkv, x), 3, axis=-1)
    heads = []
    for i in range(4):
      s = slice(32 * i, 32 * (i + 1))
      scores = q[..., s] @ jnp.swapaxes(k[..., s], -1, -2) / math.sqrt(32)
      weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
      heads.append(weights @ v[..., s])
    x = x + linear(block.attn.out, jnp.concatenate(heads, -1))
    u = linear(block.mlp_in, ln(block.ln2, x))
    gelu = 0.5 * u * (1 + jax.scipy.special.erf(u / math.sqrt(2)))
    h = x + linear(block.mlp_out, gelu)
  return linear(model.head, ln(model.ln_final, h))[..., -1, :]


def test_model_layout_and_readout():
  model = models.GrokfastDecoder(P + 2, rngs=nnx.Rngs(params=jax.random.key(3)))
  tokens = tasks.grokfast_multiplication(jax.random.key(0)).x_train[:64]
  got = model(tokens)
  assert got.shape == (64, P + 2)
  np.testing.assert_allclose(got, _reference_forward(model, tokens), atol=2e-4)


def test_model_init_is_pytorchs_default():
  model = models.GrokfastDecoder(P + 2, rngs=nnx.Rngs(params=jax.random.key(0)))
  shapes = jax.tree.map(jnp.shape, nnx.state(model, nnx.Param))
  assert shapes["token_embed"]["embedding"] == (P + 2, 128)
  assert shapes["pos_embed"]["embedding"] == (5, 128)
  assert shapes["head"] == {"kernel": (128, P + 2)}  # no bias
  assert len(model.blocks) == 2
  # Embeddings N(0, 1).
  for table in (model.token_embed.embedding[...], model.pos_embed.embedding[...]):
    assert abs(float(table.std()) - 1.0) < 0.1 and abs(float(table.mean())) < 0.1

  def uniform(w: jax.Array, bound: float) -> None:
    w = np.asarray(w)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.9 * bound
    # The sample std of n uniforms: relative spread about sqrt(0.2 / n).
    np.testing.assert_allclose(
      w.std(), bound / math.sqrt(3), rtol=4 * math.sqrt(0.2 / w.size)
    )

  for block in model.blocks:
    uniform(block.attn.qkv.kernel[...], math.sqrt(6 / (128 + 384)))  # Xavier
    assert not np.asarray(block.attn.qkv.bias[...]).any()
    uniform(block.attn.out.kernel[...], 1 / math.sqrt(128))
    assert not np.asarray(block.attn.out.bias[...]).any()
    uniform(block.mlp_in.kernel[...], 1 / math.sqrt(128))
    uniform(block.mlp_in.bias[...], 1 / math.sqrt(128))
    uniform(block.mlp_out.kernel[...], 1 / math.sqrt(512))
    uniform(block.mlp_out.bias[...], 1 / math.sqrt(512))
    for ln in (block.ln1, block.ln2):
      assert ln.epsilon == 1e-5
      np.testing.assert_array_equal(ln.scale[...], 1.0)
      np.testing.assert_array_equal(ln.bias[...], 0.0)
  uniform(model.head.kernel[...], 1 / math.sqrt(128))


def test_batches_keep_the_last_partial_batch():
  config = train.TrainConfig(batch_size=512, drop_last=False)
  assert train.steps_per_epoch(4656, config) == 10
  index, weights = train.epoch_batches(jax.random.key(0), 4656, config)
  assert index.shape == weights.shape == (10, 512)
  np.testing.assert_array_equal(weights[:9], 1.0)
  assert float(weights[9].sum()) == 4656 - 9 * 512
  np.testing.assert_array_equal(np.sort(index[weights > 0]), np.arange(4656))
  dropped = train.TrainConfig(batch_size=512)
  assert train.steps_per_epoch(4656, dropped) == 9
  index, weights = train.epoch_batches(jax.random.key(0), 4656, dropped)
  assert index.shape == (9, 512) and bool((weights == 1).all())


def test_partial_batch_loss_is_the_mean_of_its_examples():
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((8, 5)), jnp.float32)
  labels = jnp.arange(8) % 5
  weights = jnp.asarray([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)
  loss, acc = train.loss_and_accuracy(logits, labels, 5, "cross_entropy", weights)
  ref, ref_acc = train.loss_and_accuracy(logits[:3], labels[:3], 5, "cross_entropy")
  np.testing.assert_allclose(loss, ref, rtol=1e-6)
  np.testing.assert_allclose(acc, ref_acc)


def test_an_epoch_is_ten_steps():
  data = tasks.grokfast_multiplication(jax.random.key(0))
  model = models.GrokfastDecoder(
    P + 2, d_model=8, num_heads=2, num_layers=1, rngs=nnx.Rngs(0)
  )
  config = train.TrainConfig(batch_size=512, drop_last=False, l2=0.0)
  epoch, params = train.make_epoch_fn(model, optax.adam(1e-3), data, config)
  state = optax.adam(1e-3).init(params)
  _, state, metrics = jax.jit(epoch)(params, state, jax.random.key(0), jnp.int32(0))
  assert int(state[0].count) == 10
  assert 0.0 <= float(metrics["test_acc"]) <= 1.0


def test_warmup_is_grokfasts():
  # LambdaLR(lambda update: 1 if update > 10 else update / 10): zero at step 0.
  schedule = optimizers.OptimizerConfig(warmup_steps=10).schedule(1e-3)
  for step, factor in [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (11, 1.0), (500, 1.0)]:
    np.testing.assert_allclose(schedule(step), 1e-3 * factor, rtol=1e-6)


def test_preset_resolves_to_grokfasts_setup():
  args = grok.resolve(grok.parse_args(["--preset", "grokfast"]))
  assert args.task == "grokfast_mul" and args.model == "grokfast"
  assert args.optimizers == [optimizers.GROKFAST_DEFAULT]
  assert (args.batch_size, args.drop_last, args.l2, args.warmup_steps) == (
    512,
    False,
    0.0,
    10,
  )
  assert (args.b1, args.b2, args.adam_lr, args.target_accuracy) == (
    0.9,
    0.98,
    1e-3,
    0.95,
  )
  assert (args.lr, args.momentum, args.weight_decay) == (0.03, 0.9, 0.1)  # egdm's
  config = grok.train_config(args)
  assert not config.drop_last
  data = grok.make_data(args, jax.random.key(0))
  model = grok.make_model(args, data, jax.random.key(1))
  assert isinstance(model, models.GrokfastDecoder)
  # Other tasks keep dropping the last partial batch.
  assert grok.resolve(grok.parse_args([])).drop_last


def test_adamw_decays_every_parameter():
  # Grokfast's torch.optim.AdamW(model.parameters(), weight_decay=...) decays
  # embeddings, biases and LayerNorm parameters too.
  model = models.GrokfastDecoder(
    P + 2, d_model=8, num_heads=2, num_layers=1, rngs=nnx.Rngs(0)
  )
  params = nnx.state(model, nnx.Param)
  config = optimizers.OptimizerConfig(adam_lr=0.1, adam_weight_decay=1.0)
  tx = optimizers.build("adamw", config, model.first_kernel)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  jax.tree.map(
    lambda u, p: np.testing.assert_allclose(u, -0.1 * p, rtol=1e-6), updates, params
  )
