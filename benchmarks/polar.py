"""Speed and accuracy of every polar-factor method: ``python -m benchmarks.polar``.

For each shape × matrix kind × method: the median time of the compiled call
(``block_until_ready``, after compilation), the relative Frobenius error
against a float64 NumPy polar factor, and the largest deviation from one of
the singular values the reference keeps.

The reference is computed from the float32-rounded input with the library's
cutoff map σ ↦ σ / max(σ, rtol·σ_max), rtol = max(m, n)·eps_float32.
Condition-1e6 and rank-deficient float32 inputs have an inherent float32
floor: singular values near the cutoff are only known to about eps·σ_max, so
directions near it flip between kept and damped. The ``jnp_svd`` row is
that floor; compare the other methods against it (column ``err/base``).

Rows besides the library's methods:

* ``jnp_svd``: the baseline, one ``jnp.linalg.svd`` of the matrix and the
  cutoff map (the plain SVD route, without the library's QR-first step for
  rectangular matrices). ``base/this`` is its time over each method's.
* ``official_rsvd``: the official EGD script's randomized form
  (``randomized_svd_jax`` + ``egd_rsvd_update_128`` in ``main-results/
  mod_add.py`` of asahebpa/Egalitarian-Gradient-Descent): U_k S_k⁻¹ U_kᵀ G
  with ``PRNGKey(0)`` reused every call, two power iterations, S clamped at
  1e-6, rank 128.
* ``eigh_guard``: a prototype of a data-dependent ``auto``: Gram ``eigh``,
  kept only when every λ ≥ ``--guard-tol``·λ_max over the whole batch, else
  ``jax.lax.cond`` falls back to the SVD.

``rsvd`` and ``official_rsvd`` use rank ``min(--rsvd-rank, m, n)``; below the
input's rank they truncate, so their error against the full polar factor is
the truncation, by design.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
import optax_egd
from optax_egd.polar import default_rtol

Shape = tuple[int, ...]

SHAPES: tuple[Shape, ...] = (
  (100, 100),
  (400, 50),
  (50, 400),  # the paper's parity MLP
  (194, 512),
  (512, 97),  # the paper's mod-p MLP kernels
  (512, 512),
  (1024, 1024),
  (4096, 1024),
  (1024, 4096),
  (768, 3072),
  (12, 768, 768),  # 12 stacked (scanned) layers
)
QUICK_SHAPES: tuple[Shape, ...] = ((100, 100), (400, 50), (194, 512), (512, 97))
KINDS = ("gaussian", "rank_deficient", "cond_1e6", "grad")
QUICK_KINDS = ("gaussian", "grad")
# The MLP kernels the "grad" kind captures (fan_in × fan_out, as Flax stores them).
GRAD_SHAPES: dict[Shape, str] = {(194, 512): "hidden", (512, 97): "out"}
BASELINE = "jnp_svd"
METHODS = (
  BASELINE,
  *(m for m in optax_egd.METHODS if m != "auto"),
  "auto",
  "official_rsvd",
  "eigh_guard",
)
OFFICIAL_CLAMP = 1e-6
COND = 1e6


@dataclasses.dataclass
class Row:
  """One measurement (times in seconds)."""

  shape: Shape
  kind: str
  method: str
  resolves_to: str
  median_s: float
  min_s: float
  repeats: int
  compile_s: float
  rel_err: float
  max_dev_kept: float
  kept: int
  cond: float
  speedup_vs_base: float | None = None
  err_over_base: float | None = None


# ── Matrices ─────────────────────────────────────────────────────────────────
def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
  return q


def _one_matrix(kind: str, m: int, n: int, rng: np.random.Generator) -> np.ndarray:
  k = min(m, n)
  if kind == "gaussian":
    return rng.standard_normal((m, n))
  if kind == "rank_deficient":
    r = max(1, k // 8)
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
  if kind == "cond_1e6":
    s = np.logspace(0, -math.log10(COND), k)
    return (_orthonormal(rng, m, k) * s) @ _orthonormal(rng, n, k).T
  raise ValueError(f"unknown kind {kind!r}")


def make_matrix(
  kind: str, shape: Shape, seed: int, grads: dict[str, np.ndarray]
) -> np.ndarray | None:
  """A float32 input of ``kind`` and ``shape`` (None if the kind has none).

  ``grad`` exists only for the MLP kernel shapes (``GRAD_SHAPES``).
  """
  if kind == "grad":
    name = GRAD_SHAPES.get(shape)
    return None if name is None else grads[name].astype(np.float32)
  rng = np.random.default_rng(seed)
  *batch, m, n = shape
  mats = [_one_matrix(kind, m, n, rng) for _ in range(math.prod(batch))]
  return np.stack(mats).reshape(shape).astype(np.float32)


# ── Reference and error metrics ──────────────────────────────────────────────
def reference_polar(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Float64 polar factor of float32 ``x`` with the library's cutoff map.

  Returns the factor, the singular values (…, k) and the kept mask.
  """
  rtol = default_rtol(x.shape, np.dtype(np.float32))
  u, s, vh = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  cutoff = rtol * s[..., :1]
  with np.errstate(invalid="ignore", divide="ignore"):
    unit = np.where(s > 0, s / np.maximum(s, cutoff), 0.0)
  return (u * unit[..., None, :]) @ vh, s, s > cutoff


