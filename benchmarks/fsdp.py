"""EGD on FSDP-sharded gradients: ``python -m benchmarks.fsdp``.

A GPT-2-small-sized tree of matrix gradients (default: 12 layers of 768×2304,
768×768, 768×3072 and 3072×768, 85M float32 values, 340 MB; ``--quick``: 2
layers of width 64) sharded FSDP-style (each matrix split along its rows)
over D = 2, 4, 8 simulated CPU devices, and the jitted ``egd()`` update
compiled (not run) on each path:

* ``owner`` (``Distribute(mesh)``, the default): each matrix moves whole to
  one owner device with an all-to-all, is decomposed there, and its shards go
  back with another all-to-all; the update keeps the gradient's sharding.
* ``gather`` (``Distribute(mesh, mode="gather")``): every sharded matrix is
  gathered whole on every device, the decompositions are shared out, and the
  results all-gathered back to every device (the layout of earlier releases).
* ``none`` (no ``distribute``): every device decomposes every matrix.

Each path on *explicit* mesh axes (``jax.make_mesh``'s default) and on *auto*
axes (with ``out_shardings`` pinned to the gradients', as a sharded train
step does). What is read from the compiled program, per device:

* ``temp``: ``memory_analysis().temp_size_in_bytes``, the temporaries the
  update allocates beyond its arguments and outputs, as a multiple of the
  whole gradient's bytes P. Ideal: P/D (each device holds its owned
  matrices whole).
* ``moved``: the bytes each device receives in collectives, from the HLO
  (:func:`collective_bytes`), as a multiple of P. Ideal: two all-to-alls of
  P·(D−1)/D² each.
* ``polar max/mean``: the busiest device's polar FLOPs over the mean (the
  total over D): for ``owner`` from its plan
  (:func:`optax_egd.distributed.plan_owners`, costs from
  :func:`optax_egd.distributed.polar_flops`); for ``gather`` ceil(B/D)
  decompositions per group and device, zero padding included, as the
  compiled program runs them; for ``none`` every matrix on every device (D).

Results go to ``--out`` (default ``runs/bench/fsdp-<date>-<time>``):
``fsdp.json`` (``fsdp_quick.json`` with ``--quick``) and the printed report
as ``.txt``; ``--out benchmarks/results`` refreshes the committed references.

Example:
  >>> hlo = ("%a = f32[4,8]{1,0} all-to-all(f32[4,8]{1,0} %x),"
  ...        " replica_groups={{0,1}}, dimensions={0}")
  >>> collective_bytes(hlo, 2)
  {'all-to-all': 64.0}
"""

from __future__ import annotations

import os

# Before JAX loads: simulated CPU devices.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )

from collections.abc import Sequence  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common, layer_parallel  # noqa: E402
from experiments._cli import integer  # noqa: E402
import optax_egd  # noqa: E402
from optax_egd import distributed  # noqa: E402


def gpt2_shapes(layers: int = 12, width: int = 768) -> dict[str, tuple[int, int]]:
  """Per layer: attention in (w×3w), out (w×w), MLP in (w×4w) and out (4w×w)."""
  out = {}
  for i in range(layers):
    out.update(
      {
        f"h{i}/attn/c_attn": (width, 3 * width),
        f"h{i}/attn/c_proj": (width, width),
        f"h{i}/mlp/c_fc": (width, 4 * width),
        f"h{i}/mlp/c_proj": (4 * width, width),
      }
    )
  return out


_BYTES = {
  "f64": 8,
  "f32": 4,
  "bf16": 2,
  "f16": 2,
  "s32": 4,
  "u32": 4,
  "s8": 1,
  "u8": 1,
  "pred": 1,
  "s64": 8,
  "u64": 8,
}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_COLLECTIVE = re.compile(
  r"= (.*?) (all-gather|all-to-all|all-reduce|reduce-scatter|"
  r"collective-permute)(-start)?\("
)
_GROUPS_LIST = re.compile(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)?\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([\d,]+)\]<=")


def _bytes_of(shape_text: str) -> int:
  return sum(
    _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
    for dtype, dims in _ARRAY.findall(shape_text)
  )


def _group_size(line: str, devices: int) -> int:
  if iota := _GROUPS_IOTA.search(line):
    return int(iota.group(1).split(",")[-1])
  if (groups := _GROUPS_LIST.search(line)) and groups.group(1):
    return len(groups.group(1).split("},{")[0].strip("{}").split(","))
  return devices


