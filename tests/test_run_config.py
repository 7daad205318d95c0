"""The typed run config of ``python -m experiments.grok``
(:mod:`experiments.run_config`): frozen, the parser generated from its
fields, variants by ``dataclasses.replace``, argv round trips."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from experiments import grok, leaderboard, registry, run_config
from experiments.run_config import RunConfig


def _actions():
  return [a for a in grok.build_parser()._actions if a.dest != "help"]


def test_run_config_is_frozen():
  config = grok.options(task="parity", k=3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.lr = 0.1  # type: ignore[misc]
  resolved = grok.resolve(config)
  assert resolved is not config and config.lr is None and config.n is None
  assert resolved.lr == 0.0416239 and resolved.n == 100


def test_unset_is_none_until_resolve():
  config = grok.parse_args([])
  assert isinstance(config, RunConfig)
  fields = run_config.option_fields()
  defaults = {f.name for f in fields if f.default is not None}
  assert defaults == {"task", "max_epochs", "no_stop", "stop_rule", "spectrum",
                      "train_metrics",
                      "seed", "seeds", "vectorize_seeds", "out", "overwrite",
                      "checkpoint_every", "resume", "no_progress"}  # fmt: skip
  assert all(getattr(config, f.name) is None for f in fields if f.name not in defaults)
  with pytest.raises(ValueError, match="resolve"):
    run_config.given(config.p)
  assert run_config.given(grok.resolve(config).p) == 97


def test_every_field_is_an_option_and_every_option_a_field():
  actions = _actions()
  fields = run_config.option_fields()
  assert [a.dest for a in actions] == [f.name for f in fields]  # --help's order
  for action, field in zip(actions, fields, strict=True):
    assert action.option_strings[0] == run_config.flag_of(field.name)
    assert action.default == field.default, field.name
    option = field.metadata["option"]
    assert action.choices == option.choices, field.name
  derived = [f.name for f in dataclasses.fields(RunConfig) if f not in fields]
  assert derived == ["drop_last", "optimizers"]
  with pytest.raises(TypeError, match="has no option --optimizers"):
    grok.options(optimizers=["sgd"])


def test_the_optimizer_options_are_the_registry_knobs():
  knobs = [f.name for f in dataclasses.fields(registry.OptimizerConfig)]
  assert list(grok.KNOB_OPTIONS) == [k for k in knobs if k != "seed"]
  assert set(grok.KNOB_OPTIONS) == set(registry.KNOB_FIELDS)


def test_help_shows_each_fields_default_where_it_applies():
  parser = grok.build_parser()
  by_dest = {a.dest: a for a in parser._actions}
  for name, default in grok.OPTION_DEFAULTS.items():
    text = by_dest[name].help
    assert f"default {default}" in text or name == "encoding", (name, text)
  assert "(default 2000)" in by_dest["max_epochs"].help
  assert "(default runs/grok)" in by_dest["out"].help
  assert by_dest["momentum"].help.startswith(
    "in [0, 1); default 0.0 (egdm, egdm-kernels 0.95"
  )


def test_task_and_model_options_come_from_the_field_metadata():
  assert grok.TASK_OPTIONS["n_train"] == ("parity", "mnist")
  assert grok.MODEL_OPTIONS["d_model"] == ("transformer", "grokfast")
  assert grok.OPTION_DEFAULTS["p"] == 97 and grok.OPTION_DEFAULTS["width"] == 200
  for name, tasks in grok.TASK_OPTIONS.items():
    field = next(f for f in dataclasses.fields(RunConfig) if f.name == name)
    assert field.metadata["option"].tasks == tasks


@pytest.mark.parametrize(
  "base, changes, argv",
  [
    ({}, {"lr": 0.1}, ["--lr", "0.1"]),
    ({"task": "parity", "k": 3}, {"n_train": 500, "seeds": 2},
     ["--task", "parity", "--k", "3", "--n-train", "500", "--seeds", "2"]),
    ({"preset": "grokfast"}, {"optimizer": "muon", "muon_lr": 0.01},
     ["--preset", "grokfast", "--optimizer", "muon", "--muon-lr", "0.01"]),
    ({"encoding": "tokens"}, {"optimizer": "egd-adamw", "heads": 8, "no_stop": True},
     ["--encoding", "tokens", "--optimizer", "egd-adamw", "--heads", "8",
      "--no-stop"]),
    ({}, {"out": pathlib.Path("/tmp/x"), "max_epochs": 5},
     ["--out", "/tmp/x", "--max-epochs", "5"]),
  ],
)  # fmt: skip
def test_a_replaced_variant_resolves_as_its_command_line(base, changes, argv):
  variant = dataclasses.replace(grok.options(**base), **changes)
  assert variant == grok.parse_args(argv)
  assert grok.resolve(variant) == grok.resolve(grok.parse_args(argv))
  # and back: the options that differ from the defaults, in --help's order
  assert grok.parse_args(grok.argv(variant)) == variant
  assert sorted(grok.argv(variant)) == sorted(argv)


def test_a_config_round_trips_through_argv():
  configs = [
    grok.options(),
    grok.options(task="mnist", n_train=300, depth=2, init_scale=4.0),
    grok.options(optimizer="egd,sgd", spectrum=True, seed=3, label_noise=0.05),
    grok.options(task="parity", n=30, k=5, batch_size=7, train_metrics="full"),
  ]
  for config in configs:
    assert grok.parse_args(grok.argv(config)) == config
    resolved = grok.resolve(config)
    assert grok.resolve(grok.parse_args(grok.argv(config))) == resolved
    # A resolved config writes every value it resolved to, and comes back.
    assert grok.resolve(grok.parse_args(grok.argv(resolved))) == resolved


def test_leaderboard_commands_round_trip():
  """Each row's ``command`` parses back to the config the row ran."""
  for task in leaderboard.TASKS:
    for name in leaderboard.TASKS[task].optimizers[:3]:
      for quick in (False, True):
        config = leaderboard.grid(task, name, 2)[0]
        typed = grok.options(**leaderboard.run_options(task, name, config, quick))
        assert grok.parse_args(leaderboard.run_argv(task, name, config, quick)) == typed
        run = leaderboard.resolved(task, name, config, quick)
        command = [*leaderboard.run_argv(task, name, config, quick),
                   "--max-epochs", str(run.max_epochs)]  # fmt: skip
        assert grok.resolve(grok.parse_args(command)) == dataclasses.replace(
          run, checkpoint_every=500, no_progress=False
        )


