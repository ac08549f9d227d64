// Overview: GPU memory of each node now, shared layers vs each model's own layers (stacked bars).
"use strict";

(() => {
  const nodes = JSON.parse(document.getElementById("overview-memory-data").textContent);
  const chart = document.getElementById("overview-memory-chart");
  const MIB = 1048576;
  // Plotly reads a few HTML tags in labels: escape names so they always show as text.
  const label = gemel.plotlyText;
  if (!nodes.length) { chart.textContent = "No metrics yet."; return; }
  const x = nodes.map((n) => label(n.name) + (n.simulated ? " (simulated)" : ""));
  const models = [...new Set(nodes.flatMap((n) => Object.keys(n.per_model_bytes)))];
  const traces = [{ type: "bar", name: "shared layers", x, y: nodes.map((n) => n.shared_bytes / MIB) }];
  for (const model of models) {
    traces.push({ type: "bar", name: label(model), x, y: nodes.map((n) => (n.per_model_bytes[model] || 0) / MIB) });
  }
  Plotly.newPlot(chart, traces, gemel.layout({ barmode: "stack", yaxis: gemel.mibAxis() }),
    { responsive: true, displaylogo: false });
})();

(() => {
  const cards = () => Array.from(document.querySelectorAll(".demo-build"));
  async function refresh() {
    const seeds = await gemel.api("GET", "/api/demo-seeds");
    for (const card of cards()) {
      const seed = seeds.find((s) => s.scale === card.dataset.scale);
      const done = !seed || !["queued", "building"].includes(seed.status);
      if (done || String(seed.queries_registered) !== card.dataset.registered) { window.location.reload(); return; }
      card.querySelector("[data-field=progress]").textContent = `${seed.queries_registered}/${seed.queries_total} queries registered`;
      card.querySelector("[data-field=detail]").textContent = seed.detail;
    }
  }
  async function loop() {
    if (!cards().length) return;
    try { await refresh(); } catch (error) { /* the server may be restarting: try again shortly */ }
    setTimeout(loop, 3000);
  }
  setTimeout(loop, 3000);
})();
