"""Runs vectorized polar factors / EGD updates; prints one JSON line.

Run by ``tests/test_vmap.py`` in a subprocess with a hard timeout: on jaxlib
0.10.2 CPU, batched LAPACK calls in one program can deadlock, and ``vmap`` over
``polar`` is where they used to come back.

``python tests/_vmap_worker.py issue {plain,nested,scan}``: the example of
issue 11 (``jax.jit(jax.vmap(tx.update))`` for 20 steps over 4 models of
``egd() + sgd(0.1)``), or its nested-``vmap`` (2×2 models) / ``vmap``-inside-
``lax.scan`` variant; reports the largest difference from the unvectorized
per-model updates.

``python tests/_vmap_worker.py methods [METHOD ...]``: every method (or
those named) under ``vmap``, nested ``vmap``, ``vmap`` inside ``scan``,
``vmap`` inside ``shard_map`` (2 CPU devices), batched and unbatched
``key``/``rtol``, ``grad``/``jvp``; reports the largest difference from
the unvectorized results per check, or the error.
"""

from __future__ import annotations

# ruff: noqa: B023 (every lambda below is called in the loop step that makes it)
import json
import os
import sys
import traceback

if __name__ == "__main__":
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  if sys.argv[1] == "methods":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optax_egd  # noqa: E402
from optax_egd import polar  # noqa: E402

METHODS = ("svd", "eigh", "rsvd", "newton_schulz", "polar_express", "qdwh",
           "polar_express_exact", "auto")
LAPACK_METHODS = ("svd", "eigh", "rsvd", "qdwh", "auto")


def _diff(a, b) -> float:
  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in leaves)


def issue(variant: str) -> dict[str, float]:
  def params(key):
    a, b, c = jax.random.split(key, 3)
    return {"w1": jax.random.normal(a, (194, 512)),
            "w2": jax.random.normal(b, (512, 97)),
            "w3": jax.random.normal(c, (64, 64))}

  tx = optax.chain(optax_egd.egd(), optax.sgd(0.1))
  ps = jax.vmap(params)(jax.random.split(jax.random.key(1), 4))
  st = jax.vmap(tx.init)(ps)
  if variant == "plain":  # The issue's example, verbatim.
    f = jax.jit(jax.vmap(tx.update))
    for _ in range(20):
      u, st = f(ps, st)
    jax.block_until_ready(u)
  elif variant == "nested":  # 2 groups of 2 models.
    split = lambda t: jax.tree.map(lambda a: a.reshape(2, 2, *a.shape[1:]), t)
    f = jax.jit(jax.vmap(jax.vmap(tx.update)))
    pn, sn = split(ps), split(st)
    for _ in range(20):
      un, sn = f(pn, sn)
    u = jax.tree.map(lambda a: a.reshape(4, *a.shape[2:]), un)
    jax.block_until_ready(u)
  else:  # "scan": 20 steps in one compiled program, vmap inside the body.
    def body(s, _):
      u, s = jax.vmap(tx.update)(ps, s)
      return s, u
    _, us = jax.jit(lambda s: jax.lax.scan(body, s, length=20))(st)
    u = jax.tree.map(lambda a: a[-1], us)
    jax.block_until_ready(u)
  # Unvectorized reference: each model alone, 20 steps.
  one = jax.jit(tx.update)
  ref = []
  for i in range(4):
    p = jax.tree.map(lambda a, i=i: a[i], ps)
    s = tx.init(p)
    for _ in range(20):
      ui, s = one(p, s)
    ref.append(ui)
  ref_u = jax.tree.map(lambda *a: jnp.stack(a), *ref)
  return {"max_diff": _diff(u, ref_u)}


