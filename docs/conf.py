"""Sphinx configuration: MyST Markdown pages and an API reference from the docstrings.

Build: ``python -m pip install '.[docs]' && sphinx-build -W --keep-going -b html docs
docs/_build/html`` (warnings are errors, as in CI).
"""

import importlib.util
import os
import re
import sys

# the checkout's acmews, whatever is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acmews import __version__

project = "acmews"
author = "the acmews authors"
copyright = "the acmews authors"
release = version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# furo when installed (the docs extra brings it), else Sphinx's own theme
html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"acmews {release}"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# the annotations name Twisted's and Autobahn's types, which have no pages here
nitpicky = False
suppress_warnings = ["myst.xref_missing"]

#: epytext fields (``@param x:``) as reST fields, so that autodoc shows them as such
_FIELD = re.compile(r"^(\s*)@(param|type|return|returns|rtype|raise|raises|ivar|cvar)\b(.*)$")


def _epytext_fields(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        m = _FIELD.match(line)
        if m:
            indent, field, rest = m.groups()
            field = {"raise": "raises", "return": "returns"}.get(field, field)
            lines[i] = f"{indent}:{field}{rest}"


def _skip_option_methods(app, what, name, obj, skip, options):
    """``twistd acmews``'s ``opt_*`` methods: their docstrings are --help text, listed in the
    reference of the options; not API."""
    return True if name.startswith("opt_") else None


def setup(app):
    app.connect("autodoc-process-docstring", _epytext_fields)
    app.connect("autodoc-skip-member", _skip_option_methods)
