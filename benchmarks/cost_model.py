"""Predicted accelerator cost per polar method: ``python -m benchmarks.cost_model``.

Nothing here runs on an accelerator: it counts. Per polar method × matrix
shape (× matmul precision for the matrix-product methods) it counts, from the
algorithms in :mod:`optax_egd.polar`, the floating-point operations (a
multiply-add is 2) and the bytes each kernel reads and writes, and
cross-checks the matrix-product methods against XLA's own count
(``jax.jit(f).lower(x).cost_analysis()``, which sees the unrolled iteration
but reports nothing for LAPACK/cuSOLVER custom calls). It then turns the
counts into a **predicted** per-step time and overhead against AdamW for

* GPT-2 small: 12 layers of 768×2304 (QKV), 768×768, 768×3072 and 3072×768
  kernels (EGD on those 48 matrices, stacked per shape as ``egd`` does;
  embeddings, biases and norms go to AdamW as in ``egdm``), 124.4 M
  parameters, model FLOPs 6·params·tokens at 524,288 tokens a step;
* the EGD paper's MLP (p = 97: kernels 194×512 and 512×97, batch 512).

Device figures (``DEVICES``; every one an assumption, stated in the output):
H200 SXM dense peaks 989 TFLOP/s bfloat16, 495 TF32, 67 float32 (CUDA cores:
jax runs ``Precision.HIGHEST`` float32 products there), HBM 4.8 TB/s. Matrix
products are predicted at 80% of the peak of their precision (bfloat16:
790 TFLOP/s), elementwise work at 80% of the bandwidth, and every kernel pays
a 5 µs launch/latency floor. The model's forward and backward run at 40%
MFU of the bfloat16 peak (GPT-2 small at 32k tokens: 62 ms, inside the
50-80 ms the issue quotes).

The SVD on GPU is cuSOLVER's Jacobi ``gesvdj``, which jax calls one matrix
after another above 32×32: its time is scaled from the published A100 figure
for one 400×400 complex128 matrix (207 ms) by (k/400)³ and by 1/8 for real
float32 (a complex multiply-add is 4 real ones; FP64 runs at half the FP32
rate), with no credit for the H200 (the Jacobi sweeps are latency-bound).
That is a central guess, uncertain by a factor of a few either way: the
overhead it predicts is large enough that the conclusion does not depend on
it. The QR that ``"svd"`` takes first on rectangular matrices runs at 10% of
the float32 peak. ``eigh``, ``qdwh`` and ``rsvd`` get FLOPs and bytes but no
device time (no published figure for their decompositions here).

Every time and ratio this writes is **predicted**, never measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import importlib
import inspect
import math
import sys
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp

from benchmarks import _common
import optax_egd

# The module (``optax_egd.polar`` the attribute is the function).
polar_module = importlib.import_module("optax_egd.polar")
schedules_module = importlib.import_module("optax_egd.polar_schedules")

Shape = tuple[int, ...]

# Every method but "auto", in the library's order (new methods appear here).
METHODS: tuple[str, ...] = tuple(m for m in optax_egd.METHODS if m != "auto")
# The matrix-product iterations: they take ``precision`` where the installed
# polar accepts it, and are cross-checked against XLA's cost analysis.
MATMUL_METHODS: tuple[str, ...] = tuple(
  m for m in ("newton_schulz", "polar_express", "polar_express_exact") if m in METHODS
)
PRECISIONS: tuple[str, ...] = tuple(getattr(polar_module, "PRECISIONS", ("float32",)))
ACCEPTS_PRECISION = "precision" in inspect.signature(optax_egd.polar).parameters
# Methods with a device time model (the others: counts only).
TIMED_METHODS: tuple[str, ...] = ("svd", *MATMUL_METHODS)

GPT2_LAYERS = 12
GPT2_KERNELS: tuple[Shape, ...] = ((768, 2304), (768, 768), (768, 3072), (3072, 768))
GPT2_VOCAB, GPT2_SEQ, GPT2_D = 50257, 1024, 768
GPT2_TOKENS = 524_288  # 512 sequences of 1024: "0.5M tokens a step".
MLP_KERNELS: tuple[Shape, ...] = ((194, 512), (512, 97))
MLP_BATCH = 512
MLP_HIDDEN_BIAS = 512
SHAPES: tuple[Shape, ...] = (
  *MLP_KERNELS,
  (128, 128),
  (512, 512),
  *GPT2_KERNELS,
  (1024, 1024),
  (1024, 4096),
  (4096, 1024),
  (4096, 4096),
)
SMALL_SHAPES: tuple[Shape, ...] = ((48, 48), (32, 96), (96, 32))

F32 = 4  # bytes
# Published cuSOLVER figure (A100, one 400×400 complex128 matrix), from the
# issue: gesvdj 207 ms (gesvd 47.6 ms, polar-based gesvdp 20 ms).
GESVDJ_REF_MS, GESVDJ_REF_N = 207.0, 400
GESVDJ_REAL_F32_FACTOR = 1 / 8
BATCHED_GESVDJ_MAX = 32  # jax batches gesvdj only up to 32×32.
GESVDJ_MAX = 1024  # jax uses gesvdj when both sides are at most this.
GESVD_REF_MS = 47.6  # the same published figure for gesvd


@dataclasses.dataclass(frozen=True)
class Device:
  """Assumed figures of one accelerator (all stated in the output)."""

  name: str
  peak_tflops: dict[str, float]  # dense matrix-product peak per precision
  hbm_tb_s: float
  matmul_efficiency: float = 0.8
  bandwidth_efficiency: float = 0.8
  kernel_latency_us: float = 5.0
  model_mfu: float = 0.4  # of the bfloat16 peak, for the model's fwd/bwd
  lapack_efficiency: float = 0.1  # QR (geqrf + orgqr), of the float32 peak

  def matmul_tflops(self, precision: str) -> float:
    """The predicted sustained rate of matrix products at ``precision``."""
    return self.peak_tflops[precision] * self.matmul_efficiency


DEVICES = {
  "h200": Device(
    "NVIDIA H200 SXM (spec-sheet figures, assumed)",
    {"bfloat16": 989.0, "tf32": 495.0, "float32": 67.0},
    4.8,
  ),
}


# ── Counting ─────────────────────────────────────────────────────────────────
@dataclasses.dataclass
class Cost:
  """FLOPs, bytes and kernels of one polar call on a stack of matrices."""

  flops: float = 0.0  # matrix products and elementwise work
  bytes: float = 0.0
  matmuls: int = 0  # batched matrix-product kernels (one per product)
  elementwise: int = 0  # other kernels (fused elementwise passes)
  matmul_flops: float = 0.0
  matmul_bytes: float = 0.0
  # Decompositions: (kind, rows, cols, how many): "svd", "qr", "eigh",
  # "cholesky", "trsm".
  decompositions: list[tuple[str, int, int, int]] = dataclasses.field(
    default_factory=list
  )
  steps: int = 0

  def mm(self, p: int, q: int, r: int, batch: int, operand_bytes: int) -> None:
    """A (p×q)·(q×r) product over ``batch`` matrices, float32 result."""
    flops = 2.0 * p * q * r * batch
    nbytes = batch * ((p * q + q * r) * operand_bytes + p * r * F32)
    self.flops += flops
    self.bytes += nbytes
    self.matmul_flops += flops
    self.matmul_bytes += nbytes
    self.matmuls += 1

  def ew(self, elements: float, reads: int, writes: int, flops_each: int = 1) -> None:
    """One fused elementwise pass over ``elements`` float32 values."""
    self.flops += flops_each * elements
    self.bytes += (reads + writes) * elements * F32
    self.elementwise += 1

  def lapack(self, kind: str, rows: int, cols: int, batch: int, flops: float) -> None:
    """A decomposition (custom call) of ``batch`` rows×cols matrices."""
    self.flops += flops * batch
    self.bytes += 2 * batch * rows * cols * F32
    self.decompositions.append((kind, rows, cols, batch))


def default_rtol(shape: Shape, precision: str) -> float:
  """The library's default cutoff for ``shape`` at ``precision``."""
  rtol = polar_module.default_rtol(shape, jnp.float32)
  extra = getattr(polar_module, "PRECISION_RTOL", {})
  return max(rtol, extra.get(precision, 0.0))


