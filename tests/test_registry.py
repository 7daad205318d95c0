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
    (dict(tune=("adam_lr",)), "tune: 'adam_lr' is not one of its knobs"),
    (dict(tune=()), "tune must name a learning rate and at most a decay"),
    (dict(centre={"vision": 0.1}), "centre: unknown task family 'vision'"),
    (dict(centre={"mlp": 0.0}), "centre['mlp'] must be > 0 or None, got 0.0"),
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
