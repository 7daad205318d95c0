"""``notebooks/egd_colab.ipynb``: runs top to bottom (short mode, CPU kernel),
ships its outputs, and its install cell stops with a one-line instruction when
it cannot install the package."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "egd_colab.ipynb"


@pytest.mark.slow
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


# Runs the install cell in IPython as a fresh Colab would: optax_egd is not
# importable (the editable install's finder and the checkout are off the
# path) and the working directory is not inside a checkout.
_FRESH_COLAB = r"""
import pathlib, sys
root = pathlib.Path(sys.argv[1]).resolve()
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != root]
import importlib.util
assert importlib.util.find_spec("optax_egd") is None, "optax_egd still importable"
from IPython.core.interactiveshell import InteractiveShell
result = InteractiveShell.instance().run_cell(sys.stdin.read())
print("CELL", "succeeded" if result.success else "failed")
"""


def _install_cell() -> str:
  nb = nbformat.read(NOTEBOOK, as_version=4)
  return next(cell.source for cell in nb.cells
              if cell.cell_type == "code" and "OPTAX_EGD_SOURCE" in cell.source)


@pytest.mark.parametrize("source,reason", [
    ("{tmp}/optax_egd-0.0.0-py3-none-any.whl", "pip could not install optax-egd"),
    ("", "OPTAX_EGD_SOURCE is empty"),
])
def test_install_cell_fails_with_one_line(tmp_path: Path, source: str,
                                          reason: str) -> None:
  env = dict(os.environ, OPTAX_EGD_SOURCE=source.format(tmp=tmp_path),
             PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
  env.pop("PYTHONPATH", None)
  done = subprocess.run(
      [sys.executable, "-c", _FRESH_COLAB, str(ROOT)], input=_install_cell(),
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  output = done.stdout + done.stderr
  assert "CELL failed" in output, output
  assert "Traceback" not in output and "CalledProcessError" not in output, output
  errors = [line for line in output.splitlines() if "InstallError" in line]
  assert len(errors) == 1 and reason in errors[0], output
  assert "OPTAX_EGD_SOURCE" in errors[0], output
