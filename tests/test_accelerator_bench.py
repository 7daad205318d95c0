"""The accelerator benchmark's tiny mode and the cost model: they run, write
the JSON fields the device run is read by, guard the time budget, refuse bad
options, and the counted FLOPs agree with XLA's for the matrix-product
methods."""

from __future__ import annotations

import json
import pathlib

import pytest

from benchmarks import accelerator, cost_model


def _payload(path: pathlib.Path) -> dict:
  payload = json.loads(path.read_text())
  assert set(payload) == {"machine", "config", "results", "summary"}
  for key in ("jax", "backend", "load_start", "load_end", "device_kind"):
    assert key in payload["machine"]
  return payload


def test_accelerator_tiny_polar(tmp_path: pathlib.Path) -> None:
  methods = ["svd", "polar_express_exact"]
  accelerator.main(["--tiny", "--sections", "polar", "--methods", *methods,
                    "--out", str(tmp_path)])
  payload = _payload(tmp_path / "accelerator_tiny.json")
  results = payload["results"]
  assert results["transformer"] is None and results["grokfast"] is None
  rows = results["polar"]
  variants = accelerator.polar_variants(methods)
  assert len(rows) == len(accelerator.TINY_SHAPES) * 2 * len(variants)
  for r in rows:
    assert r["status"] == "ok", r
    assert r["median_ms"] > 0 and r["finite"]
    assert r["dtype"] in ("float32", "bfloat16")
    if r["method"] == "svd":
      # Exact: float32 to rounding; bfloat16 to its output rounding.
      assert r["rel_err"] < (1e-5 if r["dtype"] == "float32" else 1e-2)
  assert "Polar methods" in (tmp_path / "accelerator_tiny.txt").read_text()


@pytest.mark.full
def test_accelerator_tiny_transformer(tmp_path: pathlib.Path) -> None:
  accelerator.main(["--tiny", "--sections", "transformer", "--optimizers",
                    "adamw", "egdm", "--out", str(tmp_path)])
  tr = _payload(tmp_path / "accelerator_tiny.json")["results"]["transformer"]
  assert tr["status"] == "ok" and tr["batch"] == accelerator.TINY.batches[0]
  assert tr["tokens"] == tr["batch"] * accelerator.TINY.seq
  by = {r["optimizer"]: r for r in tr["rows"]}
  assert set(by) == {"adamw", "egdm"}
  assert by["adamw"]["ratio_at_batch"] == 1.0
  for r in by.values():
    assert r["step_ms"] > 0 and r["update_ms"] > 0 and r["ratio_at_05M"] > 0
  assert "Transformer step" in (tmp_path / "accelerator_tiny.txt").read_text()


def test_accelerator_budget_guard_records_skips(tmp_path: pathlib.Path) -> None:
  # A budget spent before the first shape: every combination is recorded as
  # skipped, nothing runs over.
  accelerator.main(["--tiny", "--sections", "polar", "transformer", "demo",
                    "--methods", "svd", "--budget-s", "1e-9",
                    "--out", str(tmp_path)])
  results = _payload(tmp_path / "accelerator_tiny.json")["results"]
  assert results["polar"] == [{"status": accelerator.SKIPPED_BUDGET}]
  assert results["transformer"] == {"status": accelerator.SKIPPED_BUDGET}
  assert results["demo"] == {"status": accelerator.SKIPPED_BUDGET}


def test_accelerator_skips_calls_predicted_too_slow(tmp_path: pathlib.Path
                                                    ) -> None:
  accelerator.main(["--tiny", "--sections", "polar", "--methods", "svd",
                    "--max-call-s", "1e-12", "--out", str(tmp_path)])
  rows = _payload(tmp_path / "accelerator_tiny.json")["results"]["polar"]
  assert rows and all(r["status"].startswith("skipped: predicted")
                      for r in rows)


