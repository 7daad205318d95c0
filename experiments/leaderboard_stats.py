"""Statistics and the overview figure of the leaderboard page.

Pure functions (the standard library, NumPy and matplotlib; no JAX) that turn
the leaderboard's "steps to target" per evaluation seed into what the page
reports:

* :func:`ratio_of_medians`: how many times the steps of one optimizer's median
  seed are those of another's, with a percentile bootstrap 95% interval over
  the seeds (paired by default: a seed's data and initialization are shared by
  the optimizers, so the seeds pair up);
* :func:`verdict`: "ahead", "behind" or "not separated", read off that
  interval, which is the page's decision;
* :func:`sign_flip_test`: the exact paired sign-flip p-value of the mean
  log-ratio, reported as information only (with 5 seeds it cannot pass 0.05);
* :func:`overview_figure`: one PNG with two heatmaps (first evaluation at
  target, stable grokking), optimizers by tasks, each cell its median steps
  over the task's best median.

A seed that did not reach the target within ``cap`` steps (``None`` or
``math.inf``) counts as ``cap`` steps. Its true value is at least ``cap``, so
this can only make the optimizer that missed look faster than it is: the
ratios are conservative, understating any lead over an optimizer with misses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import io
import math
import os
import textwrap
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
  from matplotlib.figure import Figure

MAX_SIGN_FLIP_SEEDS = 16
# The overview's colour scale: 1x (the task's best median) to CLIP_RATIO x and
# beyond, on a log scale.
CLIP_RATIO = 30.0
CMAP = "viridis_r"
NO_RESULT_GREY = "0.88"
EDGE_MARK = "†"
MISSED_MARK = "*"
PANELS = (("first", "first evaluation at target"), ("stable", "stable grokking"))


class Interval(NamedTuple):
  """A ratio of medians (the point estimate) and its 95% interval."""

  ratio: float
  low: float
  high: float


def _steps(values: Sequence[float | None], cap: float, name: str) -> np.ndarray:
  """``values`` as floats, ``None`` and ``inf`` (not reached) counted as ``cap``."""
  out = []
  for v in values:
    if v is None or v == math.inf:
      out.append(float(cap))
      continue
    v = float(v)
    if not (math.isfinite(v) and v > 0):
      raise ValueError(f"{name}: steps must be positive numbers, got {v!r}")
    out.append(v)
  if len(out) < 2:
    raise ValueError(f"{name}: need at least 2 values, got {len(out)}")
  return np.asarray(out, dtype=np.float64)


def _check_cap(cap: float) -> None:
  try:
    ok = math.isfinite(float(cap)) and float(cap) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"cap must be a finite number > 0, got {cap!r}")


def ratio_of_medians(
  a: Sequence[float | None],
  b: Sequence[float | None],
  cap: float,
  *,
  paired: bool = True,
  n_boot: int = 10000,
  seed: int = 0,
) -> Interval:
  """median(a) / median(b) and its percentile bootstrap 95% interval.

  ``a`` and ``b`` are the steps to target per evaluation seed of two
  optimizers; a ratio below 1 means ``a`` needs fewer steps. ``None`` or
  ``math.inf`` (the seed did not reach the target within ``cap`` steps)
  counts as ``cap``. A censored value is at least ``cap``, so this is
  conservative: it can only make the side that missed look faster, never
  overstate the other side's lead.

  The bootstrap draws ``n_boot`` resamples of the seed indices with
  replacement: the same indices for ``a`` and ``b`` when ``paired`` (then
  ``a[i]`` and ``b[i]`` must come from the same seed), independent ones
  otherwise. The interval is the 2.5th and 97.5th percentiles of the
  resampled ratios. ``numpy.random.default_rng(seed)`` draws them, so the
  same inputs give the same interval.

  >>> ratio_of_medians([100, 200, 300], [200, 400, 600], cap=1000)
  Interval(ratio=0.5, low=0.5, high=0.5)
  >>> ratio_of_medians([100, None, math.inf], [100, 100, 100], cap=1000).ratio
  10.0
  >>> ratio_of_medians([1, 2], [1, 2, 3], cap=10)
  Traceback (most recent call last):
  ValueError: paired samples need equal lengths, got 2 and 3
  """
  _check_cap(cap)
  if not (isinstance(n_boot, int) and n_boot >= 1):
    raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
  if paired and len(a) != len(b):
    raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
  x, y = _steps(a, cap, "a"), _steps(b, cap, "b")
  rng = np.random.default_rng(seed)
  idx_a = rng.integers(0, len(x), size=(n_boot, len(x)))
  idx_b = idx_a if paired else rng.integers(0, len(y), size=(n_boot, len(y)))
  ratios = np.median(x[idx_a], axis=1) / np.median(y[idx_b], axis=1)
  low, high = np.percentile(ratios, [2.5, 97.5])
  return Interval(float(np.median(x) / np.median(y)), float(low), float(high))


def sign_flip_test(
  a: Sequence[float | None], b: Sequence[float | None], cap: float
) -> float:
  """The exact two-sided paired sign-flip p-value of the mean of log(a/b).

  ``a[i]`` and ``b[i]`` are the steps to target of the same seed; ``None`` or
  ``math.inf`` counts as ``cap`` (see :func:`ratio_of_medians`). Under the
  null hypothesis each log-ratio is as likely negative as positive; the
  p-value is the share of the 2^n sign patterns whose mean is at least as far
  from 0 as the observed one (n <= 16 seeds, all enumerated).

  With 5 seeds the smallest possible p is 2/32 = 0.0625 (all signs agree:
  that pattern and its mirror), so it can never pass 0.05. That is why the
  page decides with the bootstrap interval of :func:`ratio_of_medians` (see
  :func:`verdict`) and reports this p-value as information.

  >>> sign_flip_test([200, 300, 400, 500, 600], [100] * 5, cap=1000)
  0.0625
  >>> sign_flip_test([100, 200], [200, 100], cap=1000)
  1.0
  """
  _check_cap(cap)
  if len(a) != len(b):
    raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
  if len(a) > MAX_SIGN_FLIP_SEEDS:
    raise ValueError(
      f"the exact test enumerates 2^n patterns: n must be <= "
      f"{MAX_SIGN_FLIP_SEEDS}, got {len(a)}"
    )
  d = np.log(_steps(a, cap, "a") / _steps(b, cap, "b"))
  n = len(d)
  signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
  sums = np.abs(signs @ d)
  # Patterns equal in exact arithmetic may differ in the last bits.
  tolerance = 1e-9 * float(np.abs(d).sum())
  return float(np.mean(sums >= abs(float(d.sum())) - tolerance))


def verdict(interval: Interval) -> str:
  """ "ahead" when the whole interval is below 1 (``a`` needs fewer steps),
  "behind" when it is all above 1, else "not separated".

  >>> verdict(Interval(0.5, 0.4, 0.9))
  'ahead'
  >>> verdict(Interval(2.0, 1.1, 3.0))
  'behind'
  >>> verdict(Interval(0.9, 0.7, 1.0))
  'not separated'
  """
  if interval.high < 1:
    return "ahead"
  if interval.low > 1:
    return "behind"
  return "not separated"


def _label(value: float, edge: bool, missed: bool) -> str:
  """A cell's text: "1.0", "2.3", "12", ">cap", with the edge/missed marks."""
  if value == math.inf:
    text = ">cap"
  elif value < 9.95:
    text = f"{value:.1f}"
  else:
    text = f"{value:.0f}"
  if missed and value != math.inf:
    text += MISSED_MARK
  return text + (EDGE_MARK if edge else "")


