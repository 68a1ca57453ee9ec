"""Sphinx extension: serve MathJax from the built book itself, never from a CDN.

The book must render its math with no network (a classroom without internet, the browser test in
CI). MathJax 3 comes from PyPI in the pinned ``django-static-mathjax`` package (a plain copy of
MathJax's ``es5`` build; it installs a ``mathjax`` folder and pulls in nothing else). After an HTML
build this extension copies the one combined script named by ``mathjax_path`` (set in _config.yml,
relative to ``_static``) and the CHTML web fonts it loads into ``_build/html/_static/mathjax/``.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# Where the copy goes inside _static; mathjax_path must start with it.
TARGET = "mathjax"
# What the combined script loads at run time, relative to its own folder (MathJax's "[mathjax]").
RUNTIME_DIRS = ("output/chtml/fonts/woff-v2",)


def mathjax_es5() -> Path:
    """The ``es5`` folder of the installed MathJax package (ExtensionError if it is missing)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError("offline_mathjax: MathJax is not installed; run "
                             "`pip install -r requirements.txt` (django-static-mathjax)")
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not es5.is_dir():
        raise ExtensionError(f"offline_mathjax: no MathJax es5 build in {es5.parent}")
    return es5


def _script_name(app: Sphinx) -> str:
    path = app.config.mathjax_path
    if "://" in path or not path.startswith(TARGET + "/"):
        raise ExtensionError(f"offline_mathjax: mathjax_path must be a local path under "
                             f"'{TARGET}/' (relative to _static), got {path!r}")
    return path[len(TARGET) + 1:]


def _check(app: Sphinx, config) -> None:
    # Fail at the start of the build, not after it, if the script cannot be found.
    name = _script_name(app)
    if not (mathjax_es5() / name).is_file():
        raise ExtensionError(f"offline_mathjax: {name} is not part of MathJax's es5 build")


def _copy(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    es5, name = mathjax_es5(), _script_name(app)
    dest = Path(app.outdir) / "_static" / TARGET
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / name, dest / name)
    for sub in RUNTIME_DIRS:
        shutil.copytree(es5 / sub, dest / sub, dirs_exist_ok=True)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _check)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