def matmul_steps(method: str, shape: Shape, precision: str = "float32") -> int:
  """Iteration steps of a matrix-product method on ``shape`` (default rtol).

  ``"newton_schulz"`` and ``"polar_express"``: their default ``ns_steps``;
  ``"polar_express_exact"``: the length of the schedule the library builds
  for the shape's lower bound (``polar_express_schedule`` of
  ``polar_express_lower``), or, if the installed library names them
  differently, the matrix products in its traced program divided by 3.

  Example:
    >>> matmul_steps("polar_express", (194, 512))
    8
  """
  if method in polar_module.DEFAULT_NS_STEPS:
    return polar_module.DEFAULT_NS_STEPS[method]
  schedule = getattr(polar_module, "polar_express_schedule", None)
  lower = getattr(polar_module, "polar_express_lower", None)
  if schedule is not None and lower is not None:
    return len(schedule(lower(shape, default_rtol(shape, precision))))
  return max(1, round(traced_matmuls(method, shape, precision) / 3))


def traced_matmuls(method: str, shape: Shape, precision: str = "float32") -> int:
  """``dot_general`` equations in the jaxpr of ``polar(x, method)``."""
  jaxpr = jax.make_jaxpr(polar_fn(method, precision))(
    jax.ShapeDtypeStruct(shape, jnp.float32)
  )
  count = 0

  def walk(j: Any) -> None:
    nonlocal count
    for eqn in j.eqns:
      if eqn.primitive.name == "dot_general":
        count += 1
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return count


