"""Minimal pure-JAX reproduction of the jaxlib CPU LAPACK deadlock.

A jitted program holding several *batched* LAPACK calls (here: QR of stacks
of matrices) can hang forever in ``block_until_ready`` on CPU (seen with
jax/jaxlib 0.10.2): the custom-call thunks wait inside
``jax::ParallelBatchMap`` on an ``absl::BlockingCounter`` and every Eigen
worker thread is parked. No optax-egd code is involved.

Each try runs the program in a fresh child process. Past the deadline, a
child that used no CPU time in 10 s counts as hung (a slow child on a busy
machine keeps computing: it is given up to 3x the deadline, then counted as
"slow"). Variants (``--variant``):

* ``batched``: four QR stacks of different shapes in one ``jit``
  (``jnp.linalg.qr`` on 3-D arrays: batched ``lapack_sgeqrf_ffi`` calls).
* ``vmap``: ``jax.vmap`` over a ``lax.map`` of single-matrix QRs: what
  vectorizing a per-matrix loop (e.g. over models or seeds) produces; ``vmap``
  batches the loop body, so each QR is a batched call again.
* ``unbatched``: the control, one matrix per QR call (``lax.map`` over every
  stack, no ``vmap``); this one has never hung.

Usage (prints versions, thread settings and hung/tries; exit code 1 if any
try hung)::

  python tools/lapack_deadlock_repro.py --tries 5 --deadline 60
  python tools/lapack_deadlock_repro.py --variant unbatched
  python tools/lapack_deadlock_repro.py --gdb stacks.txt  # needs gdb

``--gdb FILE`` attaches gdb to the first hung child and writes
``thread apply all bt`` to FILE, with a one-screen summary on stdout.
Standalone: only jax and numpy are imported (the file can be copied into a
bug report as is).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time

SHAPES = ((8, 128, 128), (2, 512, 128), (2, 128, 512), (4, 128, 97))

CHILD = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
variant, steps, shapes = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])
xs = [jnp.asarray(np.random.default_rng(i).standard_normal(s), jnp.float32)
      for i, s in enumerate(shapes)]
qr1 = lambda m: jnp.linalg.qr(m)[0]  # one matrix
if variant == "batched":
  f = jax.jit(lambda *xs: [jnp.linalg.qr(x)[0] for x in xs])
elif variant == "vmap":
  # Split each stack into 2 "models" and vmap a per-matrix loop over them.
  xs = [x.reshape(2, -1, *x.shape[1:]) if x.shape[0] % 2 == 0 else
        jnp.stack([x, x]) for x in xs]
  f = jax.jit(jax.vmap(lambda *xs: [jax.lax.map(qr1, x) for x in xs]))
else:
  f = jax.jit(lambda *xs: [jax.lax.map(qr1, x) for x in xs])
print("compiled", flush=True)
for i in range(steps):
  jax.block_until_ready(f(*xs))
print("finished", flush=True)
"""


def settings() -> dict[str, str]:
  import jax
  import jaxlib

  try:
    cores = str(len(os.sched_getaffinity(0)))
  except AttributeError:
    cores = "?"
  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "backend": jax.default_backend(),
    "os.cpu_count": str(os.cpu_count()),
    "cores available": cores,
    **{
      k: os.environ.get(k, "(unset)")
      for k in (
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NPROC",
        "XLA_FLAGS",
      )
    },
  }


