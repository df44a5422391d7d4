"""Sphinx configuration: numpydoc API reference, user guide, kind pages, gallery.

Build with ``make -C docs html`` (runs the gallery examples, a few minutes on a
CPU) or ``make -C docs html-noplot`` (renders the examples without running
them, as CI does). The per-kind pages and the command-line help are generated
here from the code (``KINDS`` and the argument parser), so a new flow kind or
option appears in the docs without editing them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings
from pathlib import Path

import skflow
from skflow._cli import build_parser
from skflow.engine import KINDS

HERE = Path(__file__).resolve().parent

project = "skflow"
author = "skflow developers"
copyright = "skflow developers"  # noqa: A001 (Sphinx's name)
version = release = skflow.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
templates_path: list[str] = []

try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {"navigation_with_keys": False}
except ImportError:  # the builtin theme still gives a complete site
    html_theme = "alabaster"
html_title = f"skflow {release}"

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Only plot_*.py files are executed; quickstart.py and grid_search_dask.py
    # (which starts worker processes) are shown without running.
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib",),
}

# Examples silence ConvergenceWarning themselves; matplotlib's Agg backend
# notice is harmless in a headless build.
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged file would make Sphinx rebuild every page.
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _generate_kind_pages() -> None:
    """One page per entry of ``KINDS``, from its module's docstring."""
    for kind, builder in KINDS.items():
        title = f'``kind="{kind}"``'
        _write_if_changed(
            HERE / "kinds" / f"{kind}.rst",
            f"{title}\n{'=' * len(title)}\n\n"
            f".. automodule:: {builder.__module__}\n   :no-members:\n\n"
            "Constructor\n-----------\n\n"
            f'``FlowDensity(kind="{kind}", kind_options={{...}})`` calls the function below; '
            "``kind_options`` are its keyword arguments other than ``n_layers`` and "
            "``hidden_units`` (which come from the estimator's parameters).\n\n"
            f".. autofunction:: {builder.__module__}.{builder.__name__}\n"
            + _options_section(builder),
        )


def _options_section(builder) -> str:
    """For a constructor that passes ``**options`` on to a class its
    docstring names (cnf's ContinuousFlow), that class, whose docstring
    lists the options."""
    takes_options = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(builder).parameters.values()
    )
    named = re.search(r":class:`~?([\w.]+)`", builder.__doc__ or "")
    if not (takes_options and named):
        return ""
    target = named.group(1)
    if "." not in target:
        target = f"{builder.__module__}.{target}"
    return f"\nOptions\n-------\n\n.. autoclass:: {target}\n   :no-members:\n"


def _generate_cli_help() -> None:
    """The ``--help`` text of the command and of each sub-command."""
    text = ""
    for argv in ([], ["fit"], ["score"], ["sample"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser("skflow").parse_args([*argv, "--help"])
        text += f"$ skflow {' '.join([*argv, '--help'])}\n{out.getvalue()}\n"
    _write_if_changed(HERE / "generated" / "cli_help.txt", text)


# In "X : ndarray of shape (n_samples, n_features_in_)", reST reads the
# trailing underscore of a fitted-attribute name as a link to a target.
_FIELD = re.compile(r"^(\s*\w+ : )(.*)$")
_TRAILING_UNDERSCORE = re.compile(r"(\w)_(?=[,)])")


def _escape_attribute_names_in_types(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        match = _FIELD.match(line)
        if match:
            lines[i] = match.group(1) + _TRAILING_UNDERSCORE.sub(r"\1\\_", match.group(2))


def setup(app):
    # Before numpydoc (priority 500) turns the fields into its own markup.
    app.connect("autodoc-process-docstring", _escape_attribute_names_in_types, priority=100)


_generate_kind_pages()
_generate_cli_help()
