"""The book's in-browser calculator (book/_static/site/conv_calculator.js) computes what
course_lib computes: the same cases go through the JavaScript (run by node, as a browser would run
it, with no DOM) and through course_lib, and must give the same numbers, and reject the same bad
inputs. tests/test_browser.py drives the widget itself in Chromium."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest

from conftest import REPO
from course_lib import atrous, conv, costs, separable

SCRIPT = REPO / "book" / "_static" / "site" / "conv_calculator.js"
NODE = shutil.which("node")
if NODE is None and os.environ.get("CI"):
    raise RuntimeError("node is missing in CI: .ci/run installs it (apt-get install nodejs)")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs)")

# Runs [function name, args] cases through the calculator's exported functions; prints, per case,
# {"value": ...} or {"error": message} for the calculator's own InputError (anything else crashes).
RUNNER = r"""
const calc = require(process.argv[1]);
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const results = cases.map(([name, args]) => {
  try { return { value: calc[name](...args) }; }
  catch (e) { if (e instanceof calc.InputError) return { error: e.message }; throw e; }
});
process.stdout.write(JSON.stringify(results));
"""


def run_js(cases: list) -> list[dict]:
    proc = subprocess.run([NODE, "-e", RUNNER, str(SCRIPT)], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def python_value(name: str, args: list):
    """The course_lib function the calculator's ``name`` mirrors, on the same arguments."""
    if name == "outputSize":
        return conv.conv_output_size(*args)
    if name == "convParams":
        c, m, k, groups, bias = args
        return costs.conv2d_params(c, m, k, groups=groups, bias=bias)
    if name == "convMacs":
        c, m, k, oh, ow, groups = args
        return costs.conv2d_macs(c, m, k, (oh, ow), groups=groups)
    if name == "separableParams":
        c, m, k, bias = args
        return separable.separable_params(c, m, k, bias=bias)
    if name == "separableMacs":
        c, m, k, oh, ow = args
        return separable.separable_macs(c, m, k, (oh, ow))
    if name == "separableRatio":
        return separable.separable_cost_ratio(*args)
    if name == "receptiveFieldPerLayer":
        return [{"size": f.size, "jump": f.jump}
                for f in atrous.receptive_field_per_layer([tuple(layer) for layer in args[0]])]
    raise KeyError(name)


def random_cases(seed: int = 0, n: int = 300) -> list:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        g = rng.choice([1, 1, 2, 4, 8])
        c, m = g * rng.randint(1, 64), g * rng.randint(1, 64)
        k, s, p, d = rng.randint(1, 7), rng.randint(1, 3), rng.randint(0, 3), rng.randint(1, 4)
        size, bias = rng.randint(1, 300), rng.random() < 0.5
        oh, ow = rng.randint(1, 112), rng.randint(1, 112)
        stack = [[rng.randint(1, 7), rng.randint(1, 3), rng.randint(1, 5)]
                 for _ in range(rng.randint(1, 8))]
        cases += [["outputSize", [size, k, s, p, d]], ["convParams", [c, m, k, g, bias]],
                  ["convMacs", [c, m, k, oh, ow, g]], ["separableParams", [c, m, k, bias]],
                  ["separableMacs", [c, m, k, oh, ow]], ["separableRatio", [m, k]],
                  ["receptiveFieldPerLayer", [stack]]]
    return cases


# Inputs course_lib rejects: the calculator must reject them too (and say why).
BAD_CASES = [
    ["outputSize", [3, 5, 1, 0, 1]],        # kernel wider than the padded input
    ["outputSize", [7, 3, 1, 0, 4]],        # dilated span 9 > 7
    ["outputSize", [8, 3, 0, 1, 1]],        # stride 0
    ["outputSize", [8, 3, 1, -1, 1]],       # negative padding
    ["outputSize", [8, 3, 1, 1, 0]],        # dilation 0
    ["outputSize", [8, 2.5, 1, 1, 1]],      # fractional kernel
    ["convParams", [16, 32, 3, 3, True]],   # groups do not divide C
    ["convParams", [12, 16, 3, 3, True]],   # groups do not divide M
    ["convParams", [0, 16, 3, 1, True]],
    ["convMacs", [16, 32, 3, 0, 4, 1]],
    ["separableRatio", [0, 3]],
    ["receptiveFieldPerLayer", [[]]],
    ["receptiveFieldPerLayer", [[[3, 0, 1]]]],
]