def errors(out: np.ndarray, ref: np.ndarray, kept: np.ndarray) -> tuple[float, float]:
  """Relative Frobenius error and max |σ - 1| over the reference's kept σ."""
  out = out.astype(np.float64)
  rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
  s_out = np.linalg.svd(out, compute_uv=False)
  counts = kept.sum(axis=-1).reshape(-1)
  flat = s_out.reshape(-1, s_out.shape[-1])
  dev = max(
    float(np.max(np.abs(s[:c] - 1), initial=0.0))
    for s, c in zip(flat, counts, strict=True)
  )
  return rel, dev


# ── Methods outside the library ──────────────────────────────────────────────
def jnp_svd_polar(x: jax.Array) -> jax.Array:
  """U·f(S)·Vᵀ from one ``jnp.linalg.svd``, with the library's cutoff map."""
  rtol = default_rtol(x.shape, x.dtype)
  u, s, vh = jnp.linalg.svd(x, full_matrices=False)
  cutoff = rtol * s[..., :1]
  unit = jnp.where(s > 0, s / jnp.maximum(s, jnp.where(s > 0, cutoff, 1)), 0)
  return jnp.matmul(u * unit[..., None, :], vh, precision=jax.lax.Precision.HIGHEST)


def official_rsvd(g: jax.Array, rank: int) -> jax.Array:
  """The official script's U_k S_k⁻¹ U_kᵀ G (one matrix), key reused."""
  key = jax.random.PRNGKey(0)
  q = jax.random.normal(key, (g.shape[1], rank), dtype=g.dtype)
  for _ in range(2):
    q = jnp.linalg.qr(g @ q, mode="reduced")[0]
    q = jnp.linalg.qr(g.T @ q, mode="reduced")[0]
  u, s, _ = jnp.linalg.svd(g @ q, full_matrices=False)
  s_inv = 1.0 / jnp.maximum(s, OFFICIAL_CLAMP)
  return ((u * s_inv[None, :]) @ u.T) @ g


def eigh_guard(x: jax.Array, tol: float) -> jax.Array:
  """Prototype: Gram-``eigh`` polar factor if the whole batch has
  λ_min ≥ ``tol``·λ_max (condition number ≤ tol^-1/2), else the SVD's."""
  tall = x.shape[-2] > x.shape[-1]
  wide = jnp.swapaxes(x, -1, -2) if tall else x
  hi = jax.lax.Precision.HIGHEST
  gram = jnp.matmul(wide, jnp.swapaxes(wide, -1, -2), precision=hi)
  lam, v = jnp.linalg.eigh(gram)
  ok = jnp.all(lam[..., 0] >= tol * lam[..., -1])

  def from_eigh(_: jax.Array) -> jax.Array:
    inv_sqrt = jax.lax.rsqrt(lam)
    y = jnp.matmul(
      jnp.matmul(v * inv_sqrt[..., None, :], jnp.swapaxes(v, -1, -2), precision=hi),
      wide,
      precision=hi,
    )
    return jnp.swapaxes(y, -1, -2) if tall else y

  return jax.lax.cond(ok, from_eigh, lambda a: optax_egd.polar(a, "svd"), x)