def _collective(line: str, devices: int) -> tuple[str, float] | None:
  """(kind, bytes one device receives) of an HLO instruction, or None."""
  found = _COLLECTIVE.search(line)
  if not found or "-done(" in line:
    return None
  shape, kind, start = found.groups()
  size = _bytes_of(shape)
  if start and kind in ("all-gather", "collective-permute"):
    arrays = _ARRAY.findall(shape)  # (operand, result[, ...]) for -start
    size = _bytes_of("{}[{}]".format(*arrays[-1])) if arrays else size
  k = _group_size(line, devices)
  if k <= 1:
    return None
  factor = {
    "all-gather": (k - 1) / k,
    "all-to-all": (k - 1) / k,
    "reduce-scatter": k - 1,
    "all-reduce": 2 * (k - 1) / k,
    "collective-permute": 1.0,
  }[kind]
  return kind, size * factor


def collective_bytes(hlo: str, devices: int) -> dict[str, float]:
  """Bytes one device receives in each kind of collective of compiled ``hlo``.

  For a group of k devices: an all-gather or all-to-all receives (k−1)/k of
  its result, a reduce-scatter (k−1) times its result, an all-reduce
  2·(k−1)/k of its operand (ring), a collective-permute its result. Async
  pairs count at their ``-start`` (an async all-gather's result is a tuple
  of operand and result: the result counts). A collective inside a ``while``
  loop counts its known trip count times, and of a ``conditional``'s
  branches the one moving the most counts
  (:func:`benchmarks.layer_parallel.hlo_totals`).
  """

  def moved(line: str) -> dict[str, float] | None:
    found = _collective(line, devices)
    return None if found is None else {found[0]: found[1]}

  return layer_parallel.hlo_totals(hlo, moved, bare=True)


