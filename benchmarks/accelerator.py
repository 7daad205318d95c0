"""Polar methods and EGD steps on one accelerator: ``python -m benchmarks.accelerator``.

One command, made for one GPU (it runs anywhere JAX runs), that finishes
inside ``--budget-s`` seconds (default 420: under 8 minutes with start-up)
and writes ``accelerator.json`` and the printed report ``accelerator.txt``
into ``--out``. Sections, in this order (``--sections`` picks some):

1. ``transformer``: one training step of a GPT-2-small-sized Flax NNX
   transformer (``GPT``: 12 layers, d_model 768, 12 heads, vocab 50257,
   sequence 1024, layers stacked and scanned, bfloat16 compute, float32
   parameters; ``experiments.models.Transformer`` predicts from the last
   position only, so it is not a language model of this size) with AdamW,
   ``optax.contrib.muon``, ``optax_egd.egdm`` and
   ``optax.chain(optax.masked(optax_egd.egd(), kernels), optax.adamw(...))``
   (EGD and Muon on the 48 block kernels, AdamW on the rest), and
   ``egdm(precision="bfloat16")`` where ``polar`` takes a precision. The
   batch is the largest of 48, 32, 16, ... sequences whose forward and
   backward compile and run (as many tokens as fit). Timed: forward +
   backward alone, the optimizer update alone (on a fixed gradient) and the
   whole step; ``ratio_at_batch`` is step / AdamW's step, ``ratio_at_05M`` =
   (fwd+bwd × 524288 / tokens + update) over AdamW's, since the update does
   not grow with the batch. At most 45% of the budget.
2. ``demo``: :func:`experiments.demo.run` (``egd()`` with SGD on the paper's
   MLP, ``(a + b) mod 97``, to 95% test accuracy).
3. ``grokfast``: one seed of ``python -m experiments.grok --preset grokfast
   --max-epochs 100``.
4. ``polar``: every polar method (``optax_egd.METHODS``; ``rsvd`` at rank
   128) × matrix shape (sides 128 to 4096: squares, 1:4 and 4:1) × input
   dtype (float32, bfloat16); the matrix-product methods (and ``auto``) also
   at each matmul ``precision`` the installed ``polar`` takes. Median ms
   (compiled once, one warm-up call, interleaved timed rounds with
   ``block_until_ready``) and the relative Frobenius error against a float64
   NumPy SVD polar factor of the same (dtype-rounded) input, computed on the
   host, with the library's cutoff map. ``auto``, ``svd`` and
   ``polar_express_exact`` go first on every shape, the other methods get
   the time left. A combination whose predicted time
   (:mod:`benchmarks.cost_model`) exceeds ``--max-call-s`` is skipped, with
   a record saying so; so is a reference predicted to take more than half
   the time left (the row then has no error).

A global time guard: every section, shape, dtype and optimizer first checks
the time left and records ``"skipped: time budget"`` instead of running
over (the demo needs 30 s left, grokfast 60 s, an optimizer 1.2x what the
previous one took). ``--tiny`` uses tiny shapes and models (seconds on a
CPU; the test suite runs it).

Run on a device with::

    python -m benchmarks.accelerator --out $OUT/accel
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import json
import math
import pathlib
import sys
import tempfile
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _common, cost_model
from benchmarks.polar import reference_polar
import optax_egd

polar_module = importlib.import_module("optax_egd.polar")

# The default order: the step ratio first (the target), the polar
# table last (it takes whatever time is left, largest shapes last).
SECTIONS = ("transformer", "demo", "grokfast", "polar")
SKIPPED_BUDGET = "skipped: time budget"
METHODS: tuple[str, ...] = tuple(optax_egd.METHODS)
ACCEPTS_PRECISION = "precision" in inspect.signature(optax_egd.polar).parameters
PRECISIONS: tuple[str, ...] = tuple(getattr(polar_module, "PRECISIONS", ("float32",)))
MATMUL_METHODS = cost_model.MATMUL_METHODS
DTYPES = ("float32", "bfloat16")
RSVD_RANK = 128
TOKENS_REFERENCE = 524_288  # 0.5M tokens a step


def _shapes(sides: Sequence[int], largest: int) -> tuple[tuple[int, int], ...]:
  out: list[tuple[int, int]] = []
  for s in sides:
    out.append((s, s))
    if 4 * s <= largest:
      out += [(s, 4 * s), (4 * s, s)]
  return tuple(sorted(out, key=lambda sh: (sh[0] * sh[1], sh)))


SHAPES = _shapes((128, 256, 512, 1024, 2048, 4096), 4096)
TINY_SHAPES = ((8, 8), (8, 32))


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The transformer's size and the run's budgets per section (seconds)."""

  vocab: int
  seq: int
  d_model: int
  heads: int
  layers: int
  batches: tuple[int, ...]
  demo_p: int
  demo_max_epochs: int
  grokfast_args: tuple[str, ...]
  compute_dtype: str = "bfloat16"
  transformer_share: float = 0.45
  demo_needs_s: float = 0.0  # start the demo only with this much time left
  grokfast_needs_s: float = 0.0


