"""Sphinx extension: the in-browser convolution calculator (book/_static/site/).

``{conv-calculator}`` writes an empty ``<div class="conv-calculator">`` whose ``data-*``
attributes preset the layer (options ``c``, ``m``, ``k``, ``stride``, ``padding``, ``dilation``,
``groups``, ``height``, ``width``, ``bias``, ``stack``); ``conv_calculator.js``, served from the
built book's ``_static`` with its stylesheet, turns every such div into the form. No kernel and no
network: the page works offline. Without JavaScript the div says what it would show.

    ```{conv-calculator}
    :c: 3
    :m: 16
    :stack: 3/1/1, 3/1/2, 3/1/5
    ```
"""
from __future__ import annotations

import html

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

NUMBERS = ("c", "m", "k", "stride", "padding", "dilation", "groups", "height", "width")


def _non_negative(value: str) -> str:
    return str(directives.nonnegative_int(value))


class ConvCalculator(SphinxDirective):
    has_content = False
    option_spec = {**{name: _non_negative for name in NUMBERS},
                   "bias": directives.flag, "stack": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        attributes = [f'data-{name}="{html.escape(self.options[name])}"'
                      for name in NUMBERS if name in self.options]
        if "bias" in self.options:
            attributes.append('data-bias="true"')
        if "stack" in self.options:
            attributes.append(f'data-stack="{html.escape(self.options["stack"].strip())}"')
        markup = (f'<div class="conv-calculator" {" ".join(attributes)}>'
                  "<noscript>The convolution calculator needs JavaScript: it computes output "
                  "size, parameters, mult-adds, the separable saving and the receptive field "
                  "from the formulas on this page.</noscript></div>")
        return [nodes.raw("", markup, format="html")]


def setup(app: Sphinx) -> dict:
    app.add_directive("conv-calculator", ConvCalculator)
    app.setup_extension("page_style")  # serves book/_static/site/, where the script lives
    app.add_js_file("conv_calculator.js")
    app.add_css_file("conv_calculator.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