def _wide(shape: Shape) -> tuple[int, int, int]:
  """(batch, m, n) with m ≤ n: the wide orientation every method uses."""
  *lead, a, b = shape
  return math.prod(lead), min(a, b), max(a, b)


def _svd_flops(rows: int, cols: int) -> float:
  """Golub-Reinsch thin SVD with U and V of a rows×cols matrix (rows ≥ cols):
  4·rows²·cols + 8·rows·cols² + 9·cols³ (Golub & Van Loan, Table 8.6.1)."""
  return 4.0 * rows**2 * cols + 8.0 * rows * cols**2 + 9.0 * cols**3


def _qr_flops(rows: int, cols: int) -> float:
  """Householder QR of rows×cols (rows ≥ cols) and its thin Q:
  2·(2·rows·cols² − 2·cols³/3)."""
  return 2.0 * (2.0 * rows * cols**2 - 2.0 * cols**3 / 3)


def _ns_like(
  cost: Cost, batch: int, m: int, n: int, steps: int, operand_bytes: int, exact: bool
) -> None:
  mn, mm_ = batch * m * n, batch * m * m
  if exact:
    # polar_express_exact: x xᵀ and its square first (they give the norm
    # bound and the first step), then per step after the first two more.
    cost.mm(m, n, m, batch, operand_bytes)
    cost.mm(m, m, m, batch, operand_bytes)
    cost.ew(mm_, 1, 0, 3)  # ‖(x xᵀ)²‖_F
    cost.ew(mn, 1, 1)  # x / U
    cost.ew(mm_, 2, 2)  # gram, gram² / U², U⁴
  else:
    cost.ew(mn, 1, 0, 2)  # ‖x‖_F
    cost.ew(mn, 1, 1)  # x / (1.01‖x‖_F)
  for i in range(steps):
    if not (exact and i == 0):
      cost.mm(m, n, m, batch, operand_bytes)  # gram = x xᵀ
      cost.mm(m, m, m, batch, operand_bytes)  # gram²
    cost.ew(mm_, 2, 1, 3)  # b·gram + c·gram²
    cost.mm(m, m, n, batch, operand_bytes)  # (…)·x
    cost.ew(mn, 2, 1, 2)  # a·x + (…)
  cost.steps = steps