def summarize(bt: str) -> list[str]:
  """One line per thread: its innermost interesting frames."""
  keep = re.compile(
    r"ParallelBatchMap|lapack_\w+_ffi|BlockingCounter|"
    r"CustomCallThunk|EigenThreadPool|NonBlockingThreadPool|"
    r"WaitForWork|futex|pthread_cond|PjRt|block_until_ready|"
    r"Thunk::|ThunkExecutor"
  )
  threads = re.split(r"\n(?=Thread \d+ )", bt)
  lines = []
  for th in threads:
    head = th.splitlines()[0] if th.strip() else ""
    if not head.startswith("Thread"):
      continue
    frames = re.findall(r"#\d+\s+(?:0x[0-9a-f]+ in )?([^\s(]+)", th)
    hits = [f for f in frames if keep.search(f)]
    name = re.search(r'"([^"]*)"', head)
    label = f"{head.split()[1]} {name.group(1) if name else ''}".strip()
    lines.append(f"{label}: " + " <- ".join(dict.fromkeys(hits[:6]) or frames[:3]))
  return lines


def _cpu_ticks(pid: int) -> int:
  """utime + stime of a process (all its threads), in clock ticks."""
  with open(f"/proc/{pid}/stat") as fh:
    fields = fh.read().rsplit(")", 1)[1].split()
  return int(fields[11]) + int(fields[12])


def one_try(
  variant: str, steps: int, deadline: float, gdb: str | None
) -> tuple[str, float]:
  """Runs one child: "finished", "HUNG" (idle past the deadline: no CPU time
  used in 10 s) or "slow" (still computing at 3x the deadline)."""
  start = time.monotonic()
  child = subprocess.Popen(
    [sys.executable, "-c", CHILD, variant, str(steps), repr(SHAPES)],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  verdict = "slow"
  while True:
    try:
      out, _ = child.communicate(timeout=deadline)
      if child.returncode != 0:
        raise RuntimeError(f"child failed:\n{out[-3000:]}")
      return "finished", time.monotonic() - start
    except subprocess.TimeoutExpired:
      pass
    if time.monotonic() - start > 3 * deadline:
      break
    if os.path.exists(f"/proc/{child.pid}/stat"):
      before = _cpu_ticks(child.pid)
      time.sleep(10)
      if child.poll() is None and _cpu_ticks(child.pid) == before:
        verdict = "HUNG"
        break
  if verdict == "HUNG" and gdb:
    bt = subprocess.run(
      ["gdb", "-p", str(child.pid), "-batch", "-ex", "thread apply all bt"],
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    ).stdout
    with open(gdb, "w") as fh:
      fh.write(bt)
    print(f"  gdb stacks of hung pid {child.pid} -> {gdb}")
    for line in summarize(bt):
      print("   ", line[:220])
  child.kill()
  child.communicate()
  return verdict, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument(
    "--variant", choices=("batched", "vmap", "unbatched"), default="batched"
  )
  ap.add_argument("--tries", type=int, default=5)
  ap.add_argument(
    "--steps", type=int, default=40, help="calls of the compiled program per try"
  )
  ap.add_argument(
    "--deadline", type=float, default=60.0, help="seconds before a try counts as hung"
  )
  ap.add_argument(
    "--gdb", metavar="FILE", help="on the first hang, write gdb's backtraces here"
  )
  args = ap.parse_args(argv)
  if args.tries < 1 or args.steps < 1 or args.deadline <= 0:
    ap.error("--tries and --steps must be >= 1, --deadline > 0")
  for k, v in settings().items():
    print(f"{k}: {v}")
  print(
    f"variant: {args.variant}, shapes {SHAPES}, {args.steps} calls/try,"
    f" deadline {args.deadline:g} s"
  )
  counts = {"finished": 0, "HUNG": 0, "slow": 0}
  gdb = args.gdb
  for i in range(args.tries):
    verdict, secs = one_try(args.variant, args.steps, args.deadline, gdb)
    counts[verdict] += 1
    if verdict == "HUNG":
      gdb = None  # one stack dump is enough
    print(f"try {i + 1}: {verdict} after {secs:.1f} s", flush=True)
  print(
    f"hung {counts['HUNG']}/{args.tries}, slow (killed while computing)"
    f" {counts['slow']}, load average {os.getloadavg()[0]:.1f}"
  )
  return 1 if counts["HUNG"] else 0


if __name__ == "__main__":
  sys.exit(main())
