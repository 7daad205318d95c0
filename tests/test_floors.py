"""The declared dependency floors stay in step with what `make test-floor` tests.

pyproject.toml declares the lowest supported versions (``name>=x``);
ci/floor-constraints.txt pins exactly those (``name==x``) for the floor venv.
These tests fail when the two drift apart, and, inside the floor venv (the
Makefile sets ``OPTAX_EGD_FLOOR=1``), when what is installed is not the floor.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
import re
import sys
import tomllib

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "ci" / "floor-constraints.txt"
# jax pins its jaxlib exactly (jax 0.7.1 needs jaxlib==0.7.1), so jaxlib's
# floor is jax's and pyproject.toml does not name it.
FOLLOWS_JAX = "jaxlib"


def _name(name: str) -> str:
  """PEP 503 normalized distribution name."""
  return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)


def declared_floors(pyproject: dict) -> dict[str, str]:
  """``{name: version}`` of every ``name>=version`` the package and its
  ``experiments`` extra (what the floor venv installs) declare."""
  project = pyproject["project"]
  requirements = [*project["dependencies"],
                  *project["optional-dependencies"]["experiments"]]
  floors = {}
  for req in requirements:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", req)
    assert m, req
    name, spec = _name(m.group(1)), m.group(3).split(";")[0]
    lower = re.search(r">=\s*([0-9][^,\s]*)", spec)
    if lower:
      floors[name] = lower.group(1)
  return floors


def pinned(text: str) -> dict[str, str]:
  """``{name: version}`` of the ``name==version`` lines of a constraints file."""
  pins = {}
  for line in text.splitlines():
    line = line.split("#")[0].strip()
    if not line:
      continue
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([0-9][^\s;]*)", line)
    assert m, f"{CONSTRAINTS.name}: not a name==version pin: {line!r}"
    pins[_name(m.group(1))] = m.group(2)
  return pins


def python_floor(pyproject: dict) -> tuple[int, int]:
  m = re.fullmatch(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"])
  assert m, pyproject["project"]["requires-python"]
  return 3, int(m.group(1))


def test_constraints_pin_exactly_the_declared_floors():
  floors = declared_floors(_pyproject())
  pins = pinned(CONSTRAINTS.read_text())
  # The floors the issue found wrong must stay declared (and so tested).
  assert {"jax", "optax", "chex", "flax", "orbax-checkpoint"} <= floors.keys()
  expected = {**floors, FOLLOWS_JAX: floors["jax"]}
  assert pins == expected, (
    f"{CONSTRAINTS.relative_to(ROOT)} must pin each floor pyproject.toml declares "
    f"(and jaxlib at jax's): pinned {pins}, declared {expected}"
  )


def test_drift_is_caught():
  """The parsers see a changed floor and an unpinned one (the check can fail)."""
  pyproject = _pyproject()
  deps = pyproject["project"]["dependencies"]
  deps[:] = [("jax>=0.8.0" if d.startswith("jax>=") else d) for d in deps]
  pyproject["project"]["optional-dependencies"]["experiments"].append("rich>=13")
  floors = declared_floors(pyproject)
  assert floors["jax"] == "0.8.0" and floors["rich"] == "13"
  pins = pinned(CONSTRAINTS.read_text())
  assert pins["jax"] != floors["jax"] and "rich" not in pins
  with pytest.raises(AssertionError, match="not a name==version pin"):
    pinned("jax>=0.7.1\n")


def test_python_floor_is_the_same_everywhere():
  pyproject = _pyproject()
  major, minor = python_floor(pyproject)
  assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
  assert pyproject["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
  makefile = (ROOT / "Makefile").read_text()
  m = re.search(r"^FLOOR_PYTHON \?= (\S+)", makefile, re.MULTILINE)
  assert m, "Makefile: no FLOOR_PYTHON"
  assert m.group(1) == f"python{major}.{minor}"


@pytest.mark.skipif(
  os.environ.get("OPTAX_EGD_FLOOR") != "1",
  reason="checks the floor venv: runs under `make test-floor`",
)
def test_floor_venv_has_the_floors():
  pins = pinned(CONSTRAINTS.read_text())
  installed = {name: importlib.metadata.version(name) for name in pins}
  assert installed == pins
  assert sys.version_info[:2] == python_floor(_pyproject())
