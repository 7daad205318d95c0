"""Sharding checks for ``egd``, run by ``tests/test_sharding.py`` in a subprocess.

Needs 8 devices, e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
on CPU (the test sets it).

Every check compares the update on a (2, 4) ("data", "model") mesh with the
single-device update (values to 1e-6 relative; on explicit axes also the
sharding, which must be the gradient's) and prints one JSON object
``{check name: traceback or null}`` on the last line of stdout. Run by hand:
``XLA_FLAGS=--xla_force_host_platform_device_count=8 python
tests/_sharding_worker.py [CHECK ...]`` (no names: every check but ``FULL``).
"""

from __future__ import annotations

from collections.abc import Callable
import json
import re
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import optax_egd

RTOL = 1e-6
ALL = ("data", "model")
# Same-shape groups per layout: (32, 64) × 5, (64, 32) × 1, (16, 16) × 10. All
# four layouts go in one tree: groups of 20 (padded to 24 on 8 devices), 4
# (fewer matrices than devices) and 40.
SHAPES = {"w1": (32, 64), "w2": (32, 64), "stack": (3, 32, 64),
          "w3": (64, 32), "layers": (10, 16, 16), "b": (64,)}
# Partition specs of the last two axes of matrices; vectors get the last entry.
LAYOUTS = {
    "replicated": (None, None),
    "fsdp": (ALL, None),           # each matrix split along its rows
    "tensor": (None, "model"),     # split along its columns
    "fsdp+tensor": ("data", "model"),
}


def _grads(rank: int | None = None) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  out = {}
  for name, shape in SHAPES.items():
    if rank is None or len(shape) < 2:
      out[name] = rng.standard_normal(shape, np.float32)
    else:  # a product of thin factors: rank `rank` per matrix
      *batch, m, n = shape
      a = rng.standard_normal((*batch, m, rank), np.float32)
      out[name] = a @ rng.standard_normal((*batch, rank, n), np.float32)
  return out


def _spec(shape: tuple[int, ...], layout: str) -> P:
  rows, cols = LAYOUTS[layout]
  if len(shape) == 1:
    return P(cols)
  return P(*(None,) * (len(shape) - 2), rows, cols)


def _place(grads: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
           layouts: tuple[str, ...] = tuple(LAYOUTS)) -> Any:
  """``{layout: grads placed with it}``: one tree, so one compilation."""
  return {la: {k: jax.device_put(v, NamedSharding(mesh, _spec(v.shape, la)))
               for k, v in grads.items()} for la in layouts}


def _compare(out: Any, ref: dict[str, jax.Array], placed: Any) -> None:
  for la, tree in placed.items():
    for k, r in ref.items():
      r = np.asarray(r)
      err = np.linalg.norm(np.asarray(out[la][k]) - r) / np.linalg.norm(r)
      assert err <= RTOL, f"{la}/{k}: relative error {err:.2e} > {RTOL}"
      got, want = out[la][k].sharding, tree[k].sharding
      assert got.is_equivalent_to(want, r.ndim), (
          f"{la}/{k}: sharding {got} is not the gradient's {want}")


def _run(tx: optax.GradientTransformation, grads: Any,
         pin: bool = False) -> tuple[Any, list[int]]:
  """The jitted update and the per-device batch sizes of its LAPACK SVDs.

  ``pin`` fixes the updates' sharding to the gradients' with ``out_shardings``
  (on auto axes XLA picks the layout of a jit's outputs, so a sharded train
  step pins it; on explicit axes the updates carry it themselves).
  """
  shardings = jax.tree.map(lambda g: g.sharding, grads) if pin else None
  update = jax.jit(tx.update, out_shardings=(shardings, None) if pin else None)
  state = tx.init(grads)
  compiled = update.lower(grads, state).compile()
  return compiled(grads, state)[0], _svd_batches(compiled.as_text())


def _svd_batches(hlo: str) -> list[int]:
  """Matrices per SVD group in compiled CPU HLO, sorted.

  On CPU ``polar`` decomposes a stack one matrix at a time: a ``while`` loop
  (its known trip count is the stack size) whose body holds an unbatched
  ``sgesdd``; a stack of one is a single unbatched call outside any loop.
  """
  svd = 'custom_call_target="lapack_sgesdd'
  bodies = {name for name, text in re.findall(
      r"^(?:ENTRY )?%(\S+) .*?\{\n(.*?)^\}", hlo, re.M | re.S) if svd in text}
  loops = [int(n) for body, n in re.findall(
      r'body=%(\S+?),.*"known_trip_count":\{"n":"(\d+)"\}', hlo)
      if body in bodies]
  single = [line for line in hlo.splitlines()
            if svd in line and "/while/body/" not in line]
  return sorted(loops + [1] * len(single))