def count(method: str, shape: Shape, precision: str = "float32") -> Cost:
  """FLOPs, bytes and kernels of ``polar(x, method)`` for a float32 ``x`` of
  ``shape`` (default options), counted from the algorithm.

  Includes the library's wrapper around every method (power-of-two scaling,
  NaN check, output cast: three elementwise passes).

  Example:
    >>> c = count("newton_schulz", (64, 256))
    >>> c.matmuls, c.steps
    (15, 5)
  """
  batch, m, n = _wide(shape)
  mn = batch * m * n
  cost = Cost()
  cost.ew(mn, 1, 0)  # max |x|
  cost.ew(mn, 1, 1, 2)  # ldexp scaling, isfinite
  operand = 2 if precision == "bfloat16" else F32
  if method in ("newton_schulz", "polar_express"):
    _ns_like(cost, batch, m, n, matmul_steps(method, shape), operand, False)
  elif method == "polar_express_exact":
    _ns_like(cost, batch, m, n, matmul_steps(method, shape, precision), operand, True)
  elif method == "svd":
    k = m
    if n >= polar_module.QR_ASPECT * m:
      cost.lapack("qr", n, m, batch, _qr_flops(n, m))
      cost.lapack("svd", k, k, batch, _svd_flops(k, k))
      cost.mm(k, k, k, batch, F32)
      cost.mm(k, k, n, batch, F32)
    else:
      cost.lapack("svd", n, m, batch, _svd_flops(n, m))
      cost.mm(m, m, n, batch, F32)
  elif method == "eigh":
    cost.mm(m, n, m, batch, F32)
    cost.lapack("eigh", m, m, batch, 9.0 * m**3)
    cost.mm(m, m, m, batch, F32)
    cost.mm(m, m, n, batch, F32)
  elif method == "qdwh":
    _count_qdwh(cost, batch, m, n, default_rtol(shape, "float32"))
  elif method == "rsvd":
    _count_rsvd(cost, batch, m, n)
  else:
    raise ValueError(f"no cost model for method {method!r}")
  cost.ew(mn, 1, 1)  # NaN → NaN, cast to the input's dtype
  return cost


def _count_qdwh(cost: Cost, batch: int, m: int, n: int, rtol: float) -> None:
  # jax.lax.linalg.qdwh on the tall n×m transpose with eps = rtol and
  # max_iterations = the library's schedule: QR-based steps while the
  # weight c > 100, Cholesky-based after; then its Newton-Schulz refinement
  # and the library's filter.
  steps = schedules_module.qdwh_steps(rtol)
  weights = schedules_module.qdwh_weights(rtol)
  qr_steps = sum(c > 100 for _, _, c in weights)
  cost.ew(batch * m * n, 1, 1, 3)  # norm estimate and scaling
  for i in range(steps):
    if i < qr_steps:
      cost.lapack("qr", n + m, m, batch, _qr_flops(n + m, m))
      cost.mm(n, m, m, batch, F32)
    else:
      cost.mm(m, n, m, batch, F32)  # uᵀu
      cost.lapack("cholesky", m, m, batch, m**3 / 3)
      cost.lapack("trsm", n, m, batch, 2.0 * n * m * m)  # two solves
      cost.ew(batch * m * n, 2, 1, 2)
  cost.mm(m, n, m, batch, F32)  # refinement u (1.5 − 0.5 uᵀu)
  cost.mm(n, m, m, batch, F32)
  cost.mm(m, n, m, batch, F32)  # filter: uᵀu, its square and cube
  cost.mm(m, m, m, batch, F32)
  cost.mm(m, m, m, batch, F32)
  cost.mm(n, m, m, batch, F32)
  cost.steps = steps


def _count_rsvd(cost: Cost, batch: int, m: int, n: int, rank: int = 128) -> None:
  # Default oversample and power iterations; rank 128 (benchmarks' choice).
  w = min(rank + polar_module.DEFAULT_OVERSAMPLE, m, n)
  cost.mm(m, n, w, batch, F32)
  cost.lapack("qr", m, w, batch, _qr_flops(m, w))
  for _ in range(polar_module.DEFAULT_POWER_ITERS):
    cost.mm(n, m, w, batch, F32)
    cost.lapack("qr", n, w, batch, _qr_flops(n, w))
    cost.mm(m, n, w, batch, F32)
    cost.lapack("qr", m, w, batch, _qr_flops(m, w))
  cost.mm(w, m, n, batch, F32)
  cost.lapack("svd", n, w, batch, _svd_flops(n, w))
  cost.mm(m, w, w, batch, F32)
  cost.mm(m, w, n, batch, F32)


def polar_fn(
  method: str, precision: str = "float32"
) -> Callable[[jax.Array], jax.Array]:
  """``x ↦ optax_egd.polar(x, method)``, with ``precision`` where the method
  and the installed library take it."""
  kwargs: dict[str, Any] = {}
  if method == "rsvd":
    kwargs.update(rank=128, key=jax.random.key(0))
  if ACCEPTS_PRECISION and method in MATMUL_METHODS and precision != "float32":
    kwargs["precision"] = precision
  return lambda x: optax_egd.polar(x, method, **kwargs)


