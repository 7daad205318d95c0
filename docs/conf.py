"""Sphinx configuration for the optax-egd documentation (``make docs``)."""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Importing optax_egd (autodoc) must not spin up BLAS thread pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import optax_egd  # noqa: E402

project = "optax-egd"
author = "optax-egd developers"
copyright = "2026, optax-egd developers"  # noqa: A001
release = optax_egd.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_nb",  # Also registers myst_parser for the .md pages.
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]

# MyST: $…$ math, ::: fences, heading anchors for [text](page.md#anchor) links.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The Colab notebook is rendered with the outputs stored in it, never run here.
nb_execution_mode = "off"

# Google-style docstrings (Args/Returns/Raises/Example), as in optax.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not duplicate attributes.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False, "undoc-members": False}

html_theme = "furo"
html_title = f"optax-egd {release}"
html_static_path: list[str] = []

# Pages other branches add ({doc}`lapack_deadlock`, {doc}`transformers`, ...): until
# their file exists, a {doc} link to one renders as plain text instead of failing
# the build; once it exists the link resolves (and is checked) as usual.
PENDING_DOCS = {"lapack_deadlock", "transformers", "mnist", "vectorized_seeds"}


def _pending_doc(app, env, node, contnode):
  if node.get("reftype") != "doc":
    return None
  target = node["reftarget"].rsplit("/", 1)[-1]
  page = pathlib.Path(app.srcdir) / f"{target}.md"
  if target in PENDING_DOCS and not page.exists():
    return contnode
  return None


def setup(app):
  app.connect("missing-reference", _pending_doc)
