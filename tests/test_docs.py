"""The documentation and the release files: API coverage, citation, license, metadata.

``make docs`` (run by ``make test`` before pytest) builds the site with warnings as
errors; these tests check what the build cannot: that every public name is in the
API reference, and that the release files say what they must.
"""

from __future__ import annotations

import pathlib
import re

import pytest

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency.
  import tomli as tomllib

import optax_egd

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAPER_TITLE = "Egalitarian Gradient Descent: A Simple Approach to Accelerated Grokking"
OPENREVIEW = "https://openreview.net/forum?id=wCnHeql3ow"
# Directives that put a Python object into the API reference.
_API_DIRECTIVE = re.compile(
    r"^\.\. (?:autofunction|autoclass|autodata|py:function|py:class|py:data)::"
    r"\s+optax_egd\.(\w+)(?![.\w])", re.MULTILINE)  # not optax_egd.polar.X


def _pyproject() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_api_page_documents_every_public_name():
  documented = _API_DIRECTIVE.findall((DOCS / "api.md").read_text())
  assert sorted(documented) == sorted(set(documented)), "documented twice"
  assert set(documented) == set(optax_egd.__all__)


def test_built_site_has_every_public_name_and_the_notebook():
  """Checks the HTML that ``make docs`` built (``make test`` builds it first)."""
  html = DOCS / "_build" / "html"
  if not (html / "objects.inv").exists():
    pytest.skip("docs not built: run `make docs` (make test does)")
  inventory = pytest.importorskip("sphinx.util.inventory")
  inv = inventory.InventoryFile.loads((html / "objects.inv").read_bytes(), uri="")
  names = {name for kind, objects in inv.data.items() if kind.startswith("py:")
           for name in objects}
  missing = {f"optax_egd.{n}" for n in optax_egd.__all__} - names
  assert not missing
  api = (html / "api.html").read_text()
  for name in optax_egd.__all__:
    assert f'id="optax_egd.{name}"' in api, name
  assert (html / "notebooks" / "egd_colab.html").exists()


def test_docs_render_the_repository_notebook_without_running_it():
  page = DOCS / "notebooks" / "egd_colab.ipynb"
  assert page.resolve() == (ROOT / "notebooks" / "egd_colab.ipynb").resolve() or (
      page.read_bytes() == (ROOT / "notebooks" / "egd_colab.ipynb").read_bytes())
  conf = (DOCS / "conf.py").read_text()
  assert re.search(r'^nb_execution_mode = "off"$', conf, re.MULTILINE)


def test_citation_cff_cites_the_paper_and_this_software():
  yaml = pytest.importorskip("yaml")
  cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  assert cff["cff-version"] == "1.2.0"
  assert cff["type"] == "software"
  assert str(cff["version"]) == optax_egd.__version__
  assert cff["license"] == "Apache-2.0"
  paper = cff["preferred-citation"]
  assert paper["title"] == PAPER_TITLE
  assert paper["url"] == OPENREVIEW
  assert paper["year"] == 2026 and "ICLR 2026" in paper["conference"]["name"]
  assert all(a.get("family-names") for a in paper["authors"])
  official = [r for r in cff.get("references", []) if "asahebpa/Egalitarian-Gradient"
              "-Descent" in r.get("repository-code", "")]
  assert official


def test_license_is_the_apache_2_text_the_metadata_declares():
  text = (ROOT / "LICENSE").read_text()
  assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
  assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
  assert "9. Accepting Warranty or Additional Liability." in text
  project = _pyproject()["project"]
  assert project["license"] == "Apache-2.0"
  assert project["license-files"] == ["LICENSE"]


def test_pyproject_metadata_for_a_release():
  project = _pyproject()["project"]
  assert project["version"] == optax_egd.__version__
  assert project["authors"] and project["keywords"] and project["classifiers"]
  urls = project["urls"]
  for key in ("Homepage", "Documentation", "Issues", "Changelog"):
    assert urls[key].startswith("https://"), key
  docs = project["optional-dependencies"]["docs"]
  names = {re.split(r"[=<>!~]", req)[0] for req in docs}
  assert {"sphinx", "myst-parser", "myst-nb", "build", "twine"} <= names
  assert all("==" in req for req in docs), "docs tools are pinned"


def test_changelog_has_unreleased_and_the_current_version():
  text = (ROOT / "CHANGELOG.md").read_text()
  assert "## [Unreleased]" in text
  assert f"## [{optax_egd.__version__}] - " in text


def test_readthedocs_config_builds_this_sphinx_project():
  yaml = pytest.importorskip("yaml")
  rtd = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text())
  assert rtd["version"] == 2
  assert rtd["build"]["tools"]["python"] == "3.11"
  assert (ROOT / rtd["sphinx"]["configuration"]).exists()
  install = rtd["python"]["install"][0]
  assert install["path"] == "." and "docs" in install["extra_requirements"]


def test_readme_names_the_paper_and_keeps_the_two_commands_first():
  text = (ROOT / "README.md").read_text()
  head = "\n".join(text.splitlines()[:8])
  assert PAPER_TITLE in head and OPENREVIEW in head
  assert "asahebpa/Egalitarian-Gradient-Descent" in head
  first_block = text.split("```")[1]
  assert "make demo" in first_block and "make test" in first_block


def _python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", page.read_text(),
                    re.MULTILINE | re.DOTALL)


_PAGES_WITH_CODE = sorted(p for p in DOCS.rglob("*.md")
                          if "_build" not in p.parts and _python_blocks(p))


