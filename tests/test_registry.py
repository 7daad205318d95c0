"""Tests of ``experiments.registry``: one entry per optimizer, checked when it
is made; every built-in builds; plugins load from a file or a module."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest

from experiments import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(family="lion"), "family must be one of sgd, adamw, got 'lion'"),
    (dict(knobs=("lr", "beta")), "knob 'beta' is no OptimizerConfig field"),
    (dict(defaults={"betas": 1}), "knob 'betas' is no OptimizerConfig field"),
    (dict(defaults={"momentum": 1.0}), "defaults['momentum'] is out of its range"),
    (dict(defaults={"momentum": "0.9"}), "defaults['momentum'] is out of its range"),
    (dict(label=3), "label must be a string, got 3"),
    (dict(tune=("adam_lr",)), "tune: 'adam_lr' is not one of its knobs"),
    (dict(tune=()), "tune must name a learning rate and at most a decay"),
    (dict(centre={"vision": 0.1}), "centre: unknown task family 'vision'"),
    (dict(centre={"mlp": 0.1}), "centre: no value for task family parity, "
     "transformer, mnist"),
    (dict(centre=dict.fromkeys(registry.TASK_FAMILIES, 0.0)),
     "centre['mlp'] must be > 0 or None, got 0.0"),
    (dict(build="experiments.optimizers.base"), "build must be 'module:function'"),
    (dict(name="a,b"), "name must be a non-empty string without commas"),
  ],
)
def test_a_bad_entry_is_refused_when_made(change, message):
  with pytest.raises(ValueError, match="optimizer .*: .*" + re.escape(message)):
    dataclasses.replace(registry.SPECS["sgd"], **change)


def test_register_refuses_a_taken_name_and_keeps_knobs_in_step(monkeypatch):
  monkeypatch.setattr(registry, "SPECS", dict(registry.SPECS))
  monkeypatch.setattr(registry, "KNOBS", dict(registry.KNOBS))
  with pytest.raises(ValueError, match="'sgd' is registered already"):
    registry.register(dataclasses.replace(registry.SPECS["sgd"], label="other"))
  spec = registry.register(
    registry.OptimizerSpec("sgd2", "experiments.optimizers:base", ("lr",), "sgd",
                           args=("sgd",))  # fmt: skip
  )
  assert registry.get("sgd2") is spec and registry.KNOBS["sgd2"] == ("lr",)
  with pytest.raises(ValueError, match="unknown optimizer 'nope'; choose from sgd,"):
    registry.get("nope")


def test_every_builtin_builds_from_its_entry():
  import optax

  from experiments import models

  config = registry.OptimizerConfig()
  for name, spec in registry.SPECS.items():
    tx = spec.builder()(config, models.MLP.first_kernel)
    assert isinstance(tx, optax.GradientTransformation), name


def test_the_registry_imports_without_jax():
  code = "import sys, experiments.registry; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True)  # fmt: skip
  assert out.stdout.strip() == "False"


_PLUGIN = '''
import optax
from experiments.registry import OptimizerSpec

def build(config, first_kernel):
  return optax.sgd(config.lr)

MINE = OptimizerSpec("{name}", build, ("lr",), "sgd")
'''


@pytest.fixture
def fresh_registry(monkeypatch):
  """The registry's tables as copies: what a test registers goes with it."""
  monkeypatch.setattr(registry, "SPECS", dict(registry.SPECS))
  monkeypatch.setattr(registry, "KNOBS", dict(registry.KNOBS))
  monkeypatch.setattr(registry, "_LOADED", {})


def test_a_plugin_file_registers_its_specs_with_the_files_hash(tmp_path,
                                                               fresh_registry):
  import hashlib

  path = tmp_path / "mine.py"
  path.write_text(_PLUGIN.format(name="mine"))
  (spec,) = registry.load_plugin(str(path))
  assert registry.get("mine") is spec and registry.KNOBS["mine"] == ("lr",)
  assert spec.plugin == registry.Plugin(
    str(path), hashlib.sha256(path.read_bytes()).hexdigest()
  )
  assert registry.load_plugin(str(path)) == [spec]  # loaded once
  tx = spec.builder()(registry.OptimizerConfig(lr=0.5), ())
  assert tx.update({"w": 1.0}, tx.init({"w": 0.0}))[0] == {"w": -0.5}


def test_a_plugin_module_on_the_path(tmp_path, monkeypatch, fresh_registry):
  (tmp_path / "my_plugins").mkdir()
  (tmp_path / "my_plugins" / "__init__.py").write_text("")
  (tmp_path / "my_plugins" / "opt.py").write_text(_PLUGIN.format(name="mod-opt"))
  monkeypatch.syspath_prepend(str(tmp_path))
  (spec,) = registry.load_plugin("my_plugins.opt")
  assert spec.name == "mod-opt" and spec.plugin.source == "my_plugins.opt"
  assert len(spec.plugin.sha256) == 64


@pytest.mark.parametrize(
  "text, message",
  [
    ("x = 1\n", "defines no experiments.registry.OptimizerSpec"),
    (_PLUGIN.format(name="sgd"), "optimizer 'sgd' is registered already"),
    ("import no_such_module\n", "ModuleNotFoundError: No module named"),
    (_PLUGIN.format(name="bad") + "BAD = OptimizerSpec('b', build, ('beta',), 'sgd')",
     "ValueError: optimizer 'b': knob 'beta' is no OptimizerConfig field"),
  ],
)
def test_a_bad_plugin_is_one_line_error(tmp_path, fresh_registry, text, message):
  path = tmp_path / "bad.py"
  path.write_text(text)
  pattern = re.escape(f"{path}: ") + ".*" + re.escape(message)
  with pytest.raises(ValueError, match=pattern):
    registry.load_plugin(str(path))
  assert "bad" not in registry.SPECS
  with pytest.raises(ValueError, match="no_such_module"):
    registry.load_plugin("no_such_module")