def test_calculator_formulas_equal_course_lib():
    cases = random_cases()
    rejected = 0
    for (name, args), result in zip(cases, run_js(cases)):
        try:
            expected = python_value(name, args)
        except ValueError:  # e.g. a random kernel wider than the padded input
            assert "error" in result, (name, args, result)
            rejected += 1
            continue
        assert "error" not in result, (name, args, result)
        if isinstance(expected, float):
            assert result["value"] == pytest.approx(expected, rel=1e-12), (name, args)
        else:
            assert result["value"] == expected, (name, args, result["value"], expected)
    assert 0 < rejected < len(cases) // 10  # both sides of the size check were exercised


def test_calculator_rejects_what_course_lib_rejects():
    for (name, args), result in zip(BAD_CASES, run_js(BAD_CASES)):
        with pytest.raises(ValueError):
            python_value(name, args)
        assert "error" in result and len(result["error"]) > 15, (name, args, result)


def test_calculator_page_results_compose_the_formulas():
    """compute() (what the page shows) against course_lib, layer and stack together."""
    p = {"c": 32, "m": 64, "k": 3, "stride": 2, "padding": 1, "dilation": 2, "groups": 4,
         "height": 57, "width": 40, "bias": True, "stack": "7/2, 3/2/1; 3/1/2\n3"}
    [result] = run_js([["compute", [p]]])
    r = result["value"]
    oh = conv.conv_output_size(57, 3, 2, 1, 2)
    ow = conv.conv_output_size(40, 3, 2, 1, 2)
    assert (r["outHeight"], r["outWidth"]) == (oh, ow)
    assert r["effectiveKernel"] == atrous.effective_kernel_size(3, 2)
    assert r["params"] == costs.conv2d_params(32, 64, 3, groups=4, bias=True)
    assert r["macs"] == costs.conv2d_macs(32, 64, 3, (oh, ow), groups=4)
    assert r["sepParams"] == separable.separable_params(32, 64, 3, bias=True)
    assert r["sepMacs"] == separable.separable_macs(32, 64, 3, (oh, ow))
    assert r["saving"] == pytest.approx(1 / separable.separable_cost_ratio(64, 3))
    field = atrous.receptive_field([(7, 2, 1), (3, 2, 1), (3, 1, 2), (3, 1, 1)])
    assert (r["rfSize"], r["rfJump"]) == (field.size, field.jump)
    [bad] = run_js([["compute", [{**p, "stack": "3/1/x"}]]])
    assert "K/stride/dilation" in bad["error"]


# --- the animated convolution (book/_static/site/conv_animation.js) -------------------------------

ANIMATION = REPO / "book" / "_static" / "site" / "conv_animation.js"

# For each layer: the animation's plan (output size, every step's reads, mult-adds) and the output
# it computes from its own seeded inputs and weights (which come back too).
ANIMATION_RUNNER = r"""
const anim = require(process.argv[1]);
const layers = JSON.parse(require("fs").readFileSync(0, "utf8"));
const results = layers.map((p) => {
  try {
    const plan = anim.plan(p);
    const { input, weights } = anim.values(p, 7);
    return { outHeight: plan.outHeight, outWidth: plan.outWidth, totalMacs: plan.totalMacs,
      macsPerOutput: plan.macsPerOutput,
      steps: plan.steps.map((s) => [s.m, s.y, s.x, s.macs,
        s.reads.filter((r) => r.inside).map((r) => [r.c, r.y, r.x])]),
      input, weights, output: anim.convolve(p, input, weights) };
  } catch (e) { return { error: e.message }; }
});
process.stdout.write(JSON.stringify(results));
"""