def _caption(width: int) -> str:
  """The figure's key, wrapped at ``width`` characters, each phrase whole."""
  phrases = [
    "Each cell: the optimizer's median steps over the evaluation seeds divided "
    "by the task's best median (1.0 = best; log colour scale, darker = slower, "
    f"clipped at {CLIP_RATIO:.0f}x).",
    ">cap: the median seed did not reach the target within the step cap.",
    f"{MISSED_MARK} some seeds did not reach it.",
    f"{EDGE_MARK} tuned learning rate at the edge of what was tried.",
    "Grey: no result.",
  ]
  lines: list[str] = []
  for phrase in phrases:
    if lines and len(lines[-1]) + 3 + len(phrase) <= width:
      lines[-1] += "   " + phrase
    else:
      lines += textwrap.wrap(phrase, width=width)
  return "\n".join(lines)


def _draw_overview(
  cells: Mapping[tuple[str, str], Mapping[str, Any]],
  tasks: Sequence[str],
  optimizers: Sequence[str],
  title: str | None,
) -> Figure | None:
  """The overview figure, or None when no cell has a value."""
  grids = {}
  for key, _ in PANELS:
    grid = np.full((len(optimizers), len(tasks)), np.nan)
    for i, opt in enumerate(optimizers):
      for j, task in enumerate(tasks):
        value = cells.get((task, opt), {}).get(key)
        if value is not None:
          grid[i, j] = float(value)
    grids[key] = grid
  if all(np.isnan(g).all() for g in grids.values()):
    return None

  from matplotlib import colormaps
  from matplotlib.colors import LogNorm
  from matplotlib.figure import Figure
  from matplotlib.ticker import FixedLocator, NullLocator

  cmap = colormaps[CMAP].with_extremes(bad=NO_RESULT_GREY)
  norm = LogNorm(vmin=1.0, vmax=CLIP_RATIO, clip=True)
  cell_w, cell_h = 0.5, 0.3
  opt_chars = max(len(o) for o in optimizers)
  task_chars = max(len(t) for t in tasks)
  width = max(8.0, 2 * len(tasks) * cell_w + 0.075 * opt_chars + 1.8)
  height = len(optimizers) * cell_h + 0.055 * task_chars + 1.9 + (0.3 if title else 0)
  fig = Figure(figsize=(width, height), layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  image = None
  for ax, (key, panel_title) in zip(axes, PANELS, strict=True):
    grid = grids[key]
    shown = np.where(np.isinf(grid), CLIP_RATIO, np.clip(grid, 1.0, None))
    image = ax.imshow(
      np.ma.masked_invalid(shown),
      cmap=cmap,
      norm=norm,
      aspect="auto",
      interpolation="nearest",
    )
    for i, opt in enumerate(optimizers):
      for j, task in enumerate(tasks):
        if np.isnan(grid[i, j]):
          continue
        cell = cells[(task, opt)]
        r, g, b, _ = cmap(norm(shown[i, j]))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        ax.text(
          j,
          i,
          _label(grid[i, j], bool(cell.get("edge")), bool(cell.get(f"missed_{key}"))),
          ha="center",
          va="center",
          fontsize=8,
          color="white" if dark else "black",
        )
    ax.set_title(panel_title)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(optimizers)), optimizers, fontsize=8)
    ax.xaxis.set_minor_locator(FixedLocator([j - 0.5 for j in range(len(tasks) + 1)]))
    ax.yaxis.set_minor_locator(
      FixedLocator([i - 0.5 for i in range(len(optimizers) + 1)])
    )
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
      spine.set_visible(False)
  axes[1].tick_params(which="both", left=False, labelleft=False)
  assert image is not None  # two panels were drawn
  bar = fig.colorbar(image, ax=axes, extend="max", shrink=0.9, aspect=25)
  ticks = [t for t in (1, 2, 3, 5, 10, 30) if t <= CLIP_RATIO]
  bar.set_ticks(ticks, labels=[f"{t:g}x" for t in ticks])
  bar.ax.yaxis.set_minor_locator(NullLocator())
  bar.ax.tick_params(labelsize=8)
  bar.set_label("median steps / task's best median", fontsize=8)
  fig.supxlabel(_caption(int(width / 0.08)), fontsize=8)
  if title:
    fig.suptitle(title)
  return fig


