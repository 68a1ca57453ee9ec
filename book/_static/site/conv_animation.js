/* Animated convolution for the book: plain JavaScript, no kernel, no network.
 *
 * Five presets - standard, depthwise, pointwise, strided and dilated convolution - on a small input
 * of whole numbers. The filter slides over the (zero-padded) input channels; each step computes one
 * output value, highlights the inputs and weights it reads, writes the value into the output and
 * adds its mult-adds, K²·C/g, to the counter. At the end the counter equals the layer's
 * K²·(C/g)·M·H_out·W_out.
 *
 * The arithmetic (output size, which inputs each output reads, the values, the mult-add count)
 * is exported for node: tests/test_calculator.py checks it against course_lib and PyTorch's
 * conv2d; tests/test_browser.py plays the widget in Chromium. Output sizes and mult-adds use the
 * calculator's own functions (conv_calculator.js), not a second copy of the formulas.
 *
 * Pages embed it with the {conv-animation} directive (book/_ext/conv_animation.py), which writes
 * <div class="conv-animation" data-mode="standard">; this script fills every such div.
 */
(function () {
  "use strict";

  // The calculator's formulas: required under node, its global in a browser (looked up when
  // needed, so the order in which the two scripts load does not matter).
  const calculator = () => (typeof module !== "undefined" && module.exports
    ? require("./conv_calculator.js") : window.ConvCalculator);

  /** The five presets: C, M, K, stride, padding, dilation, groups, input size (square). */
  const PRESETS = {
    standard: { c: 3, m: 2, k: 3, stride: 1, padding: 1, dilation: 1, groups: 1, size: 5,
      text: "Standard: every filter has one K×K slice per input channel and reads all C channels." },
    depthwise: { c: 3, m: 3, k: 3, stride: 1, padding: 1, dilation: 1, groups: 3, size: 5,
      text: "Depthwise (groups = C): filter m reads input channel m only, one K×K slice." },
    pointwise: { c: 3, m: 2, k: 1, stride: 1, padding: 0, dilation: 1, groups: 1, size: 5,
      text: "Pointwise (1×1): each output mixes the C channels of one pixel, nothing around it." },
    strided: { c: 3, m: 2, k: 3, stride: 2, padding: 1, dilation: 1, groups: 1, size: 7,
      text: "Stride 2: the filter jumps two pixels; the output is about half as wide." },
    dilated: { c: 2, m: 1, k: 3, stride: 1, padding: 2, dilation: 2, groups: 1, size: 7,
      text: "Dilation 2: the 3×3 taps sit two pixels apart and span 5×5, at 3×3's cost." },
  };

  function checkConfig(p) {
    const calc = calculator();
    // Throws the calculator's InputError, with its message, for a layer that cannot exist.
    calc.convParams(p.c, p.m, p.k, p.groups, false);
    const out = calc.outputSize(p.size, p.k, p.stride, p.padding, p.dilation);
    return { calc, out };
  }

  /** Every output value as one step, in the order the animation computes them (output channel,
   * then row, then column), with the inputs it reads: [{c, y, x, ky, kx, inside}] where (y, x) is
   * the position in the unpadded input (inside = false: a padding zero). */
  function plan(p) {
    const { calc, out } = checkConfig(p);
    const perGroup = p.c / p.groups, outPerGroup = p.m / p.groups;
    const steps = [];
    for (let m = 0; m < p.m; m++) {
      const first = Math.floor(m / outPerGroup) * perGroup; // first input channel of m's group
      for (let oy = 0; oy < out; oy++) {
        for (let ox = 0; ox < out; ox++) {
          const reads = [];
          for (let cl = 0; cl < perGroup; cl++) {
            for (let ky = 0; ky < p.k; ky++) {
              for (let kx = 0; kx < p.k; kx++) {
                const y = oy * p.stride - p.padding + ky * p.dilation;
                const x = ox * p.stride - p.padding + kx * p.dilation;
                const inside = y >= 0 && y < p.size && x >= 0 && x < p.size;
                reads.push({ c: first + cl, cl, y, x, ky, kx, inside });
              }
            }
          }
          steps.push({ m, y: oy, x: ox, reads, macs: reads.length });
        }
      }
    }
    return {
      outHeight: out, outWidth: out, steps,
      macsPerOutput: p.k * p.k * perGroup,
      totalMacs: calc.convMacs(p.c, p.m, p.k, out, out, p.groups),
    };
  }

  /** Small whole numbers, the same on every page load: inputs 0..2, weights -1..1. */
  function values(p, seed = 1) {
    let state = seed >>> 0;
    const next = (n) => { // Park-Miller: reproducible without Math.random
      state = (state * 48271) % 2147483647 || 1;
      return state % n;
    };
    const grid = (rows, f) => Array.from({ length: rows }, () => Array.from({ length: rows }, f));
    const input = Array.from({ length: p.c }, () => grid(p.size, () => next(3)));
    const weights = Array.from({ length: p.m },
      () => Array.from({ length: p.c / p.groups }, () => grid(p.k, () => next(3) - 1)));
    return { input, weights };
  }

  /** The value of one step: the sum of its reads' products (padding reads add zero). */
  function stepValue(step, input, weights) {
    let sum = 0;
    for (const r of step.reads) {
      if (r.inside) sum += input[r.c][r.y][r.x] * weights[step.m][r.cl][r.ky][r.kx];
    }
    return sum;
  }

  /** The whole output, [M][H_out][W_out], step by step. */
  function convolve(p, input, weights) {
    const pl = plan(p);
    const output = Array.from({ length: p.m }, () => Array.from({ length: pl.outHeight },
      () => new Array(pl.outWidth).fill(0)));
    for (const step of pl.steps) output[step.m][step.y][step.x] = stepValue(step, input, weights);
    return output;
  }

  const api = { PRESETS, plan, values, stepValue, convolve };
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api; // node: tests/test_calculator.py
  }
  if (typeof window !== "undefined") {
    window.ConvAnimation = api; // tests/test_browser.py reads the presets from the page
  }
  if (typeof document === "undefined") {
    return;
  }

  // --- the widget -------------------------------------------------------------------------------

  const SPEEDS = [["slow", 900], ["normal", 350], ["fast", 40]];
  const fmt = (n) => n.toLocaleString("en-US");

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A grid of cells; cells[y][x]. ``pad`` extra rows/columns of padding on each side. */
  function gridTable(rows, pad, title, valueAt) {
    const box = el("figure", "conv-anim-grid");
    box.appendChild(el("figcaption", "", title));
    const table = el("table");
    const cells = [];
    for (let y = -pad; y < rows + pad; y++) {
      const tr = el("tr");
      const line = [];
      for (let x = -pad; x < rows + pad; x++) {
        const inside = y >= 0 && y < rows && x >= 0 && x < rows;
        const td = el("td", inside ? "" : "conv-anim-pad", inside ? valueAt(y, x) : "0");
        tr.appendChild(td);
        line.push(td);
      }
      table.appendChild(tr);
      cells.push(line);
    }
    box.appendChild(table);
    return { box, cells, pad };
  }

  function build(root) {
    const form = el("form", "conv-anim");
    form.setAttribute("aria-label", "animated convolution");
    form.addEventListener("submit", (e) => e.preventDefault());
    form.appendChild(el("p", "conv-anim-title", "Animated convolution (runs in your browser)"));

    const controls = el("div", "conv-anim-controls");
    const modeSelect = el("select");
    modeSelect.name = "mode";
    modeSelect.setAttribute("aria-label", "kind of convolution");
    for (const mode of Object.keys(PRESETS)) {
      const option = el("option", "", mode);
      option.value = mode;
      modeSelect.appendChild(option);
    }
    modeSelect.value = PRESETS[root.dataset.mode] ? root.dataset.mode : "standard";
    const speedSelect = el("select");
    speedSelect.name = "speed";
    speedSelect.setAttribute("aria-label", "speed");
    for (const [name, ms] of SPEEDS) {
      const option = el("option", "", name);
      option.value = String(ms);
      speedSelect.appendChild(option);
    }
    speedSelect.value = "350";
    const button = (name, text) => {
      const b = el("button", "", text);
      b.type = "button";
      b.name = name;
      return b;
    };
    const play = button("play", "▶ play");
    const step = button("step", "step");
    const reset = button("reset", "reset");
    controls.append(modeSelect, play, step, reset, speedSelect);
    form.appendChild(controls);

    const about = el("p", "conv-anim-about");
    const stage = el("div", "conv-anim-stage");
    const status = el("p", "conv-anim-status");
    status.setAttribute("aria-live", "polite");
    const counter = el("p", "conv-anim-counter");
    form.append(about, stage, status, counter);
    root.replaceChildren(form);

    let state; // everything about the preset being shown
    let timer = null;

    function setPlaying(on) {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      form.dataset.state = on ? "playing" : (state.next >= state.plan.steps.length ? "done"
        : "paused");
      play.textContent = on ? "❚❚ pause" : "▶ play";
      if (on) tick();
    }

    function tick() {
      advance();
      if (state.next >= state.plan.steps.length) {
        setPlaying(false);
        return;
      }
      timer = setTimeout(tick, Number(speedSelect.value));
    }

    function load(mode) {
      const p = PRESETS[mode];
      const pl = plan(p);
      const { input, weights } = values(p);
      about.textContent = `${p.text} C = ${p.c}, M = ${p.m}, K = ${p.k}, stride ${p.stride}, ` +
        `padding ${p.padding}, dilation ${p.dilation}, groups ${p.groups}; ` +
        `input ${p.size}×${p.size}, output ${pl.outHeight}×${pl.outWidth}.`;
      stage.replaceChildren();
      const row = (label) => {
        const r = el("div", "conv-anim-row");
        r.appendChild(el("p", "conv-anim-label", label));
        stage.appendChild(r);
        return r;
      };
      const inputs = row(`input: C = ${p.c} channel${p.c > 1 ? "s" : ""}, ` +
        `zero padding ${p.padding} (grey)`);
      const inputGrids = input.map((ch, c) => {
        const g = gridTable(p.size, p.padding, `channel ${c}`, (y, x) => ch[y][x]);
        g.box.dataset.input = String(c);
        inputs.appendChild(g.box);
        return g;
      });
      const filters = row(`filters: M = ${p.m}, each ${p.k}×${p.k}×${p.c / p.groups} ` +
        `(C/g = ${p.c / p.groups} slice${p.c / p.groups > 1 ? "s" : ""})`);
      const filterGrids = weights.map((w, m) => w.map((slice, cl) => {
        const g = gridTable(p.k, 0, `filter ${m}, slice ${cl}`, (y, x) => slice[y][x]);
        g.box.dataset.filter = `${m}/${cl}`;
        filters.appendChild(g.box);
        return g;
      }));
      const outputs = row(`output: M = ${p.m} channel${p.m > 1 ? "s" : ""}, ` +
        `${pl.outHeight}×${pl.outWidth}`);
      const outputGrids = weights.map((_, m) => {
        const g = gridTable(pl.outHeight, 0, `channel ${m}`, () => "");
        g.box.dataset.output = String(m);
        outputs.appendChild(g.box);
        return g;
      });
      state = { p, plan: pl, input, weights, inputGrids, filterGrids, outputGrids, next: 0,
        macs: 0 };
      form.dataset.mode = mode;
      form.dataset.total = String(pl.totalMacs);
      status.textContent = "press play, or step through one output value at a time";
      showCount();
      setPlaying(false);
    }

    function showCount() {
      const pl = state.plan, p = state.p;
      counter.innerHTML = `mult-adds so far: <b data-anim="macs">${fmt(state.macs)}</b> of ` +
        `<b data-anim="total">${fmt(pl.totalMacs)}</b> = K²·(C/g)·M·H<sub>out</sub>·` +
        `W<sub>out</sub> = ${p.k}²·${p.c / p.groups}·${p.m}·${pl.outHeight}·${pl.outWidth}`;
      form.dataset.macs = String(state.macs);
      form.dataset.filled = String(state.next);
    }

    function clearHighlights() {
      stage.querySelectorAll(".conv-anim-read, .conv-anim-current").forEach((c) =>
        c.classList.remove("conv-anim-read", "conv-anim-current"));
      stage.querySelectorAll(".conv-anim-active").forEach((c) =>
        c.classList.remove("conv-anim-active"));
    }

    function advance() {
      const s = state, pl = s.plan;
      if (s.next >= pl.steps.length) return;
      const st = pl.steps[s.next];
      clearHighlights();
      for (const r of st.reads) {
        const g = s.inputGrids[r.c];
        g.cells[r.y + g.pad][r.x + g.pad].classList.add("conv-anim-read");
        s.filterGrids[st.m][r.cl].cells[r.ky][r.kx].classList.add("conv-anim-read");
        g.box.classList.add("conv-anim-active");
      }
      s.filterGrids[st.m].forEach((g) => g.box.classList.add("conv-anim-active"));
      const value = stepValue(st, s.input, s.weights);
      const cell = s.outputGrids[st.m].cells[st.y][st.x];
      cell.textContent = String(value);
      cell.classList.add("conv-anim-current", "conv-anim-filled");
      s.outputGrids[st.m].box.classList.add("conv-anim-active");
      s.next += 1;
      s.macs += st.macs;
      const channels = [...new Set(st.reads.map((r) => r.c))].join(", ");
      status.textContent = `output channel ${st.m}, row ${st.y}, column ${st.x} = ${value}: ` +
        `${st.macs} mult-adds (K²·C/g = ${s.p.k}²·${s.p.c / s.p.groups}), reading input ` +
        `channel${channels.includes(",") ? "s" : ""} ${channels}` +
        (st.reads.some((r) => !r.inside) ? " and some padding zeros" : "") + ".";
      showCount();
    }

    play.addEventListener("click", () => {
      if (form.dataset.state === "playing") {
        setPlaying(false);
        return;
      }
      if (state.next >= state.plan.steps.length) load(modeSelect.value);
      setPlaying(true);
    });
    step.addEventListener("click", () => {
      setPlaying(false);
      advance();
      setPlaying(false);
    });
    reset.addEventListener("click", () => load(modeSelect.value));
    modeSelect.addEventListener("change", () => load(modeSelect.value));
    load(modeSelect.value);
  }

  function mountAll() {
    if (!window.ConvCalculator) {
      document.querySelectorAll("div.conv-animation").forEach((d) => {
        d.textContent = "The animation needs conv_calculator.js, which did not load.";
      });
      return;
    }
    document.querySelectorAll("div.conv-animation").forEach(build);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mountAll);
  } else {
    mountAll();
  }
})();
