"""The built book in a real browser, offline: headless Debian Chromium (installed by .ci/run)
loads every page of the toc from a local HTTP server and checks that the math is typeset by the
vendored MathJax, images load, no output shows a progress bar or a raw matplotlib repr, no code
line is clipped, and nothing is logged to the console as an error. Screenshots of every page are
saved under the pytest temporary folder (``screenshots/``), the path is printed. The convolution
calculator (book/_static/site/) is driven by typing into it, and what it shows is compared
with course_lib's numbers.

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

from test_figures import RAW_OUTPUT_TEXT
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


# Visible code blocks (cell inputs and outputs) whose text is wider than their box.
CLIPPED_CODE = """
return Array.from(document.querySelectorAll('.cell_input pre, .cell_output pre'))
  .filter(p => p.offsetParent !== null && p.scrollWidth > p.clientWidth + 1)
  .map(p => p.innerText.split('\\n').reduce((a, b) => a.length >= b.length ? a : b).slice(0, 80));
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

    outputs = browser.execute_script(
        "return Array.from(document.querySelectorAll('.cell_output')).map(e => e.innerText)")
    raw = [m.group(0) for text in outputs for m in [RAW_OUTPUT_TEXT.search(text)] if m]
    assert not raw, f"{page}: progress bars or raw reprs in the outputs: {raw[:3]}"
    # Code the reader sees must fit its box: a line wider than the column would be clipped.
    clipped = browser.execute_script(CLIPPED_CODE)
    assert not clipped, f"{page}: code lines wider than the page: {clipped[:3]}"

    # Fonts and lazy resources settle after typesetting; then read the console.
    browser.execute_script("return document.fonts.ready.then(() => true)")
    console = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not console, f"{page}: console errors: {[e['message'] for e in console]}"

    shot = screenshots / (page.replace("/", "__") + ".png")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000, f"{page}: screenshot looks empty"


# --- the convolution calculator -------------------------------------------------------------------

CALCULATOR_PAGES = ["book/ch01_standard", "book/ch04_separable", "book/ch06_atrous",
                    "book/ch07_mobilenet"]


def _calculator(browser, server, page):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/{page}.html")
    forms = browser.find_elements(By.CSS_SELECTOR, "div.conv-calculator form")
    assert len(forms) == 1, f"{page}: {len(forms)} calculators"
    return forms[0]