# What a page's examples must print: the lines its text promises the reader.
_EXPECTED_OUTPUT = {
    # A complete training run: test accuracy per epoch, grokking within 20 epochs.
    "getting_started.md": [
        r"^epoch  1: train accuracy \d\.\d{3}, test accuracy \d\.\d{3}$",
        r"^grokked: test accuracy >= 95% after ([1-9]|1\d|20) epochs$"],
    # dimension_numbers on a Flax NNX and a linen CNN, egdm on a scanned NNX model.
    # flax_dimension_numbers on a scanned NNX transformer: egdm, one matrix a layer.
    "guide/egd.md": [r"^\[0\.1 0\.1 0\.1 0\.1 0\.1 0\.1 0\.1 0\.1\]$",
                     r"^MuonDimensionNumbers\(reduction_axis=-3,"
                     r" output_axis=\(-2, -1\)\)$",
                     r"^optax_egd\.NOT_A_MATRIX$", r"^\[0\.02 0\.02 0\.02\]$",
                     r"^MuonDimensionNumbers\(reduction_axis=\(-4, -3, -2\),"
                     r" output_axis=-1\)$",
                     r"^\[1\. 1\. 1\. 1\. 1\. 1\. 1\. 1\.\]$",
                     r"take AdamW, not EGD: \['blocks'\]\['linear'\]\['kernel'\]",
                     r"^\[0\.02 0\.02 0\.02 0\.02\]$"],
}


def test_every_page_with_expected_output_exists():
  pages = {p.relative_to(DOCS).as_posix() for p in _PAGES_WITH_CODE}
  assert set(_EXPECTED_OUTPUT) <= pages


# The first line of a block that needs the blocks above it on its page (the
# reader sees it too). Every other block runs on its own, as a reader who
# pastes just that block runs it.
CONTINUES = "# Continues the example above."


def test_a_block_that_uses_an_earlier_name_must_say_it_continues():
  """The check below is real: an unmarked block that needs an earlier one fails."""
  page = "```python\nx = 1\n```\n\n```python\nprint(x)\n```\n"
  with pytest.raises(NameError):
    _run_blocks(re.findall(r"^```python\n(.*?)^```", page, re.MULTILINE | re.DOTALL),
                "page")
  _run_blocks(["x = 1\n", f"{CONTINUES}\nassert x == 1\n"], "page")


def _run_blocks(blocks: list[str], name: str) -> None:
  namespace: dict = {}
  for block in blocks:
    if not block.startswith(CONTINUES + "\n"):
      namespace = {"__name__": f"docs_{name}"}
    exec(compile(block, name, "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("page", _PAGES_WITH_CODE,
                         ids=[p.relative_to(DOCS).as_posix() for p in _PAGES_WITH_CODE])
def test_python_examples_in_the_docs_run(page: pathlib.Path, capsys):
  """Every ```python block of a docs page runs, in order, on its own (or after
  the blocks above it, where its first line says it continues them), and the
  page prints what it says it prints."""
  if page.name == "lapack_deadlock.md":
    # Its block is the jaxlib CPU deadlock reproduction: it may hang by design
    # (tools/lapack_deadlock_repro.py runs it with a deadline).
    pytest.skip("the deadlock reproduction may hang by design")
  _run_blocks(_python_blocks(page), str(page))
  printed = capsys.readouterr().out
  for pattern in _EXPECTED_OUTPUT.get(page.relative_to(DOCS).as_posix(), []):
    assert re.search(pattern, printed, re.MULTILINE), (pattern, printed)


@pytest.mark.parametrize("page", ["README.md", "docs/getting_started.md"])
def test_install_docs_say_the_experiments_need_a_clone(page: str) -> None:
  """The wheel ships `optax_egd` only (pyproject's package list), so where the
  install docs describe the `experiments` extra they say that `python -m
  experiments.…` needs a clone (issue 29: the extra installs Flax and the rest,
  then `python -m experiments.grok` fails outside a clone)."""
  packages = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
  assert packages == ["optax_egd*"], packages
  text = " ".join((ROOT / page).read_text().split())
  extra = text.index('pip install "optax-egd[experiments]"')
  paragraph = text[extra:extra + 400]
  assert "the wheel holds the `optax_egd` library alone" in paragraph, paragraph
  assert "`python -m experiments.…`" in paragraph, paragraph
  assert "need a clone of the repository" in paragraph, paragraph


def test_no_file_names_the_grokking_runs_former_benchmark_commands() -> None:
  """Time to grok and the equivalence sweep run as ``python -m experiments.
  time_to_grok`` / ``experiments.equivalence``; no page, script or Makefile
  may still give their former ``benchmarks`` commands or result files."""
  old = re.compile(r"benchmarks(\.|/results/)(grok|equivalence)\b")
  files = [ROOT / "Makefile", *ROOT.glob("*.md")] + [
      p for folder in ("docs", "experiments", "benchmarks", "tools", "tests",
                       "ci", "examples", "notebooks")
      for p in (ROOT / folder).rglob("*")
      if p.suffix in (".md", ".py", ".ipynb", ".txt")
      and "_build" not in p.parts and p.name != "test_docs.py"]
  found = [f"{p.relative_to(ROOT)}:{n}"
           for p in files for n, line in enumerate(
               p.read_text(encoding="utf-8").splitlines(), 1)
           if old.search(line)]
  assert not found, found
