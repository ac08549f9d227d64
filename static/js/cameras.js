// Cameras page: while a demo workload builds or a query is measured, poll the API and show the progress.
// Text goes in with textContent only; new rows (a query the demo just registered) reload the page.
"use strict";

(() => {
  const busyStatuses = new Set(["queued", "building", "pending", "measuring"]);
  const seedNodes = () => Array.from(document.querySelectorAll(".demo-seed"));
  const queryRows = () => Array.from(document.querySelectorAll("tr[data-query]"));
  const busy = () => seedNodes().some((n) => busyStatuses.has(n.dataset.status))
    || queryRows().some((row) => busyStatuses.has(row.querySelector("[data-field=status]").dataset.status));

  function setStatus(node, status, label) {
    node.dataset.status = status;
    node.className = node.className.replace(/\b(queued|building|ready|failed|pending|measuring)\b/g, "").trim() + " " + status;
    node.textContent = label;
  }

  async function refresh() {
    const [seeds, queries] = await Promise.all([gemel.api("GET", "/api/demo-seeds"), gemel.api("GET", "/api/queries")]);
    for (const seed of seeds) {
      const node = document.querySelector(`.demo-seed[data-scale="${CSS.escape(seed.scale)}"]`);
      if (!node) continue;
      node.dataset.status = seed.status;
      setStatus(node.querySelector("[data-field=status]"), seed.status, seed.status === "building" ? "building…" : seed.status);
      node.querySelector("[data-field=progress]").textContent = `${seed.queries_registered}/${seed.queries_total} queries registered`;
      node.querySelector("[data-field=detail]").textContent = seed.detail;
    }
    // One build at a time: the scale selector and its button stay disabled while one runs.
    const building = seeds.some((seed) => seed.status === "queued" || seed.status === "building");
    for (const id of ["id_scale", "demo-seed-start"]) {
      const control = document.getElementById(id);
      if (!control) continue;
      control.disabled = building;
      if (building) control.title = "a demo build is running"; else control.removeAttribute("title");
    }
    if (queries.length !== queryRows().length) { window.location.reload(); return; }
    for (const query of queries) {
      const row = document.getElementById(`query-${query.id}`);
      if (!row) { window.location.reload(); return; }
      const badge = row.querySelector("[data-field=status]");
      setStatus(badge, query.status, query.status);
      badge.title = query.status_detail;
      row.querySelector("[data-field=status_detail]").textContent = query.status_detail;
      const shown = (value) => (value === null ? "—" : Number(value).toFixed(3));
      row.querySelector("[data-field=unmerged_accuracy]").textContent = shown(query.unmerged_accuracy);
      row.querySelector("[data-field=chance_accuracy]").textContent = shown(query.chance_accuracy);
    }
  }

  async function loop() {
    if (!busy()) return;
    try { await refresh(); } catch (error) { /* the server may be restarting: try again shortly */ }
    setTimeout(loop, 3000);
  }
  setTimeout(loop, 3000);
})();
