"""``python -m experiments.equivalence``: does the accelerators' default grok as soon?

``"auto"`` picks ``"polar_express_exact"`` (matrix products only) on GPU and
TPU and the exact ``"svd"`` on CPU. This benchmark trains every task of the
paper's table (``experiments.paper_table``: (a+b) and (a·b) mod 79, 97, 127
with the MLP, sparse parity (400, 2), (100, 3), (50, 4)) and Grokfast's
transformer (``--preset grokfast``), each with its EGD optimizer, once with
``--polar-method svd`` and once with ``--polar-method polar_express_exact``
forced on this CPU, over the same seeds (same data split, initialization and
shuffles per seed), and reports epochs (steps for the transformer) to the
target: the median per method and their ratio per task, with what the seeds
are paired for (same split, initialization and shuffles): on how many seeds
``polar_express_exact`` was slower, and a 95% bootstrap interval of the
ratio of medians (seeds resampled in pairs, 2000 resamples, fixed RNG).
Where one seed's epochs swing 10x (sparse parity) three seeds cannot tell a
1.3x ratio from chance; run those tasks with more seeds (below).

``--against qdwh`` (or another method) compares that method with the SVD
instead: two exact methods differ by float rounding only, so their spread is
how far rounding alone moves epochs to target on a task (results
``equivalence_qdwh.json``/``.md``).

Each (task, method) is one ``python -m experiments.grok`` run with
``--seeds N`` in ``OUT/runs/<task>-<method>``; a run whose ``results.json``
exists is not run again, so an interrupted sweep resumes. ``--summarize``
only reads the runs.

Examples (the committed references; about 40 and 60 minutes on 2 cores)::

  python -m experiments.equivalence --out experiments/results/equivalence
  python -m experiments.equivalence --tasks parity-400-2,parity-100-3,parity-50-4 \
      --seeds 30 --out experiments/results/equivalence_parity_30_seeds
  python -m experiments.equivalence --tasks parity-400-2,parity-100-3,parity-50-4 \
      --seeds 30 --against qdwh --out experiments/results/equivalence_parity_30_seeds

``--quick``: two cheap tasks, one seed.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import subprocess
import sys
from typing import Any

import numpy as np

from experiments import _cli, _report, optimizer_names

RUNS_DIR = pathlib.Path("runs")
"""Default parent of a sweep's output folder (relative to the working directory)."""
REFERENCE = "svd"
DEFAULT_AGAINST = "polar_express_exact"  # what ``auto`` picks on GPU and TPU
# Task id → (experiments.grok options, the EGD optimizer its table uses, unit).
# Modular tasks: EGD on every matrix (9-16 epochs in the paper table); parity:
# the official scripts' first-layer EGD, and EGD of a momentum buffer where
# plain first-layer EGD does not reach the target ((100, 3), (50, 4)).
TASKS: dict[str, tuple[tuple[str, ...], str, str]] = {
  **{
    f"add-{p}": (("--task", "mod_add", "--p", str(p)), "egd", "epochs")
    for p in (79, 97, 127)
  },
  **{
    f"mul-{p}": (("--task", "mod_mul", "--p", str(p)), "egd", "epochs")
    for p in (79, 97, 127)
  },
  "parity-400-2": (("--task", "parity", "--k", "2"), "egd-first-layer", "epochs"),
  "parity-100-3": (
    ("--task", "parity", "--k", "3"),
    "momentum-egd-first-layer",
    "epochs",
  ),
  "parity-50-4": (
    ("--task", "parity", "--k", "4"),
    "momentum-egd-first-layer",
    "epochs",
  ),
  "grokfast": (("--preset", "grokfast"), "egdm", "steps"),
}
QUICK = ("add-97", "parity-400-2")


def run_dir(out: pathlib.Path, task: str, method: str) -> pathlib.Path:
  return out / "runs" / f"{task}-{method}"


