"""Sharded and layer-parallel ``egd`` (``optax_egd.distributed``).

The multi-device checks run in one subprocess with 8 simulated CPU devices
(``tests/_sharding_worker.py``), so this process keeps its single device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import socket
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
import numpy as np
import pytest

import optax_egd
from optax_egd import distributed

WORKER = Path(__file__).with_name("_sharding_worker.py")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multihost.py"


def _cpu_env(devices: int) -> dict[str, str]:
  """This environment with ``devices`` simulated CPU devices per process."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(
      [*flags, f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("OPENBLAS_NUM_THREADS", "1")
  # The worker reads the benchmark's HLO parser (benchmarks.fsdp).
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(WORKER.parents[1]), env.get("PYTHONPATH")) if p)
  return env


def _worker(*names: str) -> dict[str, Any]:
  """``{check: None or traceback}`` from the 8-device worker."""
  done = subprocess.run([sys.executable, str(WORKER), *names], env=_cpu_env(8),
                        text=True, capture_output=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
  """Every check of the worker but its ``FULL`` ones."""
  return _worker()


def test_sharded_updates_match_one_device(report: dict[str, Any]) -> None:
  failed = {name: tb for name, tb in report.items() if tb is not None}
  assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())


def test_worker_ran_every_kind_of_check(report: dict[str, Any]) -> None:
  for name in ("auto", "auto/distribute=all", "auto/distribute=model",
               "explicit", "explicit/distribute=all",
               "explicit/distribute=set_mesh", "explicit/distribute=gather",
               "rsvd_low_rank", "train_step", "conv_kernels",
               "owner_moves_less"):
    assert name in report


@pytest.mark.full  # egdm on two meshes, two steps each: ~15 s
def test_egdm_matches_one_device_and_keeps_momentum_sharded() -> None:
  """egdm with owner-compute on FSDP, tensor and 2-D layouts (auto, explicit)."""
  report = _worker("egdm_keeps_momentum_sharded")
  assert list(report) == ["egdm_keeps_momentum_sharded"]
  assert report["egdm_keeps_momentum_sharded"] is None, (
      report["egdm_keeps_momentum_sharded"])


def test_one_device_mesh_is_a_no_op() -> None:
  mesh = jax.make_mesh((1,), ("d",))
  g = {"w": jax.random.normal(jax.random.key(0), (3, 5, 4)), "b": jnp.ones(4)}
  plain, layer_parallel = (optax_egd.egd(method="svd", distribute=d)
                           for d in (None, mesh))
  want = jax.jit(plain.update)(g, plain.init(g))[0]
  got = jax.jit(layer_parallel.update)(g, layer_parallel.init(g))[0]
  for k in g:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_resolve() -> None:
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  assert distributed.resolve(None) is None
  assert distributed.resolve(mesh) == optax_egd.Distribute(
      mesh, ("data", "model"))
  assert distributed.resolve(optax_egd.Distribute(mesh, "model")) == (
      optax_egd.Distribute(mesh, ("model",)))
  assert distributed.resolve(optax_egd.Distribute(axis_names="data")) == (
      optax_egd.Distribute(None, ("data",)))


@pytest.mark.parametrize("bad, error", [
    ("data", TypeError),
    (optax_egd.Distribute(mesh="mesh"), TypeError),
    (optax_egd.Distribute(axis_names=()), TypeError),
    (optax_egd.Distribute(axis_names=("data", 1)), TypeError),
])
def test_bad_distribute_is_rejected(bad: Any, error: type[Exception]) -> None:
  with pytest.raises(error, match="distribute|Distribute"):
    optax_egd.egd(distribute=bad)


def test_bad_axes_are_rejected() -> None:
  mesh = jax.make_mesh((1, 1), ("a", "b"), (AxisType.Auto, AxisType.Explicit))
  with pytest.raises(ValueError, match="not axes of the mesh"):
    optax_egd.egd(distribute=optax_egd.Distribute(mesh, "c"))
  with pytest.raises(ValueError, match="mix axis types"):
    optax_egd.egd(distribute=mesh)


