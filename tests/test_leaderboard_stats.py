"""Tests of ``experiments.leaderboard_stats``: the ratio of medians and its
bootstrap interval, the exact sign-flip test, the verdict, and the overview
figure."""

from __future__ import annotations

import itertools
import math
import time

import matplotlib
import numpy as np
import pytest

from experiments import leaderboard_stats as ls

matplotlib.use("Agg")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_identical_lists_give_ratio_one_and_interval_containing_one():
  a = [120, 340, 200, 800, 150]
  result = ls.ratio_of_medians(a, list(a), cap=1000)
  assert isinstance(result, ls.Interval)
  assert result.ratio == 1.0
  assert result.low <= 1.0 <= result.high
  assert ls.verdict(result) == "not separated"


def test_b_twice_a_paired_is_exactly_one_half():
  a = [100, 250, 130, 900, 410]
  result = ls.ratio_of_medians(a, [2 * v for v in a], cap=10_000)
  assert result == ls.Interval(0.5, 0.5, 0.5)
  assert all(type(v) is float for v in result)
  assert ls.verdict(result) == "ahead"


def test_median_ratio_by_hand():
  # median(a) = 300, median(b) = 100 (even count: (100 + 100) / 2).
  result = ls.ratio_of_medians([100, 300, 500], [50, 100, 100, 400], 1000, paired=False)
  assert result.ratio == pytest.approx(3.0)
  assert result.low <= result.high


def test_censored_values_count_as_cap():
  censored = ls.ratio_of_medians([None, math.inf, 50], [100, 100, 100], cap=200)
  explicit = ls.ratio_of_medians([200, 200, 50], [100, 100, 100], cap=200)
  assert censored.ratio == 2.0
  assert censored == explicit
  # All censored: every resample is cap / 100.
  assert ls.ratio_of_medians([None] * 5, [100] * 5, cap=300) == (3.0, 3.0, 3.0)


def test_same_seed_same_interval_other_seed_other_interval():
  # An even count: medians average two values, so few resampled ratios tie
  # and another seed moves the percentiles.
  rng = np.random.default_rng(3)
  a = rng.uniform(100, 1000, 16).tolist()
  b = rng.uniform(100, 1000, 16).tolist()
  first = ls.ratio_of_medians(a, b, cap=1000, seed=11)
  assert ls.ratio_of_medians(a, b, cap=1000, seed=11) == first
  assert ls.ratio_of_medians(a, b, cap=1000, seed=12) != first
  assert ls.ratio_of_medians(a, b, cap=1000, seed=12).ratio == first.ratio


def test_pairing_narrows_the_interval_when_seeds_vary_together():
  # Seed difficulty spans 16x; b is ~10% slower than a on every seed.
  a = [100, 200, 400, 800, 1600]
  b = [110, 210, 450, 850, 1700]
  paired = ls.ratio_of_medians(a, b, cap=10_000)
  unpaired = ls.ratio_of_medians(a, b, cap=10_000, paired=False)
  assert paired.ratio == unpaired.ratio == pytest.approx(400 / 450)
  assert paired.high - paired.low < 0.1
  assert unpaired.high - unpaired.low > 1.0
  assert ls.verdict(paired) == "ahead"
  assert ls.verdict(unpaired) == "not separated"


