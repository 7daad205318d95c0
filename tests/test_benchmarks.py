"""Smoke tests: each benchmark's tiny mode runs and writes valid JSON."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from benchmarks import _common, grok, polar, step


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
  out = tmp_path / "polar.json"
  polar.main(["--shapes", "40x24", "2x16x16", "--kinds", "gaussian",
              "cond_1e6", "--methods", "svd", "eigh", "official_rsvd",
              "eigh_guard", "--repeats", "1", "--min-seconds", "0",
              "--out", str(out)])
  rows = _load(out)["results"]
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
             "--out", str(out)])
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


def test_grok_tiny(tmp_path: pathlib.Path) -> None:
  out = tmp_path / "grok.json"
  grok.main(["--p", "11", "--batch-size", "16", "--optimizers", "sgd",
             "official", "--max-epochs", "2", "--out", str(out)])
  payload = _load(out)
  assert [r["optimizer"] for r in payload["results"]] == ["sgd", "official"]
  for r in payload["results"]:
    assert 1 <= r["epochs_run"] <= 2
    assert r["epochs"] is None or r["epochs"] <= 2
  assert len(payload["summary"]) == 2
  assert out.with_suffix(".md").read_text().count("|") > 10


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
