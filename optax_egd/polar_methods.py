"""The polar algorithms, one matrix (or a batch, for the matrix products) each.

Written for a *wide* matrix (m <= n) in float32 or wider, already scaled
(:func:`optax_egd.polar` transposes, rescales and loops over the batch); see
docs/guide/polar_methods.md for what each guarantees.

Example:
  >>> import jax.numpy as jnp
  >>> from optax_egd.polar_methods import svd_polar
  >>> svd_polar(jnp.array([[3.0, 0.0], [0.0, 0.5]]), jnp.float32(1e-6))
  Array([[1., 0.],
         [0., 1.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp

from optax_egd.polar_args import QR_ASPECT
from optax_egd.polar_schedules import qdwh_steps

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def transpose(a: jax.Array) -> jax.Array:
  """Swaps the last two axes."""
  return jnp.swapaxes(a, -1, -2)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den with 0 where den == 0; NaN in either still propagates."""
  return jnp.where(den == 0, 0, num / jnp.where(den == 0, 1, den))


def _unit_singular_values(s: jax.Array, rtol: jax.Array) -> jax.Array:
  """σ ↦ σ / max(σ, rtol·σ_max) for descending ``s`` of shape (..., k)."""
  cutoff = rtol * s[..., :1]
  return safe_div(s, jnp.maximum(s, cutoff))


def svd_polar(x: jax.Array, rtol: jax.Array) -> jax.Array:
  # x is wide (m <= n). From aspect QR_ASPECT on, a Householder QR of xᵀ first
  # (x = Rᵀ Qᵀ, so polar(x) = polar(Rᵀ)·Qᵀ) leaves the SVD an m×m matrix: the
  # same backward-stable result, faster (194×512: 5.9 vs 7.4 ms; 97×512: 2.1 vs
  # 3.2 ms on our 2-core CPU; slower on square matrices).
  m, n = x.shape[-2:]
  q = None
  if n >= QR_ASPECT * m:
    q, r = jnp.linalg.qr(transpose(x))
    x = transpose(r)
  u, s, vh = jnp.linalg.svd(x, full_matrices=False)
  y = _mm(u * _unit_singular_values(s, rtol)[..., None, :], vh)
  return y if q is None else _mm(y, transpose(q))


def eigh_polar(x: jax.Array, rtol: jax.Array) -> jax.Array:
  # x is wide (m <= n): the Gram matrix x xᵀ is the small one.
  m = x.shape[-2]
  eps = jnp.finfo(x.dtype).eps
  gram = _mm(x, transpose(x))
  lam, v = jnp.linalg.eigh(gram)
  sigma = jnp.sqrt(jnp.maximum(lam, 0))
  # Eigenvalues of a float Gram matrix are only resolved down to ~m·eps·λ_max,
  # i.e. singular values down to sqrt(m·eps)·σ_max: never trust below that.
  rtol = jnp.maximum(rtol, math.sqrt(m) * jnp.sqrt(eps))
  cutoff = rtol * sigma[..., -1:]
  inv = safe_div(jnp.ones_like(sigma), jnp.maximum(sigma, cutoff))
  return _mm(_mm(v * inv[..., None, :], transpose(v)), x)


def _orthonormal_basis(y: jax.Array) -> jax.Array:
  q, _ = jnp.linalg.qr(y)
  return q


def rsvd_polar(
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
    q = _orthonormal_basis(_mm(x, _orthonormal_basis(_mm(transpose(x), q))))
  u, s, vh = jnp.linalg.svd(_mm(transpose(q), x), full_matrices=False)
  keep = min(rank, width)
  u, s, vh = u[..., :keep], s[..., :keep], vh[..., :keep, :]
  return _mm(_mm(q, u * _unit_singular_values(s, rtol)[..., None, :]), vh)


def newton_schulz_polar(
    x: jax.Array, coeffs: tuple[tuple[float, float, float], ...],
    precision: str = "float32",
) -> jax.Array:
  # x is wide (m <= n), so x xᵀ is the small Gram matrix.
  mm = _matmul(precision)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  x = safe_div(x, norm * 1.01)
  for a, b, c in coeffs:
    gram = mm(x, transpose(x))
    x = a * x + mm(b * gram + c * mm(gram, gram), x)
  return x


def qdwh_polar(x: jax.Array, rtol: float) -> jax.Array:
  # x is wide (m <= n); jax.lax.linalg.qdwh takes its tall transpose. Its `eps`
  # is both the assumed lower bound ℓ of σ_min/σ_max and the convergence
  # tolerance: with ℓ = rtol every σ above the cutoff converges to one within
  # the scheduled steps. The ones below stay below one only if we stop there:
  # qdwh's default Halley tail (up to 10 steps) would push float noise of
  # rank-deficient inputs up to one as well, hence max_iterations.
  steps = qdwh_steps(rtol)
  u, _, _, _ = jax.lax.linalg.qdwh(transpose(x), eps=rtol, max_iterations=steps)
  # Stopped there, QDWH maps σ ≪ rtol·α to about 14·σ/(rtol·α): float noise
  # comes out ~10x above the SVD's σ/(rtol·σ_max) (0.05-0.27 on rank-1
  # inputs). One filter s ↦ 3.5s⁵ − 2.5s⁷ of the singular values s of u
  # (monotone on [0, 1], flat at s = 1 so converged directions stay at one
  # to rounding) damps them to the SVD's level or below.
  return transpose(_qdwh_filter(u))


def _qdwh_filter(u: jax.Array) -> jax.Array:
  """u·(3.5·G² − 2.5·G³) with G = uᵀu: s ↦ 3.5s⁵ − 2.5s⁷ on singular values."""
  gram = _mm(transpose(u), u)
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


def polar_express_iteration(x: jax.Array, steps: tuple[tuple[float, float, float], ...],
                         precision: str) -> jax.Array:
  # x is wide (m <= n): x xᵀ is the small Gram matrix. Matrix products only,
  # batched over leading axes (no LAPACK call, so no per-matrix loop).
  mm = _matmul(precision)
  gram = mm(x, transpose(x))
  gram2 = mm(gram, gram)
  # U⁴ = ‖(x xᵀ)²‖_F (a max-scaled sum of squares: no overflow), so x/U has
  # σ_max ≤ 1 and U ≤ k^{1/8}·σ_max; the first step reuses both products.
  big = jnp.max(jnp.abs(gram2), axis=(-2, -1), keepdims=True)
  fro = big * jnp.sqrt(jnp.sum(jnp.square(safe_div(gram2, big)),
                               axis=(-2, -1), keepdims=True))
  inv2 = safe_div(jnp.ones_like(fro), jnp.sqrt(fro))  # 1/U²
  x = x * jnp.sqrt(inv2)
  gram, gram2 = gram * inv2, gram2 * (inv2 * inv2)
  for i, (a, b, c) in enumerate(steps):
    if i:
      gram = mm(x, transpose(x))
      gram2 = mm(gram, gram)
    x = a * x + mm(b * gram + c * gram2, x)
  return x
