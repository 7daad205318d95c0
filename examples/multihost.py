"""Multi-host EGD: FSDP parameters on one global mesh, layer-parallel polar.

Every process runs this same script. ``jax.distributed.initialize`` joins the
processes, ``jax.make_mesh`` builds one mesh over *all* their devices, the
parameters are sharded over it (FSDP: each matrix split along its rows), each
process feeds its own slice of the batch, and
``optax_egd.egd(distribute=mesh)`` moves every weight gradient whole to the
one device that decomposes it (an all-to-all) and sends the result's shards
back, so the updates stay sharded like the parameters. Nothing in
``optax_egd`` knows how many processes there are: it uses only
``jax.sharding`` and ``jax.shard_map``.

Launch:

* Cloud TPU pod slice, SLURM, Open MPI, Kubernetes: run
  ``python examples/multihost.py`` on every host (e.g.
  ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...``);
  ``jax.distributed.initialize()`` finds the cluster itself.
* By hand (GPU hosts, or several processes on one machine)::

    python examples/multihost.py --coordinator HOST0:1234 --num-processes 2 \\
        --process-id 0   # on host 0; --process-id 1 on host 1

  CPU processes also need ``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo``, e.g.
  two processes of 4 CPU devices each on one machine::

    export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
    export XLA_FLAGS=--xla_force_host_platform_device_count=4
    python examples/multihost.py --coordinator localhost:1234 \\
        --num-processes 2 --process-id 0 &
    python examples/multihost.py --coordinator localhost:1234 \\
        --num-processes 2 --process-id 1

* Smoke test, one process (no ``jax.distributed``)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python examples/multihost.py --single-process
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import optax_egd

SIZES = (64, 256, 256, 256, 16)  # in → hidden ×3 → classes
BATCH = 256  # global batch, split over all devices


def init_params(key: jax.Array) -> dict[str, dict[str, jax.Array]]:
  """He-initialized ReLU MLP of ``SIZES``."""
  params = {}
  for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
    key, sub = jax.random.split(key)
    params[f"layer{i}"] = {
        "w": jax.random.normal(sub, (m, n)) * jnp.sqrt(2.0 / m),
        "b": jnp.zeros(n)}
  return params


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  h = x
  for i in range(len(SIZES) - 1):
    layer = params[f"layer{i}"]
    w = jax.sharding.reshard(layer["w"], P())  # FSDP: gather the weight
    h = h @ w + layer["b"]
    if i < len(SIZES) - 2:
      h = jax.nn.relu(h)
  return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def fsdp_spec(x: jax.Array, devices: int) -> P:
  """Shard a matrix's rows over the mesh when they divide evenly."""
  if x.ndim == 2 and x.shape[0] % devices == 0:
    return P("fsdp", None)
  return P()


def local_batch(step: int, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """This process's rows of the global batch ``step`` (a fixed teacher task)."""
  per_process = BATCH // jax.process_count()
  rng = np.random.default_rng([step, jax.process_index()])
  x = rng.standard_normal((per_process, SIZES[0])).astype(np.float32)
  return x, np.argmax(x @ teacher, axis=-1).astype(np.int32)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--coordinator", help="host:port of process 0")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  parser.add_argument("--single-process", action="store_true",
                      help="skip jax.distributed (smoke test on one machine)")
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)
  if not args.single_process:
    jax.distributed.initialize(args.coordinator, args.num_processes,
                               args.process_id)

  devices = jax.device_count()  # global: all processes' devices
  # Explicit axes (make_mesh's default): arrays carry their sharding in their
  # types; egd moves each gradient matrix whole to its owner device and
  # returns updates with the gradients' sharding.
  mesh = jax.make_mesh((devices,), ("fsdp",))
  jax.set_mesh(mesh)
  abstract = jax.eval_shape(init_params, jax.random.key(0))
  shardings = jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(x, devices)), abstract)
  # Every process runs the same jitted init; each keeps its own shards.
  params = jax.jit(init_params, out_shardings=shardings)(jax.random.key(0))

  tx = optax.chain(optax_egd.egd(distribute=mesh), optax.sgd(0.1))
  opt_state = jax.jit(tx.init)(params)

  @jax.jit
  def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array
           ) -> tuple[Any, Any, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  teacher = np.random.default_rng(0).standard_normal(
      (SIZES[0], SIZES[-1])).astype(np.float32)
  data = NamedSharding(mesh, P("fsdp"))
  if jax.process_index() == 0:
    print(f"{jax.process_count()} process(es), {devices} devices"
          f" ({jax.default_backend()}), mesh {dict(mesh.shape)}")
  for i in range(args.steps):
    x, y = local_batch(i, teacher)
    # Global arrays from each process's rows (no process sees the others').
    x = jax.make_array_from_process_local_data(data, x)
    y = jax.make_array_from_process_local_data(data, y)
    params, opt_state, loss = step(params, opt_state, x, y)
    if jax.process_index() == 0 and (i % 5 == 0 or i == args.steps - 1):
      print(f"step {i:3d}  loss {float(loss):.4f}")
  w = params["layer1"]["w"]
  if jax.process_index() == 0:
    print(f"layer1.w: {w.shape}, sharding {w.sharding.spec}")


if __name__ == "__main__":
  main()
