// Merge job page: live savings-vs-time and accuracy-vs-target charts, saved configurations, event log, cancel.
// Data arrives from the page (json_script), the websocket (merge.progress) and the API on every (re)connect.
// Every name is set with textContent; Plotly labels are entity-escaped so markup in a name shows as text.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("merge-job-data").textContent);
  const urls = data.urls;
  const savingsChart = document.getElementById("savings-chart");
  const accuracyChart = document.getElementById("accuracy-chart");
  const statusBadge = document.getElementById("job-status");
  const eventLog = document.getElementById("event-log");
  const bundleRows = document.getElementById("bundle-rows");
  const cancelForm = document.getElementById("cancel-form");
  const cancelButton = document.getElementById("cancel-job");
  const cancelMessage = document.getElementById("cancel-message");
  const progressLine = document.getElementById("job-progress");

  let lastSeq = 0;
  let points = 0;
  const bundles = new Map();

  // Plotly reads a small HTML subset in labels; escaping keeps a query name literal text.
  const plotlyText = gemel.plotlyText;
  const mib = (bytes) => bytes / 1048576;
  const minutes = (seconds) => (seconds < 90 ? Math.round(seconds) + " s" : (seconds / 60).toFixed(1) + " min");

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  // -- job status ---------------------------------------------------------------------------------------
  function showJob(job) {
    statusBadge.textContent = job.status;
    statusBadge.className = "badge " + job.status;
    statusBadge.dataset.status = job.status;
    document.getElementById("job-attempts").textContent = job.attempts;
    document.getElementById("job-worker").textContent = job.worker || "—";
    document.getElementById("job-savings").textContent = job.saved_param_bytes === null ? "—"
      : gemel.mib(job.saved_param_bytes) + " of " + gemel.mib(job.unmerged_param_bytes)
        + " (" + (100 * job.savings_fraction).toFixed(1) + "%)";
    const outcome = document.getElementById("job-outcome");
    outcome.textContent = job.outcome || "";
    outcome.hidden = !job.outcome;
    const error = document.getElementById("job-error");
    error.textContent = job.error || "";
    error.hidden = !job.error;
    if (cancelButton) {
      cancelButton.disabled = job.finished || job.cancel_requested;
      if (job.cancel_requested && !job.finished) cancelMessage.textContent = "cancelling at the next safe point…";
      if (job.finished) cancelMessage.textContent = "";
    }
  }

  // -- savings chart --------------------------------------------------------------------------------------
  Plotly.newPlot(savingsChart, [{ x: [], y: [], mode: "lines+markers", line: { shape: "hv" }, name: "saved" }],
    gemel.layout({ xaxis: { title: { text: "seconds into the search" } }, yaxis: { title: { text: "MiB saved" } },
      showlegend: false }), { responsive: true, displaylogo: false });

  function addPoint(seconds, bytes) {
    Plotly.extendTraces(savingsChart, { x: [[seconds]], y: [[mib(bytes)]] }, [0]);
    points += 1;
    savingsChart.dataset.points = String(points);
  }

  // -- accuracy chart -------------------------------------------------------------------------------------
  function drawAccuracy() {
    const latest = [...bundles.values()].sort((a, b) => b.index - a.index)[0];
    const names = data.queries.map((q) => q.name);
    const labels = names.map(plotlyText);
    // Held-out test frames: what the deploy gate reads; the search decided on validation frames.
    const tested = (n) => (latest && latest.test_accuracies && n in latest.test_accuracies ? latest.test_accuracies[n] : null);
    const required = names.map((n) => (latest && latest.required[n] != null ? latest.required[n] : null));
    const accuracy = names.map((n) => (tested(n) ? tested(n).accuracy : null));
    const above = names.map((n, i) => (tested(n) ? tested(n).interval[1] - accuracy[i] : 0));
    const below = names.map((n, i) => (tested(n) ? accuracy[i] - tested(n).interval[0] : 0));
    const frames = names.map((n) => (tested(n) ? tested(n).frames : 0));
    const colours = names.map((n, i) => (accuracy[i] !== null && required[i] !== null && accuracy[i] >= required[i] ? "#2f6f4f" : "#9a3412"));
    Plotly.react(accuracyChart, [
      { type: "bar", x: labels, y: accuracy, name: latest ? "config " + latest.index + " (test)" : "test accuracy",
        marker: { color: colours }, customdata: frames,
        hovertemplate: "%{y:.3f} on %{customdata} held-out test frames<extra></extra>",
        error_y: { type: "data", symmetric: false, array: above, arrayminus: below, color: "#1c1c1c" } },
      { type: "scatter", mode: "markers", x: labels, y: required, name: "target",
        marker: { symbol: "line-ew-open", size: 36, color: "#1c1c1c", line: { width: 3, color: "#1c1c1c" } } },
    ], gemel.layout({ yaxis: { title: { text: "accuracy" }, range: [0, 1.05] } }), { responsive: true, displaylogo: false });
  }

  // -- saved configurations -------------------------------------------------------------------------------
  function drawBundles() {
    const rows = [...bundles.values()].sort((a, b) => a.index - b.index).map((b) => {
      const row = el("tr");
      row.id = "bundle-" + b.id;
      row.dataset.deployable = String(b.deployable);
      row.append(el("td", b.index === 0 ? "0 (unmerged)" : b.index), el("td", b.round), el("td", gemel.mib(b.saved_param_bytes)),
        el("td", b.elapsed.toFixed(1) + " s"), el("td", b.deployable ? "yes" : "no — " + b.reason, b.deployable ? "" : "error"),
        el("td", b.files.map((f) => f.name + " " + gemel.mib(f.size_bytes) + " sha256 " + f.sha256.slice(0, 12) + "…").join(", "), "muted"));
      return row;
    });
    bundleRows.replaceChildren(...rows);
    // The configuration to deploy: the most saved among the deployable ones (as the page's server side picks).
    const best = [...bundles.values()].filter((b) => b.deployable && b.saved_param_bytes > 0)
      .sort((a, b) => b.saved_param_bytes - a.saved_param_bytes || b.index - a.index)[0];
    const bestLine = document.getElementById("best-bundle");
    bestLine.hidden = !best;
    if (best) {
      document.getElementById("best-bundle-link").href = urls.deployments + "#bundle-" + best.id;
      document.getElementById("best-bundle-label").textContent = "config " + best.index + ", " + gemel.mib(best.saved_param_bytes) + " saved";
    }
  }

  function addBundles(list) {
    for (const bundle of list) bundles.set(bundle.index, bundle);
    if (list.length) { drawBundles(); drawAccuracy(); }
  }

  // -- events -----------------------------------------------------------------------------------------------
  function describe(event) {
    const p = event.payload || {};
    switch (event.type) {
      case "search.preparing": return "preparing: " + p.stage + (p.total ? " (" + p.done + " of " + p.total + ")" : "");
      case "search.started": return (p.resumed ? "resumed after round " + p.rounds : "started") + ", " + p.queued_trials + " trials queued";
      case "round.started": return "round " + p.round + ": trying " + p.trial_layers + " shared layers"
        + (p.left_out && p.left_out.length ? " (left out to fit the time left: " + p.left_out.join(", ") + ")" : "")
        + (p.continued_from_round ? ", continuing from round " + p.continued_from_round + "'s weights" : "");
      case "trial.skipped": return "skipped a trial of " + p.trial_layers + " layers: it needs about "
        + minutes(p.estimated_seconds) + ", " + minutes(p.seconds_left) + " left";
      case "round.progress": return "round " + p.round + ": step " + p.steps + " of " + p.max_steps + "; "
        + Object.keys(p.accuracy || {}).sort().map((name) => name + " " + p.accuracy[name].toFixed(3) + " (target "
          + p.required[name].toFixed(3) + ")").join(", ")
        + (p.round_seconds_left === null || p.round_seconds_left === undefined ? ""
          : "; round done in at most ~" + minutes(p.round_seconds_left))
        + (p.budget_left === null || p.budget_left === undefined ? "" : "; " + (p.budget_left / 60).toFixed(1) + " min of budget left");
      case "round.cut": return "round " + p.round + " cut (" + (p.stopped === "deadline" ? "budget" : p.stopped) + ") after "
        + p.steps + " of " + p.max_steps + " steps";
      case "round.finished": return "round " + p.round + (p.accepted ? " accepted" : " rejected") + ", " + gemel.mib(p.bytes_saved) + " saved";
      case "config.accepted": return "configuration saved (round " + p.round + ")";
      case "search.finished": return "finished (" + p.status + ")" + (p.result && p.result.outcome ? ": " + p.result.outcome : "");
      case "search.cancelled": return "cancelled";
      case "search.failed": return "failed: " + p.error;
      case "job.claimed": return "attempt " + p.attempt + " on " + p.worker;
      case "job.requeued": return "requeued: " + p.reason;
      case "job.cancel_requested": return "cancel asked by " + p.by;
      case "job.cancelled": return "cancelled" + (p.by ? " by " + p.by : "");
      default: return "";
    }
  }

  // What the job is doing now, from its newest event: a set-up stage, or the running round with its estimate.
  const progressTypes = new Set(["search.preparing", "search.started", "round.started", "round.progress", "round.cut",
    "round.finished", "search.finished", "search.cancelled", "search.failed"]);
  function showProgress(event) {
    if (!progressTypes.has(event.type)) return;
    const ended = ["search.finished", "search.cancelled", "search.failed"].includes(event.type);
    progressLine.textContent = ended ? "" : describe(event);
    progressLine.hidden = ended;
    progressLine.dataset.type = event.type;
  }

  function addEvent(event) {
    if (event.seq <= lastSeq) return;
    lastSeq = event.seq;
    const p = event.payload || {};
    showProgress(event);
    if (event.type === "search.started" && !p.resumed) addPoint(0, 0);
    if (event.type === "round.finished") addPoint(p.elapsed, p.bytes_saved);
    const item = el("li");
    item.dataset.seq = event.seq;
    item.append(el("span", "#" + event.seq + " " + event.type, "muted"), document.createTextNode(" " + describe(event)));
    eventLog.append(item);
  }

  // -- live updates -----------------------------------------------------------------------------------------
  async function catchUp() {
    try {
      const [job, events, list] = await Promise.all([
        gemel.api("GET", urls.job), gemel.api("GET", urls.events + "?after=" + lastSeq), gemel.api("GET", urls.bundles),
      ]);
      events.forEach(addEvent);
      addBundles(list);
      showJob(job);
    } catch (error) {
      cancelMessage && (cancelMessage.textContent = error.message);
    }
  }

  function onMessage(message) {
    if (message.event) {
      if (message.event.seq > lastSeq + 1) { catchUp(); return; }  // missed some: fetch them in order
      addEvent(message.event);
    }
    addBundles(message.bundles || []);
    if (message.job) showJob(message.job);
  }

  if (cancelForm) {
    cancelForm.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      cancelButton.disabled = true;
      try {
        showJob(await gemel.api("POST", urls.cancel));
      } catch (error) {
        cancelMessage.textContent = error.message;
      }
    });
  }

  data.events.forEach(addEvent);
  addBundles(data.bundles);
  drawAccuracy();
  showJob(data.job);
  gemel.live(urls.live, { onMessage, onOpen: catchUp, status: document.getElementById("live-status") });
})();
