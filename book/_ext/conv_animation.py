"""Sphinx extension: the animated convolution (book/_static/site/conv_animation.js).

``{conv-animation}`` writes an empty ``<div class="conv-animation" data-mode="...">``;
``conv_animation.js`` turns it into the player (standard, depthwise, pointwise, strided and dilated
presets; ``:mode:`` picks the one shown first). It computes with the calculator's formulas
(``conv_calculator.js``), so this extension loads the calculator's script too. No kernel and no
network: the page works offline. Without JavaScript the div says what it would show.

    ```{conv-animation}
    :mode: depthwise
    ```
"""
from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

MODES = ("standard", "depthwise", "pointwise", "strided", "dilated")


def _mode(value: str) -> str:
    return directives.choice(value.strip(), MODES)


class ConvAnimation(SphinxDirective):
    has_content = False
    option_spec = {"mode": _mode}

    def run(self) -> list[nodes.Node]:
        mode = self.options.get("mode", "standard")
        markup = (f'<div class="conv-animation" data-mode="{mode}">'
                  "<noscript>The animated convolution needs JavaScript: it slides a filter over "
                  "a small input, fills in the output and counts the mult-adds.</noscript></div>")
        return [nodes.raw("", markup, format="html")]


def setup(app: Sphinx) -> dict:
    app.add_directive("conv-animation", ConvAnimation)
    app.setup_extension("conv_calculator")  # the formulas the animation computes with
    app.add_js_file("conv_animation.js")
    app.add_css_file("conv_animation.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
