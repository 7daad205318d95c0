"""Polar factors of matrices: the UVᵀ of G = USVᵀ that EGD steps along.

Every method here maps the singular values of the last two axes of ``x`` to
(approximately) one and keeps the singular vectors; leading axes are a batch
(decomposed one matrix at a time on CPU, where several batched LAPACK calls
in one program can deadlock jaxlib 0.10's thread pool; see ``_per_matrix``;
``jax.vmap`` over ``polar`` folds the mapped axes into the same loop).
Decompositions run in float32 or wider and the result has the input's dtype.

The exact methods share one rule for small singular values: σ is mapped to
``σ / max(σ, rtol·σ_max)``. Every direction above the cutoff gets a unit
singular value, a zero gradient gives a zero update, and numerically-null
directions (below ``rtol·σ_max``) are damped instead of blown up to one.
The default ``rtol`` is ``max(m, n)·eps`` of the compute dtype, the float
noise floor NumPy's ``matrix_rank`` uses, so the rounding noise of a rank-1
gradient stays damped in its update (by how much: see Guarantees).

Methods (``METHODS``):

* ``"svd"``: ``jnp.linalg.svd``, after a Householder QR that reduces the SVD to
  a min(m, n)-square matrix when the aspect ratio is 2 or more. Exact; the
  reference.
* ``"eigh"``: eigendecomposition of the smaller Gram matrix (GGᵀ or GᵀG).
  Fast, but squaring G squares its condition number: in float32 the
  eigenvalues carry an absolute error near ``eps·σ_max²``, so directions with
  σ below about ``sqrt(min(m,n)·eps)·σ_max`` (≈3e-3·σ_max for a 512×97,
  ≈8e-3·σ_max for a 512×512 float32 matrix) cannot be resolved and are damped
  by the cutoff. Relative error about ``2e-8·κ²`` in float32: within 1e-4 of
  the SVD for condition numbers κ up to about 50 (2e-4 at κ = 1e2, 3e-3 at
  3e2); use it for well-conditioned, strongly rectangular matrices.
* ``"rsvd"``: Halko–Martinsson–Tropp randomized range finder with ``rank``
  columns plus ``oversample`` extra, ``power_iters`` subspace iterations, and
  result ``(Q·Ũ)Vᵀ`` truncated to ``rank``. Exact for inputs of rank ≤ ``rank``
  (the key then does not change the result); needs a ``key``.
* ``"newton_schulz"``: Muon's quintic iteration (coefficients
  3.4445, -4.7750, 2.0315), ``ns_steps`` steps (default 5). Approximate by
  design: singular values land in [0.68, 1.21] for σ above 2e-3 of the
  Frobenius norm (in [0.46, 1.21] above 1e-3) and never exceed 1.21.
* ``"polar_express"``: the Polar Express schedule (Amsel et al., 2025), optimal
  odd quintic coefficients per step, ``ns_steps`` steps (default 8). Singular
  values land within 1e-5 of one (float32) for σ above 1e-3 of the Frobenius
  norm, within 2e-2 above 3e-4, and never exceed 1 + 1e-5.
* ``"qdwh"``: ``jax.lax.linalg.qdwh`` (the QR-based dynamically weighted Halley
  iteration TPUs use for their own SVD), run with its lower bound ℓ for
  σ_min/σ_max set to ``rtol``: singular values above ``rtol·α`` converge to
  one (α ≥ σ_max is QDWH's norm estimate, at most ``sqrt(min(m, n))·σ_max``)
  and the ones below stay below one: the iteration stops after the steps its
  schedule needs for ℓ. Stopped there it leaves σ ≪ rtol·α at about
  14·σ/(rtol·α), ten times the SVD's level, so a final filter
  s ↦ 3.5s⁵ − 2.5s⁷ of its singular values (two small Gram products; flat
  at s = 1, so converged directions stay at one) damps them: σ ≤ 0.01·rtol·α
  comes out ≤ 3e-4 and σ = 0.02·rtol·α ≤ 7e-3 (the SVD: ≥ 0.01 and ≥ 0.02);
  the step from 0 to 1 is steeper than the SVD's and a little lower (one
  half at 0.05-0.17·rtol·α, one from 0.2-0.6·rtol·α, measured on 16×16 to
  512×512). ``rtol`` must be a Python float here (it sets the iteration
  schedule). A large ``rtol`` also loosens QDWH's own convergence test
  (``cbrt(5·rtol)``): above the cutoff singular values land within 2e-3 of
  one at ``rtol`` = 0.1 and within 7e-2 at 0.2-0.5 (measured on 16×16); use
  ``"svd"`` for such cutoffs.
* ``"polar_express_exact"``: matrix products only (no SVD, eigh or QR), exact
  to the cutoff: the matrix is scaled by U = ‖(GGᵀ)²‖_F^{1/4} ∈ [σ_max,
  k^{1/8}·σ_max], then runs a Polar Express schedule built for the lower
  bound ℓ = rtol/k^{1/8} (:func:`polar_express_schedule`: minimax odd
  quintics from Remez, with Amsel et al.'s cushioning and 1.01 safety
  factor, a Newton–Schulz quintic tail and a final damping step): 8 steps at
  ℓ = 1e-3, 10 at the default cutoffs of transformer-sized matrices, 11-13
  for small matrices (3 matrix products a step). Directions with
  σ ≥ rtol·σ_max land within 1e-5 of one (measured ≤ 1e-6 on condition-1e6
  spectra up to 512×194), the factor is within 1e-4 of the float64 SVD's
  (relative Frobenius; 1e-6 typical), and rounding noise of rank-deficient
  inputs comes out below the SVD's (≤ 3e-4 measured on rank-1 16×16).
  Directions just below the cutoff are lifted a little more than the SVD
  lifts them (σ = 0.5·rtol·σ_max ↦ 0.9-1, 0.1·rtol·σ_max ↦ 0.03-0.07).
  ``rtol`` must be a Python float (it
  sets the schedule). ``precision`` selects float32 (default), TF32 or
  bfloat16 products; at the lower precisions the default cutoff rises to
  ``PRECISION_RTOL`` (1e-3), where resolved directions land within 3e-4
  (TF32) and 2e-3 (bfloat16) of one (measured against float64; float32
  reaches 1e-6 at the default cutoff).
  The GPU and TPU default.
* ``"auto"``: chosen per *lowering* platform by :func:`auto_method`
  (``jax.lax.platform_dependent``): ``"svd"`` on CPU,
  ``"polar_express_exact"`` on GPU and TPU; ``"svd"`` everywhere when
  ``rtol`` is an array (traced, e.g. by ``optax.inject_hyperparams``).

Guarantees (measured on float32 matrices from 1×1 to 64×64 and 2×2000 with
condition numbers up to 1e12, and checked by ``tests/test_polar.py``; "exact"
means ``"svd"``, ``"rsvd"`` with ``rank ≥ min(m, n)`` or of the input's rank,
``"qdwh"`` and ``"polar_express_exact"``):

* Scale invariance: each matrix is first scaled by a power of two (exact) so
  its largest entry is in [1/2, 1). ``polar(c·G) = polar(G)`` for c > 0
  (bitwise for powers of two), and entries from 1e-30 to 1e30 neither
  underflow nor overflow (no Gram matrix or norm ever sees 1e30²).
* A NaN or ±Inf entry turns its whole matrix (only that one, in a batch) into
  NaN: a non-finite gradient never yields a finite update. Finite input gives
  finite output; the zero matrix gives zero.
* No output singular value exceeds ``1 + δ``: δ = 1e-5 for the exact methods
  and ``"polar_express"``, 0.21 for ``"newton_schulz"``, 0.1 for ``"eigh"``
  (its σ estimates near its resolution limit can be a few percent low; 1.053
  measured).
* Resolved directions land near one: within 1e-4, and within 1e-4 of the
  float64 SVD's factor, for σ ≥ 1e-3·σ_max with the exact methods and
  σ ≥ 1e-3·‖G‖_F with ``"polar_express"``; within 1e-3 for σ ≥ 1e-2·σ_max
  with ``"eigh"``; in [0.68, 1.21] for σ ≥ 2e-3·‖G‖_F with
  ``"newton_schulz"``.
* Numerically-null directions are damped, never lifted to one: on a rank-k
  float32 input the rounding-noise directions come out with singular values
  of about ``1/max(m, n)`` or less with ``"svd"``/``"rsvd"`` (≤ 0.08
  measured) and with ``"qdwh"`` (≤ 5e-3 measured on rank-1 16×16 to 64×64,
  where the SVD gives 0.008-0.036), and ≤ 1e-3 with ``"eigh"``,
  ``"polar_express"`` and ``"newton_schulz"``; ``"rsvd"`` with ``rank`` = k
  drops them entirely.
* float16 and bfloat16 are decomposed in float32 and rounded once; float64
  (with x64 enabled) stays float64, where ``"svd"`` matches NumPy's float64
  SVD polar factor to 1e-10 even at condition 1e12.

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
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

Method = Literal[
    "auto", "svd", "eigh", "rsvd", "newton_schulz", "polar_express", "qdwh",
    "polar_express_exact",
]
METHODS: tuple[str, ...] = get_args(Method)
Precision = Literal["float32", "tf32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

MUON_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Amsel, Persson, Musco & Gower (2025), "The Polar Express", with their safety
# factor 1.01 applied to every step but the last; the last entry repeats.
_PE_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_COEFFS = tuple(
    (a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _PE_RAW[:-1]
) + (_PE_RAW[-1],)

# Methods whose result for a vector (one row or column) is exactly x/‖x‖.
_EXACT_FOR_VECTORS = ("svd", "eigh", "rsvd", "qdwh", "polar_express_exact")
DEFAULT_NS_STEPS = {"newton_schulz": 5, "polar_express": 8}
DEFAULT_OVERSAMPLE = 10
QR_ASPECT = 2  # "svd" QR-factorizes first when max(m, n) >= QR_ASPECT·min(m, n).
DEFAULT_POWER_ITERS = 2
_RSVD = ("rsvd",)  # The methods that use rank, oversample and power_iters.
_NS = ("newton_schulz", "polar_express")  # The methods that use ns_steps.
# The matmul iterations: the methods that take ``precision``.
_MATMUL = ("newton_schulz", "polar_express", "polar_express_exact")
# Methods whose schedule is built from rtol, so it must be a Python float.
_STATIC_RTOL = ("qdwh", "polar_express_exact")
# Methods that take rtol = 0 (no cutoff: the exact UVᵀ, noise directions
# included). The others need rtol > 0: their iteration's schedule is built for
# a lower bound rtol, and "auto" may pick one of them on GPU/TPU.
_ZERO_RTOL = ("svd", "eigh", "rsvd")
# The default rtol of the matmul iterations at a lower precision: below it
# the rounding of the products swamps the directions (condition-1e6 spectra,
# 64² to 512×194: at 1e-3 resolved directions land within 2e-4 of one with
# tf32 and 1.5e-3 with bfloat16; float32 reaches 1e-6 at max(m, n)·eps).
PRECISION_RTOL = {"tf32": 1e-3, "bfloat16": 1e-3}
# What "auto" can resolve to (auto_method).
AUTO_CHOICES = ("svd", "polar_express_exact")
# The lowering platforms "auto" decides for; any other gets the accelerator's.
_CPU_PLATFORMS = ("cpu",)
_HIGHEST = jax.lax.Precision.HIGHEST


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The dtype decompositions of a ``dtype`` input run in (float32 or wider).

  Raises:
    TypeError: for non-floating dtypes.

  Example:
    >>> import jax.numpy as jnp
    >>> compute_dtype(jnp.bfloat16)
    dtype('float32')
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"polar factors need a floating dtype, got {dtype}")
  return jnp.promote_types(dtype, jnp.float32)


def default_rtol(shape: tuple[int, ...], dtype: jnp.dtype) -> float:
  """``max(m, n)·eps``: the float noise floor of a matrix's singular values.

  Example:
    >>> import jax.numpy as jnp
    >>> round(default_rtol((512, 97), jnp.float32), 8)
    6.104e-05
  """
  eps = float(jnp.finfo(compute_dtype(dtype)).eps)
  return max(shape[-2], shape[-1]) * eps


def check_rtol(method: str, rtol: Any) -> None:
  """The one rule for ``rtol``, shared by :func:`polar`, ``egd`` and ``egdm``.

  ``None`` means the default. Otherwise ``rtol`` is a real number (a Python
  or NumPy float or int) or a scalar floating array, in ``[0, 1)`` for the
  SVD-based methods (``"svd"``, ``"eigh"``, ``"rsvd"``: 0 is the exact UVᵀ
  with no cutoff) and in ``(0, 1)`` for the others that take it
  (``"qdwh"`` and ``"polar_express_exact"`` build their schedules for the
  lower bound ``rtol``; ``"auto"`` may pick ``"polar_express_exact"``).
  ``"qdwh"`` and ``"polar_express_exact"`` need it as a number, not an array.
  ``"newton_schulz"`` and ``"polar_express"`` have no cutoff and take no
  ``rtol``. An array's value is checked where it is concrete; a traced one
  (under ``jax.jit``, e.g. from ``optax.inject_hyperparams``) outside the
  range makes :func:`polar`'s result NaN.

  Raises:
    TypeError / ValueError naming ``rtol``.

  Example:
    >>> check_rtol("svd", 0.0)
    >>> check_rtol("auto", 0.0)
    Traceback (most recent call last):
    ...
    ValueError: rtol must be in (0, 1) for method='auto', got 0.0 (rtol = 0, ...
  """
  if rtol is None:
    return
  if method in _NS:
    raise ValueError(
        f"rtol is not used by method={method!r} (its iteration has no cutoff;"
        " it is used by every other method): leave rtol unset (None)")
  if isinstance(rtol, (jax.Array, np.ndarray, np.generic)) and not isinstance(
      rtol, (np.floating, np.integer)):
    if jnp.shape(rtol) != () or not jnp.issubdtype(rtol.dtype, jnp.floating):
      raise TypeError(
          f"rtol must be a float, a scalar floating array or None, got an array"
          f" of shape {jnp.shape(rtol)} and dtype {rtol.dtype}")
    if method in _STATIC_RTOL:
      raise TypeError(
          f"method={method!r} needs rtol as a Python float (it sets the"
          f" iteration's schedule), got {rtol!r}; with optax.inject_hyperparams"
          " list rtol in static_args, or use method='svd' for a traced rtol")
    if isinstance(rtol, jax.core.Tracer):
      return  # Checked where it is used: out of range gives NaN.
    value = float(rtol)
  elif isinstance(rtol, (bool, np.bool_)) or not isinstance(rtol, numbers.Real):
    raise TypeError(f"rtol must be a float in [0, 1) or None, got {rtol!r}")
  else:
    value = float(rtol)
  if method in _ZERO_RTOL:
    if not 0 <= value < 1:
      raise ValueError(f"rtol must be in [0, 1), got {value}")
  elif not 0 < value < 1:
    zero = (" (rtol = 0, no cutoff, is for method 'svd', 'eigh' or 'rsvd'"
            " only)" if value == 0 else "")
    raise ValueError(
        f"rtol must be in (0, 1) for method={method!r}, got {value}{zero}")


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


def validate(
    method: str,
    *,
    rank: int | None = None,
    oversample: int | None = None,
    power_iters: int | None = None,
    ns_steps: int | None = None,
    rtol: float | jax.Array | None = None,
    precision: str | None = None,
) -> None:
  """Checks the static (shape- and algorithm-changing) polar arguments.

  ``rank``, ``oversample`` and ``power_iters`` are for ``"rsvd"`` only,
  ``ns_steps`` for ``"newton_schulz"`` and ``"polar_express"`` only, and
  ``rtol`` for every method but those two (they have no cutoff): giving one
  to a method that does not use it (``None`` means not given) raises rather
  than being ignored. ``"auto"`` resolves to ``"svd"`` or
  ``"polar_express_exact"`` (see :func:`auto_method`), so it takes ``rtol``
  and ``precision``. ``rtol`` follows :func:`check_rtol`.

  Raises:
    ValueError / TypeError naming the offending argument.

  Example:
    >>> validate("rsvd", rank=0)
    Traceback (most recent call last):
    ...
    ValueError: rank must be an int >= 1 or None, got 0
  """
  if not isinstance(method, str) or method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  for name, value, low in (("rank", rank, 1), ("oversample", oversample, 0),
                           ("power_iters", power_iters, 0),
                           ("ns_steps", ns_steps, 1)):
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, int):
      raise TypeError(
          f"{name} must be a Python int or None (it is static: with"
          f" optax.inject_hyperparams, list it in static_args), got {value!r}")
    if value < low:
      raise ValueError(f"{name} must be an int >= {low} or None, got {value}")
  if method == "rsvd" and rank is None:
    raise ValueError("method='rsvd' needs rank, an int >= 1")
  # An argument the method does not use is a mistake, never silently ignored
  # (None means "not given"; a given default value counts as given).
  for name, value, users in (("rank", rank, _RSVD), ("oversample", oversample,
                             _RSVD), ("power_iters", power_iters, _RSVD),
                             ("ns_steps", ns_steps, _NS)):
    if value is not None and method not in users:
      used_by = "method " + " or ".join(map(repr, users))
      picks = (f" (which picks {' or '.join(map(repr, AUTO_CHOICES))})"
               if method == "auto" else "")
      raise ValueError(
          f"{name}={value} is used only by {used_by}; method={method!r}{picks}"
          f" does not use it: leave {name} unset (None)")
  check_rtol(method, rtol)
  if precision is not None:
    if not isinstance(precision, str) or precision not in PRECISIONS:
      raise ValueError(
          f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    if method not in (*_MATMUL, "auto"):
      raise ValueError(
          f"precision={precision!r} is used only by the matrix-product methods"
          f" {_MATMUL} and 'auto'; method={method!r} decomposes in float32 or"
          " wider: leave precision unset (None)")


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def _t(a: jax.Array) -> jax.Array:
  return jnp.swapaxes(a, -1, -2)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den with 0 where den == 0; NaN in either still propagates."""
  return jnp.where(den == 0, 0, num / jnp.where(den == 0, 1, den))


def _unit_singular_values(s: jax.Array, rtol: jax.Array) -> jax.Array:
  """σ ↦ σ / max(σ, rtol·σ_max) for descending ``s`` of shape (..., k)."""
  cutoff = rtol * s[..., :1]
  return _safe_div(s, jnp.maximum(s, cutoff))


def _polar_svd(x: jax.Array, rtol: jax.Array) -> jax.Array:
  # x is wide (m <= n). From aspect QR_ASPECT on, a Householder QR of xᵀ first
  # (x = Rᵀ Qᵀ, so polar(x) = polar(Rᵀ)·Qᵀ) leaves the SVD an m×m matrix: the
  # same backward-stable result, faster (194×512: 5.9 vs 7.4 ms; 97×512: 2.1 vs
  # 3.2 ms on our 2-core CPU; slower on square matrices).
  m, n = x.shape[-2:]
  q = None
  if n >= QR_ASPECT * m:
    q, r = jnp.linalg.qr(_t(x))
    x = _t(r)
  u, s, vh = jnp.linalg.svd(x, full_matrices=False)
  y = _mm(u * _unit_singular_values(s, rtol)[..., None, :], vh)
  return y if q is None else _mm(y, _t(q))


def _polar_eigh(x: jax.Array, rtol: jax.Array) -> jax.Array:
  # x is wide (m <= n): the Gram matrix x xᵀ is the small one.
  m = x.shape[-2]
  eps = jnp.finfo(x.dtype).eps
  gram = _mm(x, _t(x))
  lam, v = jnp.linalg.eigh(gram)
  sigma = jnp.sqrt(jnp.maximum(lam, 0))
  # Eigenvalues of a float Gram matrix are only resolved down to ~m·eps·λ_max,
  # i.e. singular values down to sqrt(m·eps)·σ_max: never trust below that.
  rtol = jnp.maximum(rtol, math.sqrt(m) * jnp.sqrt(eps))
  cutoff = rtol * sigma[..., -1:]
  inv = _safe_div(jnp.ones_like(sigma), jnp.maximum(sigma, cutoff))
  return _mm(_mm(v * inv[..., None, :], _t(v)), x)


def _orthonormal_basis(y: jax.Array) -> jax.Array:
  q, _ = jnp.linalg.qr(y)
  return q


def _polar_rsvd(
    x: jax.Array,
    omega: jax.Array,
    rtol: jax.Array,
    rank: int,
    power_iters: int,
) -> jax.Array:
  # omega: the (..., n, width) Gaussian sketch.
  width = omega.shape[-1]
  q = _orthonormal_basis(_mm(x, omega))
  for _ in range(power_iters):
    q = _orthonormal_basis(_mm(x, _orthonormal_basis(_mm(_t(x), q))))
  u, s, vh = jnp.linalg.svd(_mm(_t(q), x), full_matrices=False)
  keep = min(rank, width)
  u, s, vh = u[..., :keep], s[..., :keep], vh[..., :keep, :]
  return _mm(_mm(q, u * _unit_singular_values(s, rtol)[..., None, :]), vh)


def _polar_newton_schulz(
    x: jax.Array, coeffs: tuple[tuple[float, float, float], ...],
    precision: str = "float32",
) -> jax.Array:
  # x is wide (m <= n), so x xᵀ is the small Gram matrix.
  mm = _matmul(precision)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  x = _safe_div(x, norm * 1.01)
  for a, b, c in coeffs:
    gram = mm(x, _t(x))
    x = a * x + mm(b * gram + c * mm(gram, gram), x)
  return x


def _ns_coeffs(method: str, steps: int) -> tuple[tuple[float, float, float], ...]:
  if method == "newton_schulz":
    return (MUON_NS_COEFFS,) * steps
  schedule = POLAR_EXPRESS_COEFFS
  return schedule[:steps] + (schedule[-1],) * max(0, steps - len(schedule))


def _qdwh_weights(lower: float) -> list[tuple[float, float, float]]:
  """The dynamically weighted (a, b, c) QDWH schedules for ``lower``.

  The same recurrence as ``jax.lax.linalg.qdwh``: after these steps every
  σ/α ≥ ``lower`` has converged to one (to ``5·lower``).
  """
  ell = lower
  weights: list[tuple[float, float, float]] = []
  while ell + 5 * lower < 1 and len(weights) < 10:
    l2 = ell * ell
    dd = (4 * (1 / l2 - 1) / l2) ** (1 / 3)
    sqd = math.sqrt(1 + dd)
    a = sqd + math.sqrt(2 - dd + 2 * (2 - l2) / (l2 * sqd))
    b = (a - 1) ** 2 / 4
    c = a + b - 1
    weights.append((a, b, c))
    ell = ell * (a + b * l2) / (1 + c * l2)
  return weights


def _qdwh_steps(lower: float) -> int:
  """Dynamically weighted steps QDWH schedules for the lower bound ``lower``."""
  return max(len(_qdwh_weights(lower)), 1)


def _polar_qdwh(x: jax.Array, rtol: float) -> jax.Array:
  # x is wide (m <= n); jax.lax.linalg.qdwh takes its tall transpose. Its `eps`
  # is both the assumed lower bound ℓ of σ_min/σ_max and the convergence
  # tolerance: with ℓ = rtol every σ above the cutoff converges to one within
  # the scheduled steps. The ones below stay below one only if we stop there:
  # qdwh's default Halley tail (up to 10 steps) would push float noise of
  # rank-deficient inputs up to one as well, hence max_iterations.
  steps = _qdwh_steps(rtol)
  u, _, _, _ = jax.lax.linalg.qdwh(_t(x), eps=rtol, max_iterations=steps)
  # Stopped there, QDWH maps σ ≪ rtol·α to about 14·σ/(rtol·α): float noise
  # comes out ~10x above the SVD's σ/(rtol·σ_max) (0.05-0.27 on rank-1
  # inputs). One filter s ↦ 3.5s⁵ − 2.5s⁷ of the singular values s of u
  # (monotone on [0, 1], flat at s = 1 so converged directions stay at one
  # to rounding) damps them to the SVD's level or below.
  return _t(_qdwh_filter(u))


def _qdwh_filter(u: jax.Array) -> jax.Array:
  """u·(3.5·G² − 2.5·G³) with G = uᵀu: s ↦ 3.5s⁵ − 2.5s⁷ on singular values."""
  gram = _mm(_t(u), u)
  gram2 = _mm(gram, gram)
  return _mm(u, 3.5 * gram2 - 2.5 * _mm(gram2, gram))


def _round_to_tf32(a: jax.Array) -> jax.Array:
  """``a`` (float32) rounded to TF32's 10 mantissa bits, to nearest even."""
  bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
  bits = bits + jnp.uint32(0xFFF) + ((bits >> 13) & jnp.uint32(1))
  rounded = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFE000), a.dtype)
  return jnp.where(jnp.isfinite(a), rounded, a)


