// The mesh page's script: fetches /api/v1/mesh once per window and draws the matrix, the HTTP
// table and the agent list; a click on a cell fetches that pair's history and breakdown, and
// its latest path traces (/api/v1/traces) with their blamed hop and hop tables.
// Everything from the server is put in the page with textContent or attributes, never as
// markup, so names, URLs and reasons cannot inject anything.
"use strict";
(function () {
  var MARKS = { no_data: "∅", stale: "◷", failed: "✖", partial: "◐", healthy: "●" };
  var WORDS = { no_data: "no data", stale: "stale", failed: "failed (100 % loss)", partial: "partial", healthy: "healthy" };
  var state = { view: null, pair: null, timer: null, token: null };
  try { state.token = sessionStorage.getItem("probermesh-token"); } catch (e) { state.token = null; }

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function byId(id) { return document.getElementById(id); }
  function metric() { return byId("metric").value; }

  function fmt(name, value) {
    if (value === null || value === undefined) return "—";
    if (name === "loss_ratio") return (value * 100).toFixed(1) + " %";
    if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
    return (value * 1e3).toFixed(value < 0.01 ? 2 : 1) + " ms";
  }
  function steps(name) {
    var t = state.view.thresholds;
    if (name === "loss_ratio") return t.loss_ratio;
    if (name === "jitter_seconds") return t.jitter_seconds;
    return t.rtt_seconds;
  }
  function level(name, value) {
    if (value === null || value === undefined) return null;
    var s = steps(name);
    var k = 0;
    while (k < s.length && value >= s[k]) k++;
    return k;
  }

  function headers() {
    var h = { "Accept": "application/json" };
    if (state.token) h["Authorization"] = "Bearer " + state.token;
    return h;
  }
  function getJson(url) {
    return fetch(url, { headers: headers(), cache: "no-store" }).then(function (r) {
      if (r.status === 401) { byId("token-form").hidden = false; throw new Error("this server needs the admin token"); }
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function drawLegend() {
    var legend = byId("legend");
    clear(legend);
    var name = metric();
    var s = steps(name);
    var labels = ["< " + fmt(name, s[0]), fmt(name, s[0]) + " – " + fmt(name, s[1]),
      fmt(name, s[1]) + " – " + fmt(name, s[2]), "≥ " + fmt(name, s[2])];
    labels.forEach(function (text, k) { legend.appendChild(el("span", text, "lvl" + k)); });
    Object.keys(MARKS).forEach(function (st) {
      if (st === "healthy") return;
      legend.appendChild(el("span", MARKS[st] + " " + WORDS[st], "state-" + st));
    });
    legend.appendChild(el("span", MARKS.healthy + " healthy (colour by the metric)", "lvl0"));
  }

  function drawMatrix() {
    var view = state.view;
    var table = byId("matrix");
    clear(table);
    var name = metric();
    var head = el("tr");
    head.appendChild(el("th", "source ↓ / target →"));
    view.regions.forEach(function (r) { head.appendChild(el("th", r)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var body = el("tbody");
    var n = view.regions.length;
    for (var i = 0; i < n; i++) {
      var row = el("tr");
      row.appendChild(el("th", view.regions[i]));
      for (var j = 0; j < n; j++) {
        var c = view.cells[i * n + j];
        var td = el("td");
        var value = c[name];
        var cls = "cell state-" + c.state;
        if (c.state === "healthy" || c.state === "partial") {
          var k = level(name, value);
          if (k !== null) cls += " lvl" + k;
        }
        td.className = cls;
        td.setAttribute("data-source", c.source);
        td.setAttribute("data-target", c.target);
        td.setAttribute("data-state", c.state);
        td.tabIndex = 0;
        td.appendChild(el("span", MARKS[c.state], "cell-mark"));
        var label = c.state === "no_data" ? "" : c.state === "stale" ? "stale" : fmt(name, value);
        if (c.state === "partial") label += " (" + c.left_out + " out)";
        td.appendChild(el("span", label, "cell-value"));
        td.title = c.source + " → " + c.target + ": " + WORDS[c.state];
        body.appendChild(row);
        row.appendChild(td);
      }
    }
    table.appendChild(body);
  }

  function drawTable(id, columns, rows) {
    fillTable(byId(id), columns, rows);
  }
  function fillTable(table, columns, rows) {
    clear(table);
    var head = el("tr");
    columns.forEach(function (c) { head.appendChild(el("th", c)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var body = el("tbody");
    rows.forEach(function (cells) {
      var tr = el("tr");
      cells.forEach(function (c) {
        var td = el("td", c.text !== undefined ? c.text : c);
        if (c.cls) td.className = c.cls;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
  }

  function drawHttp() {
    var cols = ["source", "URL", "resolve", "connect", "tls", "processing", "transfer", "status", "failed", "reason", "certificate expiry"];
    var rows = state.view.http.map(function (h) {
      var p = h.phases_seconds || {};
      var expiry = h.cert_expiry_unix_seconds ? new Date(h.cert_expiry_unix_seconds * 1000).toISOString() : "—";
      var reason = h.failure_reason;
      return [h.source, h.url, fmt("s", p.resolve), fmt("s", p.connect), fmt("s", p.tls), fmt("s", p.processing),
        fmt("s", p.transfer), String(h.status_code), String(h.failed_results),
        { text: reason + (h.stale ? " (stale)" : ""), cls: reason === "success" ? "" : "bad" }, expiry];
    });
    drawTable("http", cols, rows);
  }

  function drawAgents() {
    var rows = state.view.agents.map(function (a) {
      return [a.region, a.ip, a.version, { text: a.alive ? "alive" : "dead", cls: a.alive ? "" : "bad" },
        new Date(a.last_heartbeat_unix_ms).toISOString()];
    });
    drawTable("agents", ["region", "IP", "version", "liveness", "last heartbeat"], rows);
  }

  function drawChart(points) {
    var box = byId("pair-chart");
    clear(box);
    var name = metric();
    var values = points.map(function (p) { return p[name]; }).filter(function (v) { return v !== null && v !== undefined; });
    if (values.length === 0) { box.appendChild(el("p", "no values of this metric yet")); return; }
    var ns = "http://www.w3.org/2000/svg";
    var w = 600, h = 120, max = Math.max.apply(null, values) || 1;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("role", "img");
    var line = document.createElementNS(ns, "polyline");
    var step = points.length > 1 ? w / (points.length - 1) : 0;
    var coords = [];
    points.forEach(function (p, i) {
      var v = p[name];
      if (v === null || v === undefined) return;
      coords.push((i * step).toFixed(1) + "," + (h - 5 - (v / max) * (h - 10)).toFixed(1));
    });
    line.setAttribute("points", coords.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#1d4ed8");
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
    var title = document.createElementNS(ns, "title");
    title.textContent = name + ", max " + fmt(name, max);
    svg.appendChild(title);
    box.appendChild(svg);
  }

  function drawPair() {
    var page = state.pair;
    if (!page) return;
    byId("pair").hidden = false;
    var c = page.cell;
    byId("pair-title").textContent = "Pair " + c.source + " → " + c.target;
    byId("pair-summary").textContent = WORDS[c.state] + "; loss " + fmt("loss_ratio", c.loss_ratio) + ", RTT " +
      fmt("s", c.rtt_seconds) + ", p50 " + fmt("s", c.rtt_p50_seconds) + ", p90 " + fmt("s", c.rtt_p90_seconds) +
      ", jitter " + fmt("s", c.jitter_seconds) + "; " + page.history.length + " of at most " + page.history_capacity + " windows kept";
    drawChart(page.history);
    var rows = page.history.slice().reverse().map(function (p) {
      return [new Date(p.at_unix_ms).toISOString(), fmt("loss_ratio", p.loss_ratio), fmt("s", p.rtt_seconds),
        fmt("s", p.rtt_p50_seconds), fmt("s", p.rtt_p90_seconds), fmt("s", p.jitter_seconds),
        String(p.failed_results), String(p.left_out)];
    });
    drawTable("pair-history", ["window settled", "loss", "RTT", "p50", "p90", "jitter", "failed", "left out"], rows);
    var members = page.members.map(function (m) {
      return [m.role, m.host, fmt("loss_ratio", m.loss_ratio), fmt("s", m.rtt_seconds),
        { text: m.left_out ? "left out (outlier)" : "counted", cls: m.left_out ? "bad" : "" }];
    });
    drawTable("pair-members", ["role", "host", "loss", "RTT", "robust aggregation"], members);
  }

  function blameLine(t) {
    var b = t.blame;
    if (!b) return t.outcome === "timed_out" ? "no report came in time" : t.outcome === "abandoned" ?
      "the agent disconnected before reporting" : t.outcome === "failed" ? "the trace did not run" : t.outcome;
    var at = b.kind === "hop" ? "hop " + b.hop + " (" + b.address + ", " + fmt("loss_ratio", b.loss_ratio) + " loss): " : "";
    return "blame " + b.kind + ": " + at + b.explanation;
  }

  // The pair's latest path traces (issue 17): one block per trace, its blame line and hops.
  function drawTraces(answer) {
    var box = byId("pair-traces");
    clear(box);
    var status = byId("pair-traces-status");
    if (!answer.tracing) { status.textContent = "path tracing is off on this server"; return; }
    var running = answer.in_flight.map(function (f) { return f.agent + " → " + f.target; });
    var words = answer.traces.length ? [] : ["no trace of this pair yet"];
    if (running.length) words.push("running: " + running.join(", "));
    status.textContent = words.join("; ");
    answer.traces.forEach(function (t) {
      var block = el("div", null, "trace");
      block.appendChild(el("p", new Date(t.ended_at_unix_ms).toISOString() + " · " + t.agent + " → " + t.target +
        " · " + t.reason + (t.direction ? " (" + t.direction + ")" : "") + " · " + t.outcome +
        (t.error ? " · error: " + t.error : ""), "trace-head"));
      var blamed = t.blame && t.blame.kind === "hop" ? t.blame.hop : null;
      block.appendChild(el("p", blameLine(t), blamed !== null || (t.blame && t.blame.kind === "unreachable") ? "bad" : ""));
      if (t.hops.length) {
        var rows = t.hops.map(function (h) {
          var bad = h.ttl === blamed;
          return [String(h.ttl), h.host || "???", { text: fmt("loss_ratio", h.loss_ratio), cls: bad ? "bad" : "" },
            String(h.sent), fmt("s", h.rtt_mean_seconds), fmt("s", h.rtt_best_seconds),
            fmt("s", h.rtt_worst_seconds), fmt("s", h.rtt_stddev_seconds)];
        });
        var table = el("table", null, "plain");
        fillTable(table, ["TTL", "host", "loss", "sent", "avg", "best", "worst", "stdev"], rows);
        block.appendChild(table);
      }
      box.appendChild(block);
    });
  }

  function loadTraces(source, target) {
    var url = "/api/v1/traces?source_region=" + encodeURIComponent(source) + "&target_region=" +
      encodeURIComponent(target) + "&limit=5";
    // A slow answer for a pair no longer shown is dropped, not drawn over the current one.
    var shown = function () {
      return state.pair && state.pair.cell.source === source && state.pair.cell.target === target;
    };
    return getJson(url).then(function (answer) { if (shown()) drawTraces(answer); }).catch(function (err) {
      if (shown()) byId("pair-traces-status").textContent = "could not load the traces: " + err.message;
    });
  }

  function loadPair(source, target) {
    var url = "/api/v1/mesh/pair?source=" + encodeURIComponent(source) + "&target=" + encodeURIComponent(target);
    return getJson(url).then(function (page) { state.pair = page; drawPair(); return loadTraces(source, target); });
  }

  function draw() {
    var view = state.view;
    var notice = byId("notice");
    notice.hidden = !view.notice;
    notice.textContent = view.notice || "";
    byId("status").textContent = view.regions.length + " regions, window " + view.window_seconds + " s; updated " +
      new Date(view.generated_at_unix_ms).toISOString() + " (refreshes every window)";
    drawLegend();
    drawMatrix();
    drawHttp();
    drawAgents();
  }

  function refresh() {
    getJson("/api/v1/mesh").then(function (view) {
      state.view = view;
      draw();
      // When the first matrix was drawn (ms since navigation): read by scripts/bench-mesh-page.sh.
      if (!document.documentElement.hasAttribute("data-drawn-ms")) {
        document.documentElement.setAttribute("data-drawn-ms", String(Math.round(performance.now())));
      }
      var pending = state.pair ? loadPair(state.pair.cell.source, state.pair.cell.target) : null;
      schedule(view.window_seconds);
      return pending;
    }).catch(function (err) {
      byId("status").textContent = "could not load the mesh: " + err.message;
      schedule(state.view ? state.view.window_seconds : 5);
    });
  }
  function schedule(seconds) {
    if (state.timer) clearTimeout(state.timer);
    state.timer = setTimeout(refresh, Math.max(1, seconds) * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    byId("metric").addEventListener("change", function () { if (state.view) { draw(); drawPair(); } });
    byId("matrix").addEventListener("click", function (event) {
      var td = event.target.closest ? event.target.closest("td.cell") : null;
      if (!td) return;
      loadPair(td.getAttribute("data-source"), td.getAttribute("data-target")).catch(function (err) {
        byId("status").textContent = "could not load the pair: " + err.message;
      });
    });
    byId("matrix").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && event.target.click) event.target.click();
    });
    byId("token-form").addEventListener("submit", function (event) {
      event.preventDefault();
      state.token = byId("token").value;
      try { sessionStorage.setItem("probermesh-token", state.token); } catch (e) { /* private mode */ }
      byId("token-form").hidden = true;
      refresh();
    });
    refresh();
  });
})();
