"""``notebooks/egd_colab.ipynb``: runs top to bottom (short mode, CPU kernel),
ships its outputs, and its install cell stops with a one-line instruction when
it cannot install the package."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "egd_colab.ipynb"


@pytest.mark.full  # ~20-30 s: a kernel runs the whole notebook
def test_notebook_runs(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("EGD_NOTEBOOK_SMALL", "1")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(ROOT)}}).execute()
  text = "\n".join(
      out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
      for out in cell.get("outputs", []) if out.get("output_type") == "stream")
  assert "backend:" in text
  assert "EGD:" in text and "SGD:" in text
  assert "enabled: False" in text
  images = [out for cell in nb.cells for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]
  assert images, "the accuracy plot is missing"
  # The NNX model learns within the short run (test accuracy from ~0.01).
  last = [line for line in text.splitlines() if line.startswith("step ")][-1]
  assert float(last.rsplit(" ", 1)[-1]) > 0.5, last
  # Adam's moments, then EGD, keep the update's singular values equal.
  ratio = next(line for line in text.splitlines()
               if line.startswith("Adam → EGD"))
  assert float(ratio.rsplit("= ", 1)[-1]) < 1.05, ratio


def test_notebook_ships_outputs_of_a_full_run() -> None:
  """The docs render the notebook without executing it."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert all(cell.outputs for cell in code[1:]), "run the notebook and save it"
  outputs = [out for cell in code for out in cell.outputs]
  assert not [out for out in outputs if out.get("output_type") == "error"]
  text = "".join(out.get("text", "") for out in outputs)
  assert "epoch cap: 20\n" not in text, "stored outputs are from the short mode"


def _install_cell() -> str:
  nb = nbformat.read(NOTEBOOK, as_version=4)
  return next(cell.source for cell in nb.cells
              if cell.cell_type == "code" and "OPTAX_EGD_SOURCE" in cell.source)


# Makes the kernel a fresh Colab: optax_egd is not importable (the editable
# install's finder and every checkout on the path are hidden), the working
# directory is not inside a checkout, and pip has no index (nothing to fetch).
_FRESH_COLAB = r"""
import importlib.util, os, pathlib, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path
               if not (pathlib.Path(p or ".") / "optax_egd").is_dir()]
assert importlib.util.find_spec("optax_egd") is None, "optax_egd still importable"
os.environ.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
"""

# A host under .invalid never resolves (RFC 2606).
BAD_GIT = "git+https://nonexistent.invalid/optax-egd/optax-egd"


def test_install_cell_under_a_kernel_says_why_pip_failed(tmp_path: Path) -> None:
  """The install cell under a real Jupyter kernel (ipykernel sets FORCE_COLOR, so
  pip colours its lines): for each bad source, one line that names the cause and
  advice that does not send the user back to the source that failed."""
  wheel = str(tmp_path / "optax_egd-0.0.0-py3-none-any.whl")
  sources = [BAD_GIT, wheel, ""]
  cell = _install_cell()
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(_FRESH_COLAB)] + [
      nbformat.v4.new_code_cell(f"os.environ['OPTAX_EGD_SOURCE'] = {source!r}\n" + cell)
      for source in sources])
  nbclient.NotebookClient(
      nb, timeout=120, kernel_name="python3", allow_errors=True,
      resources={"metadata": {"path": str(tmp_path)}}).execute()
  assert not nb.cells[0].outputs, nb.cells[0].outputs
  messages = {}
  for source, cell_run in zip(sources, nb.cells[1:], strict=True):
    errors = [out for out in cell_run.outputs if out.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "InstallError", cell_run.outputs
    assert errors[0].traceback == [f"InstallError: {errors[0].evalue}"]
    messages[source] = message = errors[0].evalue
    assert "\x1b" not in message and "\n" not in message, repr(message)
    assert "OPTAX_EGD_SOURCE" in message, message
  git, missing, empty = (messages[s] for s in sources)
  # The cause, as git and pip say it, and advice that is not "use that URL".
  assert "Could not resolve host: nonexistent.invalid" in git, git
  assert "originates from a subprocess" not in git, git
  assert git.count(BAD_GIT) == 1 and "upload an optax_egd wheel" in git, git
  assert "No such file or directory" in missing, missing
  advice = missing.split("No such file or directory", 1)[1]
  assert "git+https://github.com/optax-egd/optax-egd" in advice, missing
  assert "OPTAX_EGD_SOURCE is empty" in empty, empty


def _run_install_cell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      source: str | None) -> tuple[list[list[str]], dict]:
  """Runs the install cell here, optax-egd installed (as in this environment),
  outside a checkout, with pip stubbed: the pip commands it would run, and
  its namespace."""
  import importlib.util
  import subprocess

  assert importlib.util.find_spec("optax_egd") is not None
  monkeypatch.chdir(tmp_path)
  if source is None:
    monkeypatch.delenv("OPTAX_EGD_SOURCE", raising=False)
  else:
    monkeypatch.setenv("OPTAX_EGD_SOURCE", source)
  calls: list[list[str]] = []

  def run(command, **kwargs):
    assert command[1:4] == ["-m", "pip", "install"], command
    calls.append(command[4:])
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(subprocess, "run", run)
  namespace: dict = {}
  exec(compile(_install_cell(), "install cell", "exec"), namespace)
  return calls, namespace


def test_install_cell_installs_a_chosen_source_over_an_installed_optax_egd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]) -> None:
  """OPTAX_EGD_SOURCE pointing at a new wheel replaces the installed package
  (it was ignored once optax-egd was installed); the default source leaves it."""
  wheel = str(tmp_path / "optax_egd-0.1.0-py3-none-any.whl")
  calls, _ = _run_install_cell(monkeypatch, tmp_path, wheel)
  assert ["-q", "--force-reinstall", "--no-deps", wheel] in calls, calls
  assert "installing optax-egd from " + wheel + " over it" in capsys.readouterr().out
  calls, _ = _run_install_cell(monkeypatch, tmp_path, None)
  assert calls == [] and capsys.readouterr().out == ""


def test_install_cell_advice_for_a_package_index_requirement(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
  """A requirement such as "optax-egd==0.1.0" is not a missing file."""
  _, cell = _run_install_cell(monkeypatch, tmp_path, None)
  cause = "No matching distribution found for optax-egd==0.1.0"
  advice = cell["advice"]("optax-egd==0.1.0", cause)
  assert "no such file" not in advice.lower(), advice
  assert "not on PyPI" in advice and cell["REPOSITORY"] in advice, advice
  missing = cell["advice"](str(tmp_path / "optax_egd-0.1.0-py3-none-any.whl"), "")
  assert "There is no such file here" in missing, missing
