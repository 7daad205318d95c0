"""Coefficient schedules of the matrix-product polar iterations (NumPy, no JAX).

Muon's Newton–Schulz quintic, the published Polar Express steps, the Polar
Express schedule built for a lower bound (Remez in float64) that
``"polar_express_exact"`` runs, and the number of QDWH steps for a lower
bound.

Example:
  >>> from optax_egd.polar_schedules import polar_express_schedule
  >>> len(polar_express_schedule(1e-3))
  8
"""

from __future__ import annotations

import functools
import math

import numpy as np

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


def ns_coeffs(method: str, steps: int) -> tuple[tuple[float, float, float], ...]:
  """The (a, b, c) of ``steps`` steps of ``"newton_schulz"`` or ``"polar_express"``."""
  if method == "newton_schulz":
    return (MUON_NS_COEFFS,) * steps
  schedule = POLAR_EXPRESS_COEFFS
  return schedule[:steps] + (schedule[-1],) * max(0, steps - len(schedule))


def qdwh_weights(lower: float) -> list[tuple[float, float, float]]:
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


def qdwh_steps(lower: float) -> int:
  """Dynamically weighted steps QDWH schedules for the lower bound ``lower``."""
  return max(len(qdwh_weights(lower)), 1)


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