def run_animation(layers: list[dict]) -> list[dict]:
    proc = subprocess.run([NODE, "-e", ANIMATION_RUNNER, str(ANIMATION)], input=json.dumps(layers),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def random_layers(seed: int = 1, n: int = 40) -> list[dict]:
    rng = random.Random(seed)
    layers = []
    for _ in range(n):
        g = rng.choice([1, 1, 2, 3])
        layers.append({"c": g * rng.randint(1, 2), "m": g * rng.randint(1, 2),
                       "k": rng.randint(1, 4), "stride": rng.randint(1, 3),
                       "padding": rng.randint(0, 2), "dilation": rng.randint(1, 3),
                       "groups": g, "size": rng.randint(4, 9)})
    return layers


def _presets() -> dict[str, dict]:
    proc = subprocess.run([NODE, "-e", "process.stdout.write(JSON.stringify("
                           "require(process.argv[1]).PRESETS))", str(ANIMATION)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_animation_presets_are_the_five_kinds():
    presets = _presets()
    assert list(presets) == ["standard", "depthwise", "pointwise", "strided", "dilated"]
    assert presets["depthwise"]["groups"] == presets["depthwise"]["c"] == presets["depthwise"]["m"]
    assert presets["pointwise"]["k"] == 1 and presets["strided"]["stride"] > 1
    assert presets["dilated"]["dilation"] > 1


def test_animation_reads_computes_and_counts_what_pytorch_and_course_lib_do():
    """Output size and mult-adds against course_lib; which inputs each output reads against
    PyTorch's unfold of an image of pixel numbers; the output values against conv2d."""
    import torch
    import torch.nn.functional as F

    layers = list(_presets().values()) + random_layers()
    checked = 0
    for p, r in zip(layers, run_animation(layers)):
        try:
            out = conv.conv_output_size(p["size"], p["k"], p["stride"], p["padding"],
                                        p["dilation"])
        except ValueError:  # kernel wider than the padded input: both sides refuse it
            assert "padded input" in r["error"], (p, r)
            continue
        assert "error" not in r, (p, r)
        checked += 1
        assert (r["outHeight"], r["outWidth"]) == (out, out)
        macs = costs.conv2d_macs(p["c"], p["m"], p["k"], (out, out), groups=p["groups"])
        assert r["totalMacs"] == macs == sum(s[3] for s in r["steps"]), p
        assert r["macsPerOutput"] == macs // (p["m"] * out * out)

        # Pixel numbers 1..C*S*S (0 = padding); unfold lists what each output position reads.
        c, s, cg, mg = p["c"], p["size"], p["c"] // p["groups"], p["m"] // p["groups"]
        numbers = torch.arange(1, c * s * s + 1, dtype=torch.float64).reshape(1, c, s, s)
        patches = F.unfold(numbers, p["k"], dilation=p["dilation"], padding=p["padding"],
                           stride=p["stride"])[0].reshape(c, p["k"] ** 2, out * out)
        for m, y, x, _, reads in r["steps"]:
            group = slice((m // mg) * cg, (m // mg + 1) * cg)
            expected = sorted(int(v) - 1 for v in patches[group, :, y * out + x].flatten() if v)
            assert sorted(ch * s * s + yy * s + xx for ch, yy, xx in reads) == expected, (p, m, y, x)

        expected = F.conv2d(torch.tensor([r["input"]], dtype=torch.float64),
                            torch.tensor(r["weights"], dtype=torch.float64),
                            stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                            groups=p["groups"])[0]
        assert torch.equal(torch.tensor(r["output"], dtype=torch.float64), expected), p
    assert checked >= 30


def test_animation_rejects_impossible_layers():
    bad = [{"c": 3, "m": 2, "k": 3, "stride": 1, "padding": 0, "dilation": 1, "groups": 3,
            "size": 5},  # groups do not divide M
           {"c": 1, "m": 1, "k": 3, "stride": 1, "padding": 0, "dilation": 3, "size": 5,
            "groups": 1}]  # dilated span 7 > 5
    r = run_animation(bad)
    assert "groups = 3 must divide" in r[0]["error"] and "padded input" in r[1]["error"]
