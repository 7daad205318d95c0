"""``notebooks/egd_colab.ipynb`` runs top to bottom (short mode, CPU kernel)."""

from __future__ import annotations

from pathlib import Path

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
