"""Publishing: the config's links and buttons, the bibliography, the logo, offline MathJax, and no
broken internal links in the built book. Pages are taken from _toc.yml, so new chapters and
exercises are covered as soon as they are listed there."""
from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from conftest import REPO
from course_lib.grading import authoring

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
REPOSITORY_URL = authoring.publishing(REPO).repository_url
TOC = yaml.safe_load((REPO / "_toc.yml").read_text())


def toc_pages() -> list[str]:
    """Every document of the book (root, chapters, sections, globbed exercises), as docnames."""
    pages = [TOC["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                pages.append(entry["file"])
            if "glob" in entry:
                pages.extend(sorted(str(p.relative_to(REPO).with_suffix(""))
                                    for p in REPO.glob(entry["glob"] + ".ipynb")))
            walk(entry.get("sections", []))

    for part in TOC.get("parts", []):
        walk(part.get("chapters", []))
    return pages


PAGES = toc_pages()
EXERCISES = [p for p in PAGES if p.startswith("exercises/")]
CHAPTERS = [p for p in PAGES if re.match(r"book/ch\d\d_", p)]


# --- configuration ------------------------------------------------------------------------------

def test_repository_branch_is_the_one_the_book_publishes():
    assert CONFIG["repository"]["branch"] == "main"
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    assert workflow[True]["push"]["branches"] == ["main"]  # YAML reads the key `on` as True


def test_book_workflow_publishes_the_wheel_where_setup_cells_install_from():
    """The wheel goes into the built site at the folder the setup cells name, and is attached to
    the repository's release of that version (their second source)."""
    workflow = (REPO / ".github" / "workflows" / "book.yml").read_text()
    assert "-m build" in workflow and "twine check --strict" in workflow
    assert f"_build/html/{authoring.WHEEL_FOLDER}" in workflow
    assert 'gh release create "v$VERSION"' in workflow
    info = authoring.publishing(REPO)
    assert info.wheel_folders[1] == f"{REPOSITORY_URL}/releases/download/v{info.version}/"


def test_launch_buttons_configured():
    launch = CONFIG["launch_buttons"]
    for key in ("colab_url", "binderhub_url", "jupyterhub_url"):
        assert launch.get(key, "").startswith("https://"), key


def test_every_exercise_release_is_in_the_book():
    releases = sorted(str(p.relative_to(REPO).with_suffix(""))
                      for p in REPO.glob("exercises/*/*.ipynb"))
    assert releases and releases == EXERCISES


def test_exercises_are_never_executed_by_the_book():
    """myst-nb matches these patterns against the END of a notebook's path."""
    from pathlib import PurePosixPath
    patterns = CONFIG["execute"]["exclude_patterns"]
    for page in EXERCISES:
        path = PurePosixPath(REPO.as_posix()) / f"{page}.ipynb"
        assert any(path.match(p) for p in patterns), page


# --- bibliography -------------------------------------------------------------------------------

BIB = (REPO / "book" / "references.bib").read_text()
BIB_KEYS = re.findall(r"@\w+\{([^,\s]+),", BIB)


def test_bibliography_has_the_papers():
    arxiv = set(re.findall(r"eprint\s*=\s*\{([\d.]+)\}", BIB))
    # MobileNetV1, Xception, DeepLab v3, v3+, and the two Inception papers.
    assert {"1704.04861", "1610.02357", "1706.05587", "1802.02611", "1409.4842",
            "1512.00567"} <= arxiv
    assert len(BIB_KEYS) == len(set(BIB_KEYS)), "duplicate bibtex keys"
    assert "book/references.bib" in CONFIG["bibtex_bibfiles"]


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("book/")])
def test_citations_use_known_keys(page):
    text = (REPO / f"{page}.md").read_text()
    for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
        for key in group.split(","):
            assert key.strip() in BIB_KEYS, f"{page} cites unknown key {key.strip()!r}"


# --- logo and favicon ---------------------------------------------------------------------------

def test_logo_and_favicon_are_current_drawings(tmp_path):
    """The committed images equal what `python -m course_lib.logo` draws now (compared as pixels)."""
    subprocess.run([sys.executable, "-m", "course_lib.logo", str(tmp_path)],
                   check=True, capture_output=True, cwd=REPO)
    for name, key in (("logo.png", "logo"), ("favicon.png", None)):
        committed = REPO / "book" / "_static" / name
        fresh = mpimg.imread(tmp_path / name)
        assert fresh.shape[0] == fresh.shape[1] and fresh[..., 3].max() > 0  # square, not blank
        np.testing.assert_array_equal(mpimg.imread(committed), fresh,
                                      err_msg=f"{name} is stale: run python3 -m course_lib.logo")
    assert CONFIG["logo"] == "book/_static/logo.png"
    assert CONFIG["html"]["favicon"] == "book/_static/favicon.png"


