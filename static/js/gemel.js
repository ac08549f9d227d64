// Gemel dashboard helpers: JSON API calls with the CSRF token, and live websockets that reconnect.
"use strict";

const gemel = (() => {
  function cookie(name) {
    const match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  // Call the JSON API; resolves to the parsed body, rejects with an Error carrying the server's detail.
  async function api(method, url, body) {
    const options = { method, credentials: "same-origin", headers: { "X-CSRFToken": cookie("csrftoken") } };
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : response.statusText;
      throw new Error(detail);
    }
    return data;
  }

  // Open a websocket on `path` that reconnects with back-off. `onMessage(data)` gets each JSON message;
  // `onOpen()` runs on every (re)connection so the page can catch up from the API; `status` is an
  // optional element that shows whether the connection is live.
  function live(path, { onMessage, onOpen, status }) {
    let delay = 500;
    let socket = null;
    let closedByPage = false;
    function show(text, cls) {
      if (status) { status.textContent = text; status.className = "conn " + cls; }
    }
    function connect() {
      const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + window.location.host + path);
      socket.onopen = () => { delay = 500; show("● live", "live"); if (onOpen) onOpen(); };
      socket.onmessage = (event) => onMessage(JSON.parse(event.data));
      socket.onclose = (event) => {
        show("● reconnecting…", "down");
        if (closedByPage || event.code === 4401 || event.code === 4404) return;
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }
    connect();
    window.addEventListener("beforeunload", () => { closedByPage = true; if (socket) socket.close(); });
    return { close() { closedByPage = true; socket.close(); }, get socket() { return socket; } };
  }

  // Text for a Plotly label or hover: Plotly reads a few HTML tags in them, so escaped names always show as text.
  const plotlyText = (text) => String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

  // Human-readable bytes (MiB with one decimal).
  function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }

  // Plotly layout defaults shared by the dashboard's charts.
  const layout = (extra) => Object.assign({ margin: { t: 30, r: 20, b: 45, l: 60 }, font: { size: 12 },
    legend: { orientation: "h" }, paper_bgcolor: "#fff", plot_bgcolor: "#fff" }, extra || {});

  // A MiB axis: plain numbers from zero (Plotly's SI prefixes would write 0.000001 MiB as "1µ").
  const mibAxis = (title) => ({ title: { text: title || "MiB" }, tickformat: ",.1f", rangemode: "tozero" });

  // What an empty chart says until its first point arrives (in place of Plotly's bare -1…1 axes).
  const noData = (text) => ({ annotations: [{ text: text || "no data yet", showarrow: false, xref: "paper",
    yref: "paper", x: 0.5, y: 0.5, font: { size: 14, color: "#888" } }] });

  // Remove the "no data yet" note once a chart has data.
  function hasData(el) {
    if (el.layout && el.layout.annotations && el.layout.annotations.length) Plotly.relayout(el, { annotations: [] });
  }

  // A timestamp as the reader's local date and time, to the second ("2026-12-02 01:55:09").
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":"
      + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  return { api, live, mib, layout, mibAxis, noData, hasData, when, cookie, plotlyText };
})();
