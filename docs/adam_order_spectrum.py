"""How Adam and EGD compose: the singular values of the update, in both orders.

    python docs/adam_order_spectrum.py

The paper's MLP (one-hot a ‖ b → 512 ReLU → 97, He-normal init, cross-entropy
plus 0.5·1e-4·‖W‖²) on (a + b) mod 97 with a random 50% split (seed 0) is
trained with ``chain(egd(), sgd(0.7))`` on minibatches of 512. Along that
trajectory, the same minibatch gradients are fed to four transforms, each with
its own state, and the singular values of their update of the hidden kernel
(194×512) are recorded at steps 1, 10 and 30. Writes
``docs/figures/adam_order_spectrum.json`` and prints a Markdown table. About a
minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import pathlib

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_egd  # noqa: E402

P, HIDDEN, BATCH, LR, L2 = 97, 512, 512, 0.7, 1e-4
STEPS = (1, 10, 30)
OUT = pathlib.Path(__file__).resolve().parent / "figures" / "adam_order_spectrum.json"
TRANSFORMS = {
    "egd()": lambda: optax_egd.egd(method="svd"),
    "scale_by_adam()": optax.scale_by_adam,
    "chain(egd(), scale_by_adam())": lambda: optax.chain(
        optax_egd.egd(method="svd"), optax.scale_by_adam()),
    "chain(scale_by_adam(), egd())": lambda: optax.chain(
        optax.scale_by_adam(), optax_egd.egd(method="svd")),
}


def data(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  a, b = jnp.divmod(jnp.arange(P * P), P)
  x = jnp.concatenate([jax.nn.one_hot(a, P), jax.nn.one_hot(b, P)], axis=1)
  y = (a + b) % P
  train = jax.random.permutation(key, P * P)[: P * P // 2]
  return x[train], y[train]


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  logits = jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.5 * L2 * (jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2))


def singular_values(update: jax.Array) -> np.ndarray:
  return np.linalg.svd(np.asarray(update, np.float64), compute_uv=False)


def main() -> None:
  k_data, k1, k2, k_shuffle = jax.random.split(jax.random.key(0), 4)
  x, y = data(k_data)
  init = jax.nn.initializers.he_normal()
  params = {"w1": init(k1, (2 * P, HIDDEN)), "b1": jnp.zeros(HIDDEN),
            "w2": init(k2, (HIDDEN, P))}
  trainer = optax.chain(optax_egd.egd(method="svd"), optax.sgd(LR))
  train_state = trainer.init(params)
  probes = {name: make() for name, make in TRANSFORMS.items()}
  probe_states = {name: tx.init(params) for name, tx in probes.items()}
  probe_updates = {name: jax.jit(tx.update) for name, tx in probes.items()}
  train_update = jax.jit(trainer.update)
  grad_fn = jax.jit(jax.grad(loss_fn))
  order = np.asarray(jax.random.permutation(k_shuffle, x.shape[0]))
  rows: dict[str, dict[int, dict[str, float]]] = {name: {} for name in probes}
  for step in range(1, max(STEPS) + 1):
    start = ((step - 1) * BATCH) % (x.shape[0] - BATCH)
    idx = order[start:start + BATCH]
    grads = grad_fn(params, x[idx], y[idx])
    for name, update_fn in probe_updates.items():
      update, probe_states[name] = update_fn(grads, probe_states[name], params)
      if step in STEPS:
        s = singular_values(update["w1"])
        rows[name][step] = {"max_over_min": float(s[0] / s[-1]),
                            "median_over_max": float(np.median(s) / s[0])}
    updates, train_state = train_update(grads, train_state, params)
    params = optax.apply_updates(params, updates)
  OUT.write_text(json.dumps({"command": "python docs/adam_order_spectrum.py",
                             "jax": jax.__version__, "steps": STEPS,
                             "rows": rows}, indent=1))
  print("| update of the hidden kernel | "
        + " | ".join(f"step {s}: σmax/σmin, median σ/σmax" for s in STEPS) + " |")
  print("|---|" + "---|" * len(STEPS))
  for name, per_step in rows.items():
    cells = [f"{per_step[s]['max_over_min']:.1f}, {per_step[s]['median_over_max']:.2f}"
             for s in STEPS]
    print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