def _matmul(precision: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The matrix product of the iterations at ``precision`` (float32 result).

  * ``"float32"``: full float32 products (``Precision.HIGHEST``).
  * ``"bfloat16"``: operands rounded to bfloat16, products accumulated in
    float32 (Muon's setting; the tensor cores' bfloat16 path on GPU and the
    MXU's native pass on TPU).
  * ``"tf32"``: operands rounded to TF32 (10 mantissa bits), float32
    accumulation: the ``TF32_TF32_F32`` dot algorithm on CUDA; TPUs have no
    TF32 and use their three-pass bfloat16 product (``Precision.HIGH``, at
    least as accurate); on CPU the rounding is emulated, so CPU results show
    TF32's accuracy.
  """
  if precision == "float32":
    return _mm
  if precision == "bfloat16":
    def bf16(a: jax.Array, b: jax.Array) -> jax.Array:
      return jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                        preferred_element_type=a.dtype)
    return bf16

  def tf32(a: jax.Array, b: jax.Array) -> jax.Array:
    if a.dtype != jnp.float32:  # float64 (x64): TF32 is a float32 format.
      return _mm(a, b)
    return jax.lax.platform_dependent(
        a, b,
        cuda=lambda a, b: jnp.matmul(
            a, b, precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32),
        tpu=lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGH),
        default=lambda a, b: _mm(_round_to_tf32(a), _round_to_tf32(b)))
  return tf32


def _odd_quintic_minimax(lower: float, upper: float
                         ) -> tuple[tuple[float, float, float], float]:
  """Remez: the odd quintic p minimizing max |1 − p(x)| over [lower, upper].

  The error of the optimum equioscillates at four points: ``lower``, the two
  interior extrema of p and ``upper`` (Amsel et al., 2025, Theorem 4.1).
  Returns the coefficients (a, b, c) of ax + bx³ + cx⁵ and the error E.
  """

  pts = np.array([lower, (2 * lower + upper) / 3, (lower + 2 * upper) / 3,
                  upper])
  signs = np.array([1.0, -1.0, 1.0, -1.0])
  solution = np.zeros(4)
  for _ in range(100):
    system = np.stack([pts, pts**3, pts**5, signs], axis=1)
    solution = np.linalg.solve(system, np.ones(4))
    a, b, c = solution[:3]
    roots = np.roots([5 * c, 3 * b, a])  # p'(x) = 0 in y = x².
    ys = np.sort(np.real(roots[np.isreal(roots) & (np.real(roots) > 0)]))
    xs = np.sqrt(ys)
    xs = xs[(xs > lower) & (xs < upper)]
    if len(xs) != 2:
      break
    new = np.array([lower, xs[0], xs[1], upper])
    done = np.allclose(new, pts, rtol=1e-14, atol=0)
    pts = new
    if done:
      break
  a, b, c, err = (float(v) for v in solution)
  return (a, b, c), abs(err)


_NEWTON_SCHULZ_QUINTIC = (1.875, -1.25, 0.375)  # Flat at 1 to second order.
_DAMPING = (0.0, 2.5, -1.5)  # s ↦ 2.5s³ − 1.5s⁵: 1 ↦ 1, flat there; s ≪ 1 ↦ ~s³.
_SAFETY = 1.01  # Amsel et al.'s safety factor against rounding above one.
_CUSHION = 10.0  # Each step is designed for σ/σ_max ≥ 1/_CUSHION at least.


@functools.cache
def polar_express_schedule(lower: float, tol: float = 3e-4
                           ) -> tuple[tuple[float, float, float], ...]:
  """The ``"polar_express_exact"`` steps for singular values in [lower, 1].

  Polar Express (Amsel, Persson, Musco & Gower, 2025): step k applies the odd
  quintic p_k(x) = a x + b x³ + c x⁵ that is minimax-optimal for 1 on the
  interval [max(ℓ_k, u_k/10), u_k] (their cushioning: the optimum for a
  tiny ℓ_k would map mid-sized values back down to ℓ_k, where float32
  rounding is large relative to them) the previous steps leave (Remez, in
  float64), with their safety factor (p_k(x/1.01)), until ℓ_k ≥ 0.9; then the quintic
  1.875x − 1.25x³ + 0.375x⁵ (error δ ↦ 2.5δ³) until 1 − ℓ_k ≤ ``tol``; and a
  final damping step 2.5x³ − 1.5x⁵, flat at one (error δ ↦ 7.5δ²) and cubic
  near zero, so that directions left well below one (numerically-null ones)
  are pushed down, not lifted. Every x ≥ ``lower`` ends within 7.5·tol² of
  one in exact arithmetic (``polar`` uses tol = sqrt(eps): 3.5e-4 in
  float32, 1.5e-8 in float64); ``lower`` = 1e-3 takes 8 steps, 1e-5 takes 11
  (float32).

  Example:
    >>> len(polar_express_schedule(1e-3))
    8
  """
  if not 0 < lower < 1:
    raise ValueError(f"lower must be in (0, 1), got {lower}")
  steps: list[tuple[float, float, float]] = []
  ell, up = float(lower), 1.0
  while ell < 0.9 and len(steps) < 60:
    # Cushioning (Amsel et al.): the minimax quintic for a tiny ℓ dips to
    # 1 − E ≈ a·ℓ inside the interval, sending mid-sized singular values back
    # down to ℓ's level where float rounding is relative 1e-3 (measured: 1e-4
    # off the float64 factor at κ = 9). Designed on [max(ℓ, u/CUSHION), u]
    # instead, it never maps a value below 1 − E ≈ 0.3 of the interval's top.
    (a, b, c), err = _odd_quintic_minimax(max(ell, up / _CUSHION), up)
    a, b, c = a / _SAFETY, b / _SAFETY**3, c / _SAFETY**5
    steps.append((a, b, c))
    ell, up = a * ell + b * ell**3 + c * ell**5, 1 + err
  while 1 - ell > tol and len(steps) < 60:
    a, b, c = _NEWTON_SCHULZ_QUINTIC
    steps.append(_NEWTON_SCHULZ_QUINTIC)
    ell = a * ell + b * ell**3 + c * ell**5
  steps.append(_DAMPING)
  return tuple(steps)


def polar_express_lower(shape: tuple[int, ...], rtol: float) -> float:
  """ℓ for ``"polar_express_exact"``: rtol over its norm bound's slack.

  The iteration scales the matrix by U = ‖(GGᵀ)²‖_F^{1/4}, which lies in
  [σ_max, k^{1/8}·σ_max] (k = min(m, n)), so σ ≥ rtol·σ_max implies
  σ/U ≥ rtol/k^{1/8}: the schedule is built for that lower bound.

  Example:
    >>> round(polar_express_lower((256, 256), 1e-3), 6)
    0.0005
  """
  k = min(shape[-2:])
  return min(float(rtol) / k ** 0.125, 0.5)


def _polar_express_exact(x: jax.Array, steps: tuple[tuple[float, float, float], ...],
                         precision: str) -> jax.Array:
  # x is wide (m <= n): x xᵀ is the small Gram matrix. Matrix products only,
  # batched over leading axes (no LAPACK call, so no per-matrix loop).
  mm = _matmul(precision)
  gram = mm(x, _t(x))
  gram2 = mm(gram, gram)
  # U⁴ = ‖(x xᵀ)²‖_F (a max-scaled sum of squares: no overflow), so x/U has
  # σ_max ≤ 1 and U ≤ k^{1/8}·σ_max; the first step reuses both products.
  big = jnp.max(jnp.abs(gram2), axis=(-2, -1), keepdims=True)
  fro = big * jnp.sqrt(jnp.sum(jnp.square(_safe_div(gram2, big)),
                               axis=(-2, -1), keepdims=True))
  inv2 = _safe_div(jnp.ones_like(fro), jnp.sqrt(fro))  # 1/U²
  x = x * jnp.sqrt(inv2)
  gram, gram2 = gram * inv2, gram2 * (inv2 * inv2)
  for i, (a, b, c) in enumerate(steps):
    if i:
      gram = mm(x, _t(x))
      gram2 = mm(gram, gram)
    x = a * x + mm(b * gram + c * gram2, x)
  return x


def _stack_loop(f: Callable[..., jax.Array], *flat: jax.Array) -> jax.Array:
  """``f`` over the leading axis of every array in ``flat``.

  One matrix per LAPACK call on CPU (a ``lax.map`` loop); elsewhere ``vmap``.
  """
  if flat[0].shape[0] == 1:
    return f(*(a[0] for a in flat))[None]
  return jax.lax.platform_dependent(
      *flat,
      cpu=lambda *a: jax.lax.map(lambda b: f(*b), a),
      default=jax.vmap(f))


def _fold_mapped_axes(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``_stack_loop(f, ...)`` with a ``vmap`` rule that keeps it unbatched.

  ``jax.vmap`` of a ``lax.map`` batches the loop body, turning every LAPACK
  call in it back into a batched call (the deadlock ``_per_matrix`` avoids).
  The ``custom_vmap`` rule instead folds the mapped axis into the stack's
  leading axis (``(k, B, ...)`` → ``(k·B, ...)``; unbatched arguments are
  broadcast first) and calls the same function again, so the loop covers the
  mapped models too; nested ``vmap`` (also inside ``scan``, ``shard_map`` or
  ``jit``) folds one axis per level. Elsewhere it is the same ``vmap(f)`` as
  before, reshaped: no cost on GPU/TPU.

  ``custom_vmap`` has no reverse-mode rule, so the primal sits behind a
  ``custom_jvp`` whose rule is the plain per-matrix ``jvp`` (a ``lax.map`` on
  CPU, linearizable and transposable as before): ``grad``, ``jvp`` and
  ``vmap`` all work; ``vmap`` of a derivative batches like it did before.
  """

  @jax.custom_batching.custom_vmap
  def folded(*flat: jax.Array) -> jax.Array:
    return _stack_loop(f, *flat)

  @folded.def_vmap
  def _rule(axis_size: int, in_batched: list[bool], *flat: jax.Array):
    flat = tuple(a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                 for a, b in zip(flat, in_batched, strict=True))
    y = folded(*(a.reshape(-1, *a.shape[2:]) for a in flat))
    return y.reshape(axis_size, -1, *y.shape[1:]), True

  @jax.custom_jvp
  def stack(*flat: jax.Array) -> jax.Array:
    return folded(*flat)

  @stack.defjvp
  def _jvp(primals, tangents):
    return _stack_loop(lambda *pt: jax.jvp(f, pt[:len(pt) // 2], pt[len(pt) // 2:]),
                       *primals, *tangents)

  return stack


def _per_matrix(f: Callable[..., jax.Array], x: jax.Array,
                *args: jax.Array) -> jax.Array:
  """``f`` (written for one matrix) over the leading axes of ``x`` and ``args``.

  ``args`` have the batch axes of ``x`` first (broadcast scalars explicitly);
  ``f`` must close over static values only (pass traced ones in ``args``).

  On CPU one matrix per call, in a ``lax.map`` loop: with jax/jaxlib 0.10 a
  compiled program holding several *batched* LAPACK calls (SVD, eigh, QR of
  stacks, e.g. ``egd`` on a model with several matrix shapes) can deadlock
  XLA's CPU thread pool (5 of 8 runs of a four-stack repro hung; serializing
  the stacks did not help), whereas unbatched calls never did (0 of 28); see
  "Fixed: CPU deadlock" in ``benchmarks/README.md`` and
  ``docs/lapack_deadlock.md``. Batched calls are up to 1.4x faster on 2
  cores, but a step that hangs is worse. ``jax.vmap`` over ``polar`` (e.g.
  over models or seeds) folds the mapped axes into the same loop (see
  ``_fold_mapped_axes``). Elsewhere: ``vmap`` (one batched call).
  """
  batch = x.shape[:-2]
  n = math.prod(batch)
  flat = [a.reshape(n, *a.shape[len(batch):]) for a in (x, *args)]
  y = _fold_mapped_axes(f)(*flat)
  return y.reshape(*batch, *y.shape[1:])


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
            precision if choice in _MATMUL else None))
      return jax.lax.platform_dependent(
          x, cpu=resolved(cpu), default=resolved(accelerator))
  if rtol is None:
    rtol = max(default_rtol(x.shape, dtype),
               PRECISION_RTOL.get(precision or "float32", 0.0))
  if method in _STATIC_RTOL:
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
  if min(x.shape[-2:]) == 1 and method in _EXACT_FOR_VECTORS:
    # A row or column vector's only singular value is its norm: UVᵀ = x/‖x‖,
    # exactly what the decompositions return, without a LAPACK call.
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    y = _safe_div(x, norm)
  elif method == "rsvd":
    assert rank is not None and key is not None
    *batch, m, n = x.shape
    width = min(rank + (DEFAULT_OVERSAMPLE if oversample is None else oversample),
                m, n)
    omega = jax.random.normal(key, (*batch, n, width), x.dtype)
    iters = DEFAULT_POWER_ITERS if power_iters is None else power_iters
    rsvd = functools.partial(_polar_rsvd, rank=rank, power_iters=iters)
    y = _per_matrix(rsvd, x, omega, jnp.broadcast_to(rtol, tuple(batch)))
  else:
    # The other methods are written for a wide matrix (m <= n).
    wide = _t(x) if tall else x
    if method in ("svd", "eigh"):
      one = _polar_svd if method == "svd" else _polar_eigh
      y = _per_matrix(one, wide, jnp.broadcast_to(rtol, wide.shape[:-2]))
    elif method == "qdwh":
      y = _per_matrix(functools.partial(_polar_qdwh, rtol=static_rtol_value),
                      wide)
    elif method == "polar_express_exact":
      schedule = polar_express_schedule(
          polar_express_lower(wide.shape, static_rtol_value),
          math.sqrt(float(jnp.finfo(dtype).eps)))
      y = _polar_express_exact(wide, schedule, precision or "float32")
    else:
      # Newton–Schulz and Polar Express are matmuls only: one batched program.
      steps = ns_steps or DEFAULT_NS_STEPS[method]
      y = _polar_newton_schulz(wide, _ns_coeffs(method, steps),
                               precision or "float32")
    y = _t(y) if tall else y
  # A NaN or Inf entry makes its whole matrix NaN, never a finite update.
  y = jnp.where(finite & rtol_in_range, y, jnp.nan)
  return y.astype(out_dtype)
