"""Smoke tests: each benchmark's tiny mode runs and writes valid JSON into its
``--out`` folder (never into the committed references by default); the
layer-parallel decomposition count reads the compiled program."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _common, polar, step
import optax_egd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path) -> dict:
  payload = json.loads(path.read_text())
  assert set(payload) == {"machine", "config", "results", "summary"}
  machine = payload["machine"]
  for key in ("jax", "backend", "cpu_model", "threads", "load_start",
              "load_end"):
    assert key in machine
  assert payload["results"]
  return payload


def test_polar_tiny(tmp_path: pathlib.Path) -> None:
  polar.main(["--shapes", "40x24", "2x16x16", "--kinds", "gaussian",
              "cond_1e6", "--methods", "svd", "eigh", "official_rsvd",
              "eigh_guard", "--repeats", "1", "--min-seconds", "0",
              "--out", str(tmp_path)])
  rows = _load(tmp_path / "polar.json")["results"]
  report = (tmp_path / "polar.txt").read_text()
  assert report.startswith("# Polar-factor methods") and "wrote" in report
  assert len(rows) == 2 * 2 * 5  # jnp_svd, the baseline, is always added.
  for r in rows:
    assert r["median_s"] > 0
    if r["method"] in ("jnp_svd", "svd", "eigh_guard"):
      assert r["rel_err"] < 1e-2  # Exact up to the float32 floor.
  gauss = {r["method"]: r for r in rows
           if r["kind"] == "gaussian" and r["shape"] == [40, 24]}
  assert gauss["svd"]["rel_err"] < 1e-5
  assert gauss["jnp_svd"]["speedup_vs_base"] == 1.0


def test_polar_reference_matches_definition() -> None:
  x = np.diag([2.0, 1e-9, 0.0]).astype(np.float32)
  ref, s, kept = polar.reference_polar(x)
  np.testing.assert_allclose(s, [2.0, 1e-9, 0.0], rtol=1e-6)
  assert kept.tolist() == [True, False, False]
  cutoff = 3 * float(np.finfo(np.float32).eps) * 2.0
  np.testing.assert_allclose(np.diag(ref), [1.0, 1e-9 / cutoff, 0.0],
                             rtol=1e-6)
  rel, dev = polar.errors(ref, ref, kept)
  assert rel == 0 and dev < 1e-12


def test_step_tiny(tmp_path: pathlib.Path) -> None:
  out = tmp_path / "step.json"
  step.main(["--models", "mlp", "--optimizers", "egd-off",
             "--batch-size", "64", "--repeats", "2", "--min-seconds", "0",
             "--out", str(tmp_path)])
  rows = _load(out)["results"]
  assert [r["optimizer"] for r in rows] == ["sgd", "egd-off"]
  assert all(r["step_s"] > 0 and r["update_s"] > 0 for r in rows)
  assert rows[0]["step_ratio"] == 1.0
  profile = _load(out)["summary"]["mlp_profile"]
  parts = {(r["shape"], r["part"]) for r in profile}
  # The first kernel (194×512) takes the QR-first route, the second (512×97)
  # too (aspect ≥ 2); every part was timed.
  assert {("194×512", p) for p in ("polar", "jnp_svd", "qr", "svd_square")} <= parts
  assert ("512×97", "qr") in parts
  assert all(r["ms"] > 0 for r in profile)


def test_markdown_table_formats_missing_cells() -> None:
  table = _common.markdown_table(
      [{"a": "x", "b": 1.5}, {"a": "y", "b": None}, {"a": "z", "b": math.inf}],
      [("a", "A", "s"), ("b", "B", ".2f")])
  lines = table.splitlines()
  assert lines[0].split("|")[1].strip() == "A"
  assert lines[2].endswith("1.50 |") and lines[3].endswith("- |")
  assert lines[4].endswith("inf |")


@pytest.mark.parametrize("text,shape", [("194x512", (194, 512)),
                                        ("12×768×768", (12, 768, 768))])
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
  assert polar.parse_shape(text) == shape


def _digests(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_out_leaves_the_references_alone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
  """Without ``--out`` a run writes a timestamped folder under runs/bench."""
  before = _digests(_common.RESULTS_DIR)
  monkeypatch.chdir(tmp_path)
  polar.main(["--quick", "--shapes", "8x8", "--kinds", "gaussian",
              "--methods", "svd", "--repeats", "1", "--min-seconds", "0"])
  assert _digests(_common.RESULTS_DIR) == before
  (run,) = (tmp_path / "runs" / "bench").iterdir()
  assert run.name.startswith("polar-")
  assert sorted(p.name for p in run.iterdir()) == ["polar_quick.json",
                                                    "polar_quick.txt"]


@pytest.mark.parametrize("module", [polar, step])
def test_help_names_the_module(module, capsys: pytest.CaptureFixture) -> None:
  with pytest.raises(SystemExit) as exit_info:
    module.main(["--help"])
  assert exit_info.value.code == 0
  name = module.__name__.rsplit(".", 1)[-1]
  text = capsys.readouterr().out
  assert text.startswith(f"usage: python -m benchmarks.{name} ")
  assert "--out DIR" in text


def test_svd_counts_multiply_loop_trip_counts(
    monkeypatch: pytest.MonkeyPatch) -> None:
  """On CPU polar decomposes a stack one matrix at a time in a loop."""
  # Importing layer_parallel adds simulated devices to XLA_FLAGS (too late
  # for this process's JAX): restore the variable for later subprocesses.
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  from benchmarks import layer_parallel

  stacks = (jnp.ones((3, 8, 8)), jnp.ones((8, 32)), jnp.ones((5, 6, 4)))
  compiled = jax.jit(lambda xs: [optax_egd.polar(x, "svd") for x in xs]
                     ).lower(stacks).compile()
  counts = layer_parallel.svd_counts(compiled.as_text())
  # The wide 8×32 matrix is reduced to 8×8 by a QR first; 6×4 → 4×6.
  assert sum(counts.values()) == 3 + 1 + 5, counts
  assert counts["8×8"] == 3 + 1, counts


@pytest.mark.full  # the CLI on 1-8 simulated devices, ~11 s
def test_layer_parallel_counts_matrices_per_device(
    tmp_path: pathlib.Path) -> None:
  """2 layers of (16×16, 16×64) on 1, 2, 4, 8 simulated devices."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.layer_parallel", "--layers", "3",
       "--width", "16", "--repeats", "1", "--out", str(tmp_path)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("# Layer-parallel")
  results = json.loads((tmp_path / "layer_parallel.json").read_text())[
      "results"]
  for row in results["per_device"]:
    assert row["matrices_per_device"] == row["expected"] > 0, row
  assert [r["devices"] for r in results["per_device"]] == [1, 2, 4, 8]
  assert [r["matrices_per_device"] for r in results["per_device"]] == [
      6, 4, 2, 2]
  plain, distributed = results["update"]
  assert plain["matrices_all_devices"] == 8 * 6
  assert distributed["matrices_all_devices"] == 8 * 2
  help_text = subprocess.run(
      [sys.executable, "-m", "benchmarks.layer_parallel", "--help"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120).stdout
  assert help_text.startswith("usage: python -m benchmarks.layer_parallel ")


@pytest.mark.parametrize("argv, message", [
    (["--layers", "0", "--width", "-1"], "argument --layers: must be an integer >= 1"),
    (["--width", "-1"], "argument --width: must be an integer >= 1, got '-1'"),
    (["--repeats", "0"], "argument --repeats: must be an integer >= 1"),
])
def test_layer_parallel_refuses_sizes_below_one(argv: list[str], message: str) -> None:
  """``--layers 0`` was 24 layers (``args.layers or 24``), a negative width a
  traceback: both are one-line usage errors now."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.layer_parallel", *argv],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert message in done.stderr.splitlines()[-1]
