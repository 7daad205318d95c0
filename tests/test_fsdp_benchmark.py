"""``python -m benchmarks.fsdp``: its HLO reader and its quick run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


_HLO = """\
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %ag = f32[4,8]{1,0} all-gather(f32[1,8]{1,0} %x), replica_groups=[2,4]<=[8], dimensions={0}
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
}

%branch_a (p: ()) -> f32[2] {
  %ar = f32[2]{0} all-reduce(f32[2]{0} %y), replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
}

%branch_b (p: ()) -> f32[2] {
}

ENTRY %main (a: f32[16,8]) -> f32[16,8] {
  %a2a = (f32[2,8]{1,0}, f32[2,8]{1,0}) all-to-all(f32[2,8]{1,0} %u, f32[2,8]{1,0} %v), replica_groups={}
  %w = (s32[], f32[4,8]{1,0}) while((s32[], f32[4,8]{1,0}) %t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %c = f32[2]{0} conditional(pred[] %p, () %e, () %f), branch_computations={%branch_a, %branch_b}
  %s = ((f32[1,8]{1,0}), f32[8,8]{1,0}) all-gather-start(f32[1,8]{1,0} %q), replica_groups={}, dimensions={0}
  %d = f32[8,8]{1,0} all-gather-done(((f32[1,8]{1,0}), f32[8,8]{1,0}) %s)
}
"""  # noqa: E501 (HLO lines as XLA prints them)


def test_collective_bytes_counts_groups_loops_and_branches(
    monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  from benchmarks import fsdp

  got = fsdp.collective_bytes(_HLO, 8)
  # all-to-all over all 8 devices: 7/8 of its two 64-byte results.
  assert got["all-to-all"] == pytest.approx(2 * 64 * 7 / 8)
  # A 128-byte all-gather over groups of 4, 3 times in the loop, plus an
  # async one over 8 devices whose result is 256 bytes.
  assert got["all-gather"] == pytest.approx(3 * 128 * 3 / 4 + 256 * 7 / 8)
  # The conditional's busier branch: an all-reduce of 8 bytes over pairs.
  assert got["all-reduce"] == pytest.approx(2 * 8 * 1 / 2)


@pytest.mark.full  # the CLI, 18 compilations on simulated devices, ~1 min
def test_fsdp_quick_owner_beats_gather(tmp_path: pathlib.Path) -> None:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.fsdp", "--quick", "--out",
       str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("# EGD on FSDP-sharded gradients")
  payload = json.loads((tmp_path / "fsdp_quick.json").read_text())
  assert set(payload) == {"machine", "config", "results", "summary"}
  assert payload["config"]["command"] == "python -m benchmarks.fsdp --quick"
  rows = payload["results"]
  at = {(r["devices"], r["axes"], r["path"]): r for r in rows}
  assert {d for d, _, _ in at} == {2, 4, 8}
  for d in (2, 4, 8):
    assert at[(d, "-", "ideal")]["moved_x"] == pytest.approx(2 * (d - 1) / d**2)
    for axes in ("explicit", "auto"):
      owner, gather = at[(d, axes, "owner")], at[(d, axes, "gather")]
      assert owner["temp_x"] < gather["temp_x"], (d, axes)
      assert owner["moved_x"] < gather["moved_x"], (d, axes)
      assert set(owner["moved_by_kind"]) == {"all-to-all"}, (d, axes)
