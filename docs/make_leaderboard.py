"""Writes ``docs/leaderboard.md`` and its figures from the leaderboard's rows.

::

    python docs/make_leaderboard.py                       # the committed rows
    python docs/make_leaderboard.py --jsonl rows.jsonl --out /tmp/page.md \\
        --figures /tmp/figures

reads the JSONL that ``python -m experiments.leaderboard`` fills
(``experiments/results/leaderboard.jsonl``; ``--quick`` rows are left out),
and writes per task: the status of every (optimizer) cell, the table of the
evaluation runs of the tuned configuration (median [IQR] of steps, epochs and
seconds to target, and the share of seeds that reached it within the cap),
and a strip plot of steps per optimizer (``docs/figures/leaderboard_<task>.png``).
A seed that did not reach the target counts as "more than the cap": a median
or quartile that falls on such a seed is printed as ``> cap``. Cells without
rows are listed as not run yet. No training, a few seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import shlex
import sys
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import hypotheses as hyp  # noqa: E402
from experiments import leaderboard  # noqa: E402
from experiments import leaderboard_stats as stats  # noqa: E402

DOCS = ROOT / "docs"
# Grokfast's README (ironjr/grokfast): iterations to 95% validation accuracy on
# its modular-multiplication task, the published outside anchor.
GROKFAST_PUBLISHED = {"grokfast-ma": 790, "grokfast-ema": 910}


def quantile(values: list[float], q: float) -> float:
  """Linear-interpolation quantile; ``inf`` (not reached) as soon as either
  neighbour is.

  >>> quantile([1, 2, 3, 4], 0.5), quantile([1, 2, math.inf], 0.75)
  (2.5, inf)
  """
  ordered = sorted(values)
  position = q * (len(ordered) - 1)
  low, high = math.floor(position), math.ceil(position)
  if math.isinf(ordered[high]) or math.isinf(ordered[low]):
    return math.inf
  return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def show(value: float, cap: float | None, digits: int = 0) -> str:
  """``value`` as text; ``inf`` as ``> cap`` (or ``n/r``, not reached)."""
  if math.isinf(value):
    return f"> {cap:.{digits}f}" if cap is not None else "n/r"
  return f"{value:.{digits}f}"


def stat(values: list[float], cap: float | None, digits: int = 0) -> str:
  """``median [q1–q3]`` of ``values`` (``inf``: not reached)."""
  median = show(quantile(values, 0.5), cap, digits)
  q1 = show(quantile(values, 0.25), cap, digits)
  q3 = show(quantile(values, 0.75), cap, digits)
  return median if q1 == median == q3 else f"{median} [{q1}–{q3}]"


class Budget(NamedTuple):
  """The grid, the configurations in all and the seeds of a fill (full or
  ``--quick``)."""

  trials: int
  budget: int
  tune_seeds: tuple[int, ...]
  eval_seeds: tuple[int, ...]


FULL = Budget(
  leaderboard.TRIALS, leaderboard.BUDGET, leaderboard.TUNE_SEEDS, leaderboard.EVAL_SEEDS
)
QUICK = Budget(
  leaderboard.QUICK_TRIALS,
  leaderboard.QUICK_BUDGET,
  leaderboard.QUICK_TUNE_SEEDS,
  leaderboard.QUICK_EVAL_SEEDS,
)


def cells(
  rows: list[dict[str, Any]], task: str, budget: Budget = FULL
) -> list[dict[str, Any]]:
  """Per optimizer of ``task``: its tuning search (:func:`leaderboard.search`),
  tune and eval rows, chosen config, whether it is at an edge of what was
  tried, and status (plugin rows left out: :func:`plugin_cells`)."""
  out = []
  rows = [r for r in rows if r.get("plugin") is None]
  for name in leaderboard.TASKS[task].optimizers:
    state = leaderboard.search(rows, task, name, trials=budget.trials,
                               budget=budget.budget, seeds=budget.tune_seeds,
                               quick=budget is QUICK)  # fmt: skip
    mine = [r for r in rows if r["task"] == task and r["optimizer"] == name]
    placed = [*state.configs, *state.needed]
    tune = [r for r in mine if r["phase"] == "tune" and r["config"] in placed]
    chosen = state.chosen
    evals = sorted(
      (r for r in mine
       if r["phase"] == "eval" and chosen is not None and r["config"] == chosen
       and r["seed"] in budget.eval_seeds),
      key=lambda r: r["seed"],
    )  # fmt: skip
    if not mine:
      status = "not run yet"
    elif len(evals) >= len(budget.eval_seeds):
      status = "done"
    elif chosen is None:
      status = f"tuning: {len(state.configs)}/{budget.budget} configurations"
    else:
      status = f"evaluating: {len(evals)}/{len(budget.eval_seeds)} seeds"
    stable = status == "done" and all(leaderboard.complete(r) for r in evals)
    out.append(dict(name=name, tune=tune, evals=evals, chosen=chosen, status=status,
                    configs=list(state.configs), edge=state.edge, stable=stable,
                    grok=leaderboard.grok_optimizer(task, name)))  # fmt: skip
  return out


def tables(
  rows: list[dict[str, Any]], quick: bool = False
) -> dict[str, list[dict[str, Any]]]:
  """:func:`cells` of every task, of the full rows (the ``--quick`` ones with
  ``quick``): computed once per page, shared by its sections, summary and the
  README table."""
  rows = [r for r in rows if bool(r.get("quick")) == quick]
  budget = QUICK if quick else FULL
  return {task: cells(rows, task, budget) for task in leaderboard.TASKS}


def plugin_cells(
  rows: list[dict[str, Any]], budget: Budget = FULL
) -> list[dict[str, Any]]:
  """Per (plugin optimizer, file hash, task) with rows: as :func:`cells`, the
  tried configurations read from the rows (the plugin's file is not needed).

  >>> row = dict(task="add97-mlp", optimizer="lion", phase="eval", seed=0,
  ...            config={"adam_lr": 1e-4}, steps_to_target=9, cap_steps=16,
  ...            plugin={"source": "lion.py", "sha256": "ab" * 32})
  >>> [(c["name"], c["status"]) for c in plugin_cells([row], QUICK)]
  [('lion', 'evaluating: 1/2 seeds')]
  """
  out = []
  keys = dict.fromkeys(
    (r["optimizer"], r["plugin"]["sha256"], r["plugin"]["source"], r["task"])
    for r in rows if r.get("plugin") is not None
  )  # fmt: skip
  for name, sha256, source, task in keys:
    mine = [r for r in rows if r["optimizer"] == name and r["task"] == task
            and r.get("plugin", {}).get("sha256") == sha256]  # fmt: skip
    tune = [r for r in mine if r["phase"] == "tune"]
    evals = [r for r in mine if r["phase"] == "eval" and r["seed"] in budget.eval_seeds]
    chosen = evals[0]["config"] if evals else None
    evals = [r for r in evals if r["config"] == chosen]
    configs = list({json.dumps(r["config"]): r["config"] for r in tune}.values())
    if len(evals) >= len(budget.eval_seeds):
      status = "done"
    elif evals:
      status = f"evaluating: {len(evals)}/{len(budget.eval_seeds)} seeds"
    else:
      status = f"tuning: {len(tune)} runs"
    out.append(dict(name=name, sha256=sha256, source=source, task=task, tune=tune,
                    evals=evals, chosen=chosen, status=status,
                    configs=configs or ([chosen] if chosen else [])))  # fmt: skip
  return out


def plugin_section(cells_: list[dict[str, Any]]) -> list[str]:
  """The page's "Plugins" section (nothing without plugin rows)."""
  if not cells_:
    return []
  out = [
    "## Plugins",
    "",
    "Optimizers from files outside the package (`--plugin`, see *Add your "
    "optimizer*), tuned and evaluated with the same budget and protocol as the "
    "others. The SHA-256 of the file identifies the code that ran.",
    "",
    "| task | optimizer | plugin file (SHA-256) | tuned config | reached "
    "| steps: median [IQR] | epochs: median [IQR] | status |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for cell in cells_:
    evals = cell["evals"]
    if evals:
      cap = max(r["cap_steps"] for r in evals)
      cap_epochs = max(r["cap_epochs"] for r in evals)
      values = (
        f"{_reached(cell)}/{len(evals)} | {stat(_steps(evals, 'steps'), cap)} "
        f"| {stat(_steps(evals, 'epochs'), cap_epochs)}"
      )
    else:
      values = "– | – | –"
    source = pathlib.PurePath(cell["source"]).name
    out.append(
      f"| {cell['task']} | {cell['name']} (plugin) | `{source}` "
      f"(`{cell['sha256'][:12]}`) | {config_text(cell['chosen'], cell['configs'])} "
      f"| {values} | {cell['status']} |"
    )
  return [*out, ""]


def _reached(cell: dict[str, Any]) -> int:
  """How many evaluation seeds reached the target within the cap."""
  return sum(r["steps_to_target"] is not None for r in cell["evals"])


_FIELDS = {"steps": "steps_to_target", "epochs": "epochs_to_target",
           "seconds": "seconds", "stable": "stable_steps_to_target"}  # fmt: skip


def _steps(rows: list[dict[str, Any]], kind: str) -> list[float]:
  """Per row, its ``kind`` (steps, epochs, seconds to the first evaluation at
  the target, or ``stable`` steps to stable grokking); ``inf``: not reached."""
  field = _FIELDS[kind]
  return [r[field] if r[field] is not None else math.inf for r in rows]


def config_text(
  config: dict[str, float] | None, configs: list[dict[str, float]]
) -> str:
  """``lr=0.7 weight_decay=0`` (``–`` when not chosen yet), with ``(edge)``
  when its learning rate is the smallest or largest tried with its other
  knobs (:func:`leaderboard.at_edge`): the best may lie outside them."""
  if config is None:
    return "–"
  text = " ".join(f"{k}={v:g}" for k, v in config.items())
  return text + (" (edge)" if leaderboard.at_edge(config, configs) else "")


def strip_plot(task: str, table: list[dict[str, Any]], path: pathlib.Path) -> bool:
  """Steps to target per seed, one column per optimizer (not reached: an ``x``
  at the cap); Grokfast's published iterations as dashed lines. False (no
  figure) when no evaluation row exists."""
  from matplotlib.figure import Figure

  drawn = [c for c in table if c["evals"]]
  if not drawn:
    return False
  fig = Figure(figsize=(1.1 * len(drawn) + 2.5, 3.8))
  ax = fig.subplots()
  for i, cell in enumerate(drawn):
    for j, row in enumerate(sorted(cell["evals"], key=lambda r: r["seed"])):
      x = i + (j - 2) * 0.06
      if row["steps_to_target"] is None:
        ax.plot(x, row["cap_steps"], "x", color="C3")
      else:
        ax.plot(x, row["steps_to_target"], "o", color=f"C{i % 10}", alpha=0.8)
  if task == "grokfast":
    for k, (name, steps) in enumerate(GROKFAST_PUBLISHED.items()):
      ax.axhline(steps, color="0.4", ls="--" if k == 0 else ":", lw=1,
                 label=f"{name}, Grokfast README: {steps}")  # fmt: skip
    ax.legend(fontsize=7, loc="upper right")
  ax.set_xticks(range(len(drawn)), [c["name"] for c in drawn], rotation=35,
                ha="right", fontsize=8)  # fmt: skip
  ax.set_yscale("log")
  ax.set_ylabel("steps to target (x: not reached, at the cap)")
  ax.set_title(f"{task}: evaluation seeds {list(leaderboard.EVAL_SEEDS)}", fontsize=9)
  ax.grid(True, axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return True


def _machine_name(machine: dict[str, Any]) -> str:
  """A row's machine in words: the accelerator first where it ran on one.

  >>> _machine_name(dict(cpu="AMD EPYC", cpus=2, backend="cpu"))
  'AMD EPYC (2 CPUs, cpu)'
  >>> _machine_name(dict(cpu="Intel Xeon", cpus=16, backend="gpu",
  ...                    device="NVIDIA H100 80GB HBM3"))
  'NVIDIA H100 80GB HBM3 (gpu) with Intel Xeon (16 CPUs)'
  """
  host = f"{machine['cpu']} ({machine['cpus']} CPUs"
  if machine["backend"] == "cpu":
    return f"{host}, cpu)"
  device = machine.get("device", "unnamed device")
  return f"{device} ({machine['backend']}) with {host})"


def machines(rows: list[dict[str, Any]]) -> str:
  """Where and when the rows were measured."""
  if not rows:
    return "no rows yet"
  cpus = collections.Counter(_machine_name(r["machine"]) for r in rows)
  dates = sorted(r["date"] for r in rows)
  jax_versions = sorted({r["jax"] for r in rows})
  loads = [r["machine"]["load_average"] for r in rows]
  return (
    f"{', '.join(cpus)}; JAX {', '.join(jax_versions)}; "
    f"{dates[0][:16]} to {dates[-1][:16]} UTC; load average (1 min) "
    f"{min(loads):.1f}-{max(loads):.1f} (the machine was shared: seconds are noisy)"
  )


# What the rows of a task show beyond its table (measured; the rows named are
# in the JSONL).
NOTES = {
  "add97-mlp": (
    "The search follows the line of its best configuration, and Adam → EGD "
    "shows what that can miss. Its grid's best learning rate, 0.1, takes 243 "
    "steps with weight decay 0 and with 0.1; the tie goes to the one tried "
    "first (decay 0), and the 4 searched configurations stay on that line "
    "(lr 0.2: 171 steps; 0.8: 585 and 630; 0.1414: 198; 0.1682: 180), so lr "
    "0.2 is chosen (162 on the evaluation seeds). With decay 0.1, outside "
    "this search, lr 0.4 takes 99 steps and lr 0.8 81 on both tuning seeds "
    "and on every evaluation seed (rows of 2026-12-07 in the JSONL), against "
    "EGD's 90 on every evaluation seed: which line the search walks, and so "
    "this cell's result, hangs on that tie."
  ),
  "grokfast": (
    "Grokfast-EMA reaches 95% on no tuning or evaluation seed within the cap "
    "on this grid (AdamW with decoupled weight decay 0.1 or 1). The outside "
    "anchor's 910 comes from `torch.optim.Adam` with coupled L2 weight decay "
    "0.005 (ironjr/grokfast README), a setting outside this grid; "
    "Grokfast-MA, tuned on the same grid, reaches it on every evaluation seed."
  ),
  "add97-transformer": (
    "`egdm-kernels` and Muon act on the same leaves (the attention kernels as "
    "matrices, embeddings with AdamW): like with like. Tuned by the first "
    "evaluation at the target, Muon chose lr 0.12 with decay 0.1 (279 steps on "
    "both tuning seeds), where it groks and then collapses: on 4 of 5 "
    "evaluation seeds test accuracy falls back below 95% and holds again only "
    "from step 2826–2970, near the 3000-step cap. On its tuning seeds every "
    "Muon configuration with decay 0.1 from lr 0.1 to 0.12 fell back on both "
    "seeds (at 0.24 it never reached 95%); at lr 0.03 it held on both (351, "
    "387). `egdm-kernels`, at lr 0.046 with "
    "decay 0.1, fell back on 1 of 5 evaluation seeds (seed 0: 342, stable "
    "414). A search that chose by stable grokking would tune Muon elsewhere; "
    "this budget chooses by the first measure for every optimizer."
  ),
  "add97-mlp-bs32": (
    "At batch 32 (147 steps an epoch, against 9 at batch 512) only `egdm` "
    "reaches 95% within the cap (19 epochs): tuned to lr 0.025 without weight "
    "decay, two steps below its grid, on every evaluation seed. SGD memorizes "
    "(training accuracy 1.0, best test accuracy at most 0.38); `egd-first-layer`, "
    "`egd` and `column-norm` do not train at all: training accuracy at most 1.5% "
    "(chance 1%) on every tuning and evaluation run, at learning rates from 0.011 "
    "to 11.2 (the rows below 0.175 lie outside this task's search; they are in "
    "the JSONL). EGD's loss does not move: at lr 0.02 "
    "(`python -m experiments.grok --task mod_add --p 97 "
    "--batch-size 32 --optimizer egd --lr 0.02 --max-epochs 4 "
    "--train-metrics full`, seed 0) its training loss is 4.574 after 147 steps and "
    "after 588 (ln 97 = 4.575), where at batch 512 36 steps bring it to 4.509. A "
    "likely reason, not isolated by an experiment: a polar factor gives each "
    "of a 32-example gradient's singular directions the same unit step, and "
    "at this batch most of them are sampling noise; `egdm` takes the polar "
    "factor of a momentum average of the gradients, and it trains."
  ),
}
# The optimizers that apply EGD (a polar factor) to some matrix update.
EGD_FAMILY = ("egd-first-layer", "egd", "egdm", "adam-egd", "egdm-kernels")


def _median_steps(cell: dict[str, Any], kind: str = "steps") -> float:
  return quantile(_steps(cell["evals"], kind), 0.5)


def _rank_key(cell: dict[str, Any], kind: str = "steps") -> tuple[float, float]:
  """Median steps (``kind``: ``"steps"`` to the first evaluation at the
  target, ``"stable"`` to stable grokking), then the share of evaluation
  seeds that missed."""
  values = _steps(cell["evals"], kind)
  missed = sum(math.isinf(v) for v in values)
  return (_median_steps(cell, kind), missed / len(values))


def ranked(table: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
  """The done cells of a task whose median seed reached the target (for
  ``kind="stable"``: whose rows all carry the stable fields), fastest first."""
  done = [
    c for c in table if c["status"] == "done" and (kind != "stable" or c["stable"])
  ]
  return [c for c in sorted(done, key=lambda c: _rank_key(c, kind))
          if not math.isinf(_median_steps(c, kind))]  # fmt: skip


def compare(
  a: dict[str, Any], b: dict[str, Any], kind: str
) -> tuple[stats.Interval, str, float]:
  """``a`` against ``b`` over their evaluation seeds, paired by seed: the
  ratio of median steps with its bootstrap 95% interval, the verdict read off
  the interval, and the sign-flip p-value (a miss counts as the cap)."""
  by_seed = [{r["seed"]: r for r in c["evals"]} for c in (a, b)]
  seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
  cap = max(r["cap_steps"] for c in (a, b) for r in c["evals"])
  values = [_steps([mine[seed] for seed in seeds], kind) for mine in by_seed]
  interval = stats.ratio_of_medians(values[0], values[1], cap)
  return (
    interval,
    stats.verdict(interval),
    stats.sign_flip_test(values[0], values[1], cap),
  )


def _versus(a: dict[str, Any] | None, b: dict[str, Any] | None, kind: str) -> str:
  if a is None or b is None:
    return "–"
  interval, verdict, p = compare(a, b, kind)
  return (
    f"{a['name']} vs {b['name']}: ×{interval.ratio:.2f} "
    f"[{interval.low:.2f}–{interval.high:.2f}], **{verdict}** (p = {p:.2g})"
  )


def ranking(by_task: dict[str, list[dict[str, Any]]]) -> list[str]:
  """The summary table: per task with two or more done cells, its three
  fastest optimizers by median steps to the first evaluation at the target
  and to stable grokking (a seed that missed counts as the cap; ties broken
  by the share of seeds that reached it; a cell whose median seed missed it
  is not ranked), and the fastest EGD optimizer against the fastest other
  one by each measure (:func:`compare`)."""
  out = [
    "| task | cells done | fastest: first at target | fastest: stable "
    "| best EGD vs best other: first at target | same: stable |",
    "|---|---|---|---|---|---|",
  ]
  for task, table in by_task.items():
    done = [c for c in table if c["status"] == "done"]
    if len(done) < 2:
      continue
    cap = max(r["cap_steps"] for c in done for r in c["evals"])
    texts = []
    pending = [c["name"] for c in done if not c["stable"]]
    for kind in ("steps", "stable"):
      ordered = ranked(table, kind)
      text = ", ".join(
        f"{c['name']} {show(_median_steps(c, kind), cap)}" for c in ordered[:3]
      )
      if kind == "stable" and pending:
        text += ("; " if text else "") + "pending: " + ", ".join(pending)
      texts.append(text or "none reaches it")
    for kind in ("steps", "stable"):
      ordered = ranked(table, kind)
      egd = next((c for c in ordered if c["name"] in EGD_FAMILY), None)
      other = next((c for c in ordered if c["name"] not in EGD_FAMILY), None)
      texts.append(_versus(egd, other, kind))
    out.append(f"| {task} | {len(done)} | " + " | ".join(texts) + " |")
  return out


def differences(by_task: dict[str, list[dict[str, Any]]]) -> list[str]:
  """Per task where the order of the ranked optimizers differs between the
  two measures: one line naming both orders."""
  out = []
  for task, table in by_task.items():
    first = [c["name"] for c in ranked(table, "steps") if c["stable"]]
    stable = [c["name"] for c in ranked(table, "stable")]
    if len(first) >= 2 and first != stable:
      out.append(f"- {task}: first at target {', '.join(first)}; stable "
                 f"{', '.join(stable) or 'none'}.")  # fmt: skip
  return out


def rerun_text(rows: list[dict[str, Any]]) -> str:
  """What the reruns of old rows found: how many give the same first
  crossing, and which optimizers the others belong to.

  >>> text = rerun_text([dict(optimizer="egd", steps_to_target=90,
  ...                         replaced={"steps_to_target": 99})])
  >>> text.split("; ")[1].split(" (")[0], text.endswith("median new/old 0.91).")
  ('the 1 others are all of egd', True)
  """
  reruns = [r for r in rows if r.get("replaced") is not None]
  if not reruns:
    return "No row has been rerun yet."
  differ = [
    r for r in reruns if r["replaced"]["steps_to_target"] != r["steps_to_target"]
  ]
  text = (
    f"Of {len(reruns)} such reruns so far, {len(reruns) - len(differ)} gave the "
    "same first crossing"
  )
  if not differ:
    return text + "."
  names = ", ".join(sorted({r["optimizer"] for r in differ}))
  ratios = [
    r["steps_to_target"] / r["replaced"]["steps_to_target"]
    for r in differ
    if r["steps_to_target"] and r["replaced"]["steps_to_target"]
  ]
  median = f": median new/old {quantile(ratios, 0.5):.2f}" if ratios else ""
  return (
    f"{text}; the {len(differ)} others are all of {names} (the old rows were "
    f"measured with earlier code{median})."
  )


def edge_cells(by_task: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
  """How many done cells chose a learning rate at an edge of what was tried,
  and how many cells are done."""
  done = [c for table in by_task.values() for c in table if c["status"] == "done"]
  return sum(c["edge"] for c in done), len(done)


def draw_overview(by_task: dict[str, list[dict[str, Any]]], path: pathlib.Path) -> bool:
  """The page's overview figure (:func:`stats.overview_figure`): per task and
  optimizer, the done cell's median steps over the task's best, both
  measures, edge cells marked. False when no cell is done."""
  data: dict[tuple[str, str], dict[str, Any]] = {}
  tasks = [
    t for t, table in by_task.items() if any(c["status"] == "done" for c in table)
  ]
  for task in tasks:
    table = [c for c in by_task[task] if c["status"] == "done"]
    best = {}
    for kind in ("steps", "stable"):
      medians = [
        _median_steps(c, kind) for c in table if kind == "steps" or c["stable"]
      ]
      best[kind] = min(medians, default=math.inf)
    for cell in table:
      entry: dict[str, Any] = {"edge": cell["edge"]}
      for kind, key in (("steps", "first"), ("stable", "stable")):
        if kind == "stable" and not cell["stable"]:
          entry[key], entry[f"missed_{key}"] = None, False
          continue
        median = _median_steps(cell, kind)
        ratio = median / best[kind] if not math.isinf(median) else math.inf
        entry[key] = ratio
        entry[f"missed_{key}"] = any(math.isinf(v) for v in _steps(cell["evals"], kind))
      data[(task, cell["name"])] = entry
  return stats.overview_figure(
    data, path, tasks=tasks, optimizers=leaderboard.TRANSFORMER_OPTIMIZERS
  )


def hypothesis_lines(
  task: str,
  table: list[dict[str, Any]],
  rows: list[dict[str, Any]],
  hypothesis_rows: list[dict[str, Any]],
) -> list[str]:
  """The task's hypotheses (:data:`experiments.hypotheses.HYPOTHESES`): each
  statement, its command, and one sentence of result from its rows (medians
  of both measures against the compared cell's, with the paired interval)."""
  out = []
  by_name = {c["name"]: c for c in table}
  for name, h in hyp.HYPOTHESES.items():
    if h.task != task:
      continue
    config = hyp.config_of(h, rows)
    mine = sorted(
      (r for r in hypothesis_rows if r.get("hypothesis") == name
       and r["config"] == config and r["seed"] in leaderboard.EVAL_SEEDS),
      key=lambda r: r["seed"],
    )  # fmt: skip
    targets = [
      by_name[n] for n in dict.fromkeys([h.optimizer, h.compare or h.optimizer])
    ]
    change = ", ".join(f"{k} {v}" for k, v in h.change.items())
    head = f"- **{h.statement}** (`python -m experiments.hypotheses --only {name}`)"
    if len(mine) < len(leaderboard.EVAL_SEEDS) or any(
      t["status"] != "done" for t in targets
    ):
      out.append(f"{head}: not run yet ({len(mine)} of "
                 f"{len(leaderboard.EVAL_SEEDS)} seeds).")  # fmt: skip
      continue
    cap = max(r["cap_steps"] for r in mine)
    cell = {"name": f"{h.optimizer} with {change}", "evals": mine}
    parts = []
    verdicts = {}
    for against in targets:
      texts = []
      for kind, label in (("steps", "first at target"), ("stable", "stable")):
        if kind == "stable" and not against["stable"]:
          texts.append("stable: pending")
          continue
        interval, verdict, _ = compare(cell, against, kind)
        if kind == "steps":
          verdicts[against["name"]] = verdict
        texts.append(
          f"{label} {show(_median_steps(cell, kind), cap)} against "
          f"{show(_median_steps(against, kind), cap)} (×{interval.ratio:.2f} "
          f"[{interval.low:.2f}–{interval.high:.2f}], {verdict})"
        )
      parts.append(f"against tuned {against['name']}: " + "; ".join(texts))
    if h.expect == "closes":
      supported = verdicts[h.compare or h.optimizer] != "behind"
    else:
      supported = verdicts[h.optimizer] == "behind"
    out.append(
      f"{head}: {h.optimizer} with {change}, median steps over seeds 0–4 "
      + "; ".join(parts)
      + (". **Supported.**" if supported else ". **Not supported.**")
    )
  if out:
    out = ["Hypotheses for the order on this task, each one experiment:", "", *out, ""]
  return out


README_START = "<!-- leaderboard table: python docs/make_leaderboard.py -->"
README_END = "<!-- end of leaderboard table -->"
# The README's "Results at a glance": tasks and optimizers (column titles).
HEADLINE_TASKS = ("add97-mlp", "mul97-mlp", "parity-400-2", "parity-100-3",
                  "parity-50-4", "grokfast", "mnist")  # fmt: skip
HEADLINE_OPTIMIZERS = {
  "baseline": "baseline",
  "egd-first-layer": "EGD, first layer",
  "egd": "EGD, every matrix",
  "egdm": "egdm",
  "adam-egd": "Adam → EGD",
  "muon": "Muon",
  "perp-adamw": "⊥AdamW",
  "column-norm": "column norm",
}


def headline(by_task: dict[str, list[dict[str, Any]]]) -> list[str]:
  """The README's table: median steps to target of the done cells of
  ``HEADLINE_TASKS`` (``(k/5)`` when only k evaluation seeds reached it;
  ``–``: not done yet). ``tests/test_leaderboard.py`` checks that the README
  holds exactly these lines."""
  out = [
    "| task | " + " | ".join(HEADLINE_OPTIMIZERS.values()) + " |",
    "|---" * (len(HEADLINE_OPTIMIZERS) + 1) + "|",
  ]
  for task in HEADLINE_TASKS:
    by_name = {c["name"]: c for c in by_task[task]}
    texts = []
    for name in HEADLINE_OPTIMIZERS:
      cell = by_name.get(name)
      if cell is None or cell["status"] != "done":
        texts.append("–")
        continue
      evals = cell["evals"]
      cap = max(r["cap_steps"] for r in evals)
      reached = _reached(cell)
      text = show(_median_steps(cell), cap)
      if reached < len(evals):
        text += f" ({reached}/{len(evals)})"
      texts.append(text)
    baseline = leaderboard.TASKS[task].baseline
    out.append(f"| {task} ({baseline}) | " + " | ".join(texts) + " |")
  return out


# The "Add your optimizer" section: a complete plugin file and the command
# that tunes and evaluates it (tests/test_leaderboard.py runs both, --quick).
PLUGIN_FILE = '''"""Lion (Chen et al. 2023) on the leaderboard: optax.lion."""

import optax

from experiments.registry import OptimizerConfig, OptimizerSpec


def build(
  config: OptimizerConfig, first_kernel: object
) -> optax.GradientTransformation:
  """Lion at the run's learning rate (with its warmup) and weight decay;
  ``first_kernel``, the model's first weight matrix, is not used here."""
  return optax.lion(
    config.schedule(config.adam_lr), weight_decay=config.adam_weight_decay
  )


LION = OptimizerSpec(
  name="lion",
  build=build,
  knobs=("adam_lr", "adam_weight_decay", "warmup_steps"),
  family="adamw",  # tunes adam_lr and adam_weight_decay (0.1 and 1)
  label="Lion",
  # Lion's steps are sign vectors: a learning rate 3-10x below AdamW's.
  centre={"mlp": 1e-4, "parity": 1e-4, "transformer": 1e-4, "mnist": 1e-4},
)
'''
PLUGIN_COMMAND = (
  "python -m experiments.leaderboard --plugin lion.py --tasks add97-mlp "
  "--jsonl lion.jsonl"
)


def add_your_optimizer() -> list[str]:
  """The page's "Add your optimizer" section."""
  return [
    "## Add your optimizer",
    "",
    "An optimizer defined in a file outside the package runs on the leaderboard "
    "with the same budget and protocol as the built-in ones. The file defines an "
    "`experiments.registry.OptimizerSpec`: its name, a builder that turns the "
    "run's hyperparameters (an `OptimizerConfig`) into an optax transformation, "
    "the hyperparameters (knobs) it reads, its family (`sgd`: the grid tunes "
    "`lr`; `adamw`: `adam_lr` and `adam_weight_decay`; `tune=` picks others) and "
    "the learning rate at the centre of its grid per task family. For Lion, as "
    "`lion.py`:",
    "",
    "```python",
    PLUGIN_FILE.rstrip(),
    "```",
    "",
    "From the root of a clone (or with the clone on `PYTHONPATH`), this command "
    "tunes and evaluates it on a task, appending its rows to `lion.jsonl` (a rerun "
    "trains only the missing ones; `--print-grid` shows its grid and budget first, "
    "`--quick` is a check that takes seconds):",
    "",
    "```bash",
    PLUGIN_COMMAND,
    "```",
    "",
    "The rows carry the file's SHA-256 (a changed file is another optimizer), and "
    "`python docs/make_leaderboard.py --jsonl lion.jsonl --out lion.md` draws a "
    "page whose *Plugins* section shows it. A module on the path works too "
    "(`--plugin mypackage.lion`); `python -m experiments.grok --plugin lion.py "
    "--optimizer lion` trains it once. Built into the package, an optimizer is "
    "one entry of `experiments.registry.SPECS`.",
    "",
  ]


def page(
  rows: list[dict[str, Any]],
  by_task: dict[str, list[dict[str, Any]]],
  figures: pathlib.Path,
  figure_link: str,
  quick: bool = False,
  hypothesis_rows: list[dict[str, Any]] | None = None,
) -> str:
  """The markdown of the page (``by_task``: :func:`tables` of ``rows``, of the
  ``--quick`` rows with ``quick``); draws the figures into ``figures``."""
  rows = [r for r in rows if bool(r.get("quick")) == quick]
  edges, done_cells = edge_cells(by_task)
  image = figures / "leaderboard_overview.png"
  overview_lines = []
  if draw_overview(by_task, image):
    overview_lines = [
      f"![median steps relative to each task's best]({figure_link}/{image.name})",
      "",
      "Each done cell: its median steps over the best median of its task (1.0: "
      "the fastest), to the first evaluation at the target (left) and to stable "
      "grokking (right); † tuned at an edge of what was tried; * some seeds "
      "missed the target; grey: not done (or the stable rows still pending).",
      "",
    ]
  lines = [
    "# Leaderboard",
    "",
    "Which optimizer makes a model grok soonest, each tuned on the same budget. "
    "Generated by `python docs/make_leaderboard.py` from "
    "`experiments/results/leaderboard.jsonl`, which "
    "`python -m experiments.leaderboard` fills (it resumes: a rerun trains only "
    "the missing rows).",
    "",
    *overview_lines,
    "**Protocol.** For every task and optimizer, the same budget: "
    f"{leaderboard.BUDGET} configurations, each on the tuning seeds "
    f"{list(leaderboard.TUNE_SEEDS)} "
    f"({leaderboard.BUDGET * len(leaderboard.TUNE_SEEDS)} tuning runs). The "
    f"first {leaderboard.TRIALS} are a grid (the learning rate "
    f"times {', '.join(f'{f:g}' for f in leaderboard.LR_FACTORS)}; for an optimizer "
    "with a weight decay, the learning rate times "
    f"{', '.join(f'{f:g}' for f in leaderboard.WD_LR_FACTORS)} × two decays); a "
    f"search places the other {leaderboard.BUDGET - leaderboard.TRIALS}, one at a "
    "time, from the best so far: when its learning rate is the smallest or "
    "largest tried with its other knobs, a step past that edge (×"
    f"{leaderboard.EDGE_STEP:g} the first time, then ×{leaderboard.EDGE_STEP**2:g}, "
    f"×{leaderboard.EDGE_STEP**3:g}, …: each step twice the factor of the one "
    "before); otherwise the geometric midpoint towards its better neighbour. "
    "The best configuration (the fewest median "
    "steps to the first evaluation at the target, a seed that misses it counting "
    "as the cap) is then run on the evaluation seeds "
    f"{list(leaderboard.EVAL_SEEDS)}, which the tables report. Every optimizer "
    "of a seed starts from the same data split, initialization and shuffles. "
    "SGD-based optimizers keep the task's L2 term in the loss; it is not tuned. "
    "`python -m experiments.leaderboard --print-grid` prints every grid. A tuned "
    "configuration marked *(edge)* still has the smallest or largest learning "
    "rate tried with its other knobs after the budget: a wider search may find a "
    f"better one. **{edges} of {done_cells} done cells are at such an edge.**",
    "",
    "**Two measures.** Steps to the *first* evaluation (every epoch) at the "
    "target, and steps to *stable* grokking: the first epoch s with "
    f"{leaderboard.STABLE_RULE} (runs go on past the first crossing until "
    "then). *Fell back*: seeds whose "
    "test accuracy dropped below the target after first reaching it. Rows "
    "written before the stable measure existed that reached the target are "
    "rerun with the current code, and the rerun's row replaces the old one, "
    "keeping the old steps to target under `replaced`; rows that never "
    "reached the target take the fields without a rerun. "
    + rerun_text(rows)
    + " A cell's stable column is `pending` until all its evaluation rows "
    "carry the fields.",
    "",
    "**Statistics.** Best EGD optimizer against best other, per measure: the "
    "ratio of median steps over the evaluation seeds, paired by seed, with a "
    "percentile bootstrap 95% interval (10,000 resamples; a miss counts as the "
    "cap, which can only flatter the optimizer that missed). *ahead*/*behind* "
    "only where the interval excludes 1, else *not separated*. The p-value is "
    "the exact paired sign-flip test of the log ratio, for information: with 5 "
    "seeds it cannot go below 0.0625.",
    "",
    f"**Measured on**: {machines(rows)}.",
    "",
    "**Commands**:",
    "",
    "```bash",
    "python -m experiments.leaderboard            # every task, cheapest first",
    "python -m experiments.leaderboard --workers 2  # two processes side by side",
    "python -m experiments.leaderboard --tasks grokfast --optimizers egdm,muon",
    "python docs/make_leaderboard.py              # this page and its figures",
    "```",
    "",
    "Optimizers: "
    + "; ".join(f"`{name}`: {text}" for name, text in leaderboard.OPTIMIZERS.items())
    + ".",
    "",
  ]
  overview = ["| task | " + " | ".join(leaderboard.TRANSFORMER_OPTIMIZERS) + " |",
              "|---" * (len(leaderboard.TRANSFORMER_OPTIMIZERS) + 1) + "|"]  # fmt: skip
  sections = []
  for task, spec in leaderboard.TASKS.items():
    table = by_task[task]
    by_name = {c["name"]: c["status"] for c in table}
    overview.append(
      f"| {task} | "
      + " | ".join(by_name.get(n, "–") for n in leaderboard.TRANSFORMER_OPTIMIZERS)
      + " |"
    )
    sample = leaderboard.resolved(task, "baseline", {}, quick=False)
    sections += [
      f"## {task}",
      "",
      f"{spec.source}. `python -m experiments.grok {shlex.join(spec.argv)}`; "
      f"baseline {spec.baseline}; target {sample.target_accuracy:.0%} test accuracy; "
      f"cap {spec.cap_steps} steps.",
      "",
    ]
    if task in NOTES:
      sections += [NOTES[task], ""]
    if not quick:
      sections += hypothesis_lines(task, table, rows, hypothesis_rows or [])
    image = figures / f"leaderboard_{task}.png"
    if not any(c["tune"] or c["evals"] for c in table):
      sections += ["Not run yet.", ""]
      image.unlink(missing_ok=True)  # a figure of rows no longer shown
      continue
    sections += [
      "| optimizer | tuned config | reached | steps: median [IQR] "
      "| stable: reached | stable steps: median [IQR] | fell back "
      "| seconds: median [IQR] | status |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in table:
      evals = cell["evals"]
      if evals:
        cap = max(r["cap_steps"] for r in evals)
        reached = _reached(cell)
        if all(leaderboard.complete(r) for r in evals):
          stable = _steps(evals, "stable")
          fell = sum(bool(r["fell_back"]) for r in evals)
          stable_text = (
            f"{sum(not math.isinf(v) for v in stable)}/{len(evals)} "
            f"| {stat(stable, cap)} | {fell}/{len(evals)}"
          )
        else:
          stable_text = "pending | pending | pending"
        values = (
          f"{reached}/{len(evals)} | {stat(_steps(evals, 'steps'), cap)} "
          f"| {stable_text} | {stat(_steps(evals, 'seconds'), None, 1)}"
        )
      else:
        values = "– | – | – | – | – | –"
      name = cell["name"]
      if cell["grok"][0] != name:
        name += f" (`{cell['grok'][0]}`)"
      sections.append(
        f"| {name} | {config_text(cell['chosen'], cell['configs'])} | {values} "
        f"| {cell['status']} |"
      )
    if task == "grokfast":
      sections += [
        "",
        "Outside anchor: Grokfast's README reports "
        f"{GROKFAST_PUBLISHED['grokfast-ma']} iterations (MA) and "
        f"{GROKFAST_PUBLISHED['grokfast-ema']} (EMA) to 95% on this task "
        "(their run, their hardware, their hyperparameters).",
      ]
    if strip_plot(task, table, image):
      sections += ["", f"![steps to target on {task}]({figure_link}/{image.name})"]
    else:
      image.unlink(missing_ok=True)  # a figure of rows no longer shown
    sections.append("")
  statuses = [c for table in by_task.values() for c in table]
  done = sum(c["status"] == "done" for c in statuses)
  unrun = sum(c["status"] == "not run yet" for c in statuses)
  used = {id(r) for c in statuses for r in (*c["tune"], *c["evals"])}
  outside = sum(id(r) not in used for r in rows if r.get("plugin") is None)
  lines += [
    "## Summary",
    "",
    "Per task with two or more done cells, by each measure: the three fastest "
    "tuned optimizers (median steps over the evaluation seeds; an optimizer "
    "whose median seed missed the target within the cap is not ranked), and "
    "the fastest that applies EGD ("
    + ", ".join(f"`{n}`" for n in EGD_FAMILY)
    + ") against the fastest of the others (ratio of medians [95% interval], "
    "verdict, p). The per-task tables below give the spread and the share of "
    "seeds that reached the target.",
    "",
    *ranking(by_task),
    "",
    "Where the order by stable grokking differs from the order by the first "
    "evaluation at the target (done cells with both measures):",
    "",
    *(differences(by_task) or ["- nowhere."]),
    "",
    "## Cells",
    "",
    f"**{done} of {len(statuses)} cells are done** (tuned and evaluated on every "
    f"evaluation seed); {unrun} are not run yet, the others are partly run. "
    "Status of every (task, optimizer) cell; – : not on that task (the MLP "
    "variants compare EGD with its baselines only; `egdm-kernels` runs on the "
    f"transformers only). {outside} rows of the file are not used by the "
    "tables (tuning rows outside the searches, evaluation rows of "
    "configurations no longer chosen); they stay in the file.",
    "",
    *overview,
    "",
    *sections,
    *plugin_section(plugin_cells(rows, QUICK if quick else FULL)),
    *add_your_optimizer(),
  ]
  return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--jsonl", type=pathlib.Path,
                 default=ROOT / leaderboard.DEFAULT_JSONL)  # fmt: skip
  p.add_argument("--out", type=pathlib.Path, default=DOCS / "leaderboard.md")
  p.add_argument(
    "--hypotheses",
    type=pathlib.Path,
    default=ROOT / hyp.DEFAULT_JSONL,
    help="the rows of python -m experiments.hypotheses (default: the committed ones)",
  )
  p.add_argument("--figures", type=pathlib.Path, default=DOCS / "figures")
  p.add_argument(
    "--readme", type=pathlib.Path, default=None,
    help="rewrite the table between this file's leaderboard markers "
    "(default: README.md when --jsonl and --out are the defaults)",
  )  # fmt: skip
  p.add_argument(
    "--quick", action="store_true",
    help="the page of the --quick rows (a check of a fill) instead of the full ones",
  )  # fmt: skip
  args = p.parse_args(argv)
  defaults = (
    args.jsonl == ROOT / leaderboard.DEFAULT_JSONL
    and args.out == (DOCS / "leaderboard.md")
    and not args.quick
  )
  if args.readme is None and defaults:
    args.readme = ROOT / "README.md"
  if args.jsonl.exists() and not args.jsonl.is_file():
    p.error(f"argument --jsonl: {args.jsonl} is not a file")
  args.figures.mkdir(parents=True, exist_ok=True)
  link = (
    "figures"
    if args.figures.resolve() == (args.out.parent / "figures").resolve()
    else str(args.figures.resolve())
  )
  rows = leaderboard.read_rows(args.jsonl)
  by_task = tables(rows, args.quick)
  hypothesis_rows = leaderboard.read_rows(args.hypotheses)
  text = page(rows, by_task, args.figures, link, args.quick, hypothesis_rows)
  args.out.write_text(text)
  print(f"wrote {args.out}")
  if args.readme is not None:
    readme = args.readme.read_text()
    if README_START not in readme or README_END not in readme:
      p.error(f"argument --readme: {args.readme} has no {README_START} ... "
              f"{README_END} block")  # fmt: skip
    head, rest = readme.split(README_START, 1)
    table = "\n".join(headline(by_task))
    args.readme.write_text(
      f"{head}{README_START}\n{table}\n{README_END}{rest.split(README_END, 1)[1]}"
    )
    print(f"wrote the results table of {args.readme}")


if __name__ == "__main__":
  main()
