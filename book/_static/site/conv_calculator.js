/* Convolution calculator for the book: plain JavaScript, no kernel, no network.
 *
 * Enter a layer (C input channels, M output channels, kernel K, stride, padding, dilation, groups,
 * input height and width) and a stack of layers; it shows the output size, parameters, mult-adds,
 * what the depthwise-separable version saves and the stack's receptive field.
 *
 * The formulas are the book's, in the book's notation, and mirror course_lib: conv.conv_output_size,
 * costs.conv2d_params / conv2d_macs, separable.separable_params / separable_macs /
 * separable_cost_ratio, atrous.receptive_field. tests/test_calculator.py runs the same cases
 * through this file (under node) and through course_lib; tests/test_browser.py types into it.
 *
 * Pages embed it with the {conv-calculator} directive (book/_ext/conv_calculator.py), which writes
 * <div class="conv-calculator" data-c="..." ...>; this script fills every such div.
 */
(function () {
  "use strict";

  class InputError extends Error {}

  function checkInt(name, value, min) {
    if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
      throw new InputError(`${name} must be a whole number ≥ ${min}, got ${value}`);
    }
    return value;
  }

  function checkSafe(name, value) {
    if (!Number.isSafeInteger(value)) {
      throw new InputError(`${name} is too large to count exactly (over 2^53)`);
    }
    return value;
  }

  /** Span of a dilated kernel: d (K - 1) + 1 pixels. */
  function effectiveKernelSize(k, dilation) {
    checkInt("kernel size K", k, 1);
    checkInt("dilation", dilation, 1);
    return dilation * (k - 1) + 1;
  }

  /** floor((size + 2p - r(K - 1) - 1) / s) + 1, as course_lib.conv.conv_output_size. */
  function outputSize(size, k, stride, padding, dilation) {
    checkInt("input size", size, 1);
    checkInt("stride", stride, 1);
    checkInt("padding", padding, 0);
    const span = effectiveKernelSize(k, dilation);
    const padded = size + 2 * padding;
    if (span > padded) {
      throw new InputError(`the (dilated) kernel spans ${span} pixels but the padded input is ` +
        `only ${padded} wide: shrink K or the dilation, or add padding`);
    }
    return Math.floor((padded - span) / stride) + 1;
  }

  function checkGroups(c, m, groups) {
    checkInt("input channels C", c, 1);
    checkInt("output channels M", m, 1);
    checkInt("groups", groups, 1);
    if (c % groups !== 0 || m % groups !== 0) {
      throw new InputError(`groups = ${groups} must divide both C = ${c} and M = ${m}`);
    }
  }

  /** K^2 (C / g) M weights, plus M biases. */
  function convParams(c, m, k, groups = 1, bias = true) {
    checkGroups(c, m, groups);
    checkInt("kernel size K", k, 1);
    return checkSafe("parameters", k * k * (c / groups) * m + (bias ? m : 0));
  }

  /** K^2 (C / g) M H_out W_out mult-adds (biases not counted). */
  function convMacs(c, m, k, outHeight, outWidth, groups = 1) {
    checkGroups(c, m, groups);
    checkInt("kernel size K", k, 1);
    checkInt("output height", outHeight, 1);
    checkInt("output width", outWidth, 1);
    return checkSafe("mult-adds", k * k * (c / groups) * m * outHeight * outWidth);
  }

  /** Depthwise (K^2 C) + pointwise (C M) weights, plus C + M biases if bias. */
  function separableParams(c, m, k, bias = false) {
    return convParams(c, c, k, c, bias) + convParams(c, m, 1, 1, bias);
  }

  function separableMacs(c, m, k, outHeight, outWidth) {
    return convMacs(c, c, k, outHeight, outWidth, c) + convMacs(c, m, 1, outHeight, outWidth, 1);
  }

  /** Separable / standard cost: 1/M + 1/K^2 (C and the image size cancel). */
  function separableRatio(m, k) {
    checkInt("output channels M", m, 1);
    checkInt("kernel size K", k, 1);
    return 1 / m + 1 / (k * k);
  }

  /** R_l = R_{l-1} + (K_eff - 1) J_{l-1}, J_l = J_{l-1} s_l from R_0 = J_0 = 1, per layer. */
  function receptiveFieldPerLayer(layers) {
    if (!Array.isArray(layers) || layers.length === 0) {
      throw new InputError("the stack is empty: give at least one layer K/stride/dilation");
    }
    let size = 1, jump = 1;
    return layers.map(([k, stride, dilation], i) => {
      checkInt(`layer ${i + 1} stride`, stride, 1);
      size += (effectiveKernelSize(k, dilation) - 1) * jump;
      jump *= stride;
      return { size: checkSafe("receptive field", size), jump: checkSafe("jump", jump) };
    });
  }

  /** "3/1/1, 3/2, 5" -> [[3, 1, 1], [3, 2, 1], [5, 1, 1]] (K/stride/dilation per layer). */
  function parseStack(text) {
    const tokens = String(text).split(/[,;\n]+/).map((t) => t.trim()).filter((t) => t);
    return tokens.map((token, i) => {
      const parts = token.split("/").map((p) => p.trim());
      if (parts.length > 3 || parts.some((p) => !/^\d+$/.test(p))) {
        throw new InputError(`layer ${i + 1} ("${token}") must be K, K/stride or ` +
          "K/stride/dilation, whole numbers");
      }
      const [k, stride = 1, dilation = 1] = parts.map(Number);
      return [k, stride, dilation];
    });
  }

  /** Everything the calculator shows, from one set of inputs (numbers) and a stack text. */
  function compute(p) {
    const outHeight = outputSize(p.height, p.k, p.stride, p.padding, p.dilation);
    const outWidth = outputSize(p.width, p.k, p.stride, p.padding, p.dilation);
    const params = convParams(p.c, p.m, p.k, p.groups, p.bias);
    const macs = convMacs(p.c, p.m, p.k, outHeight, outWidth, p.groups);
    const standardMacs = convMacs(p.c, p.m, p.k, outHeight, outWidth, 1);
    const sepMacs = separableMacs(p.c, p.m, p.k, outHeight, outWidth);
    const field = receptiveFieldPerLayer(parseStack(p.stack));
    return {
      outHeight, outWidth, effectiveKernel: effectiveKernelSize(p.k, p.dilation), params, macs,
      sepParams: separableParams(p.c, p.m, p.k, p.bias), sepMacs,
      sepRatio: separableRatio(p.m, p.k), saving: standardMacs / sepMacs,
      field, rfSize: field[field.length - 1].size, rfJump: field[field.length - 1].jump,
    };
  }

  const api = {
    InputError, effectiveKernelSize, outputSize, convParams, convMacs, separableParams,
    separableMacs, separableRatio, receptiveFieldPerLayer, parseStack, compute,
  };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api; // node: tests/test_calculator.py
  }
  if (typeof window !== "undefined") {
    window.ConvCalculator = api; // the animated convolution (conv_animation.js) uses the formulas
  }
  if (typeof document === "undefined") {
    return;
  }

  // --- the widget -------------------------------------------------------------------------------

  const FIELDS = [
    // [key, label, default, minimum]
    ["c", "input channels C", 3, 1], ["m", "output channels M", 16, 1],
    ["k", "kernel size K", 3, 1], ["stride", "stride s", 1, 1], ["padding", "padding p", 1, 0],
    ["dilation", "dilation r", 1, 1], ["groups", "groups g", 1, 1],
    ["height", "input height H", 32, 1], ["width", "input width W", 32, 1],
  ];
  const fmt = (n) => n.toLocaleString("en-US");

  function build(root, index) {
    const form = document.createElement("form");
    form.className = "conv-calculator-form";
    form.setAttribute("aria-label", "convolution calculator");
    const title = document.createElement("p");
    title.className = "conv-calculator-title";
    title.textContent = "Convolution calculator (runs in your browser)";
    form.appendChild(title);
    form.addEventListener("submit", (e) => e.preventDefault());
    const grid = document.createElement("div");
    grid.className = "conv-calculator-inputs";
    for (const [key, label, fallback, min] of FIELDS) {
      const id = `conv-calc-${index}-${key}`;
      const wrap = document.createElement("label");
      wrap.htmlFor = id;
      wrap.textContent = label;
      const input = document.createElement("input");
      Object.assign(input, { id, type: "number", min: String(min), step: "1" });
      input.name = key;
      input.value = root.dataset[key] ?? String(fallback);
      wrap.appendChild(input);
      grid.appendChild(wrap);
    }
    const biasWrap = document.createElement("label");
    biasWrap.className = "conv-calculator-bias";
    const bias = document.createElement("input");
    Object.assign(bias, { type: "checkbox", name: "bias", id: `conv-calc-${index}-bias` });
    bias.checked = root.dataset.bias === "true";
    biasWrap.append(bias, " bias");
    grid.appendChild(biasWrap);
    form.appendChild(grid);

    const stackLabel = document.createElement("label");
    stackLabel.className = "conv-calculator-stack";
    stackLabel.textContent = "stack for the receptive field, one K/stride/dilation per layer: ";
    const stack = document.createElement("input");
    Object.assign(stack, { type: "text", name: "stack", id: `conv-calc-${index}-stack` });
    stack.value = root.dataset.stack ?? "3/1/1, 3/1/2, 3/1/5";
    stack.spellcheck = false;
    stackLabel.appendChild(stack);
    const add = document.createElement("button");
    add.type = "button";
    add.name = "append-layer";
    add.textContent = "append this layer";
    form.append(stackLabel, add);

    const out = document.createElement("dl");
    out.className = "conv-calculator-results";
    out.setAttribute("aria-live", "polite");
    const error = document.createElement("p");
    error.className = "conv-calculator-error";
    error.setAttribute("role", "alert");
    form.append(out, error);
    root.replaceChildren(form);

    const read = () => {
      const p = {};
      for (const [key] of FIELDS) {
        const raw = form.elements[key].value.trim();
        p[key] = raw === "" ? NaN : Number(raw);
      }
      p.bias = bias.checked;
      p.stack = stack.value;
      return p;
    };
    const row = (key, term, value) =>
      `<dt>${term}</dt><dd data-out="${key}">${value}</dd>`;
    const update = () => {
      let r;
      try {
        r = compute(read());
      } catch (e) {
        if (!(e instanceof InputError)) throw e;
        out.innerHTML = "";
        error.textContent = e.message;
        return;
      }
      error.textContent = "";
      const perLayer = r.field.map((f, i) => `${i + 1}: ${f.size}`).join(", ");
      out.innerHTML = [
        row("out_size", "output size H<sub>out</sub> × W<sub>out</sub>",
          `${r.outHeight} × ${r.outWidth}`),
        row("effective_kernel", "kernel span r(K − 1) + 1", r.effectiveKernel),
        row("params", "parameters K²·(C/g)·M" + (read().bias ? " + M" : ""), fmt(r.params)),
        row("macs", "mult-adds K²·(C/g)·M·H<sub>out</sub>·W<sub>out</sub>", fmt(r.macs)),
        row("sep_params", "depthwise-separable parameters K²C + CM" +
          (read().bias ? " + C + M" : ""), fmt(r.sepParams)),
        row("sep_macs", "depthwise-separable mult-adds (K²C + CM)·H<sub>out</sub>·W<sub>out</sub>",
          fmt(r.sepMacs)),
        row("sep_ratio", "separable / standard (g = 1): 1/M + 1/K²", r.sepRatio.toFixed(4)),
        row("saving", "saving factor", `${r.saving.toFixed(2)}×`),
        row("rf_size", "receptive field of the stack (pixels)", r.rfSize),
        row("rf_jump", "jump (product of the strides)", r.rfJump),
        row("rf_layers", "field after each layer", perLayer),
      ].join("");
    };
    add.addEventListener("click", () => {
      const p = read();
      const layer = `${p.k}/${p.stride}/${p.dilation}`;
      stack.value = stack.value.trim() ? `${stack.value.trim()}, ${layer}` : layer;
      update();
    });
    form.addEventListener("input", update);
    update();
  }

  function mountAll() {
    document.querySelectorAll("div.conv-calculator").forEach(build);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mountAll);
  } else {
    mountAll();
  }
})();
