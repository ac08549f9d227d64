// Overview: GPU memory of each node now, shared layers vs each model's own layers (stacked bars).
"use strict";

(() => {
  const nodes = JSON.parse(document.getElementById("overview-memory-data").textContent);
  const chart = document.getElementById("overview-memory-chart");
  const MIB = 1048576;
  // Plotly reads a few HTML tags in labels: escape names so they always show as text.
  const label = (text) => String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
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
