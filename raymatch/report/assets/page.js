// The interactive report's script: decodes the embedded counts and draws every section with plotly.
// Data: the JSON of <script id="raymatch-data"> (raymatch/report/html.py, page_payload). A pair's similarity at
// slider step k is counts[pair][k] / totals[pair]: exact, since counts are integers.
(async function () {
  "use strict";
  const data = JSON.parse(document.getElementById("raymatch-data").textContent);
  const page = document.getElementById("page");
  const steps = data.steps;
  const plotConfig = { displaylogo: false, responsive: true };
  const state = { step: data.initial, population: data.populations[0], pair: null };
  const decoded = {}; // decoded[population][layer] = {counts, totals, first, second, orders, n, index}

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value; else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function epsOf(step) { return step / steps; }
  function epsText(step) { return epsOf(step).toFixed(3); }

  async function unpack(packed) {
    const binary = atob(packed.data);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const view = new DataView(await new Response(stream).arrayBuffer());
    const readers = {
      uint8: [1, (i) => view.getUint8(i), Uint8Array], uint16: [2, (i) => view.getUint16(i, true), Uint16Array],
      uint32: [4, (i) => view.getUint32(i, true), Uint32Array], float32: [4, (i) => view.getFloat32(i, true), Float32Array],
    };
    const [size, read, Type] = readers[packed.dtype];
    const out = new Type(view.byteLength / size);
    for (let i = 0; i < out.length; i++) out[i] = read(i * size);
    return out;
  }

  async function decodeAll() {
    for (const [population, byLayer] of Object.entries(data.pairs)) {
      decoded[population] = {};
      for (const [layer, packed] of Object.entries(byLayer)) {
        const [nSteps, nPairs] = packed.counts.shape; // step-major: counts[k * nPairs + p]
        const counts = Uint32Array.from(await unpack(packed.counts));
        for (let i = nPairs; i < counts.length; i++) counts[i] += counts[i - nPairs];
        const entry = {
          counts, nSteps, nPairs, models: packed.models, n: packed.models.length, totals: await unpack(packed.totals),
          first: await unpack(packed.first), second: await unpack(packed.second), orders: await unpack(packed.orders),
          index: new Map(), position: new Map(packed.models.map((model, i) => [model, i])),
        };
        for (let p = 0; p < nPairs; p++) entry.index.set(entry.first[p] + "," + entry.second[p], p);
        if (packed.neurons) entry.neurons = { ...packed.neurons, values: await unpack({ ...packed.neurons, dtype: "float32" }) };
        decoded[population][layer] = entry;
      }
    }
  }

  function similarity(entry, pair, step) { return entry.counts[step * entry.nPairs + pair] / entry.totals[pair]; }

  function nullPopulations(population) {
    return data.populations.filter((name) => name !== population);
  }

  // --- sections -----------------------------------------------------------------------------------------------
  function section(id, title, caption) {
    const node = el("section", { id }, el("h2", { text: title }));
    if (caption) node.append(el("p", { class: "caption", text: caption }));
    page.append(node);
    return node;
  }

  function skippedLine(node, key) {
    node.append(el("p", { class: "skipped", text: "Not shown: " + data.skipped[key] + "." }));
  }

  function figureDiv(node, id) { const div = el("div", { id, class: "figure" }); node.append(div); return div; }

  function controls() {
    const slider = el("input", { type: "range", id: "eps-slider", min: "0", max: String(steps), step: "1",
                                 value: String(state.step), "aria-label": "ε" });
    const output = el("output", { id: "eps-value", for: "eps-slider", text: epsText(state.step) });
    const bar = el("div", { id: "controls" }, el("label", { for: "eps-slider", text: "ε" }), slider, output,
      el("span", { class: "note", text: `steps of 1/${steps}; every number below is exact at this ε` }));
    page.append(bar);
    slider.addEventListener("input", () => setStep(Number(slider.value)));
  }

  function atEpsTable(node) {
    const header = el("tr", {}, el("th", { text: "layer" }), ...data.populations.map((p) => el("th", { text: p })));
    const table = el("table", { id: "at-eps" }, header);
    data.layers.forEach((layer, li) => {
      const row = el("tr", {}, el("th", { text: layer }));
      data.populations.forEach((population, pi) => {
        row.append(el("td", { id: `sim-${li}-${pi}`, class: pi ? "num null" : "num", "data-layer": layer,
                              "data-population": population }));
      });
      table.append(row);
    });
    node.append(el("h3", { id: "at-eps-title" }), table);
  }

  function updateTable() {
    document.getElementById("at-eps-title").textContent =
      `Mean similarity over pairs at ε = ${epsText(state.step)} (each pair's repeats averaged)`;
    data.layers.forEach((layer, li) => data.populations.forEach((population, pi) => {
      const cell = document.getElementById(`sim-${li}-${pi}`);
      const values = data.means[population][layer];
      const value = values ? values[state.step] : null;
      cell.textContent = value === null ? "—" : value.toFixed(3);
      cell.dataset.value = value === null ? "" : String(value);
    }));
  }

  function moveSliderLines(div) {
    if (!div || !div.layout) return;
    const update = {};
    (div.layout.shapes || []).forEach((shape, i) => {
      if (shape.name === "slider") { update[`shapes[${i}].x0`] = epsOf(state.step); update[`shapes[${i}].x1`] = epsOf(state.step); }
    });
    if (Object.keys(update).length) Plotly.relayout(div, update);
  }

  function matrixTrace(population, layer) {
    const entry = decoded[population][layer];
    const order = entry.orders.subarray(state.step * entry.n, (state.step + 1) * entry.n);
    const where = new Array(entry.n);
    order.forEach((model, position) => { where[model] = position; });
    const z = Array.from({ length: entry.n }, () => new Array(entry.n).fill(null));
    for (let p = 0; p < entry.first.length; p++) {
      const i = where[entry.first[p]], j = where[entry.second[p]];
      z[i][j] = z[j][i] = similarity(entry, p, state.step);
    }
    const labels = Array.from(order, (model) => data.labels[entry.models[model]]);
    const others = nullPopulations(population).map((name) => [name, decoded[name] && decoded[name][layer]]).filter((x) => x[1]);
    const nullText = (a, b) => others.map(([name, other]) => {
      const pair = other.index.get(other.position.get(a) + "," + other.position.get(b));
      const mean = data.means[name][layer][state.step];
      return pair === undefined ? `${name}: mean ${mean.toFixed(3)}` :
        `${name} (this pair): ${similarity(other, pair, state.step).toFixed(3)}`;
    }).join("<br>");
    const custom = z.map((row, i) => row.map((value, j) => {
      const a = entry.models[order[i]], b = entry.models[order[j]];
      return [data.labels[a].text, data.labels[b].text, i === j ? "" : nullText(a, b)];
    }));
    return {
      type: "heatmap", z, customdata: custom, zmin: 0, zmax: 1, colorscale: "Viridis",
      colorbar: { title: { text: "similarity" }, thickness: 12 },
      hovertemplate: `${population} · ${layer} · ε ${epsText(state.step)}<br>a: %{customdata[0]}<br>b: %{customdata[1]}` +
        "<br>similarity %{z:.3f}<br>null — %{customdata[2]}<extra></extra>",
      xgap: entry.n <= 40 ? 1 : 0, ygap: entry.n <= 40 ? 1 : 0, tickLabels: labels.map((x) => x.label),
    };
  }

  function matrixLayout(layer, trace) {
    const few = trace.tickLabels.length <= 40;
    const ticks = { tickmode: "array", tickvals: trace.tickLabels.map((_, i) => i), ticktext: trace.tickLabels,
                    showticklabels: few, ticks: few ? "outside" : "", showgrid: false, zeroline: false };
    return {
      title: { text: `${layer}: ${state.population} at ε = ${epsText(state.step)} (clustered)`, x: 0.01, font: { size: 13 },
               yref: "container", y: 1, yanchor: "top", pad: { t: 30 } },
      height: 490, margin: { l: few ? 110 : 40, r: 10, t: 70, b: few ? 110 : 40 }, font: { family: "DejaVu Sans, Arial, sans-serif", size: 11 },
      xaxis: { ...ticks, tickangle: -45, title: { text: "model b" } },
      yaxis: { ...ticks, autorange: "reversed", title: { text: few ? "" : "model a" } },
    };
  }

  async function drawMatrices(react) {
    for (const [li, layer] of data.layers.entries()) {
      const div = document.getElementById(`fig-matrix-${li}`);
      if (!decoded[state.population] || !decoded[state.population][layer]) { Plotly.purge(div); div.textContent = ""; continue; }
      const trace = matrixTrace(state.population, layer);
      const layout = matrixLayout(layer, trace);
      delete trace.tickLabels;
      await (react ? Plotly.react : Plotly.newPlot)(div, [trace], layout, plotConfig);
      if (!react && data.neurons) div.on("plotly_click", (event) => selectPair(layer, event.points[0]));
    }
  }

  function matrices() {
    const node = section("matrices", "Model × model similarity at the slider's ε",
      "Each layer's pairs at the chosen ε, rows and columns ordered by an average-linkage hierarchical clustering " +
      "of 1 − similarity at that ε (scipy.cluster.hierarchy; a pair not computed counts as 1). Hover names both " +
      "models and the null: the same pair of the permuted null where there is one, else the null's mean." +
      (data.neurons ? " Click a cell to see that pair's neurons below." : ""));
    const select = el("select", { id: "matrix-population" }, ...data.populations.filter((p) => decoded[p])
      .map((p) => el("option", { value: p, text: p })));
    select.addEventListener("change", () => { state.population = select.value; drawMatrices(true); });
    node.append(el("label", { for: "matrix-population", text: "population " }), select);
    const box = el("div", { class: "matrices" });
    data.layers.forEach((_, li) => figureDiv(box, `fig-matrix-${li}`));
    node.append(box);
  }

  function selectPair(layer, point) {
    const entry = decoded[state.population][layer];
    const order = entry.orders.subarray(state.step * entry.n, (state.step + 1) * entry.n);
    const pair = entry.index.get(order[point.y] + "," + order[point.x]) ?? entry.index.get(order[point.x] + "," + order[point.y]);
    if (pair !== undefined) { state.pair = { population: state.population, layer, pair }; drawNeurons(false); }
  }

  function neuronTraces() {
    const { population, layer, pair } = state.pair;
    const entry = decoded[population][layer];
    const { n_a: nA, n_b: nB, values } = entry.neurons;
    const row = values.subarray(pair * (nA + nB), (pair + 1) * (nA + nB));
    const side = (start, count, name, colour) => {
      const finite = Array.from(row.subarray(start, start + count)).filter(Number.isFinite).sort((x, y) => x - y);
      return { type: "scatter", mode: "markers", name, x: finite.map((_, i) => i), y: finite,
               marker: { color: colour, size: 6, symbol: start ? "x" : "circle-open" },
               hovertemplate: `${name}: neuron rank %{x}, critical ε %{y:.4f}<extra></extra>` };
    };
    const a = entry.models[entry.first[pair]], b = entry.models[entry.second[pair]];
    return [side(0, nA, "model a: " + data.labels[a].label, "#1f77b4"), side(nA, nB, "model b: " + data.labels[b].label, "#ff7f0e")];
  }

  function drawNeurons(first) {
    const div = document.getElementById("fig-neurons");
    const { population, layer } = state.pair;
    const layout = {
      title: { text: `${population} · ${layer}: each neuron's critical ε (matched where below the green line)`, x: 0.01, font: { size: 14 } },
      height: 380, font: { family: "DejaVu Sans, Arial, sans-serif", size: 11 }, margin: { l: 60, r: 20, t: 50, b: 50 },
      xaxis: { title: { text: "neuron (sorted by critical ε)" } }, yaxis: { title: { text: "critical ε" }, range: [0, 1.02] },
      shapes: [{ type: "line", name: "slider", xref: "paper", x0: 0, x1: 1, y0: epsOf(state.step), y1: epsOf(state.step), line: { color: "#2ca02c", width: 2 } }],
    };
    return (first ? Plotly.newPlot : Plotly.react)(div, neuronTraces(), layout, plotConfig);
  }

  function staticFigure(key, id, title, caption) {
    const node = section(id, title, caption);
    if (!data.figures[key]) { skippedLine(node, key); return null; }
    return [figureDiv(node, `fig-${key}`), data.figures[key]];
  }

  function tableOf(headers, rows, id) {
    const table = el("table", id ? { id } : {});
    if (headers) table.append(el("tr", {}, ...headers.map((h) => el("th", { text: h }))));
    rows.forEach((row) => table.append(el("tr", {}, ...row.map((cell) => el("td", { text: cell })))));
    return table;
  }

  function studySection() {
    const node = section("study", "The study: configuration and runs");
    node.append(el("h3", { text: "Runs" }));
    node.append(data.tables.runs.length ? tableOf(["run", "code version", "started", "took", "status", "computed",
      "skipped", "failed", "error"], data.tables.runs, "runs") : el("p", { class: "skipped", text: "No runs recorded." }));
    node.append(el("h3", { text: "Failed curves" }));
    node.append(data.tables.failed.length ? tableOf(["layer", "failed curves", "first error"], data.tables.failed, "failed")
      : el("p", { class: "note", text: "None: every stored curve is ok." }));
    const details = el("details", {}, el("summary", { text: "Configuration (study record)" }),
      tableOf(["key", "value"], data.tables.config, "config"));
    node.append(details);
  }

  function setStep(step) {
    state.step = step;
    document.getElementById("eps-value").textContent = epsText(step);
    if (data.figures.heatmap) updateTable();
    if (!state.pending) {
      state.pending = true;
      requestAnimationFrame(async () => {
        state.pending = false;
        ["fig-heatmap", "fig-curves", "fig-neurons"].forEach((id) => moveSliderLines(document.getElementById(id)));
        if (data.figures.heatmap) await drawMatrices(true);
        if (state.pair && data.neurons) {
          const div = document.getElementById("fig-neurons");
          Plotly.relayout(div, { "shapes[0].y0": epsOf(state.step), "shapes[0].y1": epsOf(state.step) });
        }
      });
    }
  }

  // --- build ------------------------------------------------------------------------------------------------------
  await decodeAll();
  const drawn = [];
  const facts = section("overview", "Overview");
  facts.append(el("p", { class: "note", text: `Populations: ${data.populations.join(", ") || "none"}; layers in network order: ` +
    `${data.layers.join(", ") || "none"}. The ε slider moves every green line and recomputes the table and the model matrices.` }));
  facts.append(tableOf(null, data.facts, "facts"));
  if (data.figures.heatmap) {
    controls();
    const node = section("similarity", "Similarity over ε, trained beside the nulls",
      "Mean maximum-match similarity over pairs: a neuron is matched at ε when its critical ε ≤ max(ε, exact_tol); " +
      "a pair's similarity is its matched neurons over n_a + n_b.");
    atEpsTable(node);
    updateTable();
    drawn.push([figureDiv(node, "fig-heatmap"), data.figures.heatmap]);
    matrices();
  } else {
    skippedLine(section("similarity", "Similarity over ε"), "similarity");
  }
  for (const [key, id, title, caption] of [
    ["curves", "curves", "ε-curves with model-bootstrap bands", null],
    ["universality", "universality", `Universality at the report's ε`, "universality(ε) of the results views: per neuron, the share of the other models in whose maximum match it lies."],
    ["cross", "cross-layers", "Cross-layer heatmap", null],
    ["trajectory", "trajectories", "Trajectories", null],
  ]) {
    const made = staticFigure(key, id, title, caption);
    if (made) drawn.push(made);
  }
  if (data.neurons && data.figures.heatmap) {
    const node = section("neurons", "Neurons of one pair", "Per-neuron critical ε of one pair (repeat 0), embedded because the report was written with --html-neurons.");
    figureDiv(node, "fig-neurons");
    const population = data.populations.find((p) => decoded[p]);
    state.pair = { population, layer: data.layers.find((l) => decoded[population][l]), pair: 0 };
  }
  studySection();
  for (const [div, figure] of drawn) await Plotly.newPlot(div, figure.data, figure.layout, plotConfig);
  if (data.figures.heatmap) await drawMatrices(false);
  if (state.pair) await drawNeurons(true);
  document.body.dataset.ready = "true";
})().catch((error) => { console.error("raymatch report: " + (error && error.stack || error)); });