def test_distribute_without_a_mesh_needs_set_mesh() -> None:
  tx = optax_egd.egd(distribute=optax_egd.Distribute(axis_names="d"))
  g = {"w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match="set_mesh"):
    jax.jit(tx.update)(g, tx.init(g))
  mesh = jax.make_mesh((1,), ("d",))
  with jax.set_mesh(mesh):
    out = jax.jit(tx.update)(g, tx.init(g))[0]
  assert out["w"].shape == (2, 3)


@pytest.mark.full  # two processes, ~6 s
def test_multihost_example_runs_as_two_processes() -> None:
  """examples/multihost.py as 2 processes × 4 CPU devices (gloo collectives)."""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  env = {**_cpu_env(4), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  procs = [subprocess.Popen(
      [sys.executable, str(EXAMPLE), "--coordinator", f"localhost:{port}",
       "--num-processes", "2", "--process-id", str(i), "--steps", "3"],
      env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs, strict=True):
    assert p.returncode == 0, out[-3000:]
  assert "2 process(es), 8 devices" in outputs[0]
  # The first axis sharded over fsdp (jax < 0.8 prints PartitionSpec('fsdp',)).
  assert re.search(r"sharding (P|PartitionSpec)\('fsdp',( None)?\)", outputs[0])


def test_distribute_mode_is_validated() -> None:
  mesh = jax.make_mesh((1,), ("d",))
  assert distributed.resolve(mesh).mode == "owner"  # the default
  assert distributed.resolve(optax_egd.Distribute(mesh, mode="gather")).mode == (
      "gather")
  for bad in ("all_gather", None, 1):
    with pytest.raises(ValueError, match=r"Distribute\.mode must be one of"):
      optax_egd.egd(distribute=optax_egd.Distribute(mesh, mode=bad))


def _plan_loads(plans: list[distributed.OwnerPlan], groups: list[Any],
                owners: int) -> np.ndarray:
  """Each owner's summed cost, recounted from the plans' slot tables."""
  load = np.zeros(owners)
  for plan, (batch, cost) in zip(plans, groups, strict=True):
    for k in range(owners):
      slots = plan.source[k * plan.slots:(k + 1) * plan.slots]
      load[k] += cost * np.sum(slots < batch)
  return load


@pytest.mark.parametrize("owners", [1, 3, 8])
def test_plan_owners_places_every_matrix_once(owners: int) -> None:
  rng = np.random.default_rng(owners)
  groups = [(int(b), float(c)) for b, c in zip(
      rng.integers(1, 30, 6), rng.uniform(1, 10, 6), strict=True)]
  plans, load = distributed.plan_owners(groups, owners)
  for plan, (batch, _) in zip(plans, groups, strict=True):
    assert plan.slots == -(-batch // owners)
    assert plan.source.shape == (owners * plan.slots,)
    real = plan.source[plan.source < batch]
    np.testing.assert_array_equal(np.sort(real), np.arange(batch))
    np.testing.assert_array_equal(plan.source[plan.position], np.arange(batch))
    # Only an owner's last slot may be empty, and last_real says which.
    by_owner = plan.source.reshape(owners, plan.slots)
    assert np.all(by_owner[:, :-1] < batch)
    np.testing.assert_array_equal(by_owner[:, -1] < batch, plan.last_real)
  np.testing.assert_allclose(load, _plan_loads(plans, groups, owners))


def test_plan_owners_balances_the_gpt2_tree() -> None:
  """12 × (768×2304, 768×768, 768×3072, 3072×768) on 8 owners: max ≤ 1.25·mean.

  Splitting each group evenly instead (ceil(12/8) = 2 on half of the owners,
  the same half every group) leaves the busiest owner 1.33x the mean.
  """
  shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
  groups = [(12, distributed.polar_flops(m, n, "svd")) for m, n in shapes]
  plans, load = distributed.plan_owners(groups, 8)
  assert load.max() <= 1.25 * load.mean()
  np.testing.assert_allclose(load.sum(), sum(b * c for b, c in groups))
  even = sum(2 * c for _, c in groups)  # owner 0 of an even split
  assert even >= 1.3 * load.mean()


def test_polar_flops() -> None:
  f = distributed.polar_flops
  assert f(768, 3072, "svd") == f(3072, 768, "svd")
  assert f(64, 64, "svd") < f(64, 128, "svd") < f(128, 128, "svd")
  assert f(768, 768, "rsvd", rank=8) < f(768, 768, "svd")
  assert f(768, 768, "newton_schulz") < f(768, 768, "polar_express")
  assert f(64, 64, "auto") == f(64, 64, optax_egd.auto_method((64, 64)))
