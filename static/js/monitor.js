// Live monitor of one edge node: memory, fps, drops and effective accuracy, extended in place from
// websocket messages (Plotly.extendTraces) and caught up from the API on every (re)connection.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("monitor-data").textContent);
  const node = data.node;
  const MIB = 1048576;
  const memoryChart = document.getElementById("memory-chart");
  const perModelChart = document.getElementById("per-model-chart");
  const queryCharts = {
    fps: { el: document.getElementById("fps-chart"), value: (q) => q.fps, title: "frames / s" },
    drops: { el: document.getElementById("drops-chart"), value: (q) => q.drop_rate, title: "frames dropped",
      tickformat: ".0%", range: [0, 1] },
    accuracy: { el: document.getElementById("effective-accuracy-chart"), value: (q) => q.effective_accuracy, title: "accuracy",
      range: [0, 1] },
  };
  let lastId = 0;
  // Points kept per trace (about an hour of one-second samples); older ones scroll off.
  const MAX_POINTS = 3600;

  // Plotly reads a few HTML tags in labels: escape names so they always show as text.
  const label = gemel.plotlyText;

  function countPoints(el) {
    el.dataset.points = String((el.data || []).reduce((sum, trace) => sum + trace.x.length, 0));
  }

  const memoryTraces = [
    { name: "shared layers", stackgroup: "memory", y: (s) => s.shared_bytes / MIB },
    { name: "per-model layers", stackgroup: "memory", y: (s) => Math.max(0, s.resident_bytes - s.shared_bytes) / MIB },
    { name: "resident (total)", mode: "lines", line: { dash: "dot" }, y: (s) => s.resident_bytes / MIB },
    // The budget is off until asked for (click its legend entry): far above what is resident, it would
    // flatten a 50 MiB drop into a line.
    { name: "budget", mode: "lines", line: { dash: "dash" }, visible: "legendonly",
      y: (s) => (s.memory.budget_bytes == null ? null : s.memory.budget_bytes / MIB) },
  ];
  // The driver's own figure exists on a GPU only.
  if (node.device_kind === "cuda") {
    memoryTraces.splice(3, 0, { name: "GPU used (driver)", mode: "lines",
      y: (s) => (s.gpu_used_bytes == null ? null : s.gpu_used_bytes / MIB) });
  }
  Plotly.newPlot(memoryChart, memoryTraces.map((t) => ({ x: [], y: [], name: t.name, type: "scatter",
    mode: t.mode || "none", stackgroup: t.stackgroup, line: t.line, visible: t.visible })),
  gemel.layout({ yaxis: gemel.mibAxis(), ...gemel.noData() }), { responsive: true, displaylogo: false });
  for (const chart of Object.values(queryCharts)) {
    chart.traces = new Map();
    const axis = { title: { text: chart.title }, rangemode: "tozero", tickformat: chart.tickformat, range: chart.range };
    Plotly.newPlot(chart.el, [], gemel.layout({ yaxis: axis, ...gemel.noData() }), { responsive: true, displaylogo: false });
  }
  Plotly.newPlot(perModelChart, [], gemel.layout({ barmode: "stack", yaxis: gemel.mibAxis(), ...gemel.noData() }),
    { responsive: true, displaylogo: false });

  function drawPerModel(sample) {
    const perModel = sample.memory.per_model_bytes || {};
    const traces = [{ type: "bar", name: "shared", x: ["now"], y: [sample.shared_bytes / MIB] }];
    for (const [name, bytes] of Object.entries(perModel)) traces.push({ type: "bar", name: label(name), x: ["now"], y: [bytes / MIB] });
    Plotly.react(perModelChart, traces, { ...perModelChart.layout, annotations: [] });
  }

  function extendQueries(chart, samples) {
    const updates = new Map();
    for (const sample of samples) {
      for (const [name, q] of Object.entries(sample.queries)) {
        if (!chart.traces.has(name)) {
          Plotly.addTraces(chart.el, { x: [], y: [], name: label(name), type: "scatter", mode: "lines" });
          chart.traces.set(name, chart.el.data.length - 1);
        }
        const index = chart.traces.get(name);
        if (!updates.has(index)) updates.set(index, { x: [], y: [] });
        const value = chart.value(q);
        updates.get(index).x.push(sample.at);
        updates.get(index).y.push(value == null ? null : value);
      }
    }
    if (!updates.size) return;
    const indices = [...updates.keys()];
    Plotly.extendTraces(chart.el, { x: indices.map((i) => updates.get(i).x), y: indices.map((i) => updates.get(i).y) }, indices,
      MAX_POINTS);
    gemel.hasData(chart.el);
    countPoints(chart.el);
  }

  function addSamples(samples) {
    const fresh = samples.filter((s) => s.id > lastId);
    if (!fresh.length) return;
    lastId = fresh[fresh.length - 1].id;
    Plotly.extendTraces(memoryChart, {
      x: memoryTraces.map(() => fresh.map((s) => s.at)),
      y: memoryTraces.map((t) => fresh.map(t.y)),
    }, memoryTraces.map((_, i) => i), MAX_POINTS);
    gemel.hasData(memoryChart);
    countPoints(memoryChart);
    for (const chart of Object.values(queryCharts)) extendQueries(chart, fresh);
    const newest = fresh[fresh.length - 1];
    drawPerModel(newest);
    refreshAttention();
    document.getElementById("simulated-badge").hidden = !newest.simulated;
    setOnline(true);
  }

  function setOnline(online) {
    const badge = document.getElementById("node-online");
    badge.textContent = online ? "online" : "offline";
    badge.className = "badge " + (online ? "ok" : "offline");
  }

  function showNode(n) {
    if (!n || n.id !== node.id) return;
    const status = document.getElementById("node-status");
    status.textContent = n.status;
    status.className = "badge " + n.status;
    document.getElementById("node-detail").textContent = n.status_detail || "";
    setOnline(n.online);
  }

  // Samples pushed while a catch-up is in flight wait for it, so that points stay in order.
  let pending = null;
  async function catchUp() {
    pending = [];
    try {
      const query = lastId ? "?after=" + lastId : "";
      addSamples(await gemel.api("GET", "/api/nodes/" + node.id + "/metrics" + query));
    } finally {
      const queued = pending;
      pending = null;
      addSamples(queued.sort((a, b) => a.id - b.id));
    }
  }

  // What limits the node and which served queries are starved or below target: computed by the server from the
  // newest samples, so it is fetched again (at most every few seconds) as samples arrive.
  const attention = document.getElementById("node-attention");
  let attentionAsked = 0;
  async function refreshAttention() {
    const now = Date.now();
    if (!data.attention_url || now - attentionAsked < 5000) return;
    attentionAsked = now;
    try {
      const found = await gemel.api("GET", data.attention_url);
      const limit = document.getElementById("node-limit");
      limit.hidden = !found.limit;
      limit.querySelector("[data-field=limit]").textContent = found.limit || "";
      document.getElementById("node-alerts").replaceChildren(...found.alerts.map((item) => {
        const row = document.createElement("li");
        row.className = "error";
        row.dataset.query = item.query;
        const name = document.createElement("strong");
        name.textContent = item.query;
        row.append(name, document.createTextNode(": " + item.alert));
        return row;
      }));
      attention.hidden = !found.limit && !found.alerts.length;
    } catch (error) { /* the next sample asks again */ }
  }

  document.getElementById("node-select").addEventListener("change", (event) => event.target.form.submit());

  gemel.live("/ws/nodes/" + node.id + "/", {
    status: document.getElementById("conn"),
    onOpen: catchUp,
    onMessage(message) {
      if (message.type === "node.metrics") {
        if (pending) pending.push(message.sample); else addSamples([message.sample]);
      }
      else if (message.node && typeof message.node === "object") showNode(message.node);
    },
  });
})();