@pytest.mark.slow
def test_train_and_evaluate_runs_a_replaced_config(tmp_path):
  """The Flax examples' entry point: a config built in code (no command
  line) trains into ``workdir``; results.json records it, and its command
  is the config's own options (:func:`grok.argv`), which parse back to it."""
  base = grok.options(p=11, hidden=16, batch_size=16, no_progress=True)
  config = grok.resolve(
    dataclasses.replace(base, max_epochs=3, checkpoint_every=0, optimizer="sgd,egd")
  )
  results = grok.train_and_evaluate(config, tmp_path)
  written = json.loads((tmp_path / "results.json").read_text())
  assert list(written) == ["config", "hyperparameters", "provenance", "summary", "runs"]
  assert written["config"] == grok.results_config(
    dataclasses.replace(config, out=tmp_path)
  ) | {"out": str(tmp_path)}
  assert written["hyperparameters"] == {
    n: grok.knobs(config, n) for n in ["sgd", "egd"]
  }
  command = written["provenance"]["argv"]
  ran = dataclasses.replace(config, out=tmp_path)  # workdir is its --out
  assert command == grok.argv(ran)
  assert grok.resolve(grok.parse_args(command)) == ran
  assert [(r["optimizer"], r["epochs"]) for r in results["runs"]] == [
    ("sgd", 3), ("egd", 3)
  ]  # fmt: skip
  assert (tmp_path / "curves.png").exists()
