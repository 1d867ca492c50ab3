// cachetap console: every page polls the admin API and shows what it answers; actions POST to it
// with the admin token from this browser's localStorage (never a cookie: other sites cannot use it).
"use strict";
(function () {
  const TOKEN_KEY = "cachetap-admin-token";
  const page = document.body.dataset.page;
  const $ = (sel, root) => (root || document).querySelector(sel);

  // ---- formatting -------------------------------------------------------------------------------
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const sign = n < 0 ? "−" : "";
    let v = Math.abs(n), i = 0;
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
    return sign + (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + UNITS[i];
  }
  const fmt = {
    bytes, int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en")),
    percent: (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"),
    rate: (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(2)),
  };
  function ago(ts) {
    if (!ts) return "–";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return Math.ceil(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }
  function pick(obj, path) { return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj); }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "–" : String(c)));
    return node;
  }
  function urlCell(url, sub) {
    return el("td", { class: "url" }, url, el("small", {}, sub || ""));
  }

  // ---- API --------------------------------------------------------------------------------------
  function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
  async function api(path, options) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    if (options && options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...(options || {}), headers, credentials: "omit" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
                                          : response.statusText);
      error.status = response.status;
      throw error;
    }
    return body;
  }
  function notice(text, isError) {
    const box = $("#notice");
    box.textContent = text;
    box.className = isError ? "error" : "";
    box.hidden = !text;
  }
  async function act(path, body, done) {
    try {
      const answer = await api(path, { method: "POST", body: body ? JSON.stringify(body) : undefined });
      notice(done(answer), false);
      refresh();
    } catch (e) {
      notice(e.status === 401 ? "Actions need the admin token: open “admin token” above and paste it." : e.message, true);
    }
  }

  // ---- the token box ----------------------------------------------------------------------------
  function showToken() {
    $(".token").classList.toggle("set", !!token());
    $("#token-state").textContent = token() ? "admin token ✓" : "admin token";
  }
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    $("#token-input").value = "";
    $(".token").open = false;
    showToken(); refresh();
  });
  $("#token-forget").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); showToken(); });
  showToken();

  // ---- pages ------------------------------------------------------------------------------------
  function fill(data) {
    for (const node of document.querySelectorAll("[data-field]")) {
      const value = pick(data, node.dataset.field);
      node.dataset.value = value === null || value === undefined ? "" : String(value);
      node.textContent = value === null && node.dataset.none ? node.dataset.none : fmt[node.dataset.format || "int"](value);
    }
  }

  const charts = {};
  const SERIES = [
    { label: "served from cache", key: "served_bytes", stroke: "#5ad08a", fill: "rgba(90,208,138,.15)" },
    { label: "fetched to fill", key: "fetched_bytes", stroke: "#4fb3ff" },
    { label: "missed", key: "missed_bytes", stroke: "#ff6b6b" },
  ];
  function drawChart(box, answer) {
    const xs = answer.points.map((p) => p.bucket);
    const data = [xs, ...SERIES.map((s) => answer.points.map((p) => p[s.key]))];
    const width = Math.max(280, box.clientWidth - 10);
    if (charts[box.id]) { charts[box.id].setData(data); charts[box.id].setSize({ width, height: 220 }); return; }
    const axis = { stroke: getComputedStyle(document.body).color, grid: { stroke: "rgba(128,128,128,.2)" } };
    charts[box.id] = new uPlot({
      width, height: 220, scales: { x: { time: true, range: [answer.since, answer.since + (answer.range === "day" ? 86400 : 2592000)] } },
      series: [{}, ...SERIES.map((s) => ({ label: s.label, stroke: s.stroke, fill: s.fill, width: 2,
                                             value: (u, v) => bytes(v), points: { show: xs.length < 3 } }))],
      axes: [axis, { ...axis, size: 70, values: (u, ticks) => ticks.map(bytes) }],
    }, data, box);
  }

  let chartsDue = 0;
  const pages = {
    async overview() {
      const data = await api("/api/overview");
      fill(data);
      const quota = data.store.quota_bytes;
      $("#quota-meter").hidden = !quota;
      $("#quota-meter").value = quota ? Math.min(1, data.store.stored_bytes / quota) : 0;
      if (Date.now() >= chartsDue) {
        chartsDue = Date.now() + 30000;
        for (const box of document.querySelectorAll(".chart")) drawChart(box, await api("/api/series?range=" + box.dataset.range));
      }
    },
    async downloads() {
      const data = await api("/api/downloads");
      const rows = data.active.concat(data.finished);
      $("#active tbody").replaceChildren(...rows.map((d) => el("tr", { "data-key": d.key, "data-state": d.state },
        urlCell(d.url, d.reason || ""),
        el("td", {}, el("progress", { max: 100, value: d.percent || 0, title: (d.percent ?? 0) + " %", "data-percent": d.percent ?? "" }),
           el("small", {}, " " + (d.percent === null ? "size unknown" : d.percent + " %") + " · " + bytes(d.bytes_done) + " of " + bytes(d.size))),
        el("td", { class: "num" }, d.state === "ready" ? "done" : bytes(d.speed) + "/s"),
        el("td", { class: "num" }, d.state === "ready" ? ago(d.updated_at) : duration(d.eta_s)),
        el("td", { class: "state-" + d.state }, d.state))));
      $("#active-empty").hidden = rows.length > 0;
      $("#active-count").textContent = data.active.length ? "(" + data.active.length + ")" : "";
      $("#failures tbody").replaceChildren(...data.failures.map((f) => el("tr", { "data-key": f.key },
        urlCell(f.url, f.host), el("td", {}, f.reason), el("td", { class: "num" }, ago(f.updated_at)),
        el("td", {}, el("div", { class: "actions" }, button("Retry", () => act(`/api/entries/${f.key}/retry`, null,
          (a) => `retry of ${a.url}: ${a.outcome}${a.reason ? " (" + a.reason + ")" : ""}`)))))));
      $("#failures-empty").hidden = data.failures.length > 0;
    },
    async catalog() {
      const q = encodeURIComponent($("#search").value.trim());
      const data = await api(`/api/catalog?q=${q}&sort=${$("#sort").value}`);
      $("#entries tbody").replaceChildren(...data.entries.map((e) => el("tr", { "data-key": e.key },
        el("td", { class: "url" }, e.cache_url ? el("a", { href: e.cache_url }, e.url) : e.url, el("small", {}, e.key)),
        el("td", { class: "state-" + e.state }, e.state), el("td", {}, e.freshness),
        el("td", { class: "num" }, fmt.int(e.hits)), el("td", { class: "num" }, bytes(e.stored_size ?? e.size)),
        el("td", { class: "num", "data-value": e.saved_bytes }, bytes(e.saved_bytes)), el("td", { class: "num" }, ago(e.last_hit)),
        el("td", {}, el("div", { class: "actions" },
          ...(e.state === "ready" ? [button("Revalidate", () => act(`/api/entries/${e.key}/revalidate`, null, (a) => `revalidated: ${a.outcome}`))] : []),
          button("Purge", () => confirm("Remove " + e.url + " from the cache?") &&
                 act(`/api/entries/${e.key}/purge`, null, (a) => `purged ${a.key} (file ${a.file})`), "danger"))))));
      $("#entries-empty").hidden = data.entries.length > 0;
    },
    async hosts() {
      const data = await api("/api/hosts");
      $("#by-saved tbody").replaceChildren(...data.by_saved.map((h) => el("tr", {}, el("td", {}, h.host),
        el("td", { class: "num" }, bytes(h.saved_bytes)), el("td", { class: "num" }, bytes(h.served_bytes)),
        el("td", { class: "num" }, bytes(h.fetched_bytes)), el("td", { class: "num" }, fmt.int(h.objects)), el("td", { class: "num" }, fmt.int(h.hits)))));
      $("#by-missed tbody").replaceChildren(...data.by_missed.map((h) => el("tr", {}, el("td", {}, h.host),
        el("td", { class: "num" }, bytes(h.missed_bytes)), el("td", { class: "num" }, bytes(h.saved_bytes)),
        el("td", { class: "num" }, fmt.int(h.objects)), el("td", { class: "num" }, fmt.int(h.hits)))));
    },
    async nodes() {
      const data = await api("/api/nodes");
      $("#nodes-error").hidden = !data.error;
      $("#nodes-error").textContent = data.error || "";
      $("#nodes tbody").replaceChildren(...data.nodes.map((n) => el("tr", {}, el("td", {}, n.name),
        el("td", { class: n.live ? "state-ready" : "state-failed" }, n.live ? "up" : "gone"), el("td", {}, n.roles.join(", ")),
        el("td", { class: "num" }, ago(n.last_seen)), el("td", { class: "num" }, n.capacity ? bytes(n.free) + " of " + bytes(n.capacity) : "–"),
        el("td", { class: "url" }, n.public_url || "–"), el("td", { class: "url" }, reports(n.reports)))));
      $("#nodes-empty").hidden = data.nodes.length > 0;
      $("#workers tbody").replaceChildren(...data.workers.map((w) => el("tr", {}, el("td", {}, w.name),
        el("td", {}, w.queues.join(", ")), el("td", { class: "num" }, w.active), el("td", { class: "num" }, w.concurrency))));
      $("#workers-empty").hidden = data.workers.length > 0;
      $("#queues tbody").replaceChildren(...Object.entries(data.queues).map(([name, n]) => el("tr", {}, el("td", {}, name),
        el("td", { class: "num" }, n === null ? "?" : n))));
      $("#beat-holder").textContent = data.beat.holder || "none holds the beat lease";
      $("#beat-runs tbody").replaceChildren(...Object.entries(data.beat.last_started).sort().map(([task, ts]) => el("tr", {},
        el("td", {}, task.replace("cachetap.schedule.", "")), el("td", { class: "num" }, ago(ts)))));
    },
    async tasks() {},
  };
  function reports(byRole) {
    return Object.entries(byRole || {}).filter(([, r]) => r && Object.keys(r).length)
      .map(([role, r]) => role + ": " + Object.entries(r).map(([k, v]) => k + " " + (typeof v === "object" ? JSON.stringify(v) : v)).join(", "))
      .join(" · ") || "–";
  }
  function button(text, onclick, cls) { const b = el("button", { type: "button", class: cls || "" }, text); b.addEventListener("click", onclick); return b; }

  let busy = false;
  async function refresh() {
    if (busy || !pages[page]) return;
    busy = true;
    try {
      await pages[page]();
      $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
      if ($("#notice").dataset.auth) { notice(""); delete $("#notice").dataset.auth; }
    } catch (e) {
      $("#updated").textContent = "not updated: " + e.message;
      if (e.status === 401) { notice("This console needs the admin token to read from here: open “admin token” above.", true); $("#notice").dataset.auth = "1"; }
    } finally { busy = false; }
  }

  const prefetchForm = $("#prefetch-form");
  if (prefetchForm) prefetchForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("/api/prefetch", { url: $("#prefetch-url").value.trim() },
        (a) => `${a.url}: ${a.outcome}${a.state ? " (" + a.state + ")" : ""}${a.reason ? ": " + a.reason : ""}`);
  });
  const search = $("#search-form");
  if (search) {
    search.addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
    $("#search").addEventListener("input", refresh);
    $("#sort").addEventListener("change", refresh);
  }
  const taskForm = $("#task-form");
  if (taskForm) taskForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { $("#task-result").textContent = JSON.stringify(await api("/api/tasks/" + encodeURIComponent($("#task-id").value.trim())), null, 2); }
    catch (e) { $("#task-result").textContent = e.message; }
  });
  window.addEventListener("resize", () => { chartsDue = 0; });

  refresh();
  setInterval(refresh, page === "downloads" ? 1000 : 2000);
})();
