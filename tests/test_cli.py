"""The command lines of ``experiments``: every bad input is a one-line usage
error (exit code 2, no traceback) naming the option and what it accepts; the
output folder is checked before training; ``--resume`` refuses what it cannot
continue; plots survive a diverged run."""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import subprocess
import sys

import pytest

from experiments import _cli, demo, grok, paper_table
from experiments.checkpoint import Checkpointer, CheckpointError, config_differences

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A run of a few tenths of a second per epoch: 121 pairs, 60 to train on.
TINY = ["--p", "11", "--hidden", "16", "--batch-size", "16", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


def usage_error(capsys, parse, argv) -> str:
  """The error line of ``parse(argv)``, which must exit with code 2 after
  argparse's usage lines and nothing else."""
  with pytest.raises(SystemExit) as exit_info:
    parse(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  lines = err.rstrip("\n").splitlines()
  assert lines[0].startswith("usage: python -m experiments.")
  assert all(line.startswith(" ") for line in lines[1:-1]), err
  assert "Traceback" not in err
  return lines[-1]


def refusal(capsys, main, argv) -> str:
  """The one line of a refusal about ``--out``'s files: exit code 2, the
  reason alone on stderr (no usage lines above it, no traceback)."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith("python -m experiments."), err
  return err.rstrip("\n")


def grok_resolve(argv):
  return grok.resolve(grok.parse_args(argv))


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got '0'"),
    (["--max-epochs", "0"], "argument --max-epochs: must be an integer >= 1"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["--batch-size", "-3"], "argument --batch-size: must be an integer >= 1"),
    (["--hidden", "0"], "argument --hidden: must be an integer >= 1"),
    (["--p", "4"], "argument --p: must be a prime >= 2 for --task mod_add, got 4"),
    (["--p", "1"], "argument --p: must be an integer >= 2"),
    (["--train-fraction", "1.5"], "--train-fraction: must be a number in (0, 1)"),
    (["--target-accuracy", "1.5"], "--target-accuracy: must be a number in [0, 1]"),
    (["--egd-off-at", "2"], "argument --egd-off-at: must be a number in [0, 1]"),
    (["--lr", "-0.5"], "argument --lr: must be a number > 0, got '-0.5'"),
    (["--lr", "nan"], "argument --lr: must be a number > 0, got 'nan'"),
    (["--lr", "inf"], "argument --lr: must be a number > 0"),
    (["--lr", "fast"], "argument --lr: must be a number > 0, got 'fast'"),
    (["--momentum", "1.5"], "argument --momentum: must be a number in [0, 1)"),
    (["--b2", "1"], "argument --b2: must be a number in [0, 1)"),
    (["--adam-lr", "0"], "argument --adam-lr: must be a number > 0"),
    (["--rank", "0"], "argument --rank: must be an integer >= 1"),
    (["--ns-steps", "2.5"], "argument --ns-steps: must be an integer >= 1, got '2.5'"),
    (["--ma-window", "0"], "argument --ma-window: must be an integer >= 1"),
    (["--ema-alpha", "1"], "argument --ema-alpha: must be a number in [0, 1)"),
    (["--warmup-steps", "-1"], "argument --warmup-steps: must be an integer >= 0"),
    (["--l2=-1e-4"], "argument --l2: must be a number >= 0"),
    (["--init-scale", "0"], "argument --init-scale: must be a number > 0"),
    (["--n-test", "0"], "argument --n-test: must be an integer >= 1"),
    (["--checkpoint-every", "-1"], "--checkpoint-every: must be an integer >= 0"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2147483647]"),
    (["--task", "sum"], "argument --task: invalid choice: 'sum'"),
    (["--optimizer", "nope"], "argument --optimizer: unknown 'nope'; choose from sgd,"),
    (["--optimizers", "egd,egd"], "argument --optimizer: 'egd' given more than once"),
    (["--optimizer", ","], "argument --optimizer: give at least one of sgd,"),
    # Checks that need the resolved task.
    (["--task", "parity", "--k", "5"], "--task parity --k 5 has no preset: give --n"),
    (["--task", "parity", "--n", "3"], "--k: must be in [1, --n = 3] for parity"),
    (["--task", "parity", "--loss", "cross_entropy"], "--loss: parity (a ±1 target)"),
    (["--task", "mnist", "--n-train", "5000"], "--n-train: must be in [1, 4999]"),
    (["--p", "7", "--batch-size", "512"], "argument --batch-size: must be in [1, 24]"),
    (["--p", "2", "--train-fraction", "0.1"], "--train-fraction: 0.1 leaves no"),
    (["--model", "transformer"], "needs a modular task with --encoding tokens"),
    (["--encoding", "tokens", "--model", "mlp"], "--model mlp needs feature inputs"),
    (["--encoding", "tokens", "--heads", "3"], "--heads: must divide --d-model 128"),
    (["--seed", "2147483647", "--seeds", "2"], "--seed + --seeds - 1 must be <= 2147"),
  ],
)  # fmt: skip
def test_grok_rejects_bad_values(capsys, argv, message):
  line = usage_error(capsys, grok_resolve, argv)
  assert line.startswith("python -m experiments.grok: error: ")
  assert message in line


def test_grok_accepts_the_ends_of_the_ranges():
  args = grok_resolve(
    TINY
    + ["--target-accuracy", "1", "--egd-off-at", "0", "--momentum", "0", "--l2", "0"]
    + ["--train-fraction", "0.999", "--seed", "0", "--checkpoint-every", "0"]
  )
  assert (args.target_accuracy, args.egd_off_at, args.momentum) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("task", ["mod_add", "mod_div", "parity"])
def test_train_size_is_the_data_split(task):
  import jax

  argv = ["--task", task, "--batch-size", "8"] + (
    ["--n-train", "40", "--n-test", "8"]
    if task == "parity"
    else ["--p", "13", "--train-fraction", "0.37"]
  )
  args = grok_resolve(argv)
  data = grok.make_data(args, jax.random.key(0))
  assert grok.train_size(args) == data.x_train.shape[0]


def test_optimizer_and_optimizers_are_one_option(tmp_path):
  for spelling in ("--optimizer", "--optimizers"):
    assert grok_resolve([spelling, "egd, sgd"]).optimizers == ["egd", "sgd"]
    argv = [spelling, "sgd", "--out", str(tmp_path)]
    names = paper_table.parse_args(argv).optimizer_names
    assert names == ["sgd"]


@pytest.mark.parametrize(
  "module, prog",
  [
    (grok, "python -m experiments.grok"),
    (paper_table, "python -m experiments.paper_table"),
    (demo, "python -m experiments.demo"),
  ],
)
def test_help_names_the_module(capsys, module, prog):
  with pytest.raises(SystemExit) as exit_info:
    module.parse_args(["--help"])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out.startswith(f"usage: {prog} ")


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--max-epochs", "0"], "argument --max-epochs: must be an integer >= 1, got '0'"),
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got '0'"),
    (["--tasks", "add-98"], "argument --tasks: unknown 'add-98'; choose from add-79"),
    (["--tasks", ""], "argument --tasks: give at least one of add-79"),
    (["--optimizers", "sgd,nope"], "argument --optimizers: unknown 'nope'"),
    (["--optimizer", "sgd,sgd"], "argument --optimizers: 'sgd' given more than once"),
  ],
)  # fmt: skip
def test_paper_table_rejects_bad_values(capsys, tmp_path, argv, message):
  line = usage_error(capsys, paper_table.parse_args, [*argv, "--out", str(tmp_path)])
  assert line.startswith("python -m experiments.paper_table: error: ")
  assert message in line


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got '0'"),
    (["--p", "4"], "argument --p: must be a prime >= 37, got '4'"),
    (["--p", "31"], "argument --p: must be a prime >= 37, got '31'"),
    (["--lr", "-0.5"], "argument --lr: must be a number > 0, got '-0.5'"),
    (["--max-epochs", "0"], "argument --max-epochs: must be an integer >= 1"),
    (["--seed", "-2"], "argument --seed: must be an integer in [0, 2147483647]"),
  ],
)
def test_demo_rejects_bad_values(capsys, argv, message):
  line = usage_error(capsys, demo.parse_args, argv)
  assert line.startswith("python -m experiments.demo: error: ") and message in line


def _no_training(*args, **kwargs):
  raise AssertionError("trained before checking the options")


def test_unwritable_out_is_refused_before_training(capsys, tmp_path, monkeypatch):
  # A path below a regular file cannot be created, even by root.
  blocker = tmp_path / "file"
  blocker.write_text("")
  monkeypatch.setattr(grok, "run_one", _no_training)
  monkeypatch.setattr(paper_table, "run_record", _no_training)
  for main in (grok.main, paper_table.main):
    argv = ["--checkpoint-every", "0"] if main is grok.main else ["--tasks", "add-79"]
    line = refusal(capsys, main, [*argv, "--out", str(blocker / "out")])
    assert f"error: argument --out: cannot write to {blocker / 'out'}: " in line


def test_plots_cope_with_non_finite_curves(tmp_path):
  nan, inf = math.nan, math.inf
  curves = {
    "train_loss": [nan, nan, nan],
    "test_loss": [None, None, None],  # as results.json stores them
    "train_acc": [0.1, nan, 0.2],
    "test_acc": [inf, 0.5, nan],
    "grad_spectrum": [[nan, nan], [inf, 1.0], [0.0, 0.0]],
  }
  records = [{"optimizer": "sgd", "seed": 0, "epochs": 3, "curves": curves}]
  grok.plot(records, ["sgd"], tmp_path / "curves.png", "diverged")
  grok.plot_spectrum(records, ["sgd"], tmp_path / "spectrum.png", "diverged")
  for name in ("curves.png", "spectrum.png"):
    assert (tmp_path / name).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_a_run_diverged_from_the_first_epoch_still_draws_its_curves(tmp_path):
  # lr 1e30 turns every weight infinite in the first step: NaN losses throughout.
  grok.main(
    TINY
    + ["--optimizer", "sgd", "--lr", "1e30", "--max-epochs", "2", "--spectrum"]
    + ["--checkpoint-every", "0", "--out", str(tmp_path)]
  )
  run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
  assert run["curves"]["train_loss"] == run["curves"]["test_loss"] == [None, None]
  for name in ("curves.png", "spectrum.png"):
    assert (tmp_path / name).read_bytes()[:8] == PNG


# Resume.


def test_resume_without_a_checkpoint_is_refused(capsys, tmp_path, monkeypatch):
  monkeypatch.setattr(grok, "run_one", _no_training)
  line = usage_error(capsys, grok.main, [*TINY, "--out", str(tmp_path), "--resume"])
  assert f"--resume: no checkpoint of these runs in {tmp_path / 'checkpoints'}" in line
  assert "drop --resume to start afresh" in line
  line = usage_error(
    capsys,
    grok.main,
    [*TINY, "--out", str(tmp_path), "--resume", "--checkpoint-every", "0"],
  )
  assert "--resume needs checkpoints: give --checkpoint-every N with N >= 1" in line


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> pathlib.Path:
  """An --out folder with the checkpoint of a 2-epoch egd run (seed 0)."""
  out = tmp_path_factory.mktemp("checkpointed")
  grok.main(
    TINY + ["--optimizer", "egd", "--max-epochs", "2", "--checkpoint-every", "2"]
    + ["--out", str(out)]
  )  # fmt: skip
  return out


def resume(out: pathlib.Path, *extra: str) -> list[str]:
  return [*TINY, "--optimizer", "egd", "--checkpoint-every", "2", "--out", str(out)] + [
    "--resume",
    *extra,
  ]


@pytest.mark.parametrize(
  "extra, named",
  [
    (["--hidden", "8", "--lr", "0.5"], ["--hidden 16 (now 8)", "--lr 0.7 (now 0.5)"]),
    (["--p", "13"], ["--p 11 (now 13)"]),
    (["--task", "mod_mul"], ["--task mod_add (now mod_mul)"]),
    (["--momentum", "0.5"], ["--momentum 0.0 (now 0.5)"]),
    (["--spectrum"], ["--spectrum False (now True)"]),
  ],
)
def test_resume_refuses_other_options(capsys, monkeypatch, checkpointed, extra, named):
  monkeypatch.setattr(grok, "run_one", _no_training)
  line = usage_error(capsys, grok.main, resume(checkpointed, *extra))
  folder = checkpointed / "checkpoints" / "egd-seed0"
  assert f"--resume: {folder} was trained with other options: " in line
  for change in named:
    assert change in line
  assert line.count("(now ") == len(named)


@pytest.mark.slow
def test_resume_continues_and_trains_runs_without_a_checkpoint(capsys, checkpointed):
  out = checkpointed.parent / "continued"
  shutil.copytree(checkpointed, out)
  grok.main(resume(out, "--max-epochs", "3", "--seeds", "2"))
  printed = capsys.readouterr().out
  assert "--resume: no checkpoint of egd seed 1: it trains from epoch 0" in printed
  runs = json.loads((out / "results.json").read_text())["runs"]
  assert [(r["seed"], r["epochs"]) for r in runs] == [(0, 3), (1, 3)]


def _truncate(path: pathlib.Path) -> None:
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


CORRUPTIONS = {
  "history JSON cut short": (
    lambda step: _truncate(step / "result" / "metadata"),
    "2/result is unreadable (JSONDecodeError",
  ),
  "array data cut short": (
    lambda step: [_truncate(f) for f in (step / "arrays").rglob("d/*")],
    "2/arrays is unreadable (",
  ),
  "array metadata cut short": (
    lambda step: _truncate(step / "arrays" / "_METADATA"),
    "2/arrays is unreadable (JSONDecodeError",
  ),
  "arrays deleted": (
    lambda step: shutil.rmtree(step / "arrays"),
    "2 is incomplete: no arrays folder",
  ),
  "configuration missing (an older checkpoint)": (
    lambda step: shutil.rmtree(step / "config"),
    "2 has no stored configuration (written by an older version)",
  ),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_resume_from_a_broken_checkpoint_says_what_to_do(
  capsys, monkeypatch, checkpointed, corruption
):
  damage, message = CORRUPTIONS[corruption]
  out = checkpointed.parent / f"broken-{len(corruption)}"
  shutil.copytree(checkpointed, out)
  folder = out / "checkpoints" / "egd-seed0"
  damage(folder / "2")
  monkeypatch.setattr(grok, "run_one", _no_training)
  line = usage_error(capsys, grok.main, resume(out, "--max-epochs", "4"))
  assert f"--resume: checkpoint {folder}/{message}" in line
  assert line.endswith(
    f"delete {folder} to train this run from epoch 0, "
    "or drop --resume to start every run afresh"
  )


def test_restore_into_another_model_is_a_checkpoint_error(checkpointed):
  import jax

  from experiments import optimizers, train

  args = grok_resolve([*TINY, "--hidden", "8"])
  data = grok.make_data(args, jax.random.key(0))
  model = grok.make_model(args, data, jax.random.key(1))
  tx = optimizers.build("egd", optimizers.OptimizerConfig(), model.first_kernel)
  _, params = train.make_epoch_fn(model, tx, data, grok.train_config(args))
  run = train.Run(params, tx.init(params), train.RunResult(train.History(), 0.0))
  checkpointer = Checkpointer(checkpointed / "checkpoints" / "egd-seed0", 2)
  with pytest.raises(
    CheckpointError,
    match=r"egd-seed0/2/arrays is unreadable or does not fit this run \(ValueError",
  ):
    checkpointer.restore(run)
  checkpointer.close()


def test_config_differences_names_changed_and_one_sided_fields():
  assert config_differences({"a": 1, "b": (1, 2)}, {"a": 1, "b": [1, 2]}) == []
  assert config_differences({"a": 1, "b": 2}, {"a": 1.5, "c": 2}) == ["a", "b", "c"]


def test_argument_types():
  assert _cli.integer(1)("7") == 7 and _cli.number(0, 1)("1") == 1.0
  assert _cli.prime()("13") == 13 and _cli.name_list(" a, ,b ") == ["a", "b"]
  for parse, text in [
    (_cli.integer(0, 3), "4"),
    (_cli.number(0, 1, low_open=True), "0"),
    (_cli.number(), "-inf"),
    (_cli.prime(), "15"),
    (_cli.prime(), "x"),
  ]:
    with pytest.raises(Exception, match=f"must be .*, got '{text}'"):
      parse(text)


@pytest.mark.parametrize(
  "module, argv, message",
  [
    ("grok", ["--seeds", "0"], "argument --seeds: must be an integer >= 1"),
    ("paper_table", ["--max-epochs", "0"], "argument --max-epochs: must be"),
    ("demo", ["--seeds", "0"], "argument --seeds: must be an integer >= 1"),
  ],
)
def test_command_line_errors_without_traceback(module, argv, message):
  done = subprocess.run(
    [sys.executable, "-m", f"experiments.{module}", *argv],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2 and done.stdout == ""
  assert "Traceback" not in done.stderr
  last = done.stderr.splitlines()[-1]
  assert last.startswith(f"python -m experiments.{module}: error: {message}")


# A second run into the same --out (issue 19): refused unless --resume or
# --overwrite; --overwrite deletes the old run's files first.


class _Started(Exception):
  """Raised by a stand-in for training once the checks have passed."""


def _old_run(out: pathlib.Path) -> pathlib.Path:
  (out / "checkpoints" / "egd-seed0" / "2").mkdir(parents=True)
  for name in ("results.json", "curves.png", "spectrum.png"):
    (out / name).write_text("old")
  return out


def test_grok_refuses_an_out_that_holds_a_run(capsys, tmp_path, monkeypatch):
  monkeypatch.setattr(grok, "run_one", _no_training)
  out = _old_run(tmp_path / "run")
  line = refusal(capsys, grok.main, [*TINY, "--out", str(out)])
  assert f"argument --out: {out} already holds a run (" in line
  assert "results.json" in line and "checkpoints" in line
  fix = "give --resume to continue it, --overwrite to replace it, or another --out"
  assert fix in line
  (out / "notes.txt").write_text("mine")
  for extra, message in [
    ([], f"argument --out: {out} is not empty (it has notes.txt"),
    (["--overwrite"], "argument --overwrite: "),
  ]:
    line = refusal(capsys, grok.main, [*TINY, "--out", str(out), *extra])
    assert message in line and "give another --out" in line
  assert (out / "results.json").exists() and (out / "notes.txt").exists()
  argv = [*TINY, "--out", str(out), "--resume", "--overwrite"]
  line = refusal(capsys, grok.main, argv)
  assert "argument --overwrite: not with --resume" in line


def test_grok_overwrite_deletes_the_old_run_before_training(tmp_path, monkeypatch):
  out = _old_run(tmp_path / "run")

  def started(args, name, seed):
    assert sorted(p.name for p in out.iterdir()) == []
    raise _Started

  monkeypatch.setattr(grok, "run_one", started)
  with pytest.raises(_Started):
    grok.main([*TINY, "--out", str(out), "--overwrite", "--checkpoint-every", "0"])


def test_paper_table_refuses_an_out_that_holds_a_table(capsys, tmp_path, monkeypatch):
  out = tmp_path / "table"
  out.mkdir()
  (out / "table.md").write_text("old")
  monkeypatch.setattr(paper_table, "run_record", _no_training)
  line = refusal(capsys, paper_table.main, ["--tasks", "add-79", "--out", str(out)])
  assert f"argument --out: {out} already holds a run (table.md)" in line
  assert "--overwrite to replace it, or another --out" in line

  def started(*args):
    assert not (out / "table.md").exists()
    raise _Started

  monkeypatch.setattr(paper_table, "run_record", started)
  with pytest.raises(_Started):
    paper_table.main(["--tasks", "add-79", "--out", str(out), "--overwrite"])


# Task-dependent defaults and options (issue 19).


def test_batch_size_default_fits_the_training_set():
  assert grok_resolve(["--p", "23"]).batch_size == 264  # 23² // 2 pairs
  assert grok_resolve(["--p", "97"]).batch_size == 512
  small = grok_resolve(["--task", "parity", "--k", "2", "--n-train", "20"])
  assert small.batch_size == 20
  assert grok_resolve(["--task", "parity", "--k", "2"]).batch_size == 32


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--p", "23", "--batch-size", "300"], "--batch-size: must be in [1, 264]"),
    (["--task", "parity", "--p", "97"], "argument --p: --task parity does not use it"),
    (["--task", "parity", "--train-fraction", "0.3"], "--train-fraction: --task pa"),
    (["--task", "mnist", "--encoding", "tokens"], "argument --encoding: --task mnist"),
    (["--n-test", "50"], "argument --n-test: --task mod_add does not use it"),
    (["--k", "3"], "argument --k: --task mod_add does not use it"),
    (["--task", "mnist", "--hidden", "8"], "argument --hidden: --model omnigrok does"),
    (["--layers", "3"], "argument --layers: --model mlp does not use it"),
    (["--width", "64"], "argument --width: --model mlp does not use it"),
  ],
)  # fmt: skip
def test_grok_rejects_options_the_task_does_not_use(capsys, argv, message):
  assert message in usage_error(capsys, grok_resolve, argv)


def test_grok_help_shows_the_defaults(capsys):
  parser = grok.build_parser()
  parser.formatter_class = lambda prog: grok.argparse.HelpFormatter(
    prog, width=10**4, max_help_position=100
  )  # one line per option
  lines = parser.format_help().splitlines()
  for option, default in [
    ("--p P", "default 97"),
    ("--batch-size BATCH_SIZE", "default: the task's"),
    ("--max-epochs MAX_EPOCHS", "default 2000"),
    ("--seed SEED", "default 0"),
    ("--out OUT", "default runs/grok"),
    ("--train-fraction TRAIN_FRACTION", "default 0.5"),
    ("--n-test N_TEST", "default 10000"),
  ]:
    line = next(line for line in lines if line.strip().startswith(option + " "))
    assert default in line, line


def test_grok_help_does_not_import_jax():
  code = (
    "import sys\nfrom experiments import grok\n"
    "try:\n  grok.main(['--help'])\nexcept SystemExit:\n  pass\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & "
    "{'jax', 'flax', 'optax', 'optax_egd', 'matplotlib', 'orbax', 'tqdm'}))"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.stdout.startswith("usage: python -m experiments.grok"), done.stderr
  assert done.stdout.splitlines()[-1] == "[]", done.stdout.splitlines()[-1]


# Plots and records (issue 19).


def test_curves_have_fixed_accuracy_axes_a_target_line_and_the_task_in_the_title(
  tmp_path,
):
  curves = {"train_loss": [2.0, 1.0], "test_loss": [3.0, 3.1],
            "train_acc": [0.5, 0.9], "test_acc": [0.001, 0.0075]}  # fmt: skip
  records = [{"optimizer": "sgd", "seed": 0, "epochs": 2, "curves": curves}]
  args = grok_resolve(TINY)
  fig = grok.plot(records, ["sgd"], tmp_path / "curves.png", grok.plot_title(args),
                  target=0.95)  # fmt: skip
  train_acc, test_acc = fig.axes[0], fig.axes[1]
  for ax in (train_acc, test_acc):
    low, high = ax.get_ylim()
    assert low == 0 and 1 <= high <= 1.05
    targets = [line for line in ax.get_lines() if line.get_label() == "target 95%"]
    assert targets and set(targets[0].get_ydata()) == {0.95}
  title = fig._suptitle.get_text()
  assert "mod 11" in title and "p = 11" in title and "50% train" in title, title
  parity = grok.plot_title(grok_resolve(["--task", "parity", "--k", "3"]))
  assert "n = 100" in parity and "k = 3" in parity and "2000 train" in parity, parity
  assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


def _result(egd_enabled):
  from experiments.train import History, RunResult

  n = len(egd_enabled)
  history = History(train_loss=[1.0] * n, train_acc=[0.5] * n, test_loss=[1.0] * n,
                    test_acc=[0.1] * n, seconds=[0.1] * n,
                    egd_enabled=egd_enabled)  # fmt: skip
  return RunResult(history, compile_seconds=1.0, steps_per_epoch=3)


def test_results_record_only_what_the_optimizers_read_and_no_plumbing():
  sgd = grok.results_config(grok_resolve([*TINY, "--optimizer", "sgd"]))
  assert sgd["lr"] == 0.7 and sgd["optimizers"] == ["sgd"]
  assert not {"adam_lr", "b1", "b2", "rank", "ema_alpha", "muon_lr", "weight_decay",
              "polar_method"} & set(sgd)  # fmt: skip
  assert not {"overwrite", "resume", "no_progress", "optimizer"} & set(sgd)
  both = grok.results_config(grok_resolve([*TINY, "--optimizer", "sgd,adamw"]))
  assert {"lr", "adam_lr", "b1", "b2"} <= set(both) and "rank" not in both
  # Per optimizer, what it ran with (each optimizer's own momentum).
  args = grok_resolve([*TINY, "--optimizer", "egdm,sgd"])
  assert grok.knobs(args, "egdm")["momentum"] == 0.95
  assert grok.knobs(args, "sgd") == {"lr": 0.7, "momentum": 0.0, "warmup_steps": 0}
  config = grok.run_config(args, "sgd", 0)
  assert config["momentum"] == 0.0 and "weight_decay" not in config


def test_provenance_names_what_ran():
  from experiments._machine import provenance

  record = provenance("experiments.grok", ["--p", "11", "--lr", "0.5"])
  assert record["command"] == "python -m experiments.grok --p 11 --lr 0.5"
  assert record["argv"] == ["--p", "11", "--lr", "0.5"]
  assert record["date"].endswith("+00:00")
  versions = record["versions"]
  import jax
  import optax

  import optax_egd

  assert versions["jax"] == jax.__version__ and versions["optax"] == optax.__version__
  assert versions["optax-egd"] == optax_egd.__version__
  head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                        capture_output=True, text=True)  # fmt: skip
  if head.returncode == 0:
    assert record["commit"]["id"] == head.stdout.strip()
  assert {"cpu", "cpus", "backend", "blas_threads"} <= set(record["machine"])


def test_results_record_only_the_fields_that_apply():
  muon = grok.run_record("muon", 0, _result([None, None]))
  assert "egd_enabled" not in muon["curves"] and "egd_off_epoch" not in muon
  assert "grad_spectrum" not in muon["curves"]  # no --spectrum
  egd = grok.run_record("egd", 0, _result([True, False]))
  assert egd["curves"]["egd_enabled"] == [True, False] and "egd_off_epoch" in egd
  mod_add = grok.results_config(grok_resolve(TINY))
  assert mod_add["p"] == 11 and mod_add["train_fraction"] == 0.5
  assert not {"n", "k", "n_train", "n_test", "layers", "depth", "width"} & set(mod_add)
  parity = grok.results_config(grok_resolve(["--task", "parity", "--k", "3"]))
  assert parity["n_test"] == 10000 and parity["n"] == 100
  assert not {"p", "train_fraction", "encoding"} & set(parity)


# Optimizer options (issue 29, item 4; issue 28): each optimizer reads the
# options optimizer_names.KNOBS declares; any other is refused, and an explicit
# value is used as given (0 included).


def test_every_optimizer_declares_the_options_it_reads():
  from experiments import optimizer_names

  assert set(optimizer_names.KNOBS) == set(optimizer_names.NAMES)
  options = set(grok.KNOB_OPTIONS)
  for name, knobs in optimizer_names.KNOBS.items():
    assert set(knobs) <= options and len(set(knobs)) == len(knobs), name


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--optimizer", "adamw", "--lr", "5.6"],
     "argument --lr: --optimizer adamw does not read it (adamw reads --adam-lr, "),
    (["--optimizer", "sgd", "--adam-lr", "0.1"], "argument --adam-lr: --optimizer sgd"),
    (["--optimizer", "egd,sgd", "--rank", "4"],
     "argument --rank: --optimizer egd,sgd do not read it (egd reads --polar-method"),
    (["--optimizer", "muon", "--momentum", "0.5"], "argument --momentum: --optimizer"),
    (["--optimizer", "egd", "--weight-decay", "0.1"], "argument --weight-decay: --opt"),
    (["--optimizer", "sgd", "--polar-method", "svd"], "argument --polar-method: --opt"),
    (["--optimizer", "egd-rsvd", "--polar-method", "svd"], "argument --polar-method"),
    (["--optimizer", "column-norm", "--ema-alpha", "0.5"], "argument --ema-alpha: --"),
    (["--weight-decay", "-1"], "argument --weight-decay: must be a number >= 0"),
  ],
)  # fmt: skip
def test_grok_refuses_an_option_no_chosen_optimizer_reads(capsys, argv, message):
  line = usage_error(capsys, grok_resolve, argv)
  assert message in line, line


def test_grok_accepts_an_option_one_of_the_optimizers_reads():
  args = grok_resolve(["--optimizer", "adamw,egd-rsvd", "--rank", "4", "--lr", "0.5"])
  assert (args.rank, args.lr) == (4, 0.5)
  assert grok.knobs(args, "egd-rsvd")["rank"] == 4 and "rank" not in grok.knobs(
    args, "adamw"
  )


def test_refusals_run_without_a_traceback_in_a_subprocess():
  done = subprocess.run(
    [sys.executable, "-m", "experiments.grok", "--optimizer", "adamw", "--lr", "5.6"],
    cwd=ROOT, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert done.stderr.splitlines()[-1].startswith(
    "python -m experiments.grok: error: argument --lr: --optimizer adamw does not"
  )


@pytest.mark.parametrize("name", ["egdm", "momentum-egd", "momentum-egd-first-layer"])
def test_momentum_zero_is_no_momentum(name):
  """Momentum 0 runs without momentum: the second update is the one a fresh
  optimizer makes from the second gradient alone (issue 28: it ran egdm's
  0.95, momentum-egd's 0.9)."""
  import jax
  import jax.numpy as jnp

  from experiments import optimizers

  path = ("dense", "kernel")
  tx = optimizers.build(name, optimizers.OptimizerConfig(momentum=0.0), path)
  params = {"dense": {"kernel": jnp.zeros((4, 3))}}
  g1, g2 = (
    {"dense": {"kernel": jax.random.normal(jax.random.key(i), (4, 3))}} for i in (1, 2)
  )
  _, state = tx.update(g1, tx.init(params), params)
  second, _ = tx.update(g2, state, params)
  alone, _ = tx.update(g2, tx.init(params), params)
  assert jnp.allclose(second["dense"]["kernel"], alone["dense"]["kernel"], atol=1e-6)


@pytest.mark.parametrize("name", ["egdm", "momentum-egd", "sgd", "egd"])
def test_momentum_option_reaches_the_optimizer(name):
  """``--momentum 0`` is 0 in the optimizer's configuration; unset, each
  optimizer takes its own default."""
  args = grok_resolve(["--optimizer", name, "--momentum", "0"])
  assert grok.optimizer_config(args, 0).momentum == 0
  assert grok.knobs(args, name)["momentum"] == 0
  default = grok.knobs(grok_resolve(["--optimizer", name]), name)["momentum"]
  assert default == {"egdm": 0.95, "momentum-egd": 0.9}.get(name, 0.0)


def test_grok_help_shows_each_optimizers_own_default(capsys):
  parser = grok.build_parser()
  parser.formatter_class = lambda prog: grok.argparse.HelpFormatter(
    prog, width=10**4, max_help_position=100
  )  # one line per option
  lines = parser.format_help().splitlines()
  line = next(line for line in lines if line.strip().startswith("--momentum "))
  assert (
    "default 0.0 (egdm, egdm-kernels 0.95; momentum-egd, momentum-egd-first-layer 0.9)"
    in line
  )
  line = next(line for line in lines if line.strip().startswith("--muon-lr "))
  assert "default 0.02" in line and line.endswith("read by muon"), line


def test_resume_ignores_what_older_checkpoints_stored_of_unread_options(
  capsys, monkeypatch, checkpointed
):
  """Checkpoints of earlier versions stored every optimizer option and the
  command's plumbing: those that egd does not read do not block --resume; a
  changed option it reads still does."""
  args = grok_resolve(resume(checkpointed))
  current = grok.run_config(args, "egd", 0)
  older = current | {"adam_lr": 0.001, "rank": 128, "b2": 0.98, "no_progress": True}
  monkeypatch.setattr(Checkpointer, "check", lambda self: older)
  grok.check_resume(args)  # no usage error
  assert "--resume: no checkpoint" not in capsys.readouterr().out
  monkeypatch.setattr(Checkpointer, "check", lambda self: older | {"lr": 0.5})
  line = usage_error(capsys, grok.check_resume, args)
  assert "--lr 0.5 (now 0.7)" in line and "--adam-lr" not in line, line


def test_grok_stop_rule_stable_records_stable_grokking(tmp_path):
  """`--stop-rule stable` goes on past the first epoch at the target until
  it has held through 2·s, and results.json says where stable grokking began
  (EGD on the paper's task: about 12 epochs, seconds)."""
  out = tmp_path / "run"
  grok.main(["--out", str(out), "--optimizer", "egd", "--max-epochs", "40",
             "--stop-rule", "stable", "--no-progress"])  # fmt: skip
  run = json.loads((out / "results.json").read_text())["runs"][0]
  s = run["stable_epochs_to_target"]
  assert run["epochs_to_target"] is not None and s is not None
  assert run["epochs"] == min(2 * s, 40) > run["epochs_to_target"]
  assert all(acc >= 0.95 for acc in run["curves"]["test_acc"][s - 1 :])
  assert run["fell_back"] == any(
    acc < 0.95 for acc in run["curves"]["test_acc"][run["epochs_to_target"] :]
  )
  assert run["stable_steps_to_target"] == s * run["steps_per_epoch"]
