"""Layer-parallel polar factors: ``python -m benchmarks.layer_parallel``.

A model with many matrices (default: 24 layers of a 768×768 and a 768×3072
matrix; ``--quick``: 8 layers of 256×256 and 256×1024) and ``egd()`` with and
without ``distribute`` on D = 1, 2, 4, 8 devices. On CPU the script simulates
the devices (``--xla_force_host_platform_device_count``, set before JAX loads).

Simulated devices all share this machine's cores, so wall-clock time cannot
show a speedup from spreading work over them. What is measured instead:

* ``matrices / device``: how many decompositions each device runs, read from
  the compiled program (:func:`svd_counts`: every LAPACK SVD call, times the
  batch it decomposes, times the trip counts of the loops around it; on CPU
  ``polar`` decomposes a stack one matrix at a time in a loop), for
  ``egd(distribute=mesh)`` on each D-device mesh. Falls as ceil(B/D) per
  same-shape group of B matrices.
* ``polar s``: the time of one device's share (ceil(B/D) matrices of each
  group) decomposed on one device, one matrix after another (``lax.map``, so
  jaxlib does not spread a batch over the shared thread pool): the per-device
  compute time on hardware where each device computes on its own.
* ``all-gather s`` / ``MB in``: the collective that brings the decomposed
  matrices back to every device (a ``P(axis)``-sharded (B_pad, m, n) stack per
  group resharded to replicated), its time and the bytes each device receives.
  Between simulated CPU devices it is a memory copy: a lower bound, not an
  estimate of ICI/NVLink time.
* ``update s`` on the largest mesh, replicated gradients: the whole
  ``egd`` update without ``distribute`` (every device decomposes every
  matrix: D times the total work) and with it (each matrix once). With all
  devices on the same cores this is the saving in *total* work, not a
  per-device speedup.

Results go to ``--out`` (default ``runs/bench/layer_parallel-<date>-<time>``):
``layer_parallel.json`` (``layer_parallel_quick.json`` with ``--quick``) and
the printed report as ``.txt``; ``--out benchmarks/results`` refreshes the
committed references.
"""

from __future__ import annotations

import os

# Before JAX loads: simulated CPU devices.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )

from collections.abc import Callable, Sequence  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from benchmarks import _common  # noqa: E402
from experiments._cli import integer  # noqa: E402
import optax_egd  # noqa: E402

Shapes = dict[tuple[int, int], int]
"""Matrix shape (m, n) → how many matrices of that shape (a group's B)."""


def model_shapes(layers: int, width: int) -> Shapes:
  """A layer's (width, width) and (width, 4·width) matrices, ``layers`` times."""
  return {(width, width): layers, (width, 4 * width): layers}