@pytest.mark.full
def test_accelerator_tiny_all_sections(tmp_path: pathlib.Path) -> None:
  accelerator.main(["--tiny", "--out", str(tmp_path)])
  results = _payload(tmp_path / "accelerator_tiny.json")["results"]
  assert all(r["status"] == "ok" for r in results["polar"])
  assert {r["optimizer"] for r in results["transformer"]["rows"]} == set(
      accelerator.optimizers())
  assert results["demo"]["status"] == "ok"
  assert results["demo"]["epochs_run"] == accelerator.TINY.demo_max_epochs
  assert results["grokfast"]["status"] == "ok"
  assert results["grokfast"]["epochs_run"] == 1


@pytest.mark.parametrize("argv,message", [
    (["--budget-s", "0"], "--budget-s"),
    (["--max-call-s", "nan"], "--max-call-s"),
    (["--repeats", "0"], "--repeats"),
    (["--sections", "gpu"], "--sections"),
])
def test_accelerator_rejects_bad_options(argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture) -> None:
  with pytest.raises(SystemExit) as exc:
    accelerator.main(argv)
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


def test_gpt_is_gpt2_small_sized() -> None:
  from flax import nnx
  import jax

  full = accelerator.FULL
  model = nnx.eval_shape(lambda: accelerator.GPT(
      full.vocab, full.seq, full.d_model, full.heads, full.layers,
      rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  kernels = sorted(tuple(p.shape) for path, p in
                   jax.tree_util.tree_leaves_with_path(params)
                   if accelerator.is_block_kernel(path))
  assert kernels == sorted((12, *s) for s in cost_model.GPT2_KERNELS)
  n = sum(p.size for p in jax.tree.leaves(params))
  assert n == cost_model.gpt2_small().params


def test_cost_model_small(tmp_path: pathlib.Path) -> None:
  cost_model.main(["--small", "--out", str(tmp_path)])
  payload = json.loads((tmp_path / "cost_model_quick.json").read_text())
  rows = payload["results"]
  assert {r["method"] for r in rows} == set(cost_model.METHODS)
  for r in rows:
    assert r["flops"] > 0 and r["bytes"] > 0
    if r["method"] in cost_model.MATMUL_METHODS:
      # The counted FLOPs and XLA's agree within 10% (XLA also counts a few
      # elementwise operations differently); TF32 is emulated on CPU by
      # rounding the operands, elementwise work the count leaves out.
      high = 1.5 if r["precision"] == "tf32" else 1.1
      assert 0.9 < r["xla_over_counted"] < high, r
  overhead = payload["summary"]["predicted_overhead"]
  assert all(r["predicted"] for r in overhead)
  gpt = {(r["optimizer"], r["method"], r["precision"]): r["ratio_vs_adamw"]
         for r in overhead if r["model"] == "gpt2_small"}
  assert gpt[("adamw", "-", "float32")] == 1.0
  assert gpt[("egdm", "svd", "float32")] > 2 * gpt[
      ("egdm", "polar_express", "float32")] > 2
  assert "predicted" in (tmp_path / "cost_model_quick.md").read_text().lower()


@pytest.mark.parametrize("method", cost_model.MATMUL_METHODS)
@pytest.mark.parametrize("shape", [(2, 24, 80), (80, 24)])
def test_counted_flops_match_xla(method: str, shape: tuple[int, ...]) -> None:
  counted = cost_model.count(method, shape)
  xla = cost_model.xla_cost(method, shape)
  assert xla["flops"] is not None
  assert 0.9 < xla["flops"] / counted.flops < 1.1
  assert counted.matmuls == cost_model.traced_matmuls(method, shape)


def test_gesvdj_scaling_reproduces_the_published_figure() -> None:
  ref = cost_model.gesvdj_ms(400) / cost_model.GESVDJ_REAL_F32_FACTOR
  assert ref == pytest.approx(cost_model.GESVDJ_REF_MS)
  assert cost_model.gesvdj_ms(800) == pytest.approx(8 * cost_model.gesvdj_ms(400))


def test_cost_model_rejects_bad_options(capsys: pytest.CaptureFixture) -> None:
  for argv in (["--tokens", "0"], ["--shapes", "12"], ["--small", "--shapes",
                                                      "4x4"]):
    with pytest.raises(SystemExit) as exc:
      cost_model.main(argv)
    assert exc.value.code == 2
  assert "error" in capsys.readouterr().err
