"""python -m experiments.time_to_grok: epochs and seconds to 95% per optimizer;
its tiny mode writes valid JSON into ``--out`` (never into the committed
references by default), and a seed is the experiments.grok run of that seed."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest

from experiments import _report, time_to_grok

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def _load(path: pathlib.Path) -> dict:
  payload = json.loads(path.read_text())
  assert set(payload) == {"machine", "config", "results", "summary"}
  assert payload["results"]
  return payload


def test_grok_tiny(tmp_path: pathlib.Path) -> None:
  out = tmp_path / "time_to_grok.json"
  time_to_grok.main(["--p", "11", "--batch-size", "16", "--optimizers", "sgd",
             "official", "egd-first-layer", "--max-epochs", "2",
             "--out", str(tmp_path)])
  payload = _load(out)
  # egd-first-layer: not one of time_to_grok.OPTIMIZERS, the registry's.
  assert [r["optimizer"] for r in payload["results"]] == ["sgd", "official",
                                                          "egd-first-layer"]
  for r in payload["results"]:
    assert 1 <= r["epochs_run"] <= 2
    assert r["epochs"] is None or r["epochs"] <= 2
  assert len(payload["summary"]) == 3
  assert out.with_suffix(".md").read_text().count("|") > 10


def _digests(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_out_leaves_the_references_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
  """Without ``--out`` a run writes a timestamped folder under runs/."""
  before = _digests(RESULTS)
  monkeypatch.chdir(tmp_path)
  time_to_grok.main(["--p", "5", "--batch-size", "8", "--optimizers", "sgd",
                     "--quick", "--max-epochs", "1"])
  assert _digests(RESULTS) == before
  (run,) = (tmp_path / "runs").iterdir()
  assert run.name.startswith("time_to_grok-")
  assert sorted(p.name for p in run.iterdir()) == [
      "time_to_grok_quick.json", "time_to_grok_quick.md", "time_to_grok_quick.txt"]


def test_help_names_the_module(capsys: pytest.CaptureFixture) -> None:
  with pytest.raises(SystemExit) as exit_info:
    time_to_grok.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  assert text.startswith("usage: python -m experiments.time_to_grok ")
  assert "--out DIR" in text and "experiments/results" in text


@pytest.mark.slow
def test_a_benchmark_seed_is_the_experiments_run_of_that_seed(
    tmp_path: pathlib.Path) -> None:
  """experiments.time_to_grok and python -m experiments.grok turn a seed into the same
  split, initialization and shuffles: the same run, epoch for epoch."""
  from experiments import grok as experiments_grok
  from experiments import train

  args = experiments_grok.resolve(experiments_grok.parse_args(
      ["--task", "mod_add", "--p", "11", "--optimizer", "sgd", "--max-epochs", "3",
       "--no-stop", "--no-progress", "--out", str(tmp_path)]))
  config = experiments_grok.train_config(args)
  assert config == train.TrainConfig(batch_size=args.batch_size, l2=1e-4,
                                     max_epochs=3, stop_at_target=False)
  mine = time_to_grok.run_one("sgd", "add", 11, 3, config, log_every=100)
  theirs = experiments_grok.run_one(args, "sgd", 3).history
  assert mine.epochs_run == theirs.epochs == 3
  assert mine.best_test_acc == max(theirs.test_acc)
  data, _, _ = _report.paper_mlp_setup(3, 11)
  expected, _, _ = experiments_grok.setup(args, 3)
  np.testing.assert_array_equal(data.x_train, expected.x_train)


@pytest.mark.parametrize("argv, message", [
    (["--p", "12"], "argument --p: must be a prime"),
    (["--seeds", "-1"], "argument --seeds: must be an integer >= 0"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["--max-epochs", "0"], "argument --max-epochs: must be an integer >= 1"),
    (["--log-every", "0"], "argument --log-every: must be an integer >= 1"),
])
def test_bad_values_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
  with pytest.raises(SystemExit) as exit_info:
    time_to_grok.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err.splitlines()[-1]