def overview_figure(
  cells: Mapping[tuple[str, str], Mapping[str, Any]],
  path: str | os.PathLike[str],
  *,
  tasks: Sequence[str],
  optimizers: Sequence[str],
  title: str | None = None,
) -> bool:
  """Draw the leaderboard at a glance to the PNG ``path`` (120 dpi); False (and nothing
  written) when no cell has a value.

  Two heatmaps side by side, "first evaluation at target" and "stable
  grokking", rows ``optimizers``, columns ``tasks``. ``cells[(task,
  optimizer)]`` is a dict with ``first`` and ``stable`` (the cell's median
  steps over the task's best median, so >= 1; ``math.inf`` when the median
  seed did not reach the target; ``None`` when the cell has no result for that
  measure), ``edge`` (the tuned learning rate is at the edge of the grid: "†"
  after the number) and ``missed_first`` / ``missed_stable`` (some seeds did
  not reach the target: "*" after the number). Colours run on a log scale
  from 1 (best, light) to 30x and beyond (dark); ``inf`` reads ">cap" in the
  darkest colour; missing pairs and ``None`` are light grey. A caption on the
  figure explains the marks.
  """
  fig = _draw_overview(cells, tasks, optimizers, title)
  if fig is None:
    return False
  from PIL import Image  # matplotlib's own dependency

  # A 256-colour palette keeps the PNG small (a third of the RGBA size): the
  # figure is flat colours and text.
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=120, format="png")
  with Image.open(buffer) as image:
    palette = image.convert("RGB").quantize(256, dither=Image.Dither.NONE)
  palette.save(path, format="png", optimize=True)
  return True