# --- the built book -----------------------------------------------------------------------------

class _Links(HTMLParser):
    """Collects href/src targets and element ids of one HTML page."""

    def __init__(self):
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name == "id":
                self.ids.add(value)
            elif name in ("href", "src") and tag in ("a", "link", "script", "img", "source"):
                self.targets.append(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.slow
def test_no_broken_internal_links(built_book):
    """Every relative href/src in every built page points at a file that exists, and every
    #fragment into an HTML page names an id on that page."""
    # _static/ holds the themes' Jinja templates (not pages); everything else is the book.
    pages = {p: _parse(p) for p in built_book.rglob("*.html")
             if p.relative_to(built_book).parts[0] != "_static"}
    broken = []
    for page, links in pages.items():
        for target in links.targets:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or target.startswith(("mailto:", "javascript:")):
                continue  # external (checked for being absent from scripts in another test)
            file = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if file.is_dir():
                file = file / "index.html"
            if not file.is_file():
                broken.append(f"{page.relative_to(built_book)} -> {target}")
            elif parts.fragment and file.suffix == ".html":
                ids = pages[file].ids if file in pages else _parse(file).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(built_book)} -> {target} (no such id)")
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))


@pytest.mark.slow
def test_pages_load_nothing_from_the_network(built_book):
    """Scripts, styles and images all come from the book itself (it must render offline)."""
    for page in built_book.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        # A canonical <link> (html.baseurl) names the page's published address; it loads nothing.
        external = [url for tag, url in re.findall(
                        r'(<(?:script|img|link)\b[^>]*?(?:src|href)="(https?:[^"]*)")', html)
                    if 'rel="canonical"' not in tag]
        assert not external, f"{page.relative_to(built_book)} loads {external}"


@pytest.mark.slow
def test_mathjax_is_vendored(built_book):
    script = built_book / "_static" / CONFIG["sphinx"]["config"]["mathjax_path"]
    assert script.is_file() and script.stat().st_size > 500_000
    assert list((script.parent / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    with_math = [p for p in CHAPTERS if 'class="math' in (built_book / f"{p}.html").read_text()]
    assert with_math, "no chapter has math: is dollarmath still enabled?"
    for page in PAGES:
        html = (built_book / f"{page}.html").read_text()
        if 'class="math' not in html:
            continue  # Sphinx adds MathJax only to pages that have math
        assert re.search(r'<script[^>]+src="[./]*_static/mathjax/[^"?]+\.js(\?[^"]*)?"', html), page


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_has_download_and_launch_buttons(built_book, page):
    html = (built_book / f"{page}.html").read_text()
    assert "Download source file" in html, "download button"
    assert 'href="https://github.com/efficient-convolutions/efficient-convolutions"' in html
    if page == TOC["root"] or page.startswith("book/") and not page.startswith("book/ch"):
        return  # plain text pages: no code to launch
    repo_path = REPOSITORY_URL.removeprefix("https://github.com/")
    assert f"mybinder.org/v2/gh/{repo_path}/main" in html, "Binder button"
    assert "hub/user-redirect/git-pull?repo=" in html, "JupyterHub button"
    # Exercises are notebooks; a chapter's launch buttons open its .ipynb twin (Colab cannot open
    # a .md file), which begins with the setup cell.
    assert (f"https://colab.research.google.com/github/{repo_path}/blob/main/{page}.ipynb"
            in html), "Colab button"
    assert f"urlpath=lab/tree/{page}.ipynb" in html, "Binder opens the notebook"
    for launch in (f"colab.research.google.com/github/{repo_path}/blob/main/{page}.md",
                   f"urlpath=lab/tree/{page}.md"):
        assert launch not in html, "a launch link to the .md"
    if page.startswith("book/"):  # a MyST chapter: readers can download it as a notebook too
        assert "Download notebook file" in html
        assert (REPO / f"{page}.ipynb").is_file()


@pytest.mark.slow
def test_bibliography_page_lists_the_papers(built_book):
    html = (built_book / "book" / "bibliography.html").read_text().lower()  # styles recase titles
    for title in ("Xception", "MobileNets", "Rethinking Atrous Convolution",
                  "Encoder-Decoder with Atrous Separable Convolution", "Going Deeper"):
        assert title.lower() in html, title
    # Chapter 1 cites at least one paper, linked to the bibliography page.
    ch1 = (built_book / "book" / "ch01_standard.html").read_text()
    assert 'href="bibliography.html#id' in ch1


@pytest.mark.slow
def test_search_page_and_index_exist(built_book):
    assert (built_book / "search.html").is_file() and (built_book / "searchindex.js").is_file()
    intro = (built_book / f"{TOC['root']}.html").read_text()
    assert "search" in intro.lower() and "favicon.png" in intro and "logo.png" in intro