def test_ten_thousand_resamples_are_fast():
  a, b = list(range(100, 116)), list(range(200, 216))
  start = time.perf_counter()
  ls.ratio_of_medians(a, b, cap=1000, n_boot=10_000)
  ls.ratio_of_medians(a, b, cap=1000, n_boot=10_000, paired=False)
  assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
  ("a", "b", "cap", "kwargs", "message"),
  [
    ([1, 2, 3], [1, 2], 10, {}, "equal lengths"),
    ([1], [1], 10, {"paired": False}, "at least 2"),
    ([1, 2], [3], 10, {"paired": False}, "at least 2"),
    ([1, 2], [1, 2], 0, {}, "cap"),
    ([1, 2], [1, 2], -5, {}, "cap"),
    ([1, 2], [1, 2], math.inf, {}, "cap"),
    ([1, -2], [1, 2], 10, {}, "positive"),
    ([1, 0], [1, 2], 10, {}, "positive"),
    ([1, 2], [1, math.nan], 10, {}, "positive"),
    ([1, 2], [1, 2], 10, {"n_boot": 0}, "n_boot"),
  ],
)
def test_ratio_of_medians_rejects_bad_input(a, b, cap, kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    ls.ratio_of_medians(a, b, cap, **kwargs)
  assert "\n" not in str(error.value)


def test_unpaired_accepts_unequal_lengths():
  result = ls.ratio_of_medians([100, 200, 300], [100, 200], cap=1000, paired=False)
  assert result.ratio == pytest.approx(200 / 150)


@pytest.mark.parametrize(
  ("a", "b", "p"),
  [
    ([200, 300, 400, 500, 600], [100] * 5, 2 / 32),
    ([100] * 5, [200, 300, 400, 500, 600], 2 / 32),
    ([2, 3, 4], [1, 1, 1], 2 / 8),
    ([100, 200], [200, 100], 1.0),
    ([5, 5, 5], [5, 5, 5], 1.0),
    # log-ratios +1, +1, +1, +1, -1 (base e): |sum| >= 3 for the all-same
    # patterns (2) and the 5 x 2 patterns with exactly one sign differing.
    ([math.e, math.e, math.e, math.e, 1], [1, 1, 1, 1, math.e], 12 / 32),
  ],
)
def test_sign_flip_exact_values(a, b, p):
  assert ls.sign_flip_test(a, b, cap=1000) == pytest.approx(p)


def test_sign_flip_matches_brute_force():
  rng = np.random.default_rng(0)
  a = rng.integers(50, 500, 8).tolist()
  b = rng.integers(50, 500, 8).tolist()
  d = np.log(np.array(a, float) / np.array(b, float))
  observed = abs(d.sum())
  count = sum(
    abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-12
    for signs in itertools.product((-1, 1), repeat=len(d))
  )
  assert ls.sign_flip_test(a, b, cap=1000) == pytest.approx(count / 2**8)


def test_sign_flip_counts_censored_as_cap():
  assert ls.sign_flip_test([None] * 5, [100] * 5, cap=1000) == 0.0625
  # Censored at cap = 100 equals b on every seed: no evidence at all.
  assert ls.sign_flip_test([None, math.inf, None], [100] * 3, cap=100) == 1.0


def test_sign_flip_rejects_bad_input():
  with pytest.raises(ValueError, match="<= 16"):
    ls.sign_flip_test([1] * 17, [2] * 17, cap=10)
  with pytest.raises(ValueError, match="equal lengths"):
    ls.sign_flip_test([1, 2, 3], [1, 2], cap=10)
  with pytest.raises(ValueError, match="cap"):
    ls.sign_flip_test([1, 2], [1, 2], cap=0)
  with pytest.raises(ValueError, match="positive"):
    ls.sign_flip_test([1, -2], [1, 2], cap=10)


@pytest.mark.parametrize(
  ("interval", "expected"),
  [
    (ls.Interval(0.5, 0.4, 0.99), "ahead"),
    (ls.Interval(2.0, 1.01, 3.0), "behind"),
    (ls.Interval(1.0, 0.5, 1.5), "not separated"),
    (ls.Interval(0.8, 0.6, 1.0), "not separated"),
    (ls.Interval(1.2, 1.0, 1.4), "not separated"),
  ],
)
def test_verdict(interval, expected):
  assert ls.verdict(interval) == expected


TASKS = [
  f"modular_{op}_p97" if i % 3 else f"task{i}"
  for i, op in enumerate(
    [
      "add",
      "sub",
      "mul",
      "div",
      "parity",
      "mnist",
      "add_noise",
      "sub_noise",
      "mul_noise",
      "x2",
      "x3",
      "x4",
      "x5",
      "x6",
    ]
  )
]
OPTIMIZERS = [
  "egd",
  "adamw",
  "sgd",
  "grokfast_adamw",
  "muon",
  "lion",
  "egd_pre",
  "egd_post",
  "adamw_wd",
  "baseline",
]


def test_overview_figure_writes_a_small_png(tmp_path):
  rng = np.random.default_rng(0)
  cells = {}
  for task in TASKS:
    for opt in OPTIMIZERS:
      if rng.random() < 0.1:
        continue  # a missing pair
      first = float(np.exp(rng.uniform(0, 4)))
      cells[(task, opt)] = {
        "first": first,
        "stable": math.inf if rng.random() < 0.2 else first * 1.5,
        "edge": bool(rng.random() < 0.2),
        "missed_first": bool(rng.random() < 0.2),
        "missed_stable": False,
      }
  cells[(TASKS[0], OPTIMIZERS[0])] = {"first": 1.0, "stable": None, "edge": True}
  path = tmp_path / "overview.png"
  assert ls.overview_figure(
    cells, path, tasks=TASKS, optimizers=OPTIMIZERS, title="leaderboard"
  )
  data = path.read_bytes()
  assert data.startswith(PNG_SIGNATURE)
  assert len(data) < 200_000


def test_overview_figure_texts_marks_and_caption():
  cells = {
    ("t1", "egd"): {"first": 1.0, "stable": math.inf, "edge": True},
    ("t1", "adamw"): {"first": 2.345, "stable": 12.4, "missed_first": True},
    ("t2", "adamw"): {"first": None, "stable": 1.0},
  }
  fig = ls._draw_overview(cells, ["t1", "t2"], ["egd", "adamw", "sgd"], None)
  assert fig is not None
  left, right = fig.axes[:2]
  assert sorted(t.get_text() for t in left.texts) == ["1.0†", "2.3*"]
  assert sorted(t.get_text() for t in right.texts) == ["1.0", "12", ">cap†"]
  caption = fig._supxlabel.get_text()
  assert "† tuned learning rate at the edge of what was tried" in caption
  assert [ax.get_title() for ax in (left, right)] == [
    "first evaluation at target",
    "stable grokking",
  ]


def test_overview_figure_without_values_writes_nothing(tmp_path):
  path = tmp_path / "empty.png"
  cells = {
    ("t1", "egd"): {"first": None, "stable": None, "edge": True},
    ("t2", "adamw"): {"first": None, "stable": None},
    ("not_listed", "egd"): {"first": 1.0, "stable": 1.0},
  }
  assert not ls.overview_figure(cells, path, tasks=["t1", "t2"], optimizers=["egd"])
  assert not path.exists()
  assert not ls.overview_figure({}, path, tasks=["t1"], optimizers=["egd"])
  assert not path.exists()