def methods() -> dict[str, object]:
  out: dict[str, object] = {}
  x = jax.random.normal(jax.random.key(0), (2, 3, 12, 5))  # 2 models, 3-stack
  keys = jax.random.split(jax.random.key(1), 2)
  rtols = jnp.array([1e-6, 0.3])
  # Rank-deficient-ish spectrum so rtol 0.3 visibly cuts directions.
  x = x.at[..., 0].multiply(10.0)
  mesh = jax.make_mesh((2,), ("m",))
  for method in (sys.argv[2:] or METHODS):
    rank = 3 if method == "rsvd" else None  # only rsvd takes a rank
    p = lambda a, k, r=None, method=method, rank=rank: polar(
        a, method, rank=rank, key=k, rtol=r)

    def check(name, fn, ref):
      print(f"{method}/{name}", file=sys.stderr, flush=True)
      try:
        out[f"{method}/{name}"] = _diff(jax.block_until_ready(fn()), ref)
      except Exception:  # reported, not raised: one bad check shows all
        out[f"{method}/{name}"] = traceback.format_exc()[-1500:]
      print(f"  -> {out[f'{method}/{name}']}", file=sys.stderr, flush=True)

    ref = np.stack([p(x[i], keys[i]) for i in range(2)])
    check("vmap", lambda: jax.jit(jax.vmap(p))(x, keys), ref)
    # Unbatched key: one key shared by the mapped models.
    ref_k = np.stack([p(x[i], keys[0]) for i in range(2)])
    check("vmap_shared_key",
          lambda: jax.jit(jax.vmap(p, (0, None)))(x, keys[0]), ref_k)
    # Nested vmap: each matrix of each stack on its own.
    ref_n = np.stack([np.stack([p(x[i, j], keys[i]) for j in range(3)])
                      for i in range(2)])
    check("nested_vmap", lambda: jax.jit(jax.vmap(jax.vmap(p, (0, None))))(
        x, keys), ref_n)
    # vmap inside scan (3 identical steps).
    def scanned(a, k, p=p):
      return jax.lax.scan(lambda c, _: (c, jax.vmap(p)(a, k)), 0, length=3)[1]
    check("vmap_in_scan", lambda: jax.jit(scanned)(x, keys)[-1], ref)
    # scan inside vmap.
    def scan_in(a, k, p=p):
      return jax.lax.scan(lambda c, _: (c, p(a, k)), 0, length=2)[1][-1]
    if method in LAPACK_METHODS:
      check("scan_in_vmap", lambda: jax.jit(jax.vmap(scan_in))(x, keys), ref)
    # vmap inside shard_map: one model per device.
    sharded = jax.shard_map(jax.vmap(p), mesh=mesh,
                            in_specs=(jax.P("m"), jax.P("m")),
                            out_specs=jax.P("m"))
    on_mesh = jax.NamedSharding(mesh, jax.P("m"))
    check("vmap_in_shard_map", lambda: jax.jit(sharded)(
        jax.device_put(x, on_mesh), jax.device_put(keys, on_mesh)), ref)
    if method == "svd":
      check("shard_map_in_vmap", lambda: jax.jit(jax.vmap(
          jax.shard_map(p, mesh=mesh, in_specs=(jax.P(), jax.P()),
                        out_specs=jax.P())))(x, keys), ref)
    # qdwh and polar_express_exact need rtol as a Python float; the quintic
    # iterations have no cutoff.
    if method not in ("qdwh", "newton_schulz", "polar_express",
                      "polar_express_exact"):
      ref_r = np.stack([p(x[i], keys[i], rtols[i]) for i in range(2)])
      check("vmap_batched_rtol",
            lambda: jax.jit(jax.vmap(p))(x, keys, rtols), ref_r)
      ref_r1 = np.stack([p(x[i], keys[i], rtols[1]) for i in range(2)])
      check("vmap_traced_shared_rtol",
            lambda: jax.jit(jax.vmap(p, (0, 0, None)))(x, keys, rtols[1]),
            ref_r1)
    # Derivatives, unbatched, as before (qdwh's while_loop has no reverse
    # mode). Derivatives under vmap still batch LAPACK calls (not run here).
    w = jax.random.normal(jax.random.key(2), x.shape[1:])
    loss = lambda a, k, p=p: jnp.sum(p(a, k) * w)
    t = jax.random.normal(jax.random.key(3), x.shape[1:])
    # Central differences in float32 (polar is smooth at a well-separated
    # spectrum): loose tolerance, compared in the test.
    h = 1e-2
    pk = jax.jit(lambda a, p=p: p(a, keys[0]))
    fd = (pk(x[0] + h * t) - pk(x[0] - h * t)) / (2 * h)
    jvp = jax.jit(lambda a, b, p=p: jax.jvp(lambda c: p(c, keys[0]), (a,),
                                            (b,))[1])
    check("jvp_vs_fd", lambda: jvp(x[0], t), fd)
    if method != "qdwh":
      g = jax.jit(jax.grad(loss))(x[0], keys[0])
      # <grad, t> equals the jvp's <w, J t>.
      out[f"{method}/grad_vs_jvp"] = abs(float(jnp.sum(g * t)) -
                                         float(jnp.sum(w * jvp(x[0], t))))
  return out


if __name__ == "__main__":
  result = issue(sys.argv[2]) if sys.argv[1] == "issue" else methods()
  print(json.dumps(result))