def _uniform_balance(
  shapes: dict[str, tuple[int, int]], d: int, method: str, share: int
) -> float:
  """The busiest device's polar FLOPs over the mean (the total over D).

  ``share`` devices split each group, ceil(B/share) decompositions each (zero
  padding included, as the compiled program runs them): D for the gather
  path, 1 without ``distribute`` (every device decomposes every matrix).
  """
  groups: dict[tuple[int, int], int] = {}
  for shape in shapes.values():
    groups[shape] = groups.get(shape, 0) + 1
  work = sum(
    -(-b // share) * distributed.polar_flops(m, n, method)
    for (m, n), b in groups.items()
  )
  real = (
    sum(b * distributed.polar_flops(m, n, method) for (m, n), b in groups.items()) / d
  )
  return work / real


def _owner_balance(shapes: dict[str, tuple[int, int]], d: int, method: str) -> float:
  groups: dict[tuple[int, int], int] = {}
  for shape in shapes.values():
    groups[shape] = groups.get(shape, 0) + 1
  _, load = distributed.plan_owners(
    [(b, distributed.polar_flops(m, n, method)) for (m, n), b in groups.items()], d
  )
  return float(load.max() / load.mean())


PATHS = ("owner", "gather", "none")


def measure(
  shapes: dict[str, tuple[int, int]], d: int, kind: str, path: str, method: str
) -> dict[str, Any]:
  """Compiles the update for one (D, axis kind, path) and reads its costs."""
  axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
  mesh = jax.make_mesh((d,), ("fsdp",), (axis_type,), devices=jax.devices()[:d])
  sharding = NamedSharding(mesh, P("fsdp", None))
  grads = {
    k: jax.ShapeDtypeStruct(s, np.float32, sharding=sharding) for k, s in shapes.items()
  }
  distribute = {
    "owner": optax_egd.Distribute(mesh),
    "gather": optax_egd.Distribute(mesh, mode="gather"),
    "none": None,
  }[path]
  tx = optax_egd.egd(method=method, distribute=distribute)
  state = jax.eval_shape(tx.init, grads)
  pin = ({k: sharding for k in shapes}, None) if kind == "auto" else None
  t0 = time.perf_counter()
  compiled = jax.jit(tx.update, out_shardings=pin).lower(grads, state).compile()
  compile_s = time.perf_counter() - t0
  whole = sum(math.prod(s) * 4 for s in shapes.values())
  text, memory = compiled.as_text(), compiled.memory_analysis()
  assert text is not None and memory is not None
  moved = collective_bytes(text, d)
  temp = memory.temp_size_in_bytes
  balance = (
    _owner_balance(shapes, d, method)
    if path == "owner"
    else _uniform_balance(shapes, d, method, d if path == "gather" else 1)
  )
  return {
    "devices": d,
    "axes": kind,
    "path": path,
    "temp_bytes": temp,
    "temp_x": temp / whole,
    "moved_bytes": sum(moved.values()),
    "moved_x": sum(moved.values()) / whole,
    "moved_by_kind": moved,
    "balance": balance,
    "compile_s": compile_s,
    "grad_bytes": whole,
  }


def ideal(shapes: dict[str, tuple[int, int]], d: int) -> dict[str, Any]:
  """P/D held, two all-to-alls of P·(D−1)/D² received per device."""
  whole = sum(math.prod(s) * 4 for s in shapes.values())
  return {
    "devices": d,
    "axes": "-",
    "path": "ideal",
    "temp_x": 1 / d,
    "moved_x": 2 * (d - 1) / d**2,
    "temp_bytes": whole / d,
    "moved_bytes": whole * 2 * (d - 1) / d**2,
    "balance": 1.0,
    "grad_bytes": whole,
  }


def main(argv: Sequence[str] | None = None) -> None:
  parser = _common.parser("fsdp", __doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="2 layers of width 64 instead of 12 of width 768",
  )
  parser.add_argument("--layers", type=integer(1), help="default 12 (--quick: 2)")
  parser.add_argument("--width", type=integer(1), help="default 768 (--quick: 64)")
  parser.add_argument("--method", default="svd", choices=optax_egd.METHODS)
  args = parser.parse_args(argv)
  layers = (2 if args.quick else 12) if args.layers is None else args.layers
  width = (64 if args.quick else 768) if args.width is None else args.width
  shapes = gpt2_shapes(layers, width)
  ds = [d for d in (2, 4, 8) if d <= len(jax.devices())]
  out_dir = _common.out_dir(args.out, "fsdp")
  stem = _common.result_stem("fsdp", args.quick)
  with _common.tee_stdout(out_dir / f"{stem}.txt"):
    info = _common.machine_info()
    _common.print_header("EGD on FSDP-sharded gradients", info)
    whole = sum(math.prod(s) * 4 for s in shapes.values())
    print(
      f"tree: {layers} layers × ({width}×{3 * width}, {width}×{width}, "
      f"{width}×{4 * width}, {4 * width}×{width}), rows sharded over D "
      f"devices; whole gradient P = {whole / 1e6:.1f} MB; method="
      f"{args.method!r}\n"
    )
    rows: list[dict[str, Any]] = []
    for d in ds:
      rows.append(ideal(shapes, d))
      for kind in ("explicit", "auto"):
        for path in PATHS:
          rows.append(measure(shapes, d, kind, path, args.method))
          print(f"  compiled D={d} {kind} {path}", file=sys.stderr, flush=True)
    for row in rows:
      axes = "explicit" if row["path"] == "ideal" else row["axes"]
      base = next(
        r
        for r in rows
        if r["devices"] == row["devices"]
        and r["axes"] == axes
        and r["path"] == "gather"
      )
      row["moved_vs_gather"] = (
        row["moved_bytes"] / base["moved_bytes"] if base["moved_bytes"] else None
      )
    print(
      _common.markdown_table(
        rows,
        [
          ("devices", "D", "d"),
          ("axes", "axes", "s"),
          ("path", "path", "s"),
          ("temp_x", "temp / P", ".2f"),
          ("moved_x", "moved / P", ".3f"),
          ("moved_vs_gather", "moved vs gather", ".2f"),
          ("balance", "polar max/mean", ".2f"),
        ],
      )
    )
    print(
      "\nPer device, read from the compiled program (not run). P: the whole"
      " gradient's bytes. 'moved': bytes received in collectives. 'ideal':"
      " P/D held, two all-to-alls of P·(D−1)/D²."
    )
    config = {
      "layers": layers,
      "width": width,
      "devices": ds,
      "method": args.method,
      "quick": args.quick,
      "grad_bytes": whole,
      "command": "python -m benchmarks.fsdp" + (" --quick" if args.quick else ""),
    }
    written = _common.write_json(out_dir / f"{stem}.json", info, config, rows)
    print(f"wrote {written} and {stem}.txt")


if __name__ == "__main__":
  main()
