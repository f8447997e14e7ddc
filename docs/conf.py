"""Sphinx configuration of distrib's documentation (``sphinx-build -W docs docs/_build``)."""

from distrib import __version__

project = "distrib"
author = "the distrib developers"
release = version = __version__

extensions = [
    "myst_parser",  # the pages are Markdown, as the README is
    "sphinx.ext.autodoc",
    "numpydoc",  # the API reference from the numpydoc docstrings
    "sphinx_click",  # the CLI reference from the click commands
]
myst_heading_anchors = 3  # GitHub's anchors for headings, so links work there and here
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
numpydoc_show_class_members = False
autodoc_typehints = "none"  # the numpydoc sections say the types
html_theme = "alabaster"
html_static_path: list[str] = []
