"""The built book in a real browser, offline: headless Debian Chromium (installed by .ci/run)
loads every page of the toc from a local HTTP server and checks that the math is typeset by the
vendored MathJax, images load, and nothing is logged to the console as an error. Screenshots of
every page are saved under the pytest temporary folder (``screenshots/``), the path is printed.

Any host other than 127.0.0.1 is made unresolvable, so a page that needs the network fails here
even on a machine that has one."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from test_publishing import PAGES

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
if not HAVE_BROWSER and os.environ.get("CI"):
    # In CI the browser is installed by .ci/run: missing it is a failure, not a skip.
    raise RuntimeError("chromium/chromedriver missing in CI: .ci/run installs them with apt-get")
webdriver = pytest.importorskip("selenium.webdriver") if HAVE_BROWSER else None
if not HAVE_BROWSER:
    pytest.skip("Debian chromium and chromium-driver are not installed "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402

# Waits until MathJax has typeset the page (or says there is no math to typeset).
WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!document.querySelector('.math')) { done('no math'); return; }
const started = Date.now();
(function wait() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done('typeset'), (e) => done('error: ' + e));
  } else if (Date.now() - started > 20000) {
    done('MathJax never started');
  } else { setTimeout(wait, 50); }
})();
"""

# Resolves once every <img> has finished loading (or failed).
WAIT_FOR_IMAGES = """
const done = arguments[arguments.length - 1];
Promise.all(Array.from(document.images).map(img => img.complete ? null :
  new Promise(r => { img.onload = img.onerror = r; }))).then(() => done(true));
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def server(built_book):
    """The built book over HTTP on 127.0.0.1 (file:// would hide path and MIME problems)."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--hide-scrollbars",
                # Offline by construction: every host but the local server fails to resolve.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(40)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots of the built book: {folder}")
    return folder


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(server, browser, screenshots, page):
    browser.get_log("browser")  # drop anything left from the previous page
    browser.get(f"{server}/{page}.html")

    status = browser.execute_async_script(WAIT_FOR_MATHJAX)
    assert status in ("typeset", "no math"), f"{page}: {status}"
    if status == "typeset":
        maths = browser.execute_script("return document.querySelectorAll('.math').length")
        untypeset = browser.execute_script(
            "return Array.from(document.querySelectorAll('.math'))"
            ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))")
        errors = browser.execute_script(
            "return Array.from(document.querySelectorAll('mjx-merror'))"
            ".map(e => e.getAttribute('data-mjx-error') || e.textContent)")
        assert maths > 0 and not untypeset, f"{page}: math left as TeX: {untypeset[:5]}"
        assert not errors, f"{page}: MathJax errors: {errors[:5]}"

    browser.execute_async_script(WAIT_FOR_IMAGES)
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src'))")
    assert not broken, f"{page}: images that did not load: {broken}"

    # Fonts and lazy resources settle after typesetting; then read the console.
    browser.execute_script("return document.fonts.ready.then(() => true)")
    console = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not console, f"{page}: console errors: {[e['message'] for e in console]}"

    shot = screenshots / (page.replace("/", "__") + ".png")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000, f"{page}: screenshot looks empty"