def _type(form, name, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = form.find_element(By.NAME, name)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    field.send_keys(str(value))


def _shown(form) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {e.get_attribute("data-out"): e.text
            for e in form.find_elements(By.CSS_SELECTOR, "[data-out]")}


@pytest.mark.parametrize("page", CALCULATOR_PAGES)
def test_calculator_is_on_the_page(server, browser, page):
    shown = _shown(_calculator(browser, server, page))
    assert set(shown) >= {"out_size", "params", "macs", "sep_params", "sep_macs", "saving",
                          "rf_size", "rf_jump"} and all(shown.values()), shown


def test_typing_into_the_calculator_gives_course_lib_numbers(server, browser):
    from selenium.webdriver.common.by import By

    from course_lib import atrous, conv, costs, separable

    form = _calculator(browser, server, "book/ch01_standard")
    layer = {"c": 32, "m": 64, "k": 5, "stride": 2, "padding": 2, "dilation": 2, "groups": 4,
             "height": 57, "width": 41}
    for name, value in layer.items():
        _type(form, name, value)
    bias = form.find_element(By.NAME, "bias")
    if not bias.is_selected():
        bias.click()
    _type(form, "stack", "7/2, 3/2/1, 3/1/2")
    shown = _shown(form)
    oh, ow = (conv.conv_output_size(n, 5, 2, 2, 2) for n in (57, 41))
    assert shown["out_size"] == f"{oh} × {ow}"
    assert shown["effective_kernel"] == str(atrous.effective_kernel_size(5, 2))
    assert shown["params"] == f"{costs.conv2d_params(32, 64, 5, groups=4, bias=True):,}"
    assert shown["macs"] == f"{costs.conv2d_macs(32, 64, 5, (oh, ow), groups=4):,}"
    assert shown["sep_params"] == f"{separable.separable_params(32, 64, 5, bias=True):,}"
    assert shown["sep_macs"] == f"{separable.separable_macs(32, 64, 5, (oh, ow)):,}"
    assert shown["sep_ratio"] == f"{separable.separable_cost_ratio(64, 5):.4f}"
    assert shown["saving"] == f"{1 / separable.separable_cost_ratio(64, 5):.2f}×"
    field = atrous.receptive_field([(7, 2, 1), (3, 2, 1), (3, 1, 2)])
    assert (shown["rf_size"], shown["rf_jump"]) == (str(field.size), str(field.jump))

    # "append this layer" adds the layer above (5/2/2) to the stack.
    form.find_element(By.NAME, "append-layer").click()
    field = atrous.receptive_field([(7, 2, 1), (3, 2, 1), (3, 1, 2), (5, 2, 2)])
    assert form.find_element(By.NAME, "stack").get_attribute("value").endswith("5/2/2")
    assert _shown(form)["rf_size"] == str(field.size)

    # Bad input: a clear message instead of numbers, and numbers again once it is fixed.
    error = form.find_element(By.CSS_SELECTOR, "[role=alert]")
    _type(form, "groups", 3)
    assert "groups = 3 must divide" in error.text and not _shown(form)
    _type(form, "groups", 1)
    _type(form, "height", 3)
    assert "padded input" in error.text
    _type(form, "height", 57)
    assert error.text == "" and _shown(form)["params"] == (
        f"{costs.conv2d_params(32, 64, 5, groups=1, bias=True):,}")
    console = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not console, [e["message"] for e in console]


# --- the animated convolution ---------------------------------------------------------------------

ANIMATION_PAGES = {"book/ch01_standard": "standard", "book/ch03_depthwise": "depthwise",
                   "book/ch06_atrous": "dilated"}


def _animation(browser, server, page):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/{page}.html")
    players = browser.find_elements(By.CSS_SELECTOR, "div.conv-animation form.conv-anim")
    assert len(players) == 1, f"{page}: {len(players)} animations"
    return players[0]


def _expected_macs(preset: dict) -> tuple[int, int]:
    """(number of output values, mult-adds) of a preset layer, from course_lib."""
    from course_lib import conv, costs

    out = conv.conv_output_size(preset["size"], preset["k"], preset["stride"], preset["padding"],
                                preset["dilation"])
    return (preset["m"] * out * out,
            costs.conv2d_macs(preset["c"], preset["m"], preset["k"], (out, out),
                              groups=preset["groups"]))


def _grid(form, attribute: str, value: str, padding: int = 0) -> list[list[int]]:
    """The numbers of one grid of the animation (one script call, not one per cell)."""
    cells = form.parent.execute_script(
        "return Array.from(arguments[0].querySelectorAll(arguments[1] + ' tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent))",
        form, f'figure[data-{attribute}="{value}"]')
    inner = cells[padding:len(cells) - padding]
    return [[int(v) for v in row[padding:len(row) - padding]] for row in inner]


@pytest.mark.parametrize("page", ANIMATION_PAGES)
def test_animation_is_on_the_page(server, browser, page):
    form = _animation(browser, server, page)
    assert form.get_attribute("data-mode") == ANIMATION_PAGES[page]
    preset = browser.execute_script("return ConvAnimation.PRESETS")[ANIMATION_PAGES[page]]
    assert int(form.get_attribute("data-total")) == _expected_macs(preset)[1]
    assert form.get_attribute("data-macs") == "0"


def test_animation_plays_every_kind_to_course_libs_count(server, browser):
    """Each preset animates (the counter passes through intermediate values while the output
    fills in), ends at course_lib's mult-add count, and the numbers it wrote are PyTorch's
    conv2d of the input and filters it shows."""
    import time

    import torch
    import torch.nn.functional as F
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    form = _animation(browser, server, "book/ch01_standard")
    presets = browser.execute_script("return ConvAnimation.PRESETS")
    modes = [o.get_attribute("value") for o in Select(form.find_element(By.NAME, "mode")).options]
    assert modes == ["standard", "depthwise", "pointwise", "strided", "dilated"]
    assert set(presets) == set(modes)
    Select(form.find_element(By.NAME, "speed")).select_by_visible_text("fast")
    for mode in modes:
        p = presets[mode]
        Select(form.find_element(By.NAME, "mode")).select_by_value(mode)
        outputs, total = _expected_macs(p)
        assert form.get_attribute("data-macs") == "0" and form.get_attribute("data-state") == "paused"

        # One step by hand: one output value, K^2 C/g mult-adds.
        form.find_element(By.NAME, "step").click()
        assert int(form.get_attribute("data-macs")) == p["k"] ** 2 * p["c"] // p["groups"]
        assert form.find_elements(By.CSS_SELECTOR, "td.conv-anim-read")

        form.find_element(By.NAME, "play").click()
        seen, deadline = set(), time.monotonic() + 30
        while form.get_attribute("data-state") != "done" and time.monotonic() < deadline:
            seen.add(int(form.get_attribute("data-filled")))
            time.sleep(0.05)
        assert form.get_attribute("data-state") == "done", f"{mode}: did not finish"
        assert len({n for n in seen if 1 < n < outputs}) >= 3, f"{mode}: no animation seen"
        assert int(form.get_attribute("data-filled")) == outputs
        assert int(form.get_attribute("data-macs")) == total, mode
        assert form.find_element(By.CSS_SELECTOR, "[data-anim=macs]").text == f"{total:,}"

        x = torch.tensor([_grid(form, "input", str(c), p["padding"]) for c in range(p["c"])],
                         dtype=torch.float64)
        w = torch.tensor([[_grid(form, "filter", f"{m}/{j}") for j in range(p["c"] // p["groups"])]
                          for m in range(p["m"])], dtype=torch.float64)
        shown = torch.tensor([_grid(form, "output", str(m)) for m in range(p["m"])],
                             dtype=torch.float64)
        expected = F.conv2d(x[None], w, stride=p["stride"], padding=p["padding"],
                            dilation=p["dilation"], groups=p["groups"])[0]
        assert torch.equal(shown, expected), mode
    console = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not console, [e["message"] for e in console]
