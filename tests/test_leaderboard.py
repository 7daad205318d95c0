"""Tests of ``experiments.leaderboard`` (a --quick run end to end: rows,
resume, the tuned choice, disjoint seeds, usage errors) and of what it added
to the tasks and the loop (label noise, the StableMax cross-entropy)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import grok, leaderboard, tasks, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
  "make_leaderboard", ROOT / "docs" / "make_leaderboard.py"
)
make_leaderboard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_leaderboard)


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory):
  """One --quick fill (SGD only: 2 tune runs, 2 eval runs), then a rerun."""
  path = tmp_path_factory.mktemp("lb") / "rows.jsonl"
  leaderboard.main(["--quick", "--optimizers", "baseline", "--jsonl", str(path)])
  first = path.read_text()
  leaderboard.main(["--quick", "--optimizers", "baseline", "--jsonl", str(path)])
  return path, first, leaderboard.read_rows(path)


def test_quick_writes_every_row_once_and_resumes(quick_rows):
  path, first, rows = quick_rows
  assert path.read_text() == first  # the rerun trained nothing
  assert len(rows) == leaderboard.QUICK_BUDGET + 2
  for row in rows:
    for field in ("task", "optimizer", "phase", "seed", "config", "steps_to_target",
                  "epochs_to_target", "seconds", "cap_steps", "machine", "date", "jax",
                  *leaderboard.STABLE_FIELDS):  # fmt: skip
      assert field in row, field
    assert "--stop-rule stable" in row["command"]
    assert row["task"] == "add97-mlp" and row["optimizer"] == "baseline"
    assert row["cap_steps"] >= leaderboard.QUICK_CAP_STEPS
    assert row["epochs_run"] == row["cap_epochs"] or row["steps_to_target"] is not None
  tune = [r for r in rows if r["phase"] == "tune"]
  evals = [r for r in rows if r["phase"] == "eval"]
  assert {r["seed"] for r in tune} == set(leaderboard.QUICK_TUNE_SEEDS)
  assert {r["seed"] for r in evals} == set(leaderboard.QUICK_EVAL_SEEDS)
  assert not {r["seed"] for r in tune} & {r["seed"] for r in evals}
  configs = [r["config"] for r in tune]
  assert configs[:2] == leaderboard.grid("add97-mlp", "baseline", 2)
  # The third, placed by the search: a step past the edge of the best so far.
  assert configs[2] == leaderboard.propose(
    configs[:2], [leaderboard._score([r]) for r in tune[:2]]
  )
  assert configs[2] not in configs[:2]


def test_eval_runs_the_best_tune_config(quick_rows):
  _, _, rows = quick_rows
  tune = [r for r in rows if r["phase"] == "tune"]
  best = min(
    tune,
    key=lambda r: (
      r["steps_to_target"] if r["steps_to_target"] is not None else r["cap_steps"],
      -r["best_test_acc"],
    ),
  )
  assert {json.dumps(r["config"]) for r in rows if r["phase"] == "eval"} == {
    json.dumps(best["config"])
  }


def test_choose_counts_unreached_as_cap_and_waits_for_rows():
  def row(lr, seed, steps):
    return dict(task="t", optimizer="o", phase="tune", seed=seed, config={"lr": lr},
                steps_to_target=steps, cap_steps=100, best_test_acc=0.5)  # fmt: skip

  configs = [{"lr": 1.0}, {"lr": 2.0}]
  rows = [row(1.0, 0, 90), row(1.0, 1, 95), row(2.0, 0, 10), row(2.0, 1, None)]
  # lr 2: median of (10, cap 100) = 55 beats lr 1's 92.5.
  assert leaderboard.choose(rows, "t", "o", configs, (0, 1)) == {"lr": 2.0}
  rows[2]["steps_to_target"] = None  # now (100, 100): lr 1 wins
  assert leaderboard.choose(rows, "t", "o", configs, (0, 1)) == {"lr": 1.0}
  assert leaderboard.choose(rows[:3], "t", "o", configs, (0, 1)) is None


def test_claims_keep_two_fills_apart(tmp_path):
  path = tmp_path / "rows.jsonl"
  assert leaderboard.claim(path, "k")
  assert not leaderboard.claim(path, "k")  # ours, and we are alive
  dead = {"key": "d", "pid": 2**22 + 12345, "host": leaderboard.socket.gethostname(),
          "time": 0}  # fmt: skip
  (tmp_path / "rows.jsonl.claims").open("a").write(json.dumps(dead) + "\n")
  assert leaderboard.claim(path, "d")  # a dead process's claim is void
  row = {"task": "t", "optimizer": "o", "phase": "tune", "seed": 0, "config": {},
         "quick": False, "x": float("nan"), "stable_steps_to_target": 9,
         "stable_epochs_to_target": 1, "fell_back": False}  # fmt: skip
  leaderboard.append(path, row)
  done = leaderboard.row_key(leaderboard.read_rows(path)[0])
  assert not leaderboard.claim(path, done)
  assert leaderboard.read_rows(path)[0]["x"] is None


def test_old_rows_get_the_stable_fields_none_dropped(tmp_path):
  """A row from before the stable measure: unreached, it takes the fields
  from what it shows; reached, its run is claimable again and the rerun's row
  replaces it in place, keeping the old steps under "replaced"."""
  path = tmp_path / "rows.jsonl"
  old = dict(task="t", optimizer="o", phase="eval", quick=False, cap_epochs=10,
             epochs_run=10, date="old")  # fmt: skip
  lr = {"config": {"lr": 1.0}}
  rows = [old | lr | dict(seed=0, steps_to_target=None),
          old | lr | dict(seed=1, steps_to_target=90, epochs_run=5),
          old | lr | dict(seed=2, steps_to_target=None, epochs_run=3)]  # fmt: skip
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert leaderboard.complete_unreached(path) == 1
  unreached, reached, stopped = leaderboard.read_rows(path)
  assert unreached["stable_steps_to_target"] is None and not unreached["fell_back"]
  assert leaderboard.complete(unreached) and unreached["stable_derived"]
  # Reached (stable unknown), or stopped before the cap: no fields made up.
  assert not leaderboard.complete(reached) and not leaderboard.complete(stopped)
  assert not leaderboard.claim(path, leaderboard.row_key(unreached))
  assert leaderboard.claim(path, leaderboard.row_key(reached))
  rerun = reached | dict(steps_to_target=90, stable_steps_to_target=108,
                         stable_epochs_to_target=12, fell_back=True,
                         date="new")  # fmt: skip
  leaderboard.append(path, rerun)
  after = leaderboard.read_rows(path)
  assert len(after) == 3 and after[0] == unreached and after[2] == stopped
  assert after[1] == rerun | {"replaced": {"steps_to_target": 90, "date": "old"}}
  assert leaderboard.complete_unreached(path) == 0  # idempotent


def test_every_optimizer_has_the_same_budget_and_valid_options():
  for task in leaderboard.TASKS:
    for name in leaderboard.TRANSFORMER_OPTIMIZERS:
      configs = leaderboard.grid(task, name)
      assert len(configs) == leaderboard.TRIALS, (task, name)
      assert len({json.dumps(c) for c in configs}) == leaderboard.TRIALS
      args = leaderboard.resolved(task, name, configs[0], quick=False)
      assert args.optimizers == [leaderboard.grok_optimizer(task, name)[0]]
      key = next(iter(configs[0]))
      assert getattr(args, key) == configs[0][key]
  assert leaderboard.resolved("grokfast", "baseline", {}, False).max_epochs == 100
  assert leaderboard.resolved("add97-mlp-bs32", "egd", {}, False).batch_size == 32


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--tasks", "nope"], "argument --tasks: unknown 'nope'; choose from add97-mlp"),
    (["--optimizers", "sgdx"], "argument --optimizers: unknown 'sgdx'"),
    (["--optimizers", "egd,egd"], "argument --optimizers: 'egd' given more than once"),
    (["--tasks", ","], "argument --tasks: give at least one of"),
    (["--phase", "train"], "argument --phase: invalid choice: 'train'"),
    (["--max-runs", "0"], "argument --max-runs: must be an integer >= 1, got '0'"),
    (["--jsonl", "/"], "argument --jsonl: / is not a file"),
    (["--plugin", "nope.py"], "argument --plugin: nope.py: no such file"),
  ],
)
def test_option_errors(capsys, argv, message):
  with pytest.raises(SystemExit) as info:
    leaderboard.parse_args(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert err.rstrip().splitlines()[-1].startswith("python -m experiments.leaderboard")
  assert message in err.rstrip().splitlines()[-1]


def test_print_grid_states_the_budget(capsys):
  argv = ["--print-grid", "--tasks", "grokfast", "--optimizers", "muon,baseline"]
  leaderboard.main(argv)
  out = capsys.readouterr().out
  assert f"{leaderboard.BUDGET} configurations per optimizer" in out
  assert f"the grid of {leaderboard.TRIALS} below" in out
  assert "tuning seeds [100, 101]" in out and "evaluation seeds [0, 1, 2, 3, 4]" in out
  assert "muon_lr=0.03 adam_weight_decay=0" in out
  assert "adam_lr=0.001 adam_weight_decay=1" in out
  assert "cap 1000 steps" in out


def test_label_noise_replaces_that_share_of_training_labels_only():
  key = jax.random.key(3)
  clean = tasks.modular_arithmetic(key, "add", 11, 0.5)
  noisy = tasks.modular_arithmetic(key, "add", 11, 0.5, label_noise=0.1)
  np.testing.assert_array_equal(clean.x_train, noisy.x_train)
  np.testing.assert_array_equal(clean.y_test, noisy.y_test)
  wrong = int((clean.y_train != noisy.y_train).sum())
  assert wrong == round(0.1 * clean.y_train.shape[0])
  assert int(noisy.y_train.max()) < 11 and int(noisy.y_train.min()) >= 0
  with pytest.raises(ValueError, match="label noise must be in"):
    tasks.corrupt_labels(key, clean.y_train, 11, 1.5)
  args = grok.resolve(grok.parse_args(["--p", "11", "--label-noise", "0.1"]))
  data = grok.make_data(args, key)
  assert int((data.y_train != clean.y_train).sum()) == wrong


def test_label_noise_is_a_usage_error_off_the_modular_tasks(capsys):
  with pytest.raises(SystemExit) as info:
    grok.resolve(grok.parse_args(["--task", "parity", "--label-noise", "0.1"]))
  assert info.value.code == 2
  assert "--label-noise: --task parity does not use it" in capsys.readouterr().err


def test_stablemax_cross_entropy():
  logits = jnp.array([[2.0, -1.0, 0.0], [-3.0, -0.5, 1.5]])
  labels = jnp.array([0, 2])
  x = np.asarray(logits)
  s = np.where(x >= 0, x + 1, 1 / (1 - x))
  expected = -np.log(s[[0, 1], [0, 2]] / s.sum(-1))
  got = train.stablemax_cross_entropy(logits, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  loss, acc = train.loss_and_accuracy(logits, labels, 3, "stablemax_cross_entropy")
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-6)
  assert float(acc) == 1.0
  grads = jax.grad(lambda x: train.stablemax_cross_entropy(x, labels).sum())(logits)
  assert bool(jnp.all(jnp.isfinite(grads)))
  # Not softmax's: a shift of every logit changes it.
  assert not np.allclose(train.stablemax_cross_entropy(logits + 5, labels), got)


@pytest.mark.full
def test_two_processes_fill_one_file_without_repeats(tmp_path):
  path = tmp_path / "rows.jsonl"
  argv = [sys.executable, "-m", "experiments.leaderboard", "--quick", "--phase", "tune",
          "--optimizers", "baseline,egd", "--jsonl", str(path)]  # fmt: skip
  procs = [subprocess.Popen(argv, cwd=ROOT) for _ in range(2)]
  assert [p.wait(timeout=300) for p in procs] == [0, 0]
  keys = [leaderboard.row_key(r) for r in leaderboard.read_rows(path)]
  assert len(keys) == len(set(keys)) == 2 * leaderboard.QUICK_BUDGET


@pytest.mark.full
def test_workers_fill_one_file_without_repeats(tmp_path):
  path = tmp_path / "rows.jsonl"
  argv = [sys.executable, "-m", "experiments.leaderboard", "--quick", "--phase", "tune",
          "--optimizers", "baseline,egd", "--jsonl", str(path),
          "--workers", "2"]  # fmt: skip
  done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith("2 workers: ")
  keys = [leaderboard.row_key(r) for r in leaderboard.read_rows(path)]
  assert len(keys) == len(set(keys)) == 2 * leaderboard.QUICK_BUDGET
  # Two processes trained them (each claim names its process).
  pids = {c["pid"] for c in leaderboard.read_rows(pathlib.Path(f"{path}.claims"))}
  assert len(pids) == 2


def test_stopping_the_workers_stops_their_processes(tmp_path):
  path = tmp_path / "rows.jsonl"
  # Full-size runs (seconds each): both workers are still training when stopped.
  argv = [sys.executable, "-m", "experiments.leaderboard", "--tasks", "add97-mlp",
          "--optimizers", "egd", "--phase", "tune", "--jsonl", str(path),
          "--workers", "2"]  # fmt: skip
  parent = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
  claims = pathlib.Path(f"{path}.claims")
  try:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(leaderboard.read_rows(claims)) < 2:
      time.sleep(0.2)  # both workers have claimed a run: both are training
    pids = {c["pid"] for c in leaderboard.read_rows(claims)}
    assert len(pids) == 2
    parent.terminate()
    assert parent.wait(timeout=60) != 0
  finally:
    parent.kill()
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_option_is_checked(value, capsys):
  with pytest.raises(SystemExit) as exit_:
    leaderboard.parse_args(["--workers", value])
  assert exit_.value.code == 2
  assert "argument --workers: must be an integer" in capsys.readouterr().err


_BASE = dict(quick=False, cap_steps=1000, cap_epochs=100, best_test_acc=0.5,
             machine=dict(cpu="cpu", cpus=2, backend="cpu", load_average=1.0),
             date="2026-12-02T15:00:00+00:00", jax="0.10.2")  # fmt: skip


def _row(name, phase, seed, config, steps, stable="same", fell_back=False):
  stable = steps if stable == "same" else stable
  return _BASE | dict(task="grokfast", optimizer=name, phase=phase, seed=seed,
                      config=config, steps_to_target=steps,
                      epochs_to_target=steps and steps // 10,
                      seconds=steps and steps / 10, stable_steps_to_target=stable,
                      stable_epochs_to_target=stable and stable // 10,
                      fell_back=fell_back)  # fmt: skip


def _tune(rows, name, steps_of):
  """Tune rows of ``name`` on grokfast until its search is done: each
  configuration the search places gets ``steps_of(config)`` on every seed."""
  while True:
    state = leaderboard.search(rows, "grokfast", name)
    if not state.needed:
      return state
    for config in state.needed:
      for seed in leaderboard.TUNE_SEEDS:
        rows.append(_row(name, "tune", seed, config, steps_of(config)))


def _synthetic_rows():
  rows = []
  # muon: fewest steps at learning rate 0.02, below the grid (0.03-0.12): the
  # search walks off the grid's lower edge and the best is inside.
  muon = _tune(rows, "muon", lambda c: 100 + round(abs(c["muon_lr"] - 0.02) * 1e4)
               + round(c["adam_weight_decay"] * 1e3))  # fmt: skip
  _tune(rows, "grokfast-ema", lambda c: None)
  eval_steps = (300, 200, None, 250, 400)
  for seed, steps in zip(leaderboard.EVAL_SEEDS, eval_steps, strict=True):
    rows.append(_row("muon", "eval", seed, muon.chosen, steps))
  return rows


def test_search_walks_off_an_edge_on_one_budget():
  rows = _synthetic_rows()
  muon = leaderboard.search(rows, "grokfast", "muon")
  grid = leaderboard.grid("grokfast", "muon")
  assert len(muon.configs) == leaderboard.BUDGET and muon.configs[:6] == tuple(grid)
  # The grid's best (lr 0.03, decay 0) is at its lower edge: a step past it
  # (x2: 0.015, better, still the edge), another (x4: 0.00375, worse); 0.015
  # is inside: midpoints towards the better neighbour (0.03, then 0.015).
  assert muon.configs[6:] == tuple(
    {"muon_lr": lr, "adam_weight_decay": 0.0}
    for lr in (0.015, 0.00375, 0.02121, 0.01784)
  )
  assert muon.chosen == {"muon_lr": 0.02121, "adam_weight_decay": 0.0}
  assert not muon.edge
  # Rows of the search reused: a second look places nothing new.
  assert leaderboard.search(rows, "grokfast", "muon").needed == ()
  # Still better past the last step: chosen at the edge, and flagged.
  far = []
  state = _tune(far, "muon", lambda c: 100 + round(c["muon_lr"] * 1e5))
  # Steps x2, x4, x8, x16 below the grid's 0.03.
  assert [c["muon_lr"] for c in state.configs[6:]] == [0.015, 0.00375, 0.0004687,
                                                      2.929e-05]  # fmt: skip
  assert state.chosen == state.configs[-1] and state.edge
  # Nothing reaches the target: every config ties; the search still spends the
  # budget (the same for every optimizer).
  ema = leaderboard.search(rows, "grokfast", "grokfast-ema")
  assert len(ema.configs) == leaderboard.BUDGET and ema.chosen is not None


def test_propose_steps_off_the_edge_of_the_best_line_only():
  configs = [{"lr": lr, "wd": wd} for wd in (0.0, 0.1) for lr in (1.0, 2.0, 4.0)]
  # Best: lr 4 at decay 0.1 (the top of its line): go up on that line.
  scores = [(50, 0)] * 5 + [(10, 0)]
  assert leaderboard.propose(configs, scores) == {"lr": 8.0, "wd": 0.1}
  # Best: lr 2 at decay 0 (inside): the midpoint towards the better neighbour.
  scores = [(30, 0), (10, 0), (20, 0)] + [(50, 0)] * 3
  assert leaderboard.propose(configs, scores) == {"lr": 2.828, "wd": 0.0}
  scores = [(20, 0), (10, 0), (30, 0)] + [(50, 0)] * 3
  assert leaderboard.propose(configs, scores) == {"lr": 1.414, "wd": 0.0}
  # Ties go to the earlier config: lr 1 at decay 0, the bottom edge.
  assert leaderboard.propose(configs, [(10, 0)] * 6) == {"lr": 0.5, "wd": 0.0}


def test_page_generator_on_a_small_jsonl(tmp_path):
  rows = _synthetic_rows()
  path = tmp_path / "rows.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out, figures = tmp_path / "page.md", tmp_path / "figures"
  figures.mkdir()
  (figures / "leaderboard_add97-mlp.png").write_bytes(b"stale")
  make_leaderboard.main(
    ["--jsonl", str(path), "--out", str(out), "--figures", str(figures)]
  )
  text = out.read_text()
  # muon: 4 of 5 reached; median of (200, 250, 300, 400, > cap) is 300,
  # quartiles 250 and 400.
  # Stable: the same steps (none fell back); seconds 30 [25-40].
  muon = ("| muon | muon_lr=0.02121 adam_weight_decay=0 | 4/5 | 300 [250–400] | 4/5 "
          "| 300 [250–400] | 0/5 | 30.0 [25.0–40.0] | done |")  # fmt: skip
  assert muon in text
  assert "**0 of 1 done cells are at such an edge.**" in text
  assert (figures / "leaderboard_overview.png").read_bytes()[:4] == b"\x89PNG"
  assert "](figures/leaderboard_overview.png)" in text
  # grokfast-ema never reached the target: tuned (first config), eval not run.
  assert "evaluating: 0/5 seeds" in text
  total = sum(len(t.optimizers) for t in leaderboard.TASKS.values())
  assert f"**1 of {total} cells are done**" in text
  assert f"{total - 2} are not run yet" in text
  assert "790 iterations (MA) and 910 (EMA)" in text
  assert "## parity-50-4\n\nEGD paper" in text and "Not run yet." in text
  assert (figures / "leaderboard_grokfast.png").read_bytes()[:4] == b"\x89PNG"
  assert not (figures / "leaderboard_add97-mlp.png").exists()


def test_summary_counts_egdm_on_muons_leaves_as_an_egd_optimizer():
  # egdm-kernels (egdm on the leaves Muon treats as matrices) against Muon is
  # the like-with-like comparison on the transformers: EGD's side of it.
  rows = _synthetic_rows()
  kernels = _tune(rows, "egdm-kernels", lambda c: 150)
  for seed in leaderboard.EVAL_SEEDS:
    rows.append(_row("egdm-kernels", "eval", seed, kernels.chosen, 150))
  summary = make_leaderboard.ranking(make_leaderboard.tables(rows))[2]
  assert "| egdm-kernels vs muon: ×0.50 [" in summary


def test_summary_ranks_both_measures_with_a_paired_interval():
  from experiments import leaderboard_stats as stats

  rows = _synthetic_rows()
  egdm = _tune(rows, "egdm", lambda c: 150)
  # egdm: first at target (180, 220, 210, miss, 190), median 210; seed 1 fell
  # back and held from 600 on, so stable (180, 600, 210, miss, 190), median 210;
  # seed 2 first-at-target 210 but never stable (fell back to the cap).
  first = (180, 220, 210, None, 190)
  stable = (180, 600, None, None, 190)
  for seed, steps, held in zip(leaderboard.EVAL_SEEDS, first, stable, strict=True):
    rows.append(_row("egdm", "eval", seed, egdm.chosen, steps, held,
                     fell_back=held != steps))  # fmt: skip
  table = make_leaderboard.ranking(make_leaderboard.tables(rows))
  muon = (300, 200, None, 250, 400)
  want = stats.ratio_of_medians(first, muon, 1000)
  assert want.ratio == 210 / 300
  p = stats.sign_flip_test(first, muon, 1000)
  want_stable = stats.ratio_of_medians(stable, muon, 1000)
  assert want_stable.ratio == 600 / 300  # stable: (180, 190, 600, cap, cap)
  assert table[2:] == [
    "| grokfast | 2 | egdm 210, muon 300 | muon 300, egdm 600 "
    f"| egdm vs muon: ×0.70 [{want.low:.2f}–{want.high:.2f}], "
    f"**{stats.verdict(want)}** (p = {p:.2g}) "
    f"| egdm vs muon: ×2.00 [{want_stable.low:.2f}–{want_stable.high:.2f}], "
    f"**{stats.verdict(want_stable)}** "
    f"(p = {stats.sign_flip_test(stable, muon, 1000):.2g}) |"
  ]
  assert make_leaderboard.differences(make_leaderboard.tables(rows)) == [
    "- grokfast: first at target egdm, muon; stable muon, egdm."
  ]
  # One done cell is no ranking.
  assert make_leaderboard.ranking(make_leaderboard.tables(_synthetic_rows()))[2:] == []
  # A cell whose median seed missed the target is not ranked.
  for row in rows:
    if row["optimizer"] == "egdm" and row["phase"] == "eval":
      row["steps_to_target"] = row["stable_steps_to_target"] = None
  assert make_leaderboard.ranking(make_leaderboard.tables(rows))[2:] == [
    "| grokfast | 2 | muon 300 | muon 300 | – | – |"
  ]
  # Rows without the stable fields: that measure is pending, not zero.
  for row in rows:
    if row["optimizer"] == "muon":
      del row["stable_steps_to_target"]
  tables = make_leaderboard.tables(rows)
  assert make_leaderboard.ranking(tables)[2:] == [
    "| grokfast | 2 | muon 300 | pending: muon | – | – |"
  ]


def test_a_failed_run_writes_no_row_and_the_sweep_goes_on(
  tmp_path, monkeypatch, capsys
):
  path = tmp_path / "rows.jsonl"
  calls = []

  def fake(task, name, phase, seed, config, quick):
    calls.append((phase, seed, config))
    if len(calls) == 1:
      raise FloatingPointError("diverged")
    return dict(task=task, optimizer=name, phase=phase, seed=seed, config=config,
                quick=quick, steps_to_target=None, cap_steps=8, seconds_run=0.0,
                best_test_acc=0.1, stable_steps_to_target=None,
                stable_epochs_to_target=None, fell_back=False)  # fmt: skip

  monkeypatch.setattr(leaderboard, "train_row", fake)
  with pytest.raises(SystemExit) as info:
    leaderboard.main(["--quick", "--optimizers", "baseline", "--jsonl", str(path)])
  assert info.value.code == 1
  out = capsys.readouterr().out
  assert "FAILED: FloatingPointError('diverged')" in out
  assert "1 runs failed" in out
  rows = leaderboard.read_rows(path)
  # The second tune run went on; eval waited for the missing tune row.
  assert [r["phase"] for r in rows] == ["tune"]
  assert "eval waits for tune rows of: add97-mlp/baseline" in out


def test_readme_results_are_the_committed_leaderboard_rows():
  """The README's "Results at a glance" table is regenerated from the committed
  JSONL: a claim there about which optimizer groks sooner rests on its rows."""
  rows = leaderboard.read_rows(ROOT / leaderboard.DEFAULT_JSONL)
  table = "\n".join(make_leaderboard.headline(make_leaderboard.tables(rows)))
  assert table in (ROOT / "README.md").read_text()


def test_page_generator_rewrites_only_the_readme_block(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in _synthetic_rows()))
  readme = tmp_path / "README.md"
  readme.write_text(
    f"intro\n{make_leaderboard.README_START}\nold table\n"
    f"{make_leaderboard.README_END}\noutro\n"
  )
  argv = ["--jsonl", str(path), "--out", str(tmp_path / "page.md"),
          "--figures", str(tmp_path / "figures"), "--readme", str(readme)]  # fmt: skip
  make_leaderboard.main(argv)
  text = readme.read_text()
  assert "old table" not in text
  assert text.startswith(f"intro\n{make_leaderboard.README_START}\n| task | baseline")
  assert text.endswith(f"{make_leaderboard.README_END}\noutro\n")
  # muon is the only done cell: 300 median steps, 4 of 5 seeds.
  assert "| grokfast (adamw) | – | – | – | – | – | 300 (4/5) | – | – |" in text
  readme.write_text("no markers\n")
  with pytest.raises(SystemExit) as info:
    make_leaderboard.main(argv)
  assert info.value.code == 2


def test_every_grid_tunes_knobs_its_optimizer_reads():
  """Every grid is `trials` distinct configurations of knobs the optimizer
  reads (optimizer_names.KNOBS), and each run's options pass grok's checks."""
  from experiments import optimizer_names

  for task, spec in leaderboard.TASKS.items():
    for name in spec.optimizers:
      grok_name, _ = leaderboard.grok_optimizer(task, name)
      configs = leaderboard.grid(task, name)
      assert len({json.dumps(c, sort_keys=True) for c in configs}) == len(configs)
      assert {k for c in configs for k in c} <= set(optimizer_names.KNOBS[grok_name])
      argv = leaderboard.run_argv(task, name, configs[0], quick=False)
      assert grok.resolve(grok.parse_args(argv)).optimizers == [grok_name]


def test_a_grid_of_a_knob_the_optimizer_does_not_read_is_refused():
  # As if the baseline AdamW's learning rate were declared as SGD's `lr`: six
  # identical runs. The registry refuses the entry instead.
  from experiments import registry

  with pytest.raises(ValueError, match="tune: 'lr' is not one of its knobs"):
    dataclasses.replace(registry.SPECS["adamw"], tune=("lr",))
  with pytest.raises(ValueError, match="tune: 'weight_decay' is not one of its knobs"):
    dataclasses.replace(registry.SPECS["muon"], tune=("muon_lr", "weight_decay"))


def _docs_section(title: str) -> str:
  text = (ROOT / "docs" / "leaderboard.md").read_text()
  return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_a_changed_plugin_file_is_another_run():
  row = dict(task="t", optimizer="lion", phase="tune", seed=0, config={"lr": 1.0},
             quick=True)  # fmt: skip
  first = leaderboard.row_key({**row, "plugin": {"source": "a.py", "sha256": "1"}})
  second = leaderboard.row_key({**row, "plugin": {"source": "a.py", "sha256": "2"}})
  assert first != second and leaderboard.row_key(row) not in (first, second)
  # The rows of built-in optimizers keep their keys.
  assert leaderboard.row_key(row) == json.dumps(
    ["t", "lion", "tune", 0, {"lr": 1.0}, True], sort_keys=True
  )


@pytest.mark.slow
def test_the_documented_plugin_runs_from_a_temp_dir(tmp_path):
  """docs/leaderboard.md, "Add your optimizer": its first python block saved as
  the plugin file, its first bash block run (with --quick) from a temp
  directory: rows of the plugin with the file's hash, and a page that shows it."""
  import hashlib
  import os
  import re
  import shlex

  section = _docs_section("Add your optimizer")
  block = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
  command = re.search(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
  argv = shlex.split(command.group(1))
  plugin = tmp_path / argv[argv.index("--plugin") + 1]
  plugin.write_text(block.group(1))
  assert argv[:3] == ["python", "-m", "experiments.leaderboard"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  subprocess.run([sys.executable, *argv[1:], "--quick"], cwd=tmp_path, env=env,
                 check=True, timeout=300)  # fmt: skip
  jsonl = tmp_path / argv[argv.index("--jsonl") + 1]
  rows = leaderboard.read_rows(jsonl)
  sha256 = hashlib.sha256(plugin.read_bytes()).hexdigest()
  assert len(rows) == len(leaderboard.QUICK_TUNE_SEEDS) * leaderboard.QUICK_BUDGET + (
    len(leaderboard.QUICK_EVAL_SEEDS)
  )
  name = rows[0]["optimizer"]
  for row in rows:
    assert row["optimizer"] == row["grok_optimizer"] == name
    assert row["plugin"] == {"source": plugin.name, "sha256": sha256}
    assert row["quick"] and f"--plugin {plugin.name}" in row["command"]
  assert {r["phase"] for r in rows} == {"tune", "eval"}
  out = tmp_path / "page.md"
  make_leaderboard.main(
    [
      "--quick",
      "--jsonl",
      str(jsonl),
      "--out",
      str(out),
      "--figures",
      str(tmp_path / "fig"),
    ]
  )
  page = out.read_text()
  assert f"| {name} (plugin) | `{plugin.name}` (`{sha256[:12]}`) |" in page


def test_the_options_are_a_typed_sweep_and_a_sweep_plans_without_argv():
  sweep = leaderboard.parse_args(["--quick", "--print-grid", "--phase", "tune"])
  assert sweep == leaderboard.Sweep(
    tasks=leaderboard.QUICK_TASKS,
    optimizers=leaderboard.QUICK_OPTIMIZERS,
    phase="tune",
    quick=True,
    print_grid=True,
  )
  both = dataclasses.replace(sweep, phase="both", optimizers=("egd",))
  # No rows: the grid's tuning runs (the search and the evaluation follow
  # from their rows).
  entries = leaderboard.plan(both)
  assert [e[2] for e in entries] == ["tune"] * leaderboard.QUICK_TRIALS
  assert {e[1] for e in entries} == {"egd"}
  assert leaderboard.plan(dataclasses.replace(both, phase="eval")) == []
  # With the grid's rows: the search's next configuration, still no eval.
  rows = [dict(task=e[0], optimizer=e[1], phase=e[2], seed=e[3], config=e[4],
               quick=True, steps_to_target=None, cap_steps=8, best_test_acc=0.1,
               stable_steps_to_target=None, stable_epochs_to_target=None,
               fell_back=False) for e in entries]  # fmt: skip
  following = leaderboard.plan(both, rows)
  assert len(following) == 1 and following[0][4] not in [e[4] for e in entries]
  # With the whole budget: the evaluation seeds of the best configuration,
  # then the reruns of the rows without the stable fields.
  rows.append(rows[0] | dict(config=following[0][4]))
  del rows[1]["fell_back"]
  last = leaderboard.plan(both, rows)
  chosen = leaderboard.search(rows, "add97-mlp", "egd", trials=2, budget=3,
                              seeds=(100,), quick=True).chosen  # fmt: skip
  evals = [("add97-mlp", "egd", "eval", seed, chosen) for seed in (0, 1)]
  assert last == [*evals, ("add97-mlp", "egd", "tune", 100, rows[1]["config"])]


def test_typed_run_options_are_the_rows_command_line():
  """A run is built from Python values, no command line parsed; the rows'
  `command` writes the same options: parsed back, the same resolved run."""
  for task in leaderboard.TASKS:
    for name in leaderboard.TASKS[task].optimizers:
      for quick in (False, True):
        config = leaderboard.grid(task, name, 2)[0]
        typed = leaderboard.run_options(task, name, config, quick)
        argv = leaderboard.run_argv(task, name, config, quick)
        assert vars(grok.resolve(grok.options(**typed))) == vars(
          grok.resolve(grok.parse_args(argv))
        ), (task, name, quick)
  with pytest.raises(TypeError, match="has no option --learning-rate"):
    grok.options(learning_rate=0.1)


def test_egdm_kernels_acts_on_the_leaves_muon_treats_as_matrices():
  """On a transformer, `egdm-kernels` gives every kernel, the 3-D attention
  kernels included, a polar factor of its matrix (flattened as muon's
  dimension numbers flatten it) and the other leaves, embeddings included,
  AdamW; `egdm` gives the 3-D attention kernels AdamW."""
  from flax import nnx

  from experiments import models, optimizers, runs
  from experiments.registry import OptimizerConfig

  options = leaderboard.TASKS["add97-transformer"].quick_options
  args = grok.resolve(grok.options(**options))
  _, model, _ = runs.setup(args, 0)
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape),
                       params)  # fmt: skip

  def leaves(tree):
    return {models.path_keys(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}  # fmt: skip

  def unit(x):
    return x / np.linalg.norm(x)

  def matrix(path, x):  # as matrix_dimension_numbers flattens it
    return (
      x.reshape(-1, x.shape[-1]) if path[-2] == "out" else x.reshape(x.shape[0], -1)
    )

  def kind(path, update, grad):
    if np.allclose(unit(update), unit(-np.sign(grad)), atol=1e-4):
      return "adamw"
    u, _, vt = np.linalg.svd(matrix(path, grad), full_matrices=False)
    polar = (u @ vt).reshape(grad.shape)
    assert np.allclose(unit(update), unit(-polar), atol=1e-4), path
    return "egd"

  g = leaves(grads)
  kinds = {}
  for name in ("egdm", "egdm-kernels"):
    opt = optimizers.build(name, OptimizerConfig(lr=1.0, momentum=0.0), None)
    update = leaves(opt.update(grads, opt.init(params), params)[0])
    kinds[name] = {path: kind(path, update[path], g[path]) for path in g}
  kernels = {path for path in g if models.is_kernel(path)}
  attention = {path for path in kernels if g[path].ndim == 3}
  assert attention and any("embed" in str(path) for path in g)
  assert {p for p, k in kinds["egdm-kernels"].items() if k == "egd"} == kernels
  assert {p for p, k in kinds["egdm"].items() if k == "egd"} == {
    path for path in g if g[path].ndim == 2
  }