def gradients(shapes: Shapes, seed: int = 0) -> dict[str, jax.Array]:
  """One leaf per matrix, like an unscanned model's parameters."""
  key = jax.random.key(seed)
  out = {}
  for (m, n), count in shapes.items():
    for i in range(count):
      key, sub = jax.random.split(key)
      out[f"{m}x{n}/{i}"] = jax.random.normal(sub, (m, n))
  return out


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([^\s(]+) ")
_SVD_CALL = re.compile(
  r"custom_call_target=\"lapack_[sdcz]ges[dv]d[^\"]*\".*?"
  r"operand_layout_constraints=\{[a-z0-9]+\[([\d,]*)\]"
)
_WHILE = re.compile(r" while\(.*?body=%([^\s,]+)")
_TRIP_COUNT = re.compile(r"\"known_trip_count\":\{\"n\":\"(\d+)\"")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CALLED = re.compile(
  r"(?:calls|to_apply|true_computation|false_computation)"
  r"=%([^\s,]+)"
)


def hlo_totals(
  hlo: str,
  per_line: Callable[[str], dict[str, float] | None],
  *,
  bare: bool = False,
) -> dict[str, float]:
  """Totals of ``per_line`` over what one run of compiled ``hlo`` executes.

  ``per_line`` maps an instruction to ``{key: amount}`` (None: nothing). The
  entry computation's instructions count once, the computations they call
  (fusions, calls) once per call, a ``while`` loop's body its known trip
  count times (``lax.map`` over a stack), and of a ``conditional``'s
  branches the one with the largest total (EGD enabled). ``bare``: a bare
  instruction list without computations is the entry.
  """
  bodies: dict[str, list[str]] = {}
  current: list[str] | None = None
  entry = ""
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header and line.rstrip().endswith("{"):
      current = bodies.setdefault(header.group(1), [])
      if line.startswith("ENTRY"):
        entry = header.group(1)
    elif line.startswith("}"):
      current = None
    elif current is not None:
      current.append(line)

  def add(into: dict[str, float], other: dict[str, float], times: float) -> None:
    for key, n in other.items():
      into[key] = into.get(key, 0) + n * times

  @functools.cache
  def count(name: str) -> tuple[tuple[str, float], ...]:
    total: dict[str, float] = {}
    for line in bodies.get(name, ()):
      if found := per_line(line):
        add(total, found, 1)
      elif loop := _WHILE.search(line):
        trips = _TRIP_COUNT.search(line)
        if trips is None:
          raise ValueError(f"a loop without a known trip count: {line[:200]}")
        add(total, dict(count(loop.group(1))), int(trips.group(1)))
      elif branches := _BRANCHES.search(line):
        counts = [
          dict(count(b.strip().lstrip("%"))) for b in branches.group(1).split(",")
        ]
        add(total, max(counts, key=lambda c: sum(c.values())), 1)
      else:
        for called in _CALLED.findall(line):
          add(total, dict(count(called)), 1)
    return tuple(sorted(total.items()))

  if not entry:
    if not bare:
      raise ValueError("no ENTRY computation in the HLO text")
    bodies[entry] = hlo.splitlines()
  return dict(count(entry))


def _svd_matrices(line: str) -> dict[str, float] | None:
  """``{"m×n": matrices}`` of an SVD custom call, or None."""
  if call := _SVD_CALL.search(line):
    dims = [int(d) for d in call.group(1).split(",") if d]
    return {"×".join(map(str, dims[-2:])): math.prod(dims[:-2])}
  return None


def svd_counts(hlo: str) -> dict[str, int]:
  """Matrices a compiled program decomposes with LAPACK SVDs, by matrix shape.

  ``hlo`` is ``compiled.as_text()`` (per device after SPMD partitioning).
  Every SVD custom call counts the matrices of its operand (the product of
  its leading dimensions: 1 for one matrix, B for a batched call), through
  loops and branches as :func:`hlo_totals` counts. Keys are ``"m×n"`` of
  the matrices the SVDs see (after the QR that reduces a wide matrix to a
  square one).
  """
  return {k: int(n) for k, n in hlo_totals(hlo, _svd_matrices).items()}


def mesh_of(d: int) -> jax.sharding.Mesh:
  return jax.make_mesh((d,), ("d",), devices=jax.devices()[:d])


def per_device_rows(
  shapes: Shapes, ds: Sequence[int], *, repeats: int
) -> list[dict[str, Any]]:
  """Matrices, polar time and all-gather per device, for each D."""
  grads = gradients(shapes)
  rows, polar_calls, gather_calls = [], {}, {}
  for d in ds:
    mesh = mesh_of(d)
    tx = optax_egd.egd(distribute=mesh)
    placed = jax.device_put(grads, NamedSharding(mesh, P()))
    compiled, _ = _common.compile_fn(tx.update, placed, tx.init(placed))
    svds = svd_counts(compiled.as_text())
    # One device's share, decomposed on one device, one matrix at a time.
    share = [
      jax.device_put(
        jax.random.normal(jax.random.key(m), (math.ceil(b / d), m, n)), jax.devices()[0]
      )
      for (m, n), b in shapes.items()
    ]
    polar_fn, _ = _common.compile_fn(
      lambda xs: [jax.lax.map(optax_egd.polar, x) for x in xs], share
    )
    polar_calls[d] = functools.partial(polar_fn, share)
    # The gather: each group's (B_pad, m, n) stack from P("d") to replicated.
    padded = [
      jax.device_put(
        jnp.ones((math.ceil(b / d) * d, m, n)), NamedSharding(mesh, P("d"))
      )
      for (m, n), b in shapes.items()
    ]
    if d > 1:
      gather_fn, _ = _common.compile_fn(
        lambda xs, mesh=mesh: [
          jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P())) for x in xs
        ],
        padded,
      )
      gather_calls[d] = functools.partial(gather_fn, padded)
    rows.append(
      {
        "devices": d,
        "svds_per_device": svds,
        "matrices_per_device": sum(svds.values()),
        "expected": sum(math.ceil(b / d) for b in shapes.values()),
        "gather_mb_in": sum(x.size * 4 for x in padded) * (d - 1) / d / 1e6,
      }
    )
    print(f"  compiled D={d}", file=sys.stderr, flush=True)
  polar_t = _common.time_interleaved(
    {str(d): call for d, call in polar_calls.items()}, repeats=repeats, min_seconds=0.0
  )
  gather_t = _common.time_interleaved(
    {str(d): call for d, call in gather_calls.items()}, repeats=repeats, min_seconds=0.0
  )
  base = polar_t[str(ds[0])].median
  for row in rows:
    t = polar_t[str(row["devices"])]
    row.update(polar_s=t.median, polar_min_s=t.min, polar_ratio=t.median / base)
    g = gather_t.get(str(row["devices"]))
    row.update(gather_s=g.median if g else None, gather_min_s=g.min if g else None)
  return rows