def xla_cost(
  method: str, shape: Shape, precision: str = "float32"
) -> dict[str, float | None]:
  """XLA's ``flops`` and ``bytes accessed`` for the lowered polar call
  (custom calls, the LAPACK/cuSOLVER decompositions, count as nothing)."""
  lowered = jax.jit(polar_fn(method, precision)).lower(
    jax.ShapeDtypeStruct(shape, jnp.float32)
  )
  analysis = lowered.cost_analysis() or {}
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops, nbytes = analysis.get("flops"), analysis.get("bytes accessed")
  return {
    "flops": None if flops is None else float(flops),
    "bytes": None if nbytes is None else float(nbytes),
  }


# ── Device time ──────────────────────────────────────────────────────────────
def gesvdj_ms(rows: int, cols: int | None = None) -> float:
  """Predicted ms of one rows×cols real float32 GPU SVD (see the module
  docstring): the published A100 figure scaled by rows·cols²/400³ (rows ≥
  cols) and 1/8; jax calls ``gesvdj`` up to 1024 on a side and the QR-based
  ``gesvd`` above (published 47.6 ms at 400×400 complex128)."""
  cols = rows if cols is None else cols
  rows, cols = max(rows, cols), min(rows, cols)
  ref = GESVDJ_REF_MS if rows <= GESVDJ_MAX else GESVD_REF_MS
  return ref * rows * cols**2 / GESVDJ_REF_N**3 * GESVDJ_REAL_F32_FACTOR


def predicted_ms(
  cost: Cost, device: Device, precision: str = "float32"
) -> float | None:
  """Predicted device ms of one polar call, or None where there is no model
  (eigh, cholesky or trsm decompositions)."""
  bw = device.hbm_tb_s * 1e12 * device.bandwidth_efficiency
  rate = device.matmul_tflops(precision) * 1e12
  matmul_s = max(cost.matmul_flops / rate, cost.matmul_bytes / bw)
  ew_bytes = (
    cost.bytes
    - cost.matmul_bytes
    - sum(2 * b * r * c * F32 for _, r, c, b in cost.decompositions)
  )
  ew_s = ew_bytes / bw
  latency_s = (cost.matmuls + cost.elementwise) * device.kernel_latency_us * 1e-6
  lapack_s = 0.0
  for kind, rows, cols, batch in cost.decompositions:
    if kind == "svd":
      # One matrix at a time above 32×32; a batched call (counted as one
      # matrix's time per matrix all the same) below.
      lapack_s += batch * gesvdj_ms(rows, cols) * 1e-3
    elif kind == "qr":
      lapack_s += batch * (
        _qr_flops(rows, cols)
        / (device.peak_tflops["float32"] * 1e12 * device.lapack_efficiency)
        + device.kernel_latency_us * 1e-6
      )
    else:
      return None
  return 1e3 * (matmul_s + ew_s + latency_s + lapack_s)


def elementwise_ms(n_bytes: float, kernels: int, device: Device) -> float:
  """Predicted ms of memory-bound optimizer arithmetic."""
  bw = device.hbm_tb_s * 1e12 * device.bandwidth_efficiency
  return 1e3 * (n_bytes / bw + kernels * device.kernel_latency_us * 1e-6)


# ── Models ───────────────────────────────────────────────────────────────────
@dataclasses.dataclass(frozen=True)
class Model:
  """A model's matrices (stacked per shape), parameter count and FLOPs."""

  name: str
  matrices: tuple[Shape, ...]  # one entry per stacked leaf, e.g. (12, 768, 768)
  params: int
  tokens: int
  model_flops: float
  fwd_bwd_kernels: int  # kernels of forward + backward (latency floor)
  note: str


def gpt2_small(tokens: int = GPT2_TOKENS) -> Model:
  """GPT-2 small (124 M parameters; embeddings tied to the head)."""
  per_layer = sum(a * b for a, b in GPT2_KERNELS)
  vectors = GPT2_LAYERS * (2304 + 768 + 3072 + 768 + 4 * 768) + 2 * 768
  params = GPT2_LAYERS * per_layer + vectors + GPT2_VOCAB * GPT2_D + GPT2_SEQ * GPT2_D
  return Model(
    "gpt2_small",
    tuple((GPT2_LAYERS, *s) for s in GPT2_KERNELS),
    params,
    tokens,
    6.0 * params * tokens,
    40 * GPT2_LAYERS,
    f"6·params·tokens at {tokens} tokens; EGD on the 48 block "
    "kernels, AdamW on embeddings, biases and norms",
  )