FULL = Sizes(
  vocab=50257,
  seq=1024,
  d_model=768,
  heads=12,
  layers=12,
  batches=(48, 32, 16, 8, 4, 2, 1),
  demo_p=97,
  demo_max_epochs=2000,
  grokfast_args=("--max-epochs", "100"),
  demo_needs_s=30.0,
  grokfast_needs_s=60.0,
)
TINY = Sizes(
  vocab=64,
  seq=16,
  d_model=32,
  heads=2,
  layers=2,
  batches=(4, 2),
  demo_p=37,
  demo_max_epochs=1,
  grokfast_args=("--max-epochs", "1", "--p", "11", "--batch-size", "16"),
  compute_dtype="float32",
)


class Budget:
  """Seconds left of the run's budget (a global guard every section asks)."""

  def __init__(self, seconds: float) -> None:
    self.seconds = seconds
    self.start = time.perf_counter()

  def elapsed(self) -> float:
    """Seconds since the run started."""
    return time.perf_counter() - self.start

  def left(self) -> float:
    """Seconds left (negative when over)."""
    return self.seconds - self.elapsed()


# ── 1. Polar methods ─────────────────────────────────────────────────────────
def polar_variants(methods: Sequence[str]) -> list[tuple[str, str]]:
  """(method, precision) pairs: float32 for every method, and the other
  precisions for the matrix-product methods where ``polar`` takes them."""
  out = []
  for m in methods:
    out.append((m, "float32"))
    if ACCEPTS_PRECISION and (m in MATMUL_METHODS or m == "auto"):
      out += [(m, p) for p in PRECISIONS if p != "float32"]
  return out


def polar_call(
  method: str, precision: str, shape: tuple[int, ...]
) -> Callable[[jax.Array], jax.Array]:
  """``x ↦ polar(x, method, ...)`` with the options the method needs."""
  kwargs: dict[str, Any] = {}
  if method == "rsvd":
    kwargs.update(rank=min(RSVD_RANK, *shape[-2:]), key=jax.random.key(0))
  if precision != "float32":
    kwargs["precision"] = precision
  return lambda x: optax_egd.polar(x, method, **kwargs)


def predicted_call_s(method: str, precision: str, shape: tuple[int, ...]) -> float:
  """The cost model's predicted seconds of one call on an H200; for the
  methods it has no device model for (eigh, qdwh, rsvd), their counted FLOPs
  at the QR rate it assumes (10% of the float32 peak)."""
  device = cost_model.DEVICES["h200"]
  resolved = optax_egd.auto_method(shape, "cuda") if method == "auto" else method
  cost = cost_model.count(resolved, shape, precision)
  ms = cost_model.predicted_ms(cost, device, precision)
  if ms is None:
    rate = device.peak_tflops["float32"] * 1e12 * device.lapack_efficiency
    return cost.flops / rate
  return ms / 1e3


# The variants timed first, on every shape, before the others get the time
# left: what "auto" runs on each platform, the SVD, and the matmul iterations
# at every precision.
PRIORITY = ("auto", "svd", "polar_express_exact")


