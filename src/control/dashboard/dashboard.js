/*
 * pilotfish admin dashboard (issue 19).
 *
 * Polls GET /stats every 2 s and rebuilds the header, the banner, the listeners, the target
 * groups (targets table and sparklines) and the reload history from it, keeping the last data on
 * screen (dimmed) while the admin port does not answer. "Reload configuration" sends POST /reload.
 * On a 401 it asks for the admin token, keeps it in sessionStorage["pilotfish.token"] and sends
 * it as "Authorization: Bearer <token>".
 *
 * SAFETY RULE: every value in /stats comes from configuration or discovery and may be hostile
 * (a header value "<script>…</script>", a rule name, an error message). Nodes are built ONLY with
 * createElement / createElementNS, textContent (text nodes) and setAttribute, through h() and
 * svg() below. Never innerHTML, outerHTML, insertAdjacentHTML, document.write or HTML built from
 * strings; no inline handlers and no element.style (the CSP forbids them): style with classes.
 */
"use strict";

(() => {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 8000;
  const TOKEN_KEY = "pilotfish.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // ---- DOM construction: the only way anything reaches the page ----

  function append(parent, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach((c) => append(parent, c)); return; }
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function setAttrs(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (/^on/i.test(name) || /^style$/i.test(name)) throw new Error("refused attribute " + name);
      el.setAttribute(name, String(value));
    }
    return el;
  }

  /** h("td", {class: "n"}, child, …): an HTML element; children are nodes, text, arrays or null. */
  function h(tag, attrs, ...children) {
    const el = setAttrs(document.createElement(tag), attrs);
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = setAttrs(document.createElementNS(SVG_NS, tag), attrs);
    append(el, children);
    return el;
  }

  // ---- Small helpers ----

  const arr = (v) => (Array.isArray(v) ? v : []);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const oneOf = (v, list, other) => (list.includes(v) ? v : other);
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const dateTime = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;

  function parseTime(v) {
    if (v === null || v === undefined || v === "") return null;
    const d = typeof v === "number" ? new Date(v * 1000) : new Date(String(v));
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function ago(seconds) {
    if (!isNum(seconds)) return "";
    const a = Math.abs(seconds);
    const text = a < 60 ? `${Math.floor(a)}s` : a < 3600 ? `${Math.floor(a / 60)}m`
      : a < 86400 ? `${Math.floor(a / 3600)}h` : `${Math.floor(a / 86400)}d`;
    return seconds >= -1 ? `${text} ago` : `in ${text}`;
  }

  /** A <time> with the local date and time and "(5s ago)" measured on the server's clock. */
  function timeCell(value, now) {
    const d = parseTime(value);
    if (!d) return h("span", { class: "muted" }, value ? String(value) : "–");
    const rel = isNum(now) ? ago(now - d.getTime() / 1000) : "";
    return h("time", { datetime: d.toISOString(), title: d.toISOString() },
      dateTime(d), rel ? h("span", { class: "muted" }, ` (${rel})`) : null);
  }

  function fmt(v, unit = "") {
    if (!isNum(v)) return "–";
    const a = Math.abs(v);
    return v.toFixed(a === 0 || a >= 100 ? 0 : a < 1 ? 2 : 1) + unit;
  }

  function table(key, headers, rows, cls) {
    return h("div", { class: "table-wrap", "data-scroll-key": key },
      h("table", { class: cls },
        h("thead", null, h("tr", null, headers.map(([text, c]) => h("th", { scope: "col", class: c }, text)))),
        h("tbody", null, rows)));
  }

  // ---- Admin token ----

  function getToken() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; } }
  function setToken(t) {
    try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); } catch { /* no storage */ }
  }
  function authHeaders() { const t = getToken(); return t ? { Authorization: "Bearer " + t } : {}; }

  // ---- View state ----

  const view = { data: null, lost: false, lostReason: "", auth: null /* null | "needed" | "refused" */, lastOk: null };

  // ---- Header and banner ----

  function renderHeader(d) {
    const state = String(d.state ?? "unknown");
    const pill = $("meta-state");
    pill.textContent = state;
    pill.setAttribute("class", "pill state-" + oneOf(state, ["ready", "starting", "draining"], "other"));
    $("meta-generation").textContent = d.generation ?? "–";
    $("meta-version").textContent = d.version ? "v" + d.version : "–";
    const now = parseTime(d.now);
    $("meta-updated").textContent = now ? clock(now) : "–";
  }

  function renderChrome() {
    const b = $("banner");
    b.replaceChildren();
    if (view.lost) {
      b.className = "lost";
      append(b, [h("strong", null, "Connection lost — retrying."), " ",
        view.lastOk ? `Showing the data of ${clock(view.lastOk)}.` : "No data received yet.",
        view.lostReason ? h("span", { class: "banner-detail" }, ` (${view.lostReason})`) : null]);
    } else if (view.data && view.data.state === "draining") {
      b.className = "draining";
      append(b, [h("strong", null, "Draining."), " pilotfish is shutting down: readiness answers 503, ",
        "listeners accept no new connections, requests in flight are finishing."]);
    } else {
      b.removeAttribute("class");
    }
    b.hidden = !b.className;
    $("content").classList.toggle("stale", view.lost || view.auth !== null);

    const form = $("auth");
    const wasHidden = form.hidden;
    form.hidden = view.auth === null;
    const msg = $("auth-message");
    msg.textContent = view.auth === "refused" ? "Token refused." : "";
    msg.hidden = view.auth !== "refused";
    if (wasHidden && !form.hidden) $("auth-token").focus();
  }

  // ---- Listeners ----

  function conditions(conds) {
    if (!conds.length) return h("span", { class: "muted" }, "any request");
    return h("ul", { class: "conds" }, conds.map((c) => h("li", null,
      h("span", { class: "cond-kind" }, c.kind), " ",
      arr(c.values).map((v, i) => [i ? h("span", { class: "or" }, " or ") : null, h("code", { class: "val" }, v)]))));
  }

  function certificates(certs) {
    if (!certs.length) return null;
    return h("ul", { class: "certs" }, certs.map((c) => {
      const days = Number(c.days_left);
      const level = !Number.isFinite(days) ? "unknown" : days < 0 ? "expired" : days < 14 ? "expiring" : "ok";
      const notAfter = String(c.not_after ?? "");
      const date = /^\d{4}-\d{2}-\d{2}/.test(notAfter) ? notAfter.slice(0, 10) : notAfter || "?";
      const left = level === "unknown" ? "" : days < 0 ? "expired" : days < 1 ? "< 1 day left"
        : `${Math.floor(days)} day${Math.floor(days) === 1 ? "" : "s"} left`;
      return h("li", { class: "cert cert-" + level, title: notAfter },
        h("span", { class: "cert-name" }, c.name), " ",
        h("span", { class: "muted" }, "expires ", date), " ",
        left ? h("span", { class: "days" }, left) : null);
    }));
  }

  function listenerCard(l) {
    const proto = String(l.protocol ?? "");
    const rows = arr(l.rules).map((r) => h("tr", { "data-rule": String(r.name ?? "") },
      h("td", { class: "n" }, r.priority), h("td", null, r.name),
      h("td", null, conditions(arr(r.conditions))), h("td", null, h("span", { class: "action" }, r.action))));
    rows.push(h("tr", { class: "default-row" },
      h("td", { class: "n muted" }, "–"), h("td", { class: "muted" }, "default"),
      h("td", { class: "muted" }, "anything else"), h("td", null, h("span", { class: "action" }, l.default_action ?? "–"))));
    return h("article", { class: "card", "data-listener": String(l.name ?? "") },
      h("header", { class: "card-head" },
        h("h3", null, l.name),
        h("code", { class: "bind" }, l.bind),
        h("span", { class: "pill proto-" + oneOf(proto, ["http", "https"], "other") }, proto || "?"),
        h("span", { class: "stat" }, h("b", null, l.active_connections ?? 0), " active")),
      certificates(arr(l.certificates)),
      table("rules:" + l.name, [["Prio", "n"], ["Rule"], ["Conditions"], ["Action"]], rows, "rules"));
  }

  // ---- Target groups ----

  const SOURCES = { static: "static", cloud_map: "Cloud Map", ecs: "ECS", dns: "DNS" };
  const BADGES = new Map([["healthy", "ok"], ["unhealthy", "bad"], ["draining", "warn"], ["initial", "warn"],
    ["unused", "off"], ["unavailable", "off"]]);
  const CHARTS = [
    { key: "requests_per_second", label: "requests/s", show: (v) => fmt(v), floor: 1 },
    { key: "error_rate", label: "errors", show: (v) => fmt(isNum(v) ? v * 100 : v, "%"), floor: 0.01 },
    { key: "p50_ms", label: "p50", show: (v) => fmt(v, " ms"), floor: 1 },
    { key: "p99_ms", label: "p99", show: (v) => fmt(v, " ms"), floor: 1 },
  ];
  const W = 160, H = 40, PAD = 3;

  /** A 160x40 sparkline of `values` over the window ending at the last point; gaps at nulls. */
  function sparkline(chart, time, values, d) {
    const n = values.length;
    const end = isNum(time[n - 1]) ? time[n - 1] : Number(d.now);
    const win = Number(d.window_seconds);
    // The window, or the history there is when the process is younger than it.
    const first = isNum(time[0]) ? time[0] : end;
    const start = win > 0 ? Math.max(end - win, n > 1 ? first : end - win) : first;
    const xOf = (i) => (end > start && isNum(time[i])
      ? Math.min(Math.max((time[i] - start) / (end - start), 0), 1) * W
      : n > 1 ? (i / (n - 1)) * W : W);
    let peak = null;
    for (const v of values) if (isNum(v) && (peak === null || v > peak)) peak = v;
    const max = Math.max(chart.floor, peak ?? 0);
    const yOf = (v) => PAD + (1 - Math.max(v, 0) / max) * (H - 2 * PAD);
    const xy = ([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`;
    let line = "", area = "", seg = [], last = null;
    const flush = () => {
      if (!seg.length) return;
      line += "M" + seg.map(xy).join("L") + (seg.length === 1 ? "h0.01" : "");
      area += `M${seg[0][0].toFixed(1)},${H - PAD}L${seg.map(xy).join("L")}L${seg[seg.length - 1][0].toFixed(1)},${H - PAD}Z`;
      seg = [];
    };
    values.forEach((v, i) => { if (isNum(v)) { seg.push([xOf(i), yOf(v)]); last = seg[seg.length - 1]; } else flush(); });
    flush();
    const minutes = win > 0 ? Math.round(win / 60) : 0;
    return svg("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `${chart.label}, peak ${chart.show(peak)}` },
      svg("title", null, `${chart.label}: peak ${chart.show(peak)}` +
        (minutes ? ` over the last ${minutes} min` : "")),
      svg("line", { class: "spark-base", x1: 0, y1: H - PAD + 0.5, x2: W, y2: H - PAD + 0.5 }),
      area ? svg("path", { class: "spark-area", d: area }) : null,
      line ? svg("path", { class: "spark-line", d: line }) : null,
      last ? svg("circle", { class: "spark-dot", cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 2 }) : null);
  }

  function charts(series, d) {
    const time = arr(series && series.time);
    if (!time.length) return h("p", { class: "empty" }, "No traffic data yet.");
    return h("div", { class: "charts" }, CHARTS.map((c) => {
      const values = arr(series && series[c.key]);
      const latest = values.length ? values[values.length - 1] : null;
      const alarm = c.key === "error_rate" && isNum(latest) && latest > 0;
      return h("figure", { class: `chart chart-${c.key}${alarm ? " alarm" : ""}` },
        h("figcaption", null, c.label),
        h("div", { class: "chart-row" }, sparkline(c, time, values, d), h("span", { class: "chart-value" }, c.show(latest))));
    }));
  }

  function targetsTable(g) {
    const targets = arr(g.targets);
    if (!targets.length) return h("p", { class: "empty" }, "No targets registered.");
    return table("targets:" + g.name, [["Target"], ["State"], ["Reason"], ["In flight", "n"], ["Weight", "n"]],
      targets.map((t) => {
        const state = String(t.state ?? "");
        return h("tr", { "data-target": String(t.address ?? ""), "data-state": state },
          h("td", null, h("code", null, t.address)),
          h("td", null, h("span", { class: "badge badge-" + (BADGES.get(state) || "off") }, state || "?")),
          h("td", { class: "reason" }, t.reason || ""),
          h("td", { class: "n" }, t.in_flight ?? 0),
          h("td", { class: "n" }, t.weight ?? "–"));
      }), "targets");
  }

  function groupCard(g, d) {
    const targets = arr(g.targets);
    const healthy = targets.filter((t) => t.state === "healthy").length;
    const source = String(g.source ?? "static");
    const desired = g.autoscaling && g.autoscaling.desired;
    const decision = g.autoscaling && g.autoscaling.last_decision
      ? h("p", { class: "discovery" }, "Autoscaling: ", g.autoscaling.last_decision,
        g.autoscaling.last_decision_time ? " — " : "", g.autoscaling.last_decision_time ? timeCell(g.autoscaling.last_decision_time, Number(d.now)) : null)
      : null;
    let discovery = null;
    if (g.last_refresh) discovery = h("p", { class: "discovery" }, "Discovery refreshed ", timeCell(g.last_refresh, Number(d.now)));
    else if (source !== "static") discovery = h("p", { class: "discovery muted" }, "Discovery has not completed yet.");
    return h("article", { class: "card group" + (g.discovery_error ? " has-error" : ""), "data-group": String(g.name ?? "") },
      h("header", { class: "card-head" },
        h("h3", null, g.name),
        h("span", { class: "pill source" }, Object.prototype.hasOwnProperty.call(SOURCES, source) ? SOURCES[source] : source),
        g.fail_open ? h("span", { class: "pill pill-warn", title: "No target is healthy: requests go to the unhealthy ones" }, "fail-open") : null,
        desired !== null && desired !== undefined ? h("span", { class: "pill" }, "desired ", desired) : null,
        h("span", { class: "stat" + (targets.length && !healthy ? " stat-bad" : "") }, h("b", null, `${healthy}/${targets.length}`), " healthy")),
      discovery,
      decision,
      g.discovery_error ? h("p", { class: "alert alert-error" }, h("strong", null, "Discovery error: "), g.discovery_error) : null,
      h("div", { class: "group-body" }, charts(g.series, d), targetsTable(g)));
  }

  // ---- Reloads ----

  function messages(list, cls) {
    return list.length ? h("ul", { class: "messages " + cls }, list.map((m) => h("li", null, m))) : null;
  }

  function renderReloads(d) {
    const parts = [];
    if (d.last_reload_error) {
      parts.push(h("div", { class: "alert alert-error" }, h("strong", null, "Last reload failed:"), h("pre", null, d.last_reload_error)));
    }
    const list = arr(d.reloads).slice().reverse();
    if (!list.length) parts.push(h("p", { class: "empty" }, "No reloads since start."));
    else parts.push(table("reloads", [["Time (newest first)"], ["Generation", "n"], ["Result"], ["Errors"]], list.map((r) => {
      const ok = r.result === "success";
      return h("tr", { "data-result": String(r.result ?? "") },
        h("td", null, timeCell(r.time, Number(d.now))),
        h("td", { class: "n" }, r.generation),
        h("td", null, h("span", { class: "badge badge-" + (ok ? "ok" : "bad") }, r.result ?? "?")),
        h("td", null, messages(arr(r.errors), "errors") || h("span", { class: "muted" }, "–")));
    }), "reloads"));
    return parts;
  }

  // ---- Whole page ----

  /** Replaces `body`'s children, keeping the horizontal scroll of its tables (phones). */
  function replaceKeepingScroll(body, nodes) {
    const saved = new Map();
    body.querySelectorAll("[data-scroll-key]").forEach((el) => saved.set(el.getAttribute("data-scroll-key"), el.scrollLeft));
    body.replaceChildren(...nodes);
    body.querySelectorAll("[data-scroll-key]").forEach((el) => {
      const x = saved.get(el.getAttribute("data-scroll-key"));
      if (x) el.scrollLeft = x;
    });
  }

  function render(d) {
    renderHeader(d);
    // Do not pull text out from under a user who is selecting it (to copy an address, say),
    // but never for longer than 10 s: the page must not look live while showing old states.
    const sel = window.getSelection();
    const selecting = sel && !sel.isCollapsed && $("content").contains(sel.anchorNode) && document.documentElement.hasAttribute("data-loaded");
    if (selecting) {
      view.heldSince = view.heldSince || Date.now();
      if (Date.now() - view.heldSince < 10000) return;
    }
    view.heldSince = 0;
    const listeners = arr(d.listeners), groups = arr(d.target_groups);
    replaceKeepingScroll($("listeners-body"), listeners.length ? listeners.map(listenerCard) : [h("p", { class: "empty" }, "No listeners.")]);
    replaceKeepingScroll($("groups-body"), groups.length ? groups.map((g) => groupCard(g, d)) : [h("p", { class: "empty" }, "No target groups.")]);
    replaceKeepingScroll($("reloads-body"), renderReloads(d));
    document.documentElement.setAttribute("data-loaded", "true");
  }

  function needToken() {
    if (getToken()) { setToken(""); view.auth = "refused"; } // the token we sent was refused
    else if (view.auth !== "refused") view.auth = "needed";
  }

  // ---- Polling ----

  let timer = 0, busy = false, again = false;

  async function poll() {
    if (busy) { again = true; return; }
    clearTimeout(timer);
    if (document.hidden) { timer = setTimeout(poll, POLL_MS); return; }
    busy = true;
    const abort = new AbortController();
    const kill = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch("/stats", { cache: "no-store", headers: authHeaders(), signal: abort.signal });
      if (res.status === 401) {
        view.lost = false;
        needToken();
      } else if (!res.ok) {
        throw new Error(`HTTP ${res.status}`);
      } else {
        const d = await res.json();
        if (!d || typeof d !== "object") throw new Error("unexpected /stats answer");
        view.data = d;
        view.auth = null;
        render(d);
        view.lost = false;
        view.lastOk = new Date();
      }
    } catch (e) {
      if (!view.lost) console.warn("pilotfish dashboard: /stats failed:", e);
      view.lost = true;
      view.lostReason = e instanceof Error && e.name === "AbortError" ? "timed out" : String(e && e.message || e);
    } finally {
      clearTimeout(kill);
      busy = false;
      renderChrome();
      if (again) { again = false; poll(); } else timer = setTimeout(poll, POLL_MS);
    }
  }

  // ---- Reload button ----

  function showReload(kind, title, ...rest) {
    const box = $("reload-status");
    box.className = "panel reload-status reload-" + kind;
    const dismiss = h("button", { type: "button", class: "btn btn-small" }, "Dismiss");
    dismiss.addEventListener("click", () => { box.hidden = true; });
    box.replaceChildren(h("div", { class: "reload-head" }, h("strong", null, title), dismiss));
    append(box, rest);
    box.hidden = false;
  }

  async function reload() {
    const button = $("reload-button");
    button.disabled = true;
    showReload("pending", "Reloading configuration…");
    try {
      const res = await fetch("/reload", { method: "POST", cache: "no-store", headers: authHeaders() });
      if (res.status === 401) {
        needToken();
        showReload("failure", "Reload needs the admin token.");
        return;
      }
      const text = await res.text();
      let out = null;
      try { out = JSON.parse(text); } catch { /* not JSON */ }
      if (!out || typeof out !== "object") {
        showReload("failure", `Reload answered HTTP ${res.status}`, text.trim() ? h("pre", null, text.trim()) : null);
        return;
      }
      const ok = out.result === "success";
      const errors = arr(out.errors), warnings = arr(out.warnings);
      showReload(ok ? "success" : "failure",
        ok ? `Reload succeeded: generation ${out.generation ?? "?"}.`
          : `Reload failed; generation ${out.generation ?? "?"} keeps running.`,
        errors.length ? [h("p", { class: "messages-title" }, "Errors"), messages(errors, "errors")] : null,
        warnings.length ? [h("p", { class: "messages-title" }, "Warnings"), messages(warnings, "warnings")] : null);
    } catch (e) {
      showReload("failure", "Reload request failed.", h("p", null, String(e && e.message || e)));
    } finally {
      button.disabled = false;
      renderChrome();
      poll();
    }
  }

  // ---- Start ----

  function start() {
    $("reload-button").addEventListener("click", reload);
    $("auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("auth-token");
      const token = input.value.trim();
      if (!token) return;
      if (/[^\x21-\x7e]/.test(token)) {
        $("auth-message").textContent = "A token is printable ASCII without spaces.";
        $("auth-message").hidden = false;
        return;
      }
      setToken(token);
      input.value = "";
      view.auth = "needed"; // stays shown until /stats accepts the token
      $("auth-message").hidden = true;
      poll();
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
