// Deployments page: deploy and rollback buttons, agent tokens, and deployment status as it happens.
"use strict";

(() => {
  const statusBody = document.querySelector("#deployment-status tbody");
  const errorBox = document.getElementById("deploy-error");
  const data = JSON.parse(document.getElementById("deployments-data").textContent);
  const nodeNames = new Map(data.nodes.map((n) => [n.id, n.name]));

  function showError(text) { errorBox.textContent = text || ""; }

  function cell(row, field) { return row.querySelector('[data-field="' + field + '"]'); }

  function setBadge(el, value) { if (el) { el.textContent = value; el.className = "badge " + value; } }

  // Insert or update the status row of one deployment (text only: names never become markup).
  function upsertDeployment(d) {
    let row = statusBody.querySelector('tr[data-deployment="' + d.id + '"]');
    if (!row) {
      const empty = statusBody.querySelector("tr.empty");
      if (empty) empty.remove();
      row = document.createElement("tr");
      row.dataset.deployment = String(d.id);
      const values = ["#" + d.id, nodeNames.get(d.node) || ("node " + d.node), "job " + d.job + " config " + d.bundle_index];
      for (const value of values) { const td = document.createElement("td"); td.textContent = value; row.appendChild(td); }
      const statusTd = document.createElement("td");
      const badge = document.createElement("span"); badge.dataset.field = "status"; statusTd.appendChild(badge);
      row.appendChild(statusTd);
      for (const field of ["detail", "updated_at"]) { const td = document.createElement("td"); td.dataset.field = field; row.appendChild(td); }
      statusBody.insertBefore(row, statusBody.firstChild);
    }
    setBadge(cell(row, "status"), d.status);
    cell(row, "detail").textContent = d.detail || "";
    cell(row, "updated_at").textContent = gemel.when(d.updated_at);
  }

  function updateNode(n) {
    nodeNames.set(n.id, n.name);
    const row = document.querySelector('#nodes-table tr[data-node="' + n.id + '"]');
    if (!row) return;
    setBadge(cell(row, "status"), n.status);
    cell(row, "status_detail").textContent = n.status_detail || "";
    const online = cell(row, "online");
    online.textContent = n.online ? "online" : "offline";
    online.className = "badge " + (n.online ? "ok" : "offline");
    cell(row, "active_deployment").textContent = n.active_deployment ? "#" + n.active_deployment : "—";
    // The page named the bundle a rollback goes back to when it loaded; once the node switches, ask generically.
    const rollback = document.getElementById("rollback-" + n.id);
    if (rollback && rollback.dataset.active !== undefined && rollback.dataset.active !== String(n.active_deployment || "")) {
      delete rollback.dataset.confirm;
    }
  }

  async function catchUp() {
    try {
      const [deployments, nodes] = await Promise.all([gemel.api("GET", "/api/deployments"), gemel.api("GET", "/api/nodes")]);
      nodes.forEach(updateNode);
      deployments.slice().reverse().forEach(upsertDeployment);
    } catch (err) { showError(err.message); }
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button || button.disabled) return;
    try {
      if (button.dataset.deployBundle) {
        showError("");
        if (!window.confirm("Deploy this bundle to " + button.dataset.nodeName + "? The node switches to it once it is "
          + "downloaded and warmed up; its current deployment keeps serving until then.")) return;
        button.disabled = true;
        const d = await gemel.api("POST", "/api/deployments",
          { bundle: Number(button.dataset.deployBundle), node: Number(button.dataset.deployNode) });
        upsertDeployment(d);
        button.disabled = false;
      } else if (button.dataset.rollback) {
        const nodeError = document.getElementById("rollback-error-" + button.dataset.rollback);
        nodeError.textContent = "";
        // Ask as deploy does: a rollback switches what the node serves.
        if (!window.confirm(button.dataset.confirm || ("Roll " + (button.dataset.nodeName || "this node")
          + " back to the bundle it served before? It switches once that bundle is loaded and warmed up."))) return;
        try {
          upsertDeployment(await gemel.api("POST", "/api/nodes/" + button.dataset.rollback + "/rollback"));
        } catch (err) {
          nodeError.textContent = err.message;  // beside the button it belongs to
        }
      } else if (button.dataset.revoke) {
        await gemel.api("POST", "/api/agent-tokens/" + button.dataset.revoke + "/revoke");
        button.replaceWith(Object.assign(document.createElement("span"), { className: "badge failed", textContent: "revoked" }));
      }
    } catch (err) {
      button.disabled = false;
      showError(err.message);
    }
  });

  const tokenForm = document.getElementById("token-form");
  if (tokenForm) {
    tokenForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const site = document.getElementById("token-site");
        const created = await gemel.api("POST", "/api/agent-tokens", {
          name: document.getElementById("token-name").value, site: site && site.value ? Number(site.value) : null,
        });
        document.getElementById("token-value").textContent = created.token;
        document.getElementById("token-created").hidden = false;
      } catch (err) { showError(err.message); }
    });
  }

  gemel.live("/ws/nodes/", {
    status: document.getElementById("conn"),
    onOpen: catchUp,
    onMessage(message) {
      if (message.node && typeof message.node === "object") updateNode(message.node);
      if (message.type === "deployment.status") upsertDeployment(message.deployment);
    },
  });
})();