class _References:
  """Float64 polar factors computed on the host, cached, with a prediction of
  the next one's seconds (from the rate of the largest so far)."""

  def __init__(self) -> None:
    self.cache: dict[tuple[tuple[int, ...], str], np.ndarray] = {}
    self.rate: float | None = None  # m·n·min(m, n) per second

  def predicted_s(self, shape: tuple[int, ...]) -> float:
    """Predicted seconds of a new reference of ``shape`` (0 before the first)."""
    work = math.prod(shape) * min(shape)
    return 0.0 if self.rate is None else work / self.rate

  def get(
    self, shape: tuple[int, ...], dtype: str, host: np.ndarray
  ) -> tuple[np.ndarray, float]:
    """The reference of ``host`` and the seconds it took (0 when cached)."""
    key = (shape, dtype)
    if key in self.cache:
      return self.cache[key], 0.0
    t0 = time.perf_counter()
    ref, _, _ = reference_polar(host)
    seconds = max(time.perf_counter() - t0, 1e-9)
    rate = math.prod(shape) * min(shape) / seconds
    self.rate = rate if self.rate is None else min(self.rate, rate)
    self.cache[key] = ref
    return ref, seconds


def run_polar(
  shapes: Sequence[tuple[int, int]],
  methods: Sequence[str],
  budget: Budget,
  section_s: float,
  max_call_s: float,
  repeats: int,
  min_seconds: float,
  seed: int,
) -> list[dict[str, Any]]:
  """Time and error of every (shape, dtype, method, precision).

  Two passes over the shapes (smallest first): the ``PRIORITY`` methods
  first, then the others, so a budget that runs out cuts the least important
  combinations. Each combination is recorded: timed (``"ok"``), or skipped
  with the reason (time budget, predicted too slow, failed).
  """
  rows: list[dict[str, Any]] = []
  start = budget.elapsed()
  variants = polar_variants(methods)
  passes = [
    [v for v in variants if v[0] in PRIORITY],
    [v for v in variants if v[0] not in PRIORITY],
  ]
  inputs = {
    shape: np.random.default_rng([seed, *shape]).standard_normal(shape)
    for shape in shapes
  }
  refs = _References()
  over = lambda: budget.elapsed() - start > section_s or budget.left() <= 0
  for group in passes:
    for shape in shapes if group else ():
      for dtype in DTYPES:
        base = dict(shape=list(shape), dtype=dtype)
        if over():
          rows += [
            dict(base, method=m, precision=p, status=SKIPPED_BUDGET) for m, p in group
          ]
          continue
        x = jnp.asarray(inputs[shape], dtype)
        host = np.asarray(x.astype(jnp.float32))
        left = min(section_s - (budget.elapsed() - start), budget.left())
        ref, ref_s = (None, 0.0)
        if refs.predicted_s(shape) < 0.5 * left or (shape, dtype) in refs.cache:
          ref, ref_s = refs.get(shape, dtype, host)
        calls: dict[str, Callable[[], Any]] = {}
        compiled = {}
        for method, precision in group:
          key = f"{method}/{precision}"
          row: dict[str, Any] = dict(
            base,
            method=method,
            precision=precision,
            resolves_to=(optax_egd.auto_method(shape) if method == "auto" else method),
          )
          predicted = predicted_call_s(method, precision, shape)
          row["predicted_call_s_h200"] = predicted
          if predicted > max_call_s:
            rows.append(
              dict(
                row,
                status=f"skipped: predicted {predicted:.2g}"
                f" s a call > --max-call-s {max_call_s:g}",
              )
            )
            continue
          if over():
            rows.append(dict(row, status=SKIPPED_BUDGET))
            continue
          try:
            fn, compile_s = _common.compile_fn(polar_call(method, precision, shape), x)
          except Exception as error:  # noqa: BLE001 - recorded, not fatal
            rows.append(
              dict(
                row,
                status=f"failed: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}",
              )
            )
            continue
          calls[key] = functools.partial(fn, x)
          compiled[key] = (row, compile_s)
        if not calls:
          continue
        timings = _common.time_interleaved(
          calls, repeats=repeats, min_seconds=min_seconds, max_repeats=50
        )
        for key, (row, compile_s) in compiled.items():
          out = np.asarray(
            jax.block_until_ready(calls[key]()).astype(jnp.float32), np.float64
          )
          rel = (
            None
            if ref is None
            else float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
          )
          t = timings[key]
          rows.append(
            dict(
              row,
              status="ok",
              median_ms=t.median * 1e3,
              min_ms=t.min * 1e3,
              repeats=t.repeats,
              compile_s=compile_s,
              rel_err=rel,
              error_note=None
              if ref is not None
              else "no float64 reference: time budget",
              finite=bool(np.all(np.isfinite(out))),
              reference_s=ref_s,
            )
          )
          print(
            f"  polar {_shape(shape):>10} {dtype:>8} {key:>30} "
            f"{t.median * 1e3:9.3f} ms  err " + ("-" if rel is None else f"{rel:.1e}"),
            file=sys.stderr,
            flush=True,
          )
  return rows