def update_rows(shapes: Shapes, d: int, *, repeats: int) -> list[dict[str, Any]]:
  """The whole egd update on a D-device mesh, without and with distribute."""
  mesh = mesh_of(d)
  grads = jax.device_put(gradients(shapes), NamedSharding(mesh, P()))
  calls: dict[str, Callable[[], Any]] = {}
  rows: list[dict[str, Any]] = []
  for name, distribute in (("egd()", None), ("egd(distribute=mesh)", mesh)):
    tx = optax_egd.egd(distribute=distribute)
    state = tx.init(grads)
    compiled, compile_s = _common.compile_fn(tx.update, grads, state)
    calls[name] = functools.partial(compiled, grads, state)
    svds = svd_counts(compiled.as_text())
    rows.append(
      {
        "update": name,
        "devices": d,
        "svds_per_device": svds,
        "matrices_per_device": sum(svds.values()),
        "matrices_all_devices": sum(svds.values()) * d,
        "compile_s": compile_s,
      }
    )
    print(f"  compiled {name}", file=sys.stderr, flush=True)
  timings = _common.time_interleaved(calls, repeats=repeats, min_seconds=0.0)
  for row in rows:
    t = timings[row["update"]]
    row.update(update_s=t.median, update_min_s=t.min, repeats=t.repeats)
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  parser = _common.parser("layer_parallel", __doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="8 layers of width 256 instead of 24 of width 768",
  )
  parser.add_argument("--layers", type=integer(1), help="default 24 (--quick: 8)")
  parser.add_argument("--width", type=integer(1), help="default 768 (--quick: 256)")
  parser.add_argument("--repeats", type=integer(1), default=3)
  args = parser.parse_args(argv)
  if args.layers is None:
    args.layers = 8 if args.quick else 24
  if args.width is None:
    args.width = 256 if args.quick else 768
  layers, width = args.layers, args.width
  shapes = model_shapes(layers, width)
  n = len(jax.devices())
  ds = [d for d in (1, 2, 4, 8) if d <= n]
  out = _common.out_dir(args.out, "layer_parallel")
  stem = _common.result_stem("layer_parallel", args.quick)
  with _common.tee_stdout(out / f"{stem}.txt"):
    info = _common.machine_info()
    _common.print_header("Layer-parallel polar: egd(distribute=...)", info)
    print(
      f"model: {layers} layers × ({width}×{width}, {width}×{4 * width}): "
      f"{sum(shapes.values())} matrices; D = {ds}\n"
    )

    per_device = per_device_rows(shapes, ds, repeats=args.repeats)
    print(
      _common.markdown_table(
        per_device,
        [
          ("devices", "D", "d"),
          ("matrices_per_device", "matrices / device", "d"),
          ("expected", "ceil(B/D) per group", "d"),
          ("polar_s", "polar s (one device's share)", ".3f"),
          ("polar_ratio", "vs D=1", ".2f"),
          ("gather_s", "all-gather s", ".4f"),
          ("gather_mb_in", "MB in / device", ".1f"),
        ],
      )
    )
    print()
    updates = update_rows(shapes, ds[-1], repeats=args.repeats)
    print(
      _common.markdown_table(
        updates,
        [
          ("update", f"update on {ds[-1]} devices", "s"),
          ("matrices_per_device", "matrices / device", "d"),
          ("matrices_all_devices", "decompositions, all devices", "d"),
          ("update_s", "wall s (median)", ".3f"),
          ("update_min_s", "min", ".3f"),
        ],
      )
    )
    print(
      "\nSimulated devices share the machine's cores: 'polar s' is the"
      " per-device compute time; the update's wall time reflects total work"
      " across devices, not a per-device speedup."
    )
    config = {
      "layers": layers,
      "width": width,
      "devices": ds,
      "repeats": args.repeats,
      "quick": args.quick,
    }
    path = _common.write_json(
      out / f"{stem}.json", info, config, {"per_device": per_device, "update": updates}
    )
    print(f"wrote {path} and {stem}.txt")


if __name__ == "__main__":
  main()
