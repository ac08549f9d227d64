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

// The fleet table, kept live: the summaries of the boxes that reported (fleet.summary, one message every few seconds)
// and status changes arrive on the fleet channel; a box that stops reporting turns offline here when its last report grows too old.
(() => {
  const table = document.getElementById("fleet-nodes");
  if (!table) return;
  const { offline_after_s: offlineAfter } = JSON.parse(document.getElementById("overview-fleet-data").textContent);
  const badge = (cls, text) => Object.assign(document.createElement("span"), { className: "badge " + cls, textContent: text });
  const muted = (text) => Object.assign(document.createElement("span"), { className: "muted", textContent: text });
  function fill(cell, ...parts) { cell.replaceChildren(...parts.flatMap((p) => [p, " "]).slice(0, -1)); }
  function showOnline(row, online) {
    fill(row.querySelector("[data-field=online]"), badge(online ? "ok" : "offline", online ? "online" : "offline"));
  }
  function update(node) {
    const row = table.querySelector(`tr[data-node="${node.id}"]`);
    if (!row) return;  // a box registered after the page loaded appears on the next visit
    row.dataset.lastSeen = node.last_seen_at || "";
    showOnline(row, node.online);
    fill(row.querySelector("[data-field=status]"), badge(node.status, node.status), muted(node.status_detail || ""));
    if (!("queries_served" in node)) return;  // a status change: the summary fields come with the next summary
    const memory = (node.resident_bytes == null ? "—" : gemel.mib(node.resident_bytes)) + " / "
      + (node.memory_budget_bytes ? gemel.mib(node.memory_budget_bytes) : "no budget");
    const gpu = node.gpu_total_bytes
      ? [muted(` · GPU ${gemel.mib(node.gpu_used_bytes)} of ${gemel.mib(node.gpu_total_bytes)} (driver)`)] : [];
    fill(row.querySelector("[data-field=memory]"), memory, ...gpu, ...(node.simulated ? [badge("", "simulated")] : []));
    const serving = node.serving;
    fill(row.querySelector("[data-field=serving]"), serving
      ? `job ${serving.job} config ${serving.config} (saves ${gemel.mib(serving.saved_bytes)})` : muted("nothing"));
    fill(row.querySelector("[data-field=targets]"), node.queries_measured
      ? `${node.queries_met} of ${node.queries_measured}`
      : (node.queries_served ? muted(`${node.queries_served} served, not measurable live`) : "—"));
    const alerts = node.alerts.map((a) => badge("failed query-alert", `${a.query}: ${a.alert}`));
    if (node.limit) alerts.push(Object.assign(muted(`limited by ${node.limit}`), { className: "muted node-limit" }));
    fill(row.querySelector("[data-field=attention]"), ...(alerts.length ? alerts : ["—"]));
  }
  setInterval(() => {
    for (const row of table.querySelectorAll("tr[data-node]")) {
      const seen = Date.parse(row.dataset.lastSeen);
      if (!Number.isNaN(seen) && Date.now() - seen > offlineAfter * 1000) showOnline(row, false);
    }
  }, 5000);
  gemel.live("/ws/nodes/", {
    status: document.getElementById("conn"),
    onMessage(message) {
      if (message.type === "fleet.summary") message.nodes.forEach(update);
      else if (message.type === "node.status" && message.node) update(message.node);
    },
  });
})();