def _shape(shape: Sequence[int]) -> str:
  return "×".join(map(str, shape))


# ── 2. The transformer step ──────────────────────────────────────────────────
class GPT(nnx.Module):
  """A GPT-2-style decoder: pre-LayerNorm blocks, fused QKV, GELU MLP of width
  4·d_model, learned positions, head tied to the token embedding.

  The blocks' parameters are stacked on a leading layer axis and applied
  with ``jax.lax.scan`` (one compiled block); every kernel is
  ``(layers, fan_in, fan_out)``: 768×2304, 768×768, 768×3072 and 3072×768 at
  GPT-2 small's size. Computes in bfloat16 with float32 parameters; returns
  float32 logits for every position.

  Example:
    >>> from flax import nnx
    >>> m = GPT(vocab=11, seq=4, d_model=8, heads=2, layers=2, rngs=nnx.Rngs(0))
    >>> m(jnp.zeros((3, 4), jnp.int32)).shape
    (3, 4, 11)
  """

  def __init__(
    self,
    vocab: int,
    seq: int,
    d_model: int,
    heads: int,
    layers: int,
    *,
    rngs: nnx.Rngs,
    compute_dtype: jnp.dtype = jnp.bfloat16,
  ) -> None:
    if d_model % heads:
      raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
    normal = nnx.initializers.normal(0.02)
    d, L = d_model, layers
    self.heads = heads
    self.compute_dtype = compute_dtype
    self.wte = nnx.Param(normal(rngs.params(), (vocab, d)))
    self.wpe = nnx.Param(normal(rngs.params(), (seq, d)))
    shapes = {"qkv": (d, 3 * d), "proj": (d, d), "fc": (d, 4 * d), "fc_out": (4 * d, d)}
    self.kernels = nnx.Dict(
      {
        k: nnx.Dict({"kernel": nnx.Param(normal(rngs.params(), (L, *s)))})
        for k, s in shapes.items()
      }
    )
    self.biases = nnx.Dict(
      {k: nnx.Param(jnp.zeros((L, s[1]))) for k, s in shapes.items()}
    )
    self.norms = nnx.Dict(
      {
        k: nnx.Param(jnp.full((L, d), v))
        for k, v in (
          ("ln1_scale", 1.0),
          ("ln1_bias", 0.0),
          ("ln2_scale", 1.0),
          ("ln2_bias", 0.0),
        )
      }
    )
    self.lnf = nnx.Param(jnp.stack([jnp.ones(d), jnp.zeros(d)]))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    bf = self.compute_dtype
    _, length = tokens.shape
    wte = self.wte[...].astype(bf)
    h = wte[tokens] + self.wpe[...][:length].astype(bf)
    stacked = dict(
      **{k: v["kernel"][...].astype(bf) for k, v in self.kernels.items()},
      **{f"{k}_b": v[...].astype(bf) for k, v in self.biases.items()},
      **{k: v[...].astype(bf) for k, v in self.norms.items()},
    )
    heads = self.heads

    def norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
      x32 = x.astype(jnp.float32)
      mean = x32.mean(-1, keepdims=True)
      var = jnp.square(x32 - mean).mean(-1, keepdims=True)
      return ((x32 - mean) * jax.lax.rsqrt(var + 1e-5)).astype(bf) * scale + bias

    def block(h: jax.Array, p: dict[str, jax.Array]) -> tuple[jax.Array, None]:
      b, t, d = h.shape
      x = norm(h, p["ln1_scale"], p["ln1_bias"])
      qkv = x @ p["qkv"] + p["qkv_b"]
      q, k, v = (a.reshape(b, t, heads, d // heads) for a in jnp.split(qkv, 3, axis=-1))
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
      h = h + y.reshape(b, t, d) @ p["proj"] + p["proj_b"]
      x = norm(h, p["ln2_scale"], p["ln2_bias"])
      x = jax.nn.gelu(x @ p["fc"] + p["fc_b"])
      return h + x @ p["fc_out"] + p["fc_out_b"], None

    h, _ = jax.lax.scan(block, h, stacked)
    lnf = self.lnf[...].astype(bf)
    h = norm(h, lnf[0], lnf[1])
    return jnp.einsum("btd,vd->btv", h, wte, preferred_element_type=jnp.float32)


def is_block_kernel(path: tuple[Any, ...]) -> bool:
  """Whether a parameter path names one of the stacked block kernels."""
  return "kernel" in jax.tree_util.keystr(path)


def optimizers(
  accepts_precision: bool = ACCEPTS_PRECISION,
) -> dict[str, Callable[[], optax.GradientTransformation]]:
  """The transformer section's optimizers, by name.

  EGD and Muon act on the stacked block kernels (the layer axis a batch);
  AdamW takes the embeddings, biases and norms. ``egdm-bf16`` is ``egdm``
  with bfloat16 matrix products (only where ``polar`` takes ``precision``).
  """
  egd_dims = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, p: (
      optax_egd.DimensionNumbers(-2, -1) if is_block_kernel(path) else None
    ),
    params,
  )
  muon_dims = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, p: (
      optax.contrib.MuonDimensionNumbers(1, 2) if is_block_kernel(path) else None
    ),
    params,
  )
  mask = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: is_block_kernel(path), params
  )
  out: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adamw": lambda: optax.adamw(3e-4, weight_decay=0.1),
    "muon": lambda: optax.contrib.muon(
      0.02, adam_learning_rate=3e-4, muon_weight_dimension_numbers=muon_dims
    ),
    "egdm": lambda: optax_egd.egdm(
      0.02, adam_learning_rate=3e-4, dimension_numbers=egd_dims
    ),
    "chain(egd,adamw)": lambda: optax.chain(
      optax.masked(optax_egd.egd(), mask), optax.adamw(3e-4, weight_decay=0.1)
    ),
  }
  if accepts_precision:
    out["egdm-bf16"] = lambda: optax_egd.egdm(
      0.02, adam_learning_rate=3e-4, dimension_numbers=egd_dims, precision="bfloat16"
    )
  return out


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return any(
    s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")
  )


