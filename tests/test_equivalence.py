"""experiments.equivalence (svd against polar_express_exact, epochs to target)
and the ``--polar-method`` that forces the accelerators' method on CPU."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import equivalence, optimizer_names, optimizers
import optax_egd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_run(out: pathlib.Path, task: str, method: str, epochs, steps):
  path = equivalence.run_dir(out, task, method)
  path.mkdir(parents=True)
  runs = [{"seed": i, "epochs_to_target": e, "steps_to_target": s,
           "seconds_to_target": 1.0}
          for i, (e, s) in enumerate(zip(epochs, steps, strict=True))]
  (path / "results.json").write_text(json.dumps({"runs": runs}))


def test_summary_medians_ratio_and_reached(tmp_path):
  _fake_run(tmp_path, "add-97", "svd", [12, 13, 11], [108, 117, 99])
  _fake_run(tmp_path, "add-97", "polar_express_exact", [12, 14, None],
            [108, 126, None])
  _fake_run(tmp_path, "grokfast", "svd", [30, 31, 29], [560, 570, 550])
  rows = {r["task"]: r for r in equivalence.summarize(
      tmp_path, ["add-97", "grokfast", "mul-97"])}
  add = rows["add-97"]
  assert add["svd"]["median"] == 12 and add["svd"]["reached"] == "3/3"
  assert add["polar_express_exact"]["median"] == 13  # of the reached seeds
  assert add["polar_express_exact"]["reached"] == "2/3"
  assert add["ratio"] == pytest.approx(13 / 12)
  assert rows["grokfast"]["svd"]["median"] == 560  # the transformer: steps
  assert "ratio" not in rows["grokfast"] and "svd" not in rows["mul-97"]
  text = equivalence.table(list(rows.values()))
  assert "1.08" in text and "(2/3)" in text


def test_commands_force_the_method_with_the_same_seeds(tmp_path):
  a = equivalence.command("parity-100-3", "svd", 3, 50, tmp_path)
  b = equivalence.command("parity-100-3", "polar_express_exact", 3, 50, tmp_path)
  assert a[a.index("--polar-method") + 1] == "svd"
  assert b[b.index("--polar-method") + 1] == "polar_express_exact"
  differ = [x for x, y in zip(a, b, strict=True) if x != y]
  assert differ[0] == "svd" and all("polar_express_exact" not in x for x in a)


def test_bad_task_is_a_usage_error():
  done = subprocess.run([sys.executable, "-m", "experiments.equivalence",
                         "--tasks", "add-98", "--summarize"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert "add-98" in done.stderr and "Traceback" not in done.stderr


def test_polar_method_choices_are_the_librarys():
  assert set(optimizer_names.POLAR_METHODS) == set(optax_egd.METHODS) - {"rsvd"}


@pytest.mark.parametrize("name", ["egd", "egdm", "momentum-egd-first-layer"])
def test_polar_method_reaches_every_egd_optimizer(name):
  params = {"hidden": {"kernel": jnp.ones((6, 4)), "bias": jnp.zeros(4)},
            "out": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  results = {}
  for method in ("svd", "newton_schulz"):  # newton_schulz: visibly inexact.
    tx = optimizers.build(name, optimizer_names.OptimizerConfig(
        polar_method=method, lr=0.1), ("hidden", "kernel"))
    results[method], _ = tx.update(grads, tx.init(params), params)
  diff = np.abs(np.asarray(results["svd"]["hidden"]["kernel"])
                - np.asarray(results["newton_schulz"]["hidden"]["kernel"]))
  assert diff.max() > 1e-4


def test_paired_counts_and_bootstrap_interval(tmp_path):
  _fake_run(tmp_path, "parity-100-3", "svd", [10, 20, 30, None, 40],
            [1, 2, 3, None, 4])
  _fake_run(tmp_path, "parity-100-3", "polar_express_exact",
            [12, 18, None, None, 40], [1, 2, None, None, 4])
  (row,) = equivalence.summarize(tmp_path, ["parity-100-3"])
  # Seed 3 reached by neither is left out; seed 2 unreached by pee is slower.
  assert (row["paired_seeds"], row["slower"], row["faster"]) == (4, 2, 1)
  low, high = row["ratio_ci"]
  # Pairs (10, 12), (20, 18), (40, 40): their ratio of medians is 18/20, and
  # every resample's lies between 12/40 and 40/10.
  assert 12 / 40 <= low <= 18 / 20 <= high <= 40 / 10 and low < high
  again = equivalence.summarize(tmp_path, ["parity-100-3"])[0]["ratio_ci"]
  assert again == row["ratio_ci"]  # a fixed RNG: the same interval
  text = equivalence.table([row])
  assert "2/1/4" in text and f"[{low:.2f}, {high:.2f}]" in text


def test_against_another_method_pairs_it_with_the_svd(tmp_path):
  _fake_run(tmp_path, "parity-50-4", "svd", [20, 301, 17], [1, 2, 3])
  _fake_run(tmp_path, "parity-50-4", "qdwh", [20, 53, None], [1, 2, None])
  _fake_run(tmp_path, "parity-50-4", "polar_express_exact", [9, 9, 9], [1, 1, 1])
  (row,) = equivalence.summarize(tmp_path, ["parity-50-4"], against="qdwh")
  assert row["against"] == "qdwh" and "polar_express_exact" not in row
  assert row["qdwh"]["reached"] == "2/3" and row["ratio"] == pytest.approx(36.5 / 20)
  assert (row["slower"], row["faster"], row["paired_seeds"]) == (1, 1, 3)
  text = equivalence.table([row])
  assert "qdwh: median" in text and "ratio qdwh/svd" in text
  assert "polar_express_exact" not in text


@pytest.mark.parametrize("method", ["svd", "auto", "nope"])
def test_against_must_be_another_method(method):
  done = subprocess.run([sys.executable, "-m", "experiments.equivalence",
                         "--against", method, "--summarize"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert "--against" in done.stderr and "Traceback" not in done.stderr


def test_default_out_leaves_the_references_alone(tmp_path, monkeypatch):
  """Without ``--out`` a sweep writes a timestamped folder under runs/."""
  references = ROOT / "experiments" / "results"
  before = {p: p.read_bytes() for p in references.rglob("equivalence*") if p.is_file()}
  monkeypatch.chdir(tmp_path)
  assert equivalence.main(["--tasks", "add-97", "--summarize"]) == 0
  after = {p: p.read_bytes() for p in references.rglob("equivalence*") if p.is_file()}
  assert after == before
  (run,) = (tmp_path / "runs").iterdir()
  assert run.name.startswith("equivalence-")
  assert sorted(p.name for p in run.iterdir()) == ["equivalence.json", "equivalence.md"]
