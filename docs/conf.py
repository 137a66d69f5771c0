"""Sphinx configuration of the nanopet-tune documentation.

The reference pages are generated from the code when the site is built (``generate`` below writes them to
``docs/_generated/``, which git ignores): the options from ``nanopet/default-hypers.yaml`` (values and the comment
after each key, read by ``nanopet.schema.hypers.documented``), the options-file and search-space formats from the
JSON Schema of ``nanopet.schema``, and the benchmark results from ``benchmarks/results/*.txt``. The command-line
reference is sphinx-argparse on ``nanopet.cli.build_parser``; the Python API is autodoc.
Build: ``sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))

import nanopet  # noqa: E402
from generate import generate  # noqa: E402

project = "nanopet-tune"
author = "the nanopet-tune authors"
release = version = nanopet.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinxarg.ext"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = f"nanopet-tune {release}"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}

generate(DOCS / "_generated", ROOT)