def _update(tx: optax.GradientTransformation, grads: Any,
            pin: bool = False) -> Any:
  return _run(tx, grads, pin)[0]


def checks() -> dict[str, Callable[[], None]]:
  """Every check by name; each raises on failure."""
  auto = jax.make_mesh((2, 4), ALL, (AxisType.Auto,) * 2)
  explicit = jax.make_mesh((2, 4), ALL, (AxisType.Explicit,) * 2)
  grads = _grads()
  ref = _update(optax_egd.egd(method="svd"), grads)
  found: dict[str, Callable[[], None]] = {}

  def same_as_one_device(mesh: jax.sharding.Mesh, distribute: Any,
                         batches: list[int]) -> None:
    placed = _place(grads, mesh)
    tx = optax_egd.egd(method="svd", distribute=distribute)
    pin = mesh is auto
    if distribute == optax_egd.Distribute():  # the mesh from jax.set_mesh
      with jax.set_mesh(mesh):
        out, got = _run(tx, placed, pin)
    else:
      out, got = _run(tx, placed, pin)
    _compare(out, ref, placed)
    # Per-device decompositions: groups (64, 32)×4, (32, 64)×20, (16, 16)×40
    # (all layouts in one tree), ceil(B/D) of each per device.
    assert got == batches, f"per-device SVD batches {got} != {batches}"

  # Owner mode on 8 devices: the (64, 32)×4 group pads to one slot per owner
  # (a conditional SVD: owners without a matrix skip it), (32, 64)×20 to 3
  # slots (a loop of 2 and a conditional one), (16, 16)×40 is 5 each.
  every, model, owner = [4, 20, 40], [1, 5, 10], [1, 1, 2, 5]
  for kind, mesh in (("auto", auto), ("explicit", explicit)):
    for tag, dist, batches in (
        ("", None, every),
        ("/distribute=all", optax_egd.Distribute(mesh, ALL), owner),
        ("/distribute=model", optax_egd.Distribute(mesh, "model"), model),
        ("/distribute=set_mesh", optax_egd.Distribute(), owner),
        ("/distribute=gather", optax_egd.Distribute(mesh, mode="gather"),
         [1, 3, 5])):
      if kind == "explicit" and tag == "/distribute=model":
        continue  # the same code path as "all" there
      if kind == "auto" and tag == "/distribute=gather":
        continue  # the path of auto/distribute=all before owner-compute
      found[f"{kind}{tag}"] = (
          lambda m=mesh, d=dist, b=batches: same_as_one_device(m, d, b))

  def rsvd_low_rank() -> None:
    low = {"layers": _grads(rank=2)["layers"]}  # 10 matrices: padded to 16
    want = _update(optax_egd.egd(method="rsvd", rank=2, power_iters=0), low)
    placed = _place(low, explicit, ("fsdp",))
    tx = optax_egd.egd(method="rsvd", rank=2, power_iters=0,
                       distribute=explicit)
    _compare(_update(tx, placed), want, placed)

  def disabled_is_identity() -> None:
    placed = _place(grads, explicit, ("fsdp+tensor",))["fsdp+tensor"]
    tx = optax_egd.egd(method="svd", distribute=explicit, enabled=False)
    out = _update(tx, placed)
    for k, g in placed.items():
      np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(g))
      assert out[k].sharding.is_equivalent_to(g.sharding, g.ndim)

  def train_step() -> None:
    params = _place(grads, explicit, ("fsdp",))["fsdp"]
    tx = optax.chain(optax_egd.egd(method="svd", distribute=explicit),
                     optax.sgd(0.1))

    @jax.jit
    def step(params: Any, opt_state: Any) -> tuple[Any, Any]:
      loss = lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p))
      updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
      return optax.apply_updates(params, updates), opt_state

    new, _ = step(params, tx.init(params))
    for k, p in params.items():
      assert new[k].sharding.is_equivalent_to(p.sharding, p.ndim), k

  def egdm_keeps_momentum_sharded() -> None:
    """egdm: same update as on one device; momentum sharded like the params."""
    opt = lambda d: optax_egd.egdm(0.1, method="svd", distribute=d)
    params = {k: v for k, v in grads.items() if v.ndim == 2}  # egdm's matrices
    want_tx = opt(None)
    want_state = want_tx.init(params)
    for _ in range(2):  # the second step uses the momentum of the first
      want, want_state = jax.jit(want_tx.update)(params, want_state, params)
    for mesh in (explicit, auto):
      placed = _place(params, mesh, ("fsdp", "tensor", "fsdp+tensor"))
      tx = opt(mesh)
      state = tx.init(placed)
      # On auto axes a train step pins the layouts (the state's: as init made
      # it); on explicit axes they follow from the types.
      pin = jax.tree.map(lambda x, m=mesh: x.sharding if isinstance(
          x.sharding, NamedSharding) else NamedSharding(m, P()),
                         (placed, state))
      update = jax.jit(tx.update, out_shardings=pin if mesh is auto else None)
      for _ in range(2):
        out, state = update(placed, state, placed)
      for la in placed:
        _compare({la: out[la]}, want, {la: placed[la]})
      traces = [s for s in jax.tree.leaves(
          state, is_leaf=lambda x: isinstance(x, optax.TraceState))
                if isinstance(s, optax.TraceState)]
      assert traces, "no momentum buffer in egdm's state"
      for trace in traces:
        for la, tree in placed.items():
          for k, p in tree.items():
            if isinstance(trace.trace[la][k], optax.MaskedNode):
              continue
            got = trace.trace[la][k].sharding
            assert got.is_equivalent_to(p.sharding, p.ndim), (
                f"momentum {la}/{k}: {got} is not {p.sharding}")

  def conv_kernels() -> None:
    """Matrix axes merged from several leaf axes, sharded on either side.

    (3, 3, 16@data, 32@model) merges a sharded minor axis into the rows, a
    layout a reshape cannot carry (gathered whole first); (4@data, 3, 16,
    32@model) merges a sharded major one (stays sharded).
    """
    dims = optax_egd.DimensionNumbers((0, 1, 2), 3)
    rng = np.random.default_rng(1)
    kernels = {"minor": rng.standard_normal((3, 3, 16, 32), np.float32),
               "major": rng.standard_normal((4, 3, 16, 32), np.float32)}
    want = _update(optax_egd.egd(method="svd", dimension_numbers=dims), kernels)
    specs = {"minor": P(None, None, "data", "model"),
             "major": P("data", None, None, "model")}
    for mesh in (explicit, auto):
      placed = {"conv": {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
                         for k, v in kernels.items()}}
      tx = optax_egd.egd(method="svd", dimension_numbers=dims,
                         distribute=mesh)
      _compare(_update(tx, placed, pin=mesh is auto), want, placed)

  def owner_moves_less() -> None:
    """FSDP rows: all-to-alls instead of all-gathers, less memory and traffic."""
    from benchmarks.fsdp import collective_bytes  # noqa: PLC0415
    for mesh in (explicit, auto):
      placed = _place({k: v for k, v in grads.items() if k != "b"}, mesh,
                      ("fsdp",))["fsdp"]
      pin = jax.tree.map(lambda x: x.sharding, placed) if mesh is auto else None
      cost = {}
      for mode in ("owner", "gather"):
        tx = optax_egd.egd(method="svd",
                           distribute=optax_egd.Distribute(mesh, mode=mode))
        compiled = jax.jit(tx.update, out_shardings=(
            pin, None) if pin else None).lower(placed, tx.init(placed)).compile()
        hlo = compiled.as_text()
        cost[mode] = (collective_bytes(hlo, 8),
                      compiled.memory_analysis().temp_size_in_bytes)
      (moved, temp), (moved_gather, temp_gather) = cost["owner"], cost["gather"]
      assert set(moved) == {"all-to-all"}, moved
      assert sum(moved.values()) < 0.5 * sum(moved_gather.values()), cost
      assert temp < 0.6 * temp_gather, cost

  for fn in (rsvd_low_rank, disabled_is_identity, train_step,
             egdm_keeps_momentum_sharded, conv_kernels, owner_moves_less):
    found[fn.__name__] = fn
  return found


# Run only when named on the command line (``make test-full``'s share).
FULL = ("egdm_keeps_momentum_sharded",)


def main(argv: list[str]) -> None:
  """Runs the checks named in ``argv``, or every check but :data:`FULL`."""
  assert jax.device_count() >= 8, f"needs 8 devices, got {jax.devices()}"
  report: dict[str, str | None] = {}
  for name, check in checks().items():
    if (name not in argv) if argv else name in FULL:
      continue
    try:
      check()
      report[name] = None
    except Exception:  # reported, not raised: the parent shows every failure
      report[name] = traceback.format_exc(limit=4)
  print(json.dumps(report))


if __name__ == "__main__":
  main(sys.argv[1:])