def paper_mlp(batch: int = MLP_BATCH) -> Model:
  """The EGD paper's MLP on (a + b) mod 97, one-hot inputs, batch 512."""
  params = sum(a * b for a, b in MLP_KERNELS) + MLP_HIDDEN_BIAS
  return Model(
    "paper_mlp",
    MLP_KERNELS,
    params,
    batch,
    6.0 * params * batch,
    20,
    "6·params·examples; latency-bound on a GPU (20 kernels assumed)",
  )


def optimizer_ms(
  model: Model, optimizer: str, method: str | None, precision: str, device: Device
) -> tuple[float | None, float | None, float]:
  """(update ms, polar ms, polar FLOPs) of ``optimizer`` on ``model``.

  ``adamw``: 28 bytes a parameter (read g, p, m, v; write p, m, v);
  ``egdm``: on the matrices Nesterov momentum, the polar factor, decay and
  learning rate (20 bytes a parameter), AdamW on the rest;
  ``chain(egd,adamw)``: the polar factor on the matrices and AdamW on
  everything; ``muon``: egdm's traffic with Muon's 5 Newton-Schulz steps.
  """
  matrix_params = sum(math.prod(s) for s in model.matrices)
  other = model.params - matrix_params
  polar_ms, polar_flops = 0.0, 0.0
  if optimizer != "adamw":
    assert method is not None
    for shape in model.matrices:
      cost = count(method, shape, precision)
      t = predicted_ms(cost, device, precision)
      if t is None:
        return None, None, polar_flops
      polar_ms += t
      polar_flops += cost.flops
  adam_bytes = 28.0 * (
    model.params if optimizer in ("adamw", "chain(egd,adamw)") else other
  )
  matrix_bytes = (
    20.0 * matrix_params
    if optimizer in ("egdm", "muon")
    else (8.0 * matrix_params if optimizer == "chain(egd,adamw)" else 0.0)
  )
  kernels = 6 * (len(model.matrices) + 2)
  return (
    polar_ms + elementwise_ms(adam_bytes + matrix_bytes, kernels, device),
    polar_ms,
    polar_flops,
  )


def fwd_bwd_ms(model: Model, device: Device) -> float:
  """Predicted forward + backward ms: ``model_mfu`` of the bfloat16 peak,
  at least the kernels' latency floor."""
  rate = device.peak_tflops["bfloat16"] * 1e12 * device.model_mfu
  return max(
    1e3 * model.model_flops / rate,
    model.fwd_bwd_kernels * device.kernel_latency_us * 1e-3,
  )


OVERHEAD_OPTIMIZERS = ("egdm", "chain(egd,adamw)", "muon")


def overhead_rows(
  models: Sequence[Model],
  methods: Sequence[str],
  precisions: Sequence[str],
  device: Device,
) -> list[dict[str, Any]]:
  """Predicted step ms and ratio to AdamW per model × optimizer × method ×
  precision (float32 only for the decompositions)."""
  rows = []
  for model in models:
    base = fwd_bwd_ms(model, device)
    adam, _, _ = optimizer_ms(model, "adamw", None, "float32", device)
    assert adam is not None
    adam_step = base + adam
    rows.append(
      dict(
        model=model.name,
        optimizer="adamw",
        method="-",
        precision="float32",
        fwd_bwd_ms=base,
        update_ms=adam,
        polar_ms=0.0,
        step_ms=adam_step,
        ratio_vs_adamw=1.0,
        polar_flops_over_model=0.0,
        predicted=True,
      )
    )
    for optimizer in OVERHEAD_OPTIMIZERS:
      if optimizer == "muon":
        # optax.contrib.muon's float32 products at jax's default GPU
        # precision (TF32), and in bfloat16 as Muon is often run.
        combos = [
          ("newton_schulz", p)
          for p in ("tf32", "bfloat16")
          if "newton_schulz" in methods
        ]
      else:
        combos = [
          (m, p)
          for m in methods
          if m in TIMED_METHODS
          for p in (precisions if m in MATMUL_METHODS else ("float32",))
        ]
      for method, precision in combos:
        update, polar_ms, flops = optimizer_ms(
          model, optimizer, method, precision, device
        )
        if update is None:
          continue
        step = base + update
        rows.append(
          dict(
            model=model.name,
            optimizer=optimizer,
            method=method,
            precision=precision,
            fwd_bwd_ms=base,
            update_ms=update,
            polar_ms=polar_ms,
            step_ms=step,
            ratio_vs_adamw=step / adam_step,
            polar_flops_over_model=flops / model.model_flops,
            predicted=True,
          )
        )
  return rows