def method_fn(
  method: str, shape: Shape, rsvd_rank: int, guard_tol: float
) -> Callable[[jax.Array], jax.Array]:
  """The function of ``x`` that benchmarks ``method`` on ``shape``."""
  rank = min(rsvd_rank, *shape[-2:])
  if method == BASELINE:
    return jnp_svd_polar
  if method == "official_rsvd":
    one = lambda g: official_rsvd(g, rank)
    return lambda x: jax.vmap(one)(x.reshape(-1, *shape[-2:])).reshape(shape)
  if method == "eigh_guard":
    return lambda x: eigh_guard(x, guard_tol)
  if method == "rsvd":
    return lambda x: optax_egd.polar(x, "rsvd", rank=rank, key=jax.random.key(0))
  return lambda x: optax_egd.polar(x, method)


# ── Driver ───────────────────────────────────────────────────────────────────
def run(
  shapes: Sequence[Shape],
  kinds: Sequence[str],
  methods: Sequence[str],
  *,
  repeats: int,
  min_seconds: float,
  rsvd_rank: int,
  guard_tol: float,
  seed: int,
  verbose: bool = True,
) -> list[Row]:
  """Measures every (shape, kind, method); returns the rows.

  Per shape every method is compiled once; per input the methods are timed
  in interleaved rounds (:func:`benchmarks._common.time_interleaved`).
  """
  grads = (
    _common.paper_mlp_gradients(seed=seed)
    if "grad" in kinds and any(s in GRAD_SHAPES for s in shapes)
    else {}
  )
  rows: list[Row] = []
  for shape in shapes:
    inputs = {
      k: x for k in kinds if (x := make_matrix(k, shape, seed, grads)) is not None
    }
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    compiled = {
      m: _common.compile_fn(method_fn(m, shape, rsvd_rank, guard_tol), spec)
      for m in methods
    }
    for kind, x in inputs.items():
      ref, s, kept = reference_polar(x)
      xj = jnp.asarray(x)
      timings = _common.time_interleaved(
        {m: functools.partial(fn, xj) for m, (fn, _) in compiled.items()},
        repeats=repeats,
        min_seconds=min_seconds,
      )
      for method, (fn, compile_s) in compiled.items():
        rel, dev = errors(np.asarray(fn(xj)), ref, kept)
        t = timings[method]
        rows.append(
          Row(
            shape=shape,
            kind=kind,
            method=method,
            resolves_to=optax_egd.auto_method(shape) if method == "auto" else method,
            median_s=t.median,
            min_s=t.min,
            repeats=t.repeats,
            compile_s=compile_s,
            rel_err=rel,
            max_dev_kept=dev,
            kept=int(kept.sum(axis=-1).min()),
            cond=float(np.max(s[..., 0] / s[..., -1])),
          )
        )
        if verbose:
          print(
            f"  {shape_str(shape):>12} {kind:>14} {method:>14}"
            f" {t.median * 1e3:10.3f} ms  err {rel:.2e}  dev {dev:.2e}",
            file=sys.stderr,
            flush=True,
          )
  _add_relative(rows)
  return rows


def _add_relative(rows: list[Row]) -> None:
  bases = {(r.shape, r.kind): r for r in rows if r.method == BASELINE}
  for r in rows:
    base = bases.get((r.shape, r.kind))
    if base is not None:
      r.speedup_vs_base = base.median_s / r.median_s
      r.err_over_base = r.rel_err / base.rel_err if base.rel_err > 0 else None


def shape_str(shape: Shape) -> str:
  """``12×768×768``-style shape label."""
  return "×".join(map(str, shape))