def run_transformer(
  sizes: Sizes,
  names: Sequence[str],
  budget: Budget,
  section_s: float,
  repeats: int,
  min_seconds: float,
  seed: int,
) -> dict[str, Any]:
  """Step, update and forward+backward times of every optimizer."""
  start = budget.elapsed()
  model = GPT(
    sizes.vocab,
    sizes.seq,
    sizes.d_model,
    sizes.heads,
    sizes.layers,
    rngs=nnx.Rngs(seed),
    compute_dtype=jnp.dtype(sizes.compute_dtype),
  )
  graphdef, params = nnx.split(model, nnx.Param)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grad_fn = jax.grad(loss)
  builders = optimizers()
  record: dict[str, Any] = dict(
    model=dataclasses.asdict(sizes) | {"params": n_params},
    model_note="GPT (benchmarks.accelerator): stacked, scanned blocks; "
    "bfloat16 compute, float32 parameters and optimizer state",
    rows=[],
    batch=None,
    tokens=None,
    batch_attempts=[],
  )
  key = jax.random.key(seed)
  fwd_bwd = None
  for batch in sizes.batches:
    if budget.elapsed() - start > section_s or budget.left() <= 0:
      break
    x = jax.random.randint(key, (batch, sizes.seq), 0, sizes.vocab)
    y = jnp.roll(x, -1, axis=1)
    try:
      fn, compile_s = _common.compile_fn(grad_fn, params, x, y)
      jax.block_until_ready(fn(params, x, y))
    except Exception as error:  # noqa: BLE001 - too big: try a smaller batch
      if not _out_of_memory(error):
        raise
      record["batch_attempts"].append(dict(batch=batch, status="out of memory"))
      continue
    record["batch_attempts"].append(dict(batch=batch, status="ok"))
    fwd_bwd = (fn, compile_s, x, y, batch)
    break
  if fwd_bwd is None:
    record["status"] = (
      SKIPPED_BUDGET
      if budget.left() <= 0 or (budget.elapsed() - start > section_s)
      else "no batch fits"
    )
    return record
  fn, compile_s, x, y, batch = fwd_bwd
  tokens = batch * sizes.seq
  record.update(batch=batch, tokens=tokens, fwd_bwd_compile_s=compile_s)
  grads = fn(params, x, y)
  calls: dict[str, Callable[[], Any]] = {"fwd_bwd": functools.partial(fn, params, x, y)}
  done = []
  last_cost = 0.0  # seconds the previous optimizer's compiles took
  for name in names:
    left = min(section_s - (budget.elapsed() - start), budget.left())
    if left <= 1.2 * last_cost or left <= 0:
      record["rows"].append(dict(optimizer=name, status=SKIPPED_BUDGET))
      continue
    t_opt = time.perf_counter()
    tx = builders[name]()

    def step(
      params: Any,
      state: Any,
      x: jax.Array,
      y: jax.Array,
      tx: optax.GradientTransformation = tx,
    ) -> tuple[Any, Any]:
      g = grad_fn(params, x, y)
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state

    try:
      state = tx.init(params)
      step_fn, step_compile = _common.compile_fn(step, params, state, x, y)
      update_fn, _ = _common.compile_fn(tx.update, grads, state, params)
    except Exception as error:  # noqa: BLE001 - recorded, not fatal
      record["rows"].append(
        dict(
          optimizer=name,
          status=f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
        )
      )
      continue
    calls[f"step/{name}"] = functools.partial(step_fn, params, state, x, y)
    calls[f"update/{name}"] = functools.partial(update_fn, grads, state, params)
    done.append((name, step_compile))
    last_cost = time.perf_counter() - t_opt
    print(f"  transformer: compiled {name}", file=sys.stderr, flush=True)
  timings = _common.time_interleaved(
    calls, repeats=repeats, min_seconds=min_seconds, max_repeats=100
  )
  fb = timings["fwd_bwd"].median
  record["fwd_bwd_ms"] = fb * 1e3
  scale = TOKENS_REFERENCE / tokens
  for name, step_compile in done:
    s, u = timings[f"step/{name}"], timings[f"update/{name}"]
    record["rows"].append(
      dict(
        optimizer=name,
        status="ok",
        step_ms=s.median * 1e3,
        step_min_ms=s.min * 1e3,
        update_ms=u.median * 1e3,
        update_min_ms=u.min * 1e3,
        repeats=s.repeats,
        step_compile_s=step_compile,
        step_at_05M_ms=(fb * scale + u.median) * 1e3,
      )
    )
  adam = next(
    (r for r in record["rows"] if r["optimizer"] == "adamw" and r["status"] == "ok"),
    None,
  )
  for r in record["rows"]:
    if adam is not None and r["status"] == "ok":
      r["ratio_at_batch"] = r["step_ms"] / adam["step_ms"]
      r["ratio_at_05M"] = r["step_at_05M_ms"] / adam["step_at_05M_ms"]
  record["status"] = "ok"
  return record