def command(
  task: str, method: str, seeds: int, max_epochs: int, out: pathlib.Path
) -> list[str]:
  """The ``experiments.grok`` command line of one (task, method)."""
  options, optimizer, _ = TASKS[task]
  return [
    sys.executable,
    "-m",
    "experiments.grok",
    *options,
    "--optimizer",
    optimizer,
    "--polar-method",
    method,
    "--seeds",
    str(seeds),
    "--max-epochs",
    str(max_epochs),
    "--no-progress",
    "--out",
    str(run_dir(out, task, method)),
    "--overwrite",
  ]


def _runs(path: pathlib.Path) -> list[dict[str, Any]] | None:
  results = path / "results.json"
  if not results.exists():
    return None
  return json.loads(results.read_text())["runs"]


def summarize(
  out: pathlib.Path, tasks: list[str], against: str = DEFAULT_AGAINST
) -> list[dict[str, Any]]:
  """One row per task: each method's median epochs/steps and their ratio
  (``against`` over the SVD)."""
  methods = (REFERENCE, against)
  rows = []
  for task in tasks:
    _, optimizer, unit = TASKS[task]
    key = "steps_to_target" if unit == "steps" else "epochs_to_target"
    row: dict[str, Any] = {
      "task": task,
      "optimizer": optimizer,
      "unit": unit,
      "against": against,
    }
    for method in methods:
      runs = _runs(run_dir(out, task, method))
      if runs is None:
        continue
      values = [r[key] for r in runs]
      reached = [v for v in values if v is not None]
      row[method] = {
        "seeds": [r["seed"] for r in runs],
        key: values,
        "reached": f"{len(reached)}/{len(values)}",
        "median": statistics.median(reached) if reached else None,
        "seconds": [r.get("seconds_to_target") for r in runs],
      }
    medians = [row.get(m, {}).get("median") for m in methods]
    if None not in medians:
      row["ratio"] = medians[1] / medians[0]
      row.update(paired(row, key))
    rows.append(row)
  return rows


def paired(row: dict[str, Any], key: str, resamples: int = 2000) -> dict[str, Any]:
  """Per-seed comparison of the two methods (the same seeds are paired).

  ``slower``/``faster``: seeds where ``row["against"]`` took more/fewer
  epochs (a seed it did not reach counts as slower; one neither reached is
  left out); ``ratio_ci``: 95% bootstrap interval of the ratio of medians over
  resampled seed pairs (pairs where both reached).
  """
  base, new = (
    dict(zip(row[m]["seeds"], row[m][key], strict=True))
    for m in (REFERENCE, row["against"])
  )
  seeds = [s for s in base if s in new and (base[s] is not None or new[s] is not None)]
  inf = math.inf
  slower = sum((new[s] or inf) > (base[s] or inf) for s in seeds)
  faster = sum((new[s] or inf) < (base[s] or inf) for s in seeds)
  both = np.array(
    [(base[s], new[s]) for s in seeds if base[s] is not None and new[s] is not None],
    float,
  )
  out: dict[str, Any] = {"paired_seeds": len(seeds), "slower": slower, "faster": faster}
  if len(both) >= 2:
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(both), size=(resamples, len(both)))
    ratios = np.median(both[pick, 1], axis=1) / np.median(both[pick, 0], axis=1)
    out["ratio_ci"] = [float(v) for v in np.quantile(ratios, [0.025, 0.975])]
  return out