def summary_tables(
  rows: Sequence[Row], methods: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
  """Pivots: time (ms) per shape × method on the first kind measured, and
  the worst relative error per kind × method (over shapes)."""
  shapes = list(dict.fromkeys(r.shape for r in rows))
  kinds = list(dict.fromkeys(r.kind for r in rows))
  by = {(r.shape, r.kind, r.method): r for r in rows}
  times = []
  for shape in shapes:
    line: dict[str, Any] = {"shape": shape_str(shape)}
    for m in methods:
      r = by.get((shape, kinds[0], m))
      line[m] = None if r is None else r.median_s * 1e3
    times.append(line)
  worst = []
  for kind in kinds:
    line = {"kind": kind}
    for m in methods:
      errs = [r.rel_err for r in rows if r.kind == kind and r.method == m]
      line[m] = max(errs) if errs else None
    worst.append(line)
  return {"time_ms": times, "worst_rel_err": worst}


def print_report(rows: Sequence[Row], methods: Sequence[str]) -> dict[str, Any]:
  """Prints the full table and the pivots; returns the pivots."""
  table = [
    dict(
      dataclasses.asdict(r),
      shape=shape_str(r.shape),
      ms=r.median_s * 1e3,
      min_ms=r.min_s * 1e3,
    )
    for r in rows
  ]
  print(
    _common.markdown_table(
      table,
      [
        ("shape", "shape", "s"),
        ("kind", "kind", "s"),
        ("method", "method", "s"),
        ("ms", "median ms", ".3f"),
        ("min_ms", "min ms", ".3f"),
        ("speedup_vs_base", "base/this", ".2f"),
        ("rel_err", "rel err", ".1e"),
        ("err_over_base", "err/base", ".2g"),
        ("max_dev_kept", "max|σ-1| kept", ".1e"),
        ("kept", "kept", "d"),
        ("cond", "cond", ".1e"),
      ],
    )
  )
  summary = summary_tables(rows, methods)
  kinds = list(dict.fromkeys(r.kind for r in rows))
  cols = [(m, m, ".3g") for m in methods]
  print(f"\nMedian ms ({kinds[0]} input):")
  print(_common.markdown_table(summary["time_ms"], [("shape", "shape", "s")] + cols))
  print("\nWorst relative error over shapes:")
  print(
    _common.markdown_table(
      summary["worst_rel_err"],
      [("kind", "kind", "s")] + [(m, m, ".1e") for m in methods],
    )
  )
  return summary


def parse_shape(text: str) -> Shape:
  """``"194x512"`` or ``"12x768x768"`` → a shape tuple."""
  return tuple(int(v) for v in text.lower().replace("×", "x").split("x"))


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point."""
  parser = _common.parser("polar", __doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="shapes "
    + ", ".join(map(shape_str, QUICK_SHAPES))
    + "; kinds "
    + ", ".join(QUICK_KINDS)
    + "; 3 repeats",
  )
  parser.add_argument(
    "--shapes",
    nargs="+",
    type=parse_shape,
    help="e.g. 194x512 12x768x768 (default: all)",
  )
  parser.add_argument("--kinds", nargs="+", choices=KINDS)
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
  parser.add_argument(
    "--repeats", type=int, default=5, help="timed calls at least (default 5)"
  )
  parser.add_argument(
    "--min-seconds",
    type=float,
    default=0.5,
    help="keep timing small shapes until this much time (default 0.5)",
  )
  parser.add_argument("--rsvd-rank", type=int, default=128)
  parser.add_argument(
    "--guard-tol",
    type=float,
    default=1e-3,
    help="eigh_guard: least λ_min/λ_max that keeps eigh",
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if BASELINE not in args.methods:
    args.methods = [BASELINE, *args.methods]
  shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
  kinds = args.kinds or (QUICK_KINDS if args.quick else KINDS)
  repeats = min(args.repeats, 3) if args.quick else args.repeats
  min_seconds = min(args.min_seconds, 0.1) if args.quick else args.min_seconds

  out = _common.out_dir(args.out, "polar")
  stem = _common.result_stem("polar", args.quick)
  with _common.tee_stdout(out / f"{stem}.txt"):
    info = _common.machine_info()
    _common.print_header("Polar-factor methods: time and accuracy", info)
    rows = run(
      shapes,
      kinds,
      args.methods,
      repeats=repeats,
      min_seconds=min_seconds,
      rsvd_rank=args.rsvd_rank,
      guard_tol=args.guard_tol,
      seed=args.seed,
    )
    summary = print_report(rows, args.methods)
    config = dict(
      vars(args),
      shapes=shapes,
      kinds=kinds,
      repeats=repeats,
      min_seconds=min_seconds,
      auto={shape_str(s): optax_egd.auto_method(s) for s in shapes},
    )
    path = _common.write_json(out / f"{stem}.json", info, config, rows, summary)
    print(f"\nwrote {path} and {stem}.txt")


if __name__ == "__main__":
  main()
