"""Plants known bugs one at a time and checks that ``make test`` catches each.

``python ci/mutants.py`` copies the working tree (tracked files) into a
temporary folder once per mutant, applies one edit (a bug that a real change
could make: a dropped cutoff, an ignored argument, a frozen key, ...), and
runs the default suite's tests of the files that bug can reach, stopping at
the first failure (``pytest -m "not full" -x``). Those tests are a subset of
``make test``, so a mutant they catch fails ``make test`` too. It prints a
table (mutant, caught or SURVIVED, the first failing test, seconds) and exits
1 if any mutant survived. ``--only NAME[,NAME]`` runs some; ``--list`` names
them. Run it after changing the tests: a mutant that survives is a bug the
default suite would let through.

Every edit must match its file exactly once; a mutant whose code moved is
reported as STALE (exit 1), so the list is kept up to date with the code.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
POLAR = "optax_egd/polar.py"
METHODS = "optax_egd/polar_methods.py"
SCHEDULES = "optax_egd/polar_schedules.py"
PER_MATRIX = "optax_egd/per_matrix.py"
POLAR_ARGS = "optax_egd/polar_args.py"
FLAX_DIMS = "optax_egd/flax_dimensions.py"
DIMS = "optax_egd/dimension_numbers.py"
T_FLAX_DIMS = "tests/test_flax_dimensions.py"
TRANSFORM = "optax_egd/transform.py"
BASELINES = "optax_egd/baselines.py"
RECIPE = "optax_egd/recipe.py"
T_POLAR = "tests/test_polar.py"
T_TRANSFORM = "tests/test_transform.py"
T_COMPAT = "tests/test_compat.py"
T_BASELINES = "tests/test_baselines.py"
T_HARNESS = "tests/test_optax_harness.py"
T_RECIPE = "tests/test_recipe.py"
T_VMAP = "tests/test_vmap.py"
T_EXPORT = "tests/test_export.py"
LEADERBOARD = "experiments/leaderboard.py"
SWEEP = "experiments/sweep_grokfast.py"
REGISTRY = "experiments/registry.py"
T_LEADERBOARD = "tests/test_leaderboard.py"
T_SWEEP = "tests/test_sweep_grokfast.py"
T_REGISTRY = "tests/test_registry.py"


class Mutant(NamedTuple):
  name: str
  what: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]


MUTANTS = (
  Mutant("svd-cutoff", "exact methods: the small-σ cutoff dropped", METHODS,
         "cutoff = rtol * s[..., :1]", "cutoff = 0 * s[..., :1]",
         (T_POLAR, T_TRANSFORM)),
  Mutant("enabled-ignored", "egd: state.enabled ignored", TRANSFORM,
         "jax.lax.cond(\n        enabled_now,", "jax.lax.cond(\n        True,",
         (T_TRANSFORM, T_COMPAT)),
  Mutant("key-frozen", "egd: the key never split", TRANSFORM,
         "key=jax.random.key_data(next_key),", "key=state.key,",
         (T_TRANSFORM, T_COMPAT)),
  Mutant("count-frozen", "egd: count not incremented", TRANSFORM,
         "count=optax.safe_increment(state.count),", "count=state.count,",
         (T_TRANSFORM, T_COMPAT, T_HARNESS)),
  Mutant("rsvd-power-iters", "rsvd: power iterations skipped", METHODS,
         "for _ in range(power_iters):", "for _ in range(0):",
         (T_POLAR,)),
  Mutant("rsvd-oversample", "rsvd: the oversample argument ignored", POLAR,
         "rank + (DEFAULT_OVERSAMPLE if oversample is None else oversample)",
         "rank + DEFAULT_OVERSAMPLE", (T_POLAR,)),
  Mutant("ns-steps-ignored", "Newton–Schulz/Polar Express: ns_steps ignored",
         POLAR, "steps = DEFAULT_NS_STEPS[method] if ns_steps is None else ns_steps",
         "steps = DEFAULT_NS_STEPS[method]", (T_POLAR,)),
  Mutant("nan-guard", "a non-finite matrix gives a finite update", POLAR,
         "y = jnp.where(finite & rtol_in_range, y, jnp.nan)",
         "y = jnp.where(rtol_in_range, y, jnp.nan)", (T_POLAR,)),
  Mutant("no-rescale", "no power-of-two rescale (overflow, scale)", POLAR,
         "x = jnp.where(finite, jnp.ldexp(x, -jnp.where(finite, jnp.frexp(amax)[1],"
         " 0)), 0)", "x = jnp.where(finite, x, 0)", (T_POLAR,)),
  Mutant("qdwh-filter", "qdwh: the noise filter dropped", METHODS,
         "return transpose(_qdwh_filter(u))", "return transpose(u)", (T_POLAR,)),
  Mutant("eigh-floor", "eigh: the Gram resolution floor dropped", METHODS,
         "rtol = jnp.maximum(rtol, math.sqrt(m) * jnp.sqrt(eps))", "rtol = rtol",
         (T_POLAR,)),
  Mutant("cpu-batched-lapack", "CPU: stacks decomposed in one batched call",
         PER_MATRIX, "cpu=lambda *a: jax.lax.map(lambda b: f(*b), a),",
         "cpu=jax.vmap(f),", (T_POLAR, T_VMAP)),
  Mutant("muon-scale", "scale='muon': fan-in and fan-out swapped", TRANSFORM,
         "return math.sqrt(max(1.0, n / m))", "return math.sqrt(max(1.0, m / n))",
         (T_TRANSFORM, T_RECIPE)),
  Mutant("grokfast-ema-lamb", "grokfast_ema: lamb ignored", BASELINES,
         "lambda g, m: (g + lamb * m)", "lambda g, m: (g + m)", (T_BASELINES,)),
  Mutant("grokfast-ma-warmup", "grokfast_ma: warmup ignored", BASELINES,
         "out = jnp.where(count >= window, out, g)", "out = out", (T_BASELINES,)),
  Mutant("grokfast-ma-evict", "grokfast_ma: the running sum drops the wrong slot",
         BASELINES, "evict = (slot + 1) % window", "evict = slot",
         (T_BASELINES,)),
  Mutant("grokfast-ma-stale-refresh",
         "grokfast_ma: the exact refresh sums the buffer before this step's write",
         BASELINES, "state.kept_sum, buffer)", "state.kept_sum, state.buffer)",
         (T_BASELINES,)),
  Mutant("column-norm-floor", "column_norm: the relative floor dropped",
         BASELINES,
         "floor = jnp.maximum(rtol * largest, jnp.finfo(norms.dtype).tiny)",
         "floor = jnp.finfo(norms.dtype).tiny", (T_BASELINES,)),
  Mutant("column-norm-axis", "column_norm: axis=-1 normalizes columns",
         BASELINES,
         "norms = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x)), axis=axis, keepdims=True))",
         "norms = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x)), axis=-2, keepdims=True))",
         (T_BASELINES, T_HARNESS)),
  Mutant("orthograd-rescale", "orthograd: not rescaled to ‖g‖", BASELINES,
         "return (perp * (g_norm / jnp.maximum(perp_norm, floor))).astype(g.dtype)",
         "return perp.astype(g.dtype)", (T_BASELINES,)),
  Mutant("egdm-decay", "egdm: weight_decay ignored", RECIPE,
         "optax.add_decayed_weights(weight_decay, weight_decay_mask),",
         "optax.add_decayed_weights(0.0, weight_decay_mask),", (T_RECIPE,)),
  Mutant("auto-host-backend", "auto: chosen by the host, not the lowering platform",
         POLAR,
         'accelerator = auto_method(x.shape, "cuda") if static_rtol else "svd"',
         'accelerator = auto_method(x.shape) if static_rtol else "svd"',
         (T_EXPORT,)),
  Mutant("pee-no-norm-slack", "polar_express_exact: ℓ = rtol (U's slack ignored)",
         SCHEDULES, "return min(float(rtol) / k ** 0.125, 0.5)",
         "return min(float(rtol), 0.5)", (T_POLAR,)),
  Mutant("pee-no-damping", "polar_express_exact: no final damping step",
         SCHEDULES,
         "  steps.append(_DAMPING)\n", "", (T_POLAR,)),
  Mutant("rtol-range-unchecked", "rtol out of [0, 1) accepted (SVD methods)",
         POLAR_ARGS, "if not 0 <= value < 1:", "if False:", (T_POLAR,)),
  Mutant("traced-rtol-unchecked", "a traced rtol out of range gives a factor",
         POLAR, "rtol_in_range = static_rtol or ((rtol >= 0) & (rtol < 1))",
         "rtol_in_range = True", (T_POLAR,)),
  Mutant("warning-at-library-line", "default-axes warning points into the library",
         DIMS, "stacklevel=user_stacklevel())", "stacklevel=2)",
         (T_FLAX_DIMS,)),
  Mutant("flax-vectors-as-matrices", "flax_dimension_numbers: biases, norms labelled"
         " as matrices", FLAX_DIMS,
         "return NOT_A_MATRIX  # biases, norm scales and statistics: vectors",
         "return DimensionNumbers(-2, -1)", (T_FLAX_DIMS,)),
  Mutant("precision-ignored", "polar: precision not passed to the iteration",
         POLAR, "y = polar_express_iteration(wide, schedule, precision or \"float32\")",
         "y = polar_express_iteration(wide, schedule, \"float32\")",
         (T_POLAR, T_TRANSFORM)),
  Mutant("plugin-hash-unkeyed", "leaderboard: a plugin's file hash left out of the "
         "row key (a changed file skips its runs)", LEADERBOARD,
         'key.append(row["plugin"]["sha256"])', "pass", (T_LEADERBOARD,)),
  Mutant("sweep-lr-knob", "sweep_grokfast: the swept lr always sets `lr`, not the "
         "knob the optimizer's grid tunes", SWEEP,
         "build, knob = spec.builder(), spec.tuned[0]",
         'build, knob = spec.builder(), "lr"', (T_SWEEP,)),
  Mutant("plugin-unregistered", "registry: a plugin's specs are not registered",
         REGISTRY, "specs = [register(dataclasses.replace(s, plugin=marked))",
         "specs = [(dataclasses.replace(s, plugin=marked))", (T_REGISTRY,)),
)


def _copy_tree(dest: Path) -> None:
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode().split("\0")
  for name in filter(None, files):
    src = ROOT / name
    if src.is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / name)


def run(mutant: Mutant, timeout: float) -> tuple[str, str, float]:
  """(verdict, first failing test or reason, seconds) for one mutant."""
  source = (ROOT / mutant.path).read_text()
  if source.count(mutant.old) != 1:
    return "STALE", f"{mutant.path}: the edit matches {source.count(mutant.old)}x", 0.0
  with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
    work = Path(tmp)
    _copy_tree(work)
    (work / mutant.path).write_text(source.replace(mutant.old, mutant.new))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    try:
      done = subprocess.run(
          [sys.executable, "-m", "pytest", "-m", "not full", "-x", "-q",
           "-p", "no:cacheprovider", "-p", "no:randomly", *mutant.tests],
          cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
          check=False)
    except subprocess.TimeoutExpired:
      return "caught", f"timed out after {timeout:.0f} s", timeout
    seconds = time.perf_counter() - start
  if done.returncode == 0:
    return "SURVIVED", "all passed", seconds
  failed = [line.split(" ", 1)[1].split(" - ")[0] for line in
            done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
  return "caught", (failed[0] if failed else f"pytest exit {done.returncode}"), seconds


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python ci/mutants.py", description=__doc__.split(
      "\n\n")[0])
  p.add_argument("--only", help="comma-separated mutant names")
  p.add_argument("--list", action="store_true", help="list the mutants and exit")
  p.add_argument("--timeout", type=float, default=900,
                 help="seconds per mutant (default 900)")
  args = p.parse_args(argv)
  chosen = MUTANTS
  if args.only:
    names = args.only.split(",")
    unknown = sorted(set(names) - {m.name for m in MUTANTS})
    if unknown:
      p.error(f"--only: unknown mutant(s) {', '.join(unknown)}")
    chosen = tuple(m for m in MUTANTS if m.name in names)
  if args.list:
    for m in chosen:
      print(f"{m.name}: {m.what} ({m.path})")
    return 0
  print("| mutant | what | verdict | first failing test | s |")
  print("|---|---|---|---|---|")
  bad = 0
  for m in chosen:
    verdict, detail, seconds = run(m, args.timeout)
    bad += verdict != "caught"
    print(f"| {m.name} | {m.what} | {verdict} | {detail} | {seconds:.0f} |",
          flush=True)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