def table(rows: list[dict[str, Any]]) -> str:
  against = rows[0]["against"] if rows else DEFAULT_AGAINST
  short = "pee" if against == DEFAULT_AGAINST else against
  flat = []
  for r in rows:
    cells = {
      "task": r["task"],
      "optimizer": r["optimizer"],
      "unit": r["unit"],
      "ratio": r.get("ratio"),
    }
    if "ratio_ci" in r:
      cells["ci"] = "[{:.2f}, {:.2f}]".format(*r["ratio_ci"])
    if "slower" in r:
      cells["pairs"] = f"{r['slower']}/{r['faster']}/{r['paired_seeds']}"
    for m in (REFERENCE, against):
      if m in r:
        values = [v for v in r[m][next(k for k in r[m] if k.endswith("_target"))]]
        shown = values if len(values) <= 10 else [*values[:10], "..."]
        shown_text = str(shown).replace("'...'", "...")
        cells[m] = (
          f"{r[m]['median']} {shown_text} ({r[m]['reached']})"
          if r[m]["median"] is not None
          else f"- ({r[m]['reached']})"
        )
    flat.append(cells)
  return _report.markdown_table(
    flat,
    [
      ("task", "task", "s"),
      ("optimizer", "EGD optimizer", "s"),
      ("unit", "to target in", "s"),
      ("svd", "svd: median [per seed] (reached)", "s"),
      (against, f"{against}: median [per seed] (reached)", "s"),
      ("ratio", f"ratio {short}/svd", ".2f"),
      ("ci", "95% CI", "s"),
      ("pairs", "seeds slower/faster/paired", "s"),
    ],
  )


def main(argv: list[str] | None = None) -> int:
  p = _report.parser(
    "experiments.equivalence",
    __doc__.splitlines()[0],
    RUNS_DIR,
    "experiments/results/equivalence",
  )
  p.add_argument("--tasks", help=f"comma-separated, from: {', '.join(TASKS)} (all)")
  p.add_argument(
    "--seeds",
    type=_cli.integer(1),
    default=3,
    help="seeds 0..N-1 per task and method (default 3)",
  )
  p.add_argument(
    "--max-epochs",
    type=_cli.integer(1),
    default=3000,
    help="cap per run (default 3000)",
  )
  p.add_argument(
    "--quick", action="store_true", help=f"{', '.join(QUICK)}, 1 seed, 300 epochs"
  )
  p.add_argument(
    "--against",
    default=DEFAULT_AGAINST,
    choices=[m for m in optimizer_names.POLAR_METHODS if m not in ("auto", REFERENCE)],
    help="the method compared with the SVD (default "
    f"{DEFAULT_AGAINST}, the accelerators' default; another exact "
    "method, such as qdwh, measures how far two exact methods "
    "differ by rounding alone)",
  )
  p.add_argument(
    "--summarize", action="store_true", help="only read the runs already in --out"
  )
  args = p.parse_args(argv)
  if args.quick:
    args.tasks, args.seeds, args.max_epochs = ",".join(QUICK), 1, 300
  tasks = _cli.name_list(args.tasks) if args.tasks else list(TASKS)
  problem = _cli.check_names("argument --tasks", tasks, tuple(TASKS))
  if problem:
    p.error(problem)
  out = _report.out_dir(args.out, "equivalence", RUNS_DIR)
  info = _report.machine_info()
  methods = (REFERENCE, args.against)
  _report.print_header(f"{args.against} against svd, epochs to target", info)
  commands = {}
  for task in tasks:
    for method in methods:
      cmd = command(task, method, args.seeds, args.max_epochs, out)
      commands[f"{task}/{method}"] = " ".join(["python", *cmd[1:]])
      if args.summarize or _runs(run_dir(out, task, method)) is not None:
        continue
      print("$", commands[f"{task}/{method}"], flush=True)
      subprocess.run(cmd, check=True)
  rows = summarize(out, tasks, args.against)
  text = table(rows)
  print(text)
  name = "equivalence" + ("" if args.against == DEFAULT_AGAINST else f"_{args.against}")
  stem = _report.result_stem(name, args.quick)
  config = {
    "tasks": tasks,
    "seeds": args.seeds,
    "max_epochs": args.max_epochs,
    "against": args.against,
    "commands": commands,
  }
  _report.write_json(out / f"{stem}.json", info, config, rows)
  (out / f"{stem}.md").write_text(text + "\n")
  print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
