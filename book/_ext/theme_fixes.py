"""Sphinx extension: keep the theme's own scripts from logging errors in the reader's console.

sphinx-thebe (loaded by Jupyter Book 1 on every page) registers its inline configuration script
(``const THEBE_JS_URL = ...``) each time ``env-before-read-docs`` fires, and Jupyter Book fires it
more than once, so pages carry the script twice and the browser reports "Identifier 'THEBE_JS_URL'
has already been declared". This drops exact duplicates from each page's script list; the browser
test (tests/test_browser.py) fails on any console error, so it notices if this stops working.

It also drops the Colab entry from the launch menu of pages whose source is not a notebook:
sphinx-book-theme links every page to Colab, but Colab opens only ``.ipynb`` files from GitHub, so
on the MyST chapters that link would end in an error (Binder and JupyterHub open them fine).
"""
from __future__ import annotations

from pathlib import Path

from sphinx.application import Sphinx


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    # An inline script is registered with filename None by some extensions and "" by others.
    return (getattr(script, "filename", str(script)) or "", tuple(sorted(attributes.items())))


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict,
                    doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: it is the builder's own list


def _drop_colab_on_text_pages(app: Sphinx, pagename: str, templatename: str, context: dict,
                              doctree) -> None:
    if pagename not in app.env.all_docs:
        return  # generated pages (search, genindex) have no launch menu
    source = Path(app.env.doc2path(pagename))
    if source.suffix == ".ipynb" or source.with_suffix(".ipynb").exists():
        return  # the theme links to the notebook itself: Colab can open it
    for group in context.get("header_buttons", []):
        if group.get("label") == "launch-buttons":
            group["buttons"] = [b for b in group["buttons"] if b.get("text") != "Colab"]


def setup(app: Sphinx) -> dict:
    # Early: html-page-context stops at the first handler that returns a template name, and the
    # scripts in question were all registered before any page is written.
    app.connect("html-page-context", _dedupe_scripts, priority=1)
    # After sphinx-book-theme's add_launch_buttons (priority 501) has built the menu.
    app.connect("html-page-context", _drop_colab_on_text_pages, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
