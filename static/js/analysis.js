// Analysis page: bytes per model (alone vs after the structural optimum) and the signatures that save most.
// Data comes from the json_script block; every label is escaped before Plotly sees it (Plotly reads some HTML).
"use strict";

(() => {
  const source = document.getElementById("analysis-data");
  if (!source || typeof Plotly === "undefined") return;
  const data = JSON.parse(source.textContent);
  const escapeText = gemel.plotlyText;
  const mib = (bytes) => bytes / 1048576;
  const names = data.models.map(escapeText);
  const hoverArch = data.archs.map(escapeText);

  Plotly.newPlot("bytes-chart", [
    { type: "bar", name: "held alone", x: names, y: data.unmerged_bytes.map(mib), customdata: hoverArch,
      hovertemplate: "%{x} (%{customdata})<br>%{y:.2f} MiB alone<extra></extra>" },
    { type: "bar", name: "with every shareable layer shared", x: names, y: data.merged_bytes.map(mib),
      hovertemplate: "%{x}<br>%{y:.2f} MiB after sharing<extra></extra>" },
  ], gemel.layout({ barmode: "group", yaxis: { title: { text: "MiB of parameters" } } }),
  { displaylogo: false, responsive: true });

  const rows = data.signatures.slice().reverse();
  const short = (key) => (key.length > 48 ? key.slice(0, 47) + "…" : key);
  Plotly.newPlot("signatures-chart", [{
    type: "bar", orientation: "h",
    x: rows.map((row) => mib(row.savings_bytes)),
    y: rows.map((row, i) => escapeText(`${rows.length - i}. ${short(row.signature)}`)),
    customdata: rows.map((row) => [row.instances, row.models.map(escapeText).join(", ")]),
    hovertemplate: "%{y}<br>%{x:.2f} MiB saved by %{customdata[0]} shared layer(s)<br>models: %{customdata[1]}<extra></extra>",
  }], gemel.layout({ margin: { t: 20, r: 20, b: 45, l: 300 }, xaxis: { title: { text: "MiB saved" } } }),
  { displaylogo: false, responsive: true });
})();