# ── Driver ───────────────────────────────────────────────────────────────────
def cost_rows(
  shapes: Sequence[Shape],
  methods: Sequence[str],
  precisions: Sequence[str],
  device: Device,
  xla_check: bool,
) -> list[dict[str, Any]]:
  """One row per method × shape (× precision for the matmul methods)."""
  rows = []
  for shape in shapes:
    for method in methods:
      for precision in precisions if method in MATMUL_METHODS else ("float32",):
        cost = count(method, shape, precision)
        row: dict[str, Any] = dict(
          shape=list(shape),
          method=method,
          precision=precision,
          steps=cost.steps or None,
          flops=cost.flops,
          bytes=cost.bytes,
          matmuls=cost.matmuls,
          matmul_flops=cost.matmul_flops,
          decompositions=[
            dict(kind=k, rows=r, cols=c, count=b) for k, r, c, b in cost.decompositions
          ],
          predicted_ms=predicted_ms(cost, device, precision),
          xla_flops=None,
          xla_bytes=None,
          xla_over_counted=None,
        )
        if xla_check and method in MATMUL_METHODS:
          xla = xla_cost(method, shape, precision)
          row.update(xla_flops=xla["flops"], xla_bytes=xla["bytes"])
          if xla["flops"]:
            row["xla_over_counted"] = xla["flops"] / cost.flops
        rows.append(row)
        print(
          f"  {_shape_str(shape):>12} {method:>20} {precision:>8}"
          f" {cost.flops:10.3g} flops",
          file=sys.stderr,
          flush=True,
        )
  return rows


def _shape_str(shape: Sequence[int]) -> str:
  return "×".join(map(str, shape))


def assumptions(device: Device, tokens: int) -> dict[str, Any]:
  """Every figure the predictions rest on."""
  return dict(
    device=dataclasses.asdict(device),
    matmul_tflops={p: device.matmul_tflops(p) for p in device.peak_tflops},
    gesvdj=dict(
      reference_ms=GESVDJ_REF_MS,
      reference_n=GESVDJ_REF_N,
      reference="A100, one 400×400 complex128 matrix (cuSOLVER)",
      gesvd_reference_ms=GESVD_REF_MS,
      gesvdj_up_to=GESVDJ_MAX,
      scaling="rows·cols²/400³ (rows ≥ cols)",
      real_float32_factor=GESVDJ_REAL_F32_FACTOR,
      one_matrix_at_a_time_above=BATCHED_GESVDJ_MAX,
      qr="geqrf + orgqr FLOPs at lapack_efficiency of the float32 peak",
    ),
    adamw_bytes_per_param=28,
    egdm_matrix_bytes_per_param=20,
    gpt2_tokens=tokens,
    mlp_batch=MLP_BATCH,
    note="all times and ratios are predicted, none measured",
  )


