"""The documentation builds warning-free and the public API is documented.

The build renders the gallery without running the examples (``plot_gallery=0``,
as ``make -C docs html-noplot``); ``make -C docs html`` runs them.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import skflow
from skflow import engine

ROOT = Path(__file__).resolve().parents[1]


def _public_callables():
    """Every public class and function of ``skflow`` and the public methods
    each class defines itself (inherited scikit-learn methods are sklearn's)."""
    for name in skflow.__all__:
        obj = getattr(skflow, name)
        if not callable(obj):
            continue
        yield name, obj
        if inspect.isclass(obj):
            for attr in vars(obj):
                # set_fit_request / set_score_request: scikit-learn generates
                # them (metadata routing of sample_weight), docstrings included.
                if attr.startswith("set_") and attr.endswith("_request"):
                    continue
                if not attr.startswith("_") and callable(getattr(obj, attr)):
                    yield f"{name}.{attr}", getattr(obj, attr)


@pytest.mark.parametrize("name, obj", list(_public_callables()), ids=lambda v: str(v)[:40])
def test_public_api_has_parameters_returns_examples(name, obj):
    docscrape = pytest.importorskip("numpydoc.docscrape")
    doc = docscrape.ClassDoc(obj) if inspect.isclass(obj) else docscrape.FunctionDoc(obj)
    takes_args = len(inspect.signature(obj).parameters) > (0 if inspect.isclass(obj) else 1)
    if takes_args:
        assert doc["Parameters"], f"{name}: no Parameters section"
    if not inspect.isclass(obj):
        assert doc["Returns"] or doc["Yields"], f"{name}: no Returns section"
    assert any(line.strip().startswith(">>>") for line in doc["Examples"]), (
        f"{name}: no Examples section with code"
    )


@pytest.mark.parametrize("name", [n for n in engine.__all__ if callable(getattr(engine, n))])
def test_engine_api_has_parameters_returns_examples(name):
    """The engine's public classes and functions too (their methods: docstrings)."""
    docscrape = pytest.importorskip("numpydoc.docscrape")
    obj = getattr(engine, name)
    doc = docscrape.ClassDoc(obj) if inspect.isclass(obj) else docscrape.FunctionDoc(obj)
    if inspect.signature(obj).parameters:
        assert doc["Parameters"] or doc["Attributes"], f"{name}: no Parameters section"
    if not inspect.isclass(obj):
        assert doc["Returns"], f"{name}: no Returns section"
    assert any(line.strip().startswith(">>>") for line in doc["Examples"]), name
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if not attr.startswith("_") and callable(member):
                assert inspect.getdoc(member), f"{name}.{attr}: no docstring"


def test_version_matches_the_installed_metadata():
    assert skflow.__version__ == importlib.metadata.version("skflow")
    assert (ROOT / "skflow" / "py.typed").is_file()  # type hints are exported


def test_citation_file_is_valid_cff():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    # The required keys of CFF 1.2.0 (cffconvert --validate checks the full schema).
    assert cff["cff-version"] == "1.2.0"
    assert cff["message"] and cff["title"] and cff["authors"]
    assert all("name" in a or "family-names" in a for a in cff["authors"])
    assert str(cff["version"]) == skflow.__version__


def test_docs_build_without_warnings(tmp_path):
    for module in ("sphinx", "numpydoc", "sphinx_gallery"):
        pytest.importorskip(module)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-D",
            "plot_gallery=0",
            "-d",
            str(tmp_path / "doctrees"),
            str(ROOT / "docs"),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    html = tmp_path / "html"
    for page in ("index", "api", "guide/cli", "auto_examples/index"):
        assert (html / f"{page}.html").is_file()
    # One page per registered kind, generated from the registry.
    from skflow.engine import KINDS

    for kind in KINDS:
        assert (html / "kinds" / f"{kind}.html").is_file()
    assert "score_samples" in (html / "api.html").read_text()
