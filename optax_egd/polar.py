"""``polar``: the polar factor UVᵀ of G = USVᵀ that EGD steps along.

Every method maps the singular values of the last two axes of ``x`` to
(approximately) one and keeps the singular vectors; leading axes are a batch.
Decompositions run in float32 or wider and the result has the input's dtype.
The exact methods map σ to ``σ / max(σ, rtol·σ_max)``: every direction above
the cutoff gets a unit singular value, a zero gradient gives a zero update,
and numerically-null directions are damped instead of blown up to one. The
default ``rtol`` is ``max(m, n)·eps``, the float noise floor.

The methods (``METHODS``), what each guarantees and when to pick it:
docs/guide/polar_methods.md. The arguments' rules live in
:mod:`optax_egd.polar_args`, the iterations' schedules in
:mod:`optax_egd.polar_schedules`, the algorithms in
:mod:`optax_egd.polar_methods` and the CPU loop in :mod:`optax_egd.per_matrix`;
their public names are re-exported here.

Example:
  >>> import jax.numpy as jnp
  >>> from optax_egd import polar
  >>> g = jnp.array([[3.0, 0.0], [0.0, 0.5]])
  >>> polar(g, "svd")
  Array([[1., 0.],
         [0., 1.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
import numbers

import jax
import jax.numpy as jnp

from optax_egd.per_matrix import per_matrix
from optax_egd.polar_args import (
    AUTO_CHOICES,
    DEFAULT_NS_STEPS,
    DEFAULT_OVERSAMPLE,
    DEFAULT_POWER_ITERS,
    EXACT_FOR_VECTORS,
    MATMUL_METHODS,
    METHODS,
    PRECISION_RTOL,
    PRECISIONS,
    QR_ASPECT,
    STATIC_RTOL_METHODS,
    Method,
    Precision,
    check_rtol,
    compute_dtype,
    default_rtol,
    validate,
)
from optax_egd.polar_methods import (
    eigh_polar,
    newton_schulz_polar,
    polar_express_iteration,
    qdwh_polar,
    rsvd_polar,
    safe_div,
    svd_polar,
    transpose,
)
from optax_egd.polar_schedules import (
    MUON_NS_COEFFS,
    POLAR_EXPRESS_COEFFS,
    ns_coeffs,
    polar_express_lower,
    polar_express_schedule,
)

__all__ = [
    "AUTO_CHOICES", "DEFAULT_NS_STEPS", "DEFAULT_OVERSAMPLE",
    "DEFAULT_POWER_ITERS", "METHODS", "MUON_NS_COEFFS", "POLAR_EXPRESS_COEFFS",
    "PRECISIONS", "PRECISION_RTOL", "QR_ASPECT", "Method", "Precision",
    "auto_method", "check_rtol", "compute_dtype", "default_rtol", "polar",
    "polar_express_lower", "polar_express_schedule", "validate",
]

# The lowering platforms "auto" decides for; any other gets the accelerator's.
_CPU_PLATFORMS = ("cpu",)


def auto_method(shape: tuple[int, ...], backend: str | None = None) -> str:
  """The method ``"auto"`` resolves to for a matrix ``shape`` on ``backend``.

  ``polar`` decides per *lowering* platform (``jax.lax.platform_dependent``),
  so a program exported or AOT-compiled for a GPU or TPU, or placed on one,
  gets that platform's method whatever the host is; this function says what
  each platform gets.

  * CPU: ``"svd"``. Measured with ``python -m benchmarks.polar`` (see
    ``benchmarks/README.md``; 2-core CPU, jax 0.10.2): the fastest method
    that is exact to 1e-4 (or to the float32 floor it sets) on every matrix
    kind we test (Gaussian, rank-deficient, condition 1e6, real gradients of
    the paper's MLP), square and rectangular alike. Gram-``eigh`` is 2-5x
    faster on strongly rectangular matrices but 3.6e-2 off on the real
    512×97 gradient, so it is never chosen automatically; ``"qdwh"``,
    ``"polar_express"`` and ``"polar_express_exact"`` are slower than the SVD
    there.
  * GPU (``"cuda"``, ``"rocm"``, ``"gpu"``) and TPU: ``"polar_express_exact"``,
    matrix products only, exact to the cutoff. jax's GPU SVD is cuSOLVER's
    Jacobi ``gesvdj``, one matrix after another above 32×32 (published: 207
    ms for one 400×400 matrix on an A100, against well under a millisecond
    predicted for the iteration's ~12 matrix-product steps); jax's TPU SVD is
    QDWH plus an eigendecomposition. Not yet measured on a device: see
    ``benchmarks/README.md``, "Accelerators".

  Args:
    shape: the matrix shape (leading batch axes are ignored).
    backend: a JAX backend or platform name; defaults to
      ``jax.default_backend()``.

  Example:
    >>> auto_method((512, 97), "cpu")
    'svd'
    >>> auto_method((768, 3072), "cuda")
    'polar_express_exact'
  """
  del shape  # Every shape resolves the same way per platform.
  backend = (backend or jax.default_backend()).lower()
  if backend in _CPU_PLATFORMS:
    return "svd"
  return "polar_express_exact"


def polar(
    x: jax.Array,
    method: Method | str = "auto",
    *,
    rtol: float | jax.Array | None = None,
    rank: int | None = None,
    oversample: int | None = None,
    power_iters: int | None = None,
    ns_steps: int | None = None,
    key: jax.Array | None = None,
    precision: Precision | str | None = None,
) -> jax.Array:
  """Polar factor UVᵀ of the last two axes of ``x`` (leading axes: a batch).

  Args:
    x: array with ``ndim >= 2`` and a floating dtype.
    method: one of ``METHODS``; ``"auto"`` picks per lowering platform via
      :func:`auto_method` (``"svd"`` on CPU, ``"polar_express_exact"`` on GPU
      and TPU; ``"svd"`` everywhere when ``rtol`` is traced).
    rtol: relative cutoff for small singular values (σ ↦ σ/max(σ, rtol·σ_max));
      default ``max(m, n)·eps`` of the compute dtype. In ``[0, 1)`` for the
      SVD-based methods, ``(0, 1)`` for the others (see :func:`check_rtol`).
      May be a traced array (except for ``"qdwh"`` and
      ``"polar_express_exact"``, whose schedules it sets); traced and out of
      range, the result is NaN. Not for ``"newton_schulz"``/
      ``"polar_express"``, which have no cutoff.
    rank: target rank, required for ``"rsvd"``.
    oversample: extra sketch columns for ``"rsvd"`` (default 10).
    power_iters: subspace iterations for ``"rsvd"`` (default 2).
    ns_steps: iterations for ``"newton_schulz"`` (default 5) and
      ``"polar_express"`` (default 8).
    key: a ``jax.random`` key, required for ``"rsvd"``.
    precision: the matrix products of ``"newton_schulz"``, ``"polar_express"``
      and ``"polar_express_exact"`` (and of ``"auto"`` where it picks the
      latter): ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"``
      operands with float32 accumulation (see ``PRECISIONS``).

  ``None`` means "not given" (the method's default); an argument given to a
  method that does not use it raises (see :func:`validate`).

  Returns:
    An array of ``x``'s shape and dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optax_egd import polar
    >>> g = jax.random.normal(jax.random.key(0), (4, 3))
    >>> p = polar(g, "svd")
    >>> bool(jnp.allclose(p.T @ p, jnp.eye(3), atol=1e-5))
    True
  """
  validate(method, rank=rank, oversample=oversample, power_iters=power_iters,
           ns_steps=ns_steps, rtol=rtol, precision=precision)
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"polar needs x.ndim >= 2, got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"polar needs x with a floating dtype, got {x.dtype}")
  if method == "rsvd" and key is None:
    raise ValueError("method='rsvd' needs key, a jax.random key")
  out_dtype = x.dtype
  dtype = compute_dtype(out_dtype)
  static_rtol = rtol is None or isinstance(rtol, numbers.Real)
  if method == "auto":
    # Per lowering platform, not the host's backend: exported, AOT-compiled
    # and device-placed programs get their platform's method.
    cpu = auto_method(x.shape, "cpu")
    accelerator = auto_method(x.shape, "cuda") if static_rtol else "svd"
    if cpu == accelerator:
      method = cpu
    else:
      def resolved(choice: str) -> Callable[[jax.Array], jax.Array]:
        return lambda a: polar(a, choice, rtol=rtol, precision=(
            precision if choice in MATMUL_METHODS else None))
      return jax.lax.platform_dependent(
          x, cpu=resolved(cpu), default=resolved(accelerator))
  if rtol is None:
    rtol = max(default_rtol(x.shape, dtype),
               PRECISION_RTOL.get(precision or "float32", 0.0))
  if method in STATIC_RTOL_METHODS:
    static_rtol_value = float(rtol)  # check_rtol: a number in (0, 1).
  # A traced rtol can only be checked here: out of range, the result is NaN.
  rtol_in_range = static_rtol or ((rtol >= 0) & (rtol < 1))
  rtol = jnp.asarray(rtol, dtype)
  if 0 in x.shape[-2:]:
    return x
  x = x.astype(dtype)
  # Scale each matrix by a power of two (exact) so its largest entry is in
  # [1/2, 1): Gram matrices and Frobenius norms then neither overflow (1e30²)
  # nor underflow (1e-30²), and every method is scale-invariant.
  # A matrix with a NaN or Inf entry is decomposed as zeros (LAPACK's gesdd,
  # behind jnp.linalg.svd on CPU, can loop forever on an inf) and gets an
  # all-NaN result below.
  amax = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  finite = jnp.isfinite(amax)
  x = jnp.where(finite, jnp.ldexp(x, -jnp.where(finite, jnp.frexp(amax)[1], 0)), 0)
  tall = x.shape[-2] > x.shape[-1]
  if min(x.shape[-2:]) == 1 and method in EXACT_FOR_VECTORS:
    # A row or column vector's only singular value is its norm: UVᵀ = x/‖x‖,
    # exactly what the decompositions return, without a LAPACK call.
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    y = safe_div(x, norm)
  elif method == "rsvd":
    assert rank is not None and key is not None
    *batch, m, n = x.shape
    width = min(rank + (DEFAULT_OVERSAMPLE if oversample is None else oversample),
                m, n)
    omega = jax.random.normal(key, (*batch, n, width), x.dtype)
    iters = DEFAULT_POWER_ITERS if power_iters is None else power_iters
    rsvd = functools.partial(rsvd_polar, rank=rank, power_iters=iters)
    y = per_matrix(rsvd, x, omega, jnp.broadcast_to(rtol, tuple(batch)))
  else:
    # The other methods are written for a wide matrix (m <= n).
    wide = transpose(x) if tall else x
    if method in ("svd", "eigh"):
      one = svd_polar if method == "svd" else eigh_polar
      y = per_matrix(one, wide, jnp.broadcast_to(rtol, wide.shape[:-2]))
    elif method == "qdwh":
      y = per_matrix(functools.partial(qdwh_polar, rtol=static_rtol_value),
                      wide)
    elif method == "polar_express_exact":
      schedule = polar_express_schedule(
          polar_express_lower(wide.shape, static_rtol_value),
          math.sqrt(float(jnp.finfo(dtype).eps)))
      y = polar_express_iteration(wide, schedule, precision or "float32")
    else:
      # Newton–Schulz and Polar Express are matmuls only: one batched program.
      steps = DEFAULT_NS_STEPS[method] if ns_steps is None else ns_steps
      y = newton_schulz_polar(wide, ns_coeffs(method, steps),
                               precision or "float32")
    y = transpose(y) if tall else y
  # A NaN or Inf entry makes its whole matrix NaN, never a finite update.
  y = jnp.where(finite & rtol_in_range, y, jnp.nan)
  return y.astype(out_dtype)
