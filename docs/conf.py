"""Sphinx configuration for gradclip's documentation.

Build: ``pip install ".[docs]"`` (plus ``pip install torch`` for the ``gradclip.torch``
reference), then ``sphinx-build -W --keep-going -b html docs docs/_build/html``. CI builds it
the same way, warnings as errors, so a broken cross-reference fails the build.

Why these tools:

- Sphinx with MyST-Parser: the project's pages were Markdown already (``docs/errors.md`` is
  also read by a test, the README renders on the forge), and MyST keeps them Markdown while
  giving Sphinx's cross-references (``{func}`gradclip.clip_grad_norm_```), which the build
  checks, and autodoc, which turns the docstrings into the API reference.
- napoleon reads the NumPy-style docstrings (``Parameters`` / ``Returns`` / ``Examples``
  sections) the package is written with; it ships with Sphinx (numpydoc would be one more
  dependency and stricter about sections the short methods leave out).
- furo: a maintained theme, readable on a phone, with a light and a dark mode, a search box
  and a per-page table of contents; it needs no configuration beyond its name.
"""

from __future__ import annotations

import gradclip

project = "gradclip"
author = "the gradclip authors"
copyright = "the gradclip authors, BSD-3-Clause"
release = version = gradclip.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
# a fence without a language (a table printed by the demo, a command's output) is plain text
highlight_language = "none"
exclude_patterns = ["_build", "**/_build"]

# MyST: ``{func}`name``` roles and directives in fences; headings up to level 3 get anchors,
# so a page can link to ``other.md#a-section``.
# No math extension: MathJax would load from a CDN when a page is read, and offline (a local
# build, no network) the formulas would show as raw LaTeX; the few formulas are plain text.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Every reference must resolve: with nitpicky, a {func}/{class} role whose target does not
# exist is a warning (without it Sphinx renders it as plain code, silently), and CI builds
# with -W.
nitpicky = True
# NumPy's own classes: there is no intersphinx (the build downloads nothing), so they stay
# plain text. Anything else unresolved (a misspelt function, a page that moved) fails.
nitpick_ignore_regex = [("py:class", r"ndarray|float64|numpy\.[\w.]+")]


def _settings_docstring(app, what, name, obj, options, lines):  # noqa: ANN001, ARG001
    """A clipper's constructor arguments are read-only descriptors (``Setting``): say that,
    instead of the descriptor class's own docstring (which is about its implementation)."""
    from gradclip._settings import Setting

    if isinstance(obj, Setting):
        lines[:] = ["The constructor argument of this name (read-only; kept in the state)."]


def setup(app):  # noqa: ANN001, ANN201
    app.connect("autodoc-process-docstring", _settings_docstring)

# autodoc: members in source order, signatures with their annotations in the description.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# Parameter types are words for readers ("array or iterable of arrays", "mpi4py
# communicator"): rendered as text next to the name, not as references to look up.
napoleon_use_param = False
napoleon_use_rtype = False
napoleon_preprocess_types = False

html_theme = "furo"
html_title = f"gradclip {release}"
html_static_path = ["_static"]
html_css_files = ["gradclip.css"]
html_theme_options = {"navigation_with_keys": True}