def print_report(
  rows: Sequence[dict[str, Any]],
  overhead: Sequence[dict[str, Any]],
  device: Device,
  tokens: int,
) -> None:
  """Markdown tables: counts per shape, then the predicted overheads."""
  print(
    f"Device (assumed): {device.name}; matrix products at "
    f"{device.matmul_efficiency:.0%} of peak: "
    + ", ".join(
      f"{p} {device.matmul_tflops(p):.0f} TFLOP/s" for p in device.peak_tflops
    )
    + f"; HBM {device.hbm_tb_s} TB/s at {device.bandwidth_efficiency:.0%}; "
    f"{device.kernel_latency_us:g} µs a kernel; model fwd/bwd at "
    f"{device.model_mfu:.0%} MFU of the bfloat16 peak; GPU SVD = cuSOLVER "
    f"gesvdj scaled from {GESVDJ_REF_MS:g} ms (A100, 400×400 complex128) "
    f"by (k/400)³/8, one matrix at a time.\n"
  )
  table = [
    dict(
      r,
      shape=_shape_str(r["shape"]),
      gflops=r["flops"] / 1e9,
      mbytes=r["bytes"] / 1e6,
      xla_gflops=None if r["xla_flops"] is None else r["xla_flops"] / 1e9,
    )
    for r in rows
  ]
  print("Counted cost of one polar call (float32 input; predicted ms):\n")
  print(
    _common.markdown_table(
      table,
      [
        ("shape", "shape", "s"),
        ("method", "method", "s"),
        ("precision", "precision", "s"),
        ("steps", "steps", "d"),
        ("gflops", "GFLOP", ".4g"),
        ("mbytes", "MB", ".4g"),
        ("matmuls", "products", "d"),
        ("xla_gflops", "XLA GFLOP", ".4g"),
        ("xla_over_counted", "XLA/counted", ".3f"),
        ("predicted_ms", "predicted ms", ".3g"),
      ],
    )
  )
  print(
    f"\nPredicted step time against AdamW (GPT-2 small at {tokens} tokens "
    f"a step; the paper's MLP at batch {MLP_BATCH}):\n"
  )
  print(
    _common.markdown_table(
      overhead,
      [
        ("model", "model", "s"),
        ("optimizer", "optimizer", "s"),
        ("method", "method", "s"),
        ("precision", "precision", "s"),
        ("fwd_bwd_ms", "fwd+bwd ms", ".4g"),
        ("update_ms", "update ms", ".4g"),
        ("polar_ms", "polar ms", ".4g"),
        ("step_ms", "step ms", ".4g"),
        ("ratio_vs_adamw", "predicted × AdamW", ".3f"),
        ("polar_flops_over_model", "polar FLOPs / model", ".2e"),
      ],
    )
  )


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise ValueError(text)
  return value


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point."""
  from benchmarks.polar import parse_shape  # pylint: disable=import-outside-toplevel

  parser = _common.parser("cost_model", __doc__.split("\n")[0])
  parser.add_argument(
    "--shapes",
    nargs="+",
    type=parse_shape,
    help="matrix shapes, e.g. 194x512 12x768x768 "
    "(default: the GPT-2 small and MLP kernels and "
    "squares and 1:4 / 4:1 rectangles up to 4096)",
  )
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
  parser.add_argument(
    "--precisions",
    nargs="+",
    choices=PRECISIONS,
    default=list(PRECISIONS),
    help="precisions of the matrix-product methods",
  )
  parser.add_argument("--device", choices=sorted(DEVICES), default="h200")
  parser.add_argument(
    "--tokens",
    type=_positive_int,
    default=GPT2_TOKENS,
    help=f"GPT-2 small tokens a step (default {GPT2_TOKENS})",
  )
  parser.add_argument(
    "--small",
    action="store_true",
    help="small shapes only ("
    + ", ".join(map(_shape_str, SMALL_SHAPES))
    + "): a smoke test",
  )
  parser.add_argument(
    "--no-xla-check",
    action="store_true",
    help="skip XLA's cost analysis of the matmul methods",
  )
  args = parser.parse_args(argv)
  if args.small and args.shapes:
    parser.error("argument --small: not with --shapes")
  for shape in args.shapes or ():
    if len(shape) < 2 or min(shape) < 1:
      parser.error(
        f"argument --shapes: {_shape_str(shape)} is not a matrix "
        "shape (two or more positive sizes)"
      )
  shapes = args.shapes or (SMALL_SHAPES if args.small else SHAPES)
  device = DEVICES[args.device]
  out = _common.out_dir(args.out, "cost_model")
  stem = _common.result_stem("cost_model", args.small)
  with _common.tee_stdout(out / f"{stem}.md"):
    info = _common.machine_info()
    _common.print_header(
      "Polar methods on an accelerator: counted cost and "
      "PREDICTED overhead (nothing measured on a device)",
      info,
    )
    rows = cost_rows(
      shapes, args.methods, args.precisions, device, not args.no_xla_check
    )
    overhead = overhead_rows(
      [gpt2_small(args.tokens), paper_mlp()], args.methods, args.precisions, device
    )
    print_report(rows, overhead, device, args.tokens)
    config = dict(
      vars(args),
      shapes=shapes,
      precision_argument=ACCEPTS_PRECISION,
      assumptions=assumptions(device, args.tokens),
    )
    path = _common.write_json(
      out / f"{stem}.json", info, config, rows, dict(predicted_overhead=overhead)
    )
    print(f"\nwrote {path} and {stem}.md")


if __name__ == "__main__":
  main()