# ── 3./4. The demo and one grokfast seed ─────────────────────────────────────
def run_demo(sizes: Sizes) -> dict[str, Any]:
  """:func:`experiments.demo.run` with ``egd()`` and SGD, seed 0."""
  from experiments import demo  # pylint: disable=import-outside-toplevel

  args = argparse.Namespace(p=sizes.demo_p, max_epochs=sizes.demo_max_epochs, lr=0.7)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    result = demo.run("EGD", optax.chain(optax_egd.egd(), optax.sgd(0.7)), args, 0)
  history = result.history
  return dict(
    status="ok",
    p=sizes.demo_p,
    max_epochs=sizes.demo_max_epochs,
    epochs_run=history.epochs,
    epochs_to_target=result.epochs_to_target,
    seconds_to_target=result.seconds_to_target,
    ms_per_epoch=1e3 * sum(history.seconds) / max(history.epochs, 1),
    compile_s=result.compile_seconds,
    final_test_acc=float(history.test_acc[-1]),
    printed=printed.getvalue(),
  )


def run_grokfast(sizes: Sizes) -> dict[str, Any]:
  """One seed of ``python -m experiments.grok --preset grokfast``."""
  from experiments import grok  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "grokfast"
    argv = [
      "--preset",
      "grokfast",
      "--seeds",
      "1",
      "--no-progress",
      "--checkpoint-every",
      "0",
      "--out",
      str(out),
      *sizes.grokfast_args,
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      grok.main(argv)
    results = json.loads((out / "results.json").read_text())
  run = results["runs"][0]
  return dict(
    status="ok",
    argv=argv,
    optimizer=run["optimizer"],
    seed=run["seed"],
    epochs_to_target=run["epochs_to_target"],
    steps_to_target=run["steps_to_target"],
    seconds_to_target=run["seconds_to_target"],
    compile_s=run["compile_seconds"],
    epochs_run=run["epochs"],
    final=run["final"],
  )


# ── Driver ───────────────────────────────────────────────────────────────────
def print_report(payload: dict[str, Any]) -> None:
  """Markdown tables of what ran."""
  polar_rows = payload.get("polar") or []
  ok = [
    dict(r, shape=_shape(r["shape"])) for r in polar_rows if r.get("status") == "ok"
  ]
  skipped = [r for r in polar_rows if r.get("status") != "ok"]
  if ok:
    print(
      "Polar methods (median ms; relative error against a float64 SVD polar factor):\n"
    )
    print(
      _common.markdown_table(
        ok,
        [
          ("shape", "shape", "s"),
          ("dtype", "input", "s"),
          ("method", "method", "s"),
          ("precision", "precision", "s"),
          ("resolves_to", "resolves to", "s"),
          ("median_ms", "median ms", ".4g"),
          ("rel_err", "rel err", ".1e"),
          ("compile_s", "compile s", ".2f"),
        ],
      )
    )
  if skipped:
    print(
      f"\n{len(skipped)} polar combinations not run: "
      + "; ".join(sorted({r["status"] for r in skipped}))
    )
  tr = payload.get("transformer")
  if tr and tr.get("rows"):
    print(
      f"\nTransformer step ({tr['model']['params']:,} parameters, batch "
      f"{tr['batch']} × {tr['model']['seq']} = {tr['tokens']} tokens; "
      f"forward + backward {tr.get('fwd_bwd_ms', float('nan')):.4g} ms):\n"
    )
    print(
      _common.markdown_table(
        tr["rows"],
        [
          ("optimizer", "optimizer", "s"),
          ("status", "status", "s"),
          ("step_ms", "step ms", ".4g"),
          ("update_ms", "update ms", ".4g"),
          ("ratio_at_batch", "× AdamW (this batch)", ".3f"),
          ("ratio_at_05M", "× AdamW (0.5M tokens)", ".3f"),
        ],
      )
    )
  for name in ("demo", "grokfast"):
    rec = payload.get(name)
    if rec:
      shown = {k: v for k, v in rec.items() if k not in ("printed", "final", "argv")}
      print(f"\n{name}: {json.dumps(shown, default=str)}")


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point."""
  parser = _common.parser("accelerator", __doc__.split("\n")[0])
  parser.add_argument(
    "--tiny", action="store_true", help="tiny shapes and models (seconds on a CPU)"
  )
  parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
  parser.add_argument(
    "--optimizers",
    nargs="+",
    choices=list(optimizers(True)),
    help="transformer optimizers (default: all the installed library supports)",
  )
  parser.add_argument(
    "--budget-s",
    type=float,
    default=420.0,
    help="seconds the whole run may take (default 420)",
  )
  parser.add_argument(
    "--max-call-s",
    type=float,
    default=2.0,
    help="skip polar combinations predicted slower than this a call (default 2)",
  )
  parser.add_argument(
    "--repeats", type=int, default=3, help="timed rounds at least (default 3)"
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for name in ("budget_s", "max_call_s"):
    value = getattr(args, name)
    if not math.isfinite(value) or value <= 0:
      parser.error(
        f"argument --{name.replace('_', '-')}: must be a finite "
        f"number > 0, got {value:g}"
      )
  if args.repeats < 1:
    parser.error(f"argument --repeats: must be >= 1, got {args.repeats}")
  available = optimizers()
  names = args.optimizers or list(available)
  missing = [n for n in names if n not in available]
  if missing:
    parser.error(
      f"argument --optimizers: {', '.join(missing)} needs polar's "
      "precision argument, which the installed optax_egd lacks"
    )
  sizes = TINY if args.tiny else FULL
  shapes = TINY_SHAPES if args.tiny else SHAPES
  min_seconds = 0.0 if args.tiny else 0.3
  repeats = 1 if args.tiny else args.repeats

  out = _common.out_dir(args.out, "accelerator")
  stem = "accelerator_tiny" if args.tiny else "accelerator"
  budget = Budget(args.budget_s)
  with _common.tee_stdout(out / f"{stem}.txt"):
    info = _common.machine_info()
    info["device_kind"] = jax.devices()[0].device_kind
    _common.print_header("Polar methods and EGD steps on one accelerator", info)
    print(f"device kind: {info['device_kind']}; budget {args.budget_s:g} s\n")
    payload: dict[str, Any] = {s: None for s in SECTIONS}
    timing: dict[str, float] = {}
    for section in args.sections:
      t0 = budget.elapsed()
      if budget.left() <= 0:
        payload[section] = (
          [dict(status=SKIPPED_BUDGET)]
          if section == "polar"
          else dict(status=SKIPPED_BUDGET)
        )
        continue
      needs = {"demo": sizes.demo_needs_s, "grokfast": sizes.grokfast_needs_s}.get(
        section, 0.0
      )
      if budget.left() < needs:
        payload[section] = dict(
          status=SKIPPED_BUDGET, needs_s=needs, left_s=budget.left()
        )
        continue
      if section == "polar":
        payload[section] = run_polar(
          shapes,
          args.methods,
          budget,
          budget.left(),
          args.max_call_s,
          repeats,
          min_seconds,
          args.seed,
        )
      elif section == "transformer":
        payload[section] = run_transformer(
          sizes,
          names,
          budget,
          sizes.transformer_share * args.budget_s,
          repeats,
          min_seconds,
          args.seed,
        )
      elif section == "demo":
        payload[section] = run_demo(sizes)
      else:
        payload[section] = run_grokfast(sizes)
      timing[section] = budget.elapsed() - t0
      print(
        f"  section {section}: {timing[section]:.1f} s", file=sys.stderr, flush=True
      )
    print_report(payload)
    config = dict(
      vars(args),
      shapes=shapes,
      sizes=dataclasses.asdict(sizes),
      optimizers=names,
      precision_argument=ACCEPTS_PRECISION,
      auto={p: optax_egd.auto_method((768, 768), p) for p in ("cpu", "cuda", "tpu")},
    )
    summary = dict(
      section_seconds=timing,
      total_seconds=budget.elapsed(),
      measured_on=info["device_kind"],
    )
    path = _common.write_json(out / f"{stem}.json", info, config, payload, summary)
    print(f"\nwrote {path} and {stem}.txt (total {budget.elapsed():.1f} s)")


if __name__ == "__main__":
  main()
