// Conveyor dashboard. Everything a job carries is put on the page with textContent (the
// el() helper below is the only way nodes are made), never parsed as HTML; the server's
// Content-Security-Policy forbids inline script as a second line of defence.
"use strict";

const body = document.body;
const PREFIX = body.dataset.prefix || "";
const CSRF = body.dataset.csrf || "";
const PAGE = body.dataset.page || "overview";
const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const STATES = ["queued", "scheduled", "running", "succeeded", "dead", "cancelled"];

// -- building nodes ---------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  if (node) node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function link(path, text, attrs) {
  return el("a", { href: PREFIX + path, ...(attrs || {}) }, text);
}

// a bar filled to `fraction` (0..1); the width is set through the CSSOM, which the
// Content-Security-Policy allows (a style attribute it would refuse)
function fill(fraction) {
  const bar = el("span", { class: "fill" });
  bar.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return bar;
}

// the table `id` with a header row of `heads` and `rows`, or one row saying `empty`
function fillTable(id, heads, rows, empty) {
  replace(id, el("thead", {}, el("tr", {}, heads.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: heads.length, text: empty }))));
}

function badge(state) {
  return el("span", { class: `badge ${state}`, text: state });
}

function number(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return el("time", { datetime: iso, title: iso }, `${stamp(date)} (${ago(date)})`);
}

function stamp(date) {
  const two = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
    `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

function ago(date) {
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  const future = seconds < 0;
  const s = Math.abs(seconds);
  const text = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min`
    : s < 129600 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10000 ? 0 : 1)} s`;
  return `${ms >= 100 ? Math.round(ms) : ms.toFixed(1)} ms`;
}

function pretty(value) {
  return el("pre", { class: "data", text: JSON.stringify(value, null, 2) });
}

// -- talking to the server --------------------------------------------------------------------
class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options) {
  const response = await fetch(PREFIX + path, {
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRF-Token": CSRF },
    ...(options || {}),
  });
  if (response.status === 401) {
    leave(`${PREFIX}/ui/login`);
    throw new HttpError(401, "logged out");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    throw new HttpError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

function post(path) {
  return api(path, { method: "POST" });
}

function flash(message, kind) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.replaceChildren(el("div", { class: `flash ${kind || "ok"}`, role: "status", text: message }));
}

// -- confirmation -----------------------------------------------------------------------------
function confirmAction(question) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = question;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// set once the page is being left: no more refreshes (they would ask for what is gone)
let leaving = false;

function leave(url) {
  leaving = true;
  window.location.assign(url);
}

async function act(question, path, done) {
  if (!(await confirmAction(question))) return;
  try {
    const result = await post(path);
    if (done) done(result);
  } catch (error) {
    flash(error.message, "error");
  }
  refreshNow();
}

// -- queue control ----------------------------------------------------------------------------
function queueButtons(q) {
  const base = `/ui/api/queues/${encodeURIComponent(q.name)}`;
  const toggle = q.paused
    ? el("button", { class: "small", "data-action": "resume",
      onclick: () => act(`Resume queue “${q.name}”? Workers take its jobs again.`, `${base}/resume`,
        () => flash(`Queue ${q.name} is running again.`)) }, "Resume")
    : el("button", { class: "small", "data-action": "pause",
      onclick: () => act(`Pause queue “${q.name}”? Workers stop taking its jobs (running ones finish); enqueues go on.`,
        `${base}/pause`, () => flash(`Queue ${q.name} is paused.`)) }, "Pause");
  const cap = el("button", { class: "small", "data-action": "cap", onclick: async () => {
    const value = window.prompt(`Most jobs waiting in queue “${q.name}” (a number, or none):`,
      q.max_queued === null || q.max_queued === undefined ? "none" : String(q.max_queued));
    if (value === null) return;
    try {
      const r = await post(`${base}/cap?max_queued=${encodeURIComponent(value.trim())}`);
      flash(r.max_queued === null ? `Queue ${q.name} has no cap.` : `Queue ${q.name} takes at most ${r.max_queued} waiting jobs.`);
    } catch (error) {
      flash(error.message, "error");
    }
    refreshNow();
  } }, "Cap…");
  return [toggle, cap];
}

// -- charts -----------------------------------------------------------------------------------
const CHART = { width: 560, height: 170, left: 48, right: 8, top: 10, bottom: 22 };
const WIDE = { ...CHART, width: 1140, height: 200 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

// series: [{name, values, kind: "bar"|"line", stack?}]; values may hold nulls (no data)
function chart(id, title, unit, minutes, series, fixedMax, frame) {
  const { width, height, left, right, top, bottom } = frame || CHART;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const n = minutes.length;
  const step = plotW / n;
  const stacked = new Array(n).fill(0);
  let peak = 0;
  for (const s of series) {
    s.values.forEach((v, i) => {
      const value = v || 0;
      if (s.kind === "bar") {
        stacked[i] += value;
        peak = Math.max(peak, stacked[i]);
      } else peak = Math.max(peak, value);
    });
  }
  const max = fixedMax || niceMax(peak);
  const y = (v) => top + plotH - (plotH * v) / max;
  const root = svg("svg", {
    id, class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": title, "data-max": max,
  });
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    root.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }),
      svg("text", { class: "axis", x: left - 6, y: y(value) + 4, "text-anchor": "end",
        text: `${Number(value.toPrecision(3))}${unit}` }));
  }
  [0, n - 31, n - 1].filter((i) => i >= 0).forEach((i) => {
    root.append(svg("text", { class: "axis", x: left + step * (i + 0.5), y: height - 6,
      "text-anchor": "middle", text: i === n - 1 ? "now" : `−${n - 1 - i} min` }));
  });
  const base = new Array(n).fill(0);
  for (const s of series) {
    if (s.kind === "bar") {
      s.values.forEach((v, i) => {
        if (!v) return;
        const bar = svg("rect", { class: `bar ${s.name}`, x: left + step * i + 1,
          width: Math.max(step - 2, 1), y: y(base[i] + v), height: y(base[i]) - y(base[i] + v) },
        svg("title", { text: `${minuteLabel(minutes[i])}: ${number(v)} ${s.name}` }));
        root.append(bar);
        base[i] += v;
      });
    } else {
      let d = "";
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const x = left + step * (i + 0.5);
        d += `${d && s.values[i - 1] !== null && s.values[i - 1] !== undefined ? "L" : "M"}${x.toFixed(1)},${y(v).toFixed(1)}`;
        root.append(svg("circle", { class: `dot ${s.name}`, cx: x, cy: y(v), r: 2.5 },
          svg("title", { text: `${minuteLabel(minutes[i])}: ${Number(v.toFixed(2))}${unit}` })));
      });
      root.prepend(svg("path", { class: `line ${s.name}`, d }));
    }
  }
  return el("figure", { class: "chart-box" }, el("figcaption", { text: title }), root,
    el("div", { class: "legend" }, series.map((s) => el("span", { class: `key ${s.name}`, text: s.label || s.name }))));
}

function minuteLabel(minute) {
  return new Date(minute * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// -- pages ------------------------------------------------------------------------------------
const pages = {};
let chartQueue = new URLSearchParams(window.location.search).get("queue") || "";

pages.overview = {
  frame() {
    return [
      el("div", { id: "flash" }),
      el("section", { class: "cards", id: "cards" }),
      el("h2", { text: "Queues" }),
      el("table", { id: "queues", class: "grid" }),
      el("section", { id: "limits-section" }),
      el("div", { class: "chart-head" },
        el("h2", { text: "Last hour" }),
        el("label", { for: "chart-queue", text: "Queue " }),
        el("select", { id: "chart-queue", onchange: (e) => { chartQueue = e.target.value; refreshNow(); } })),
      el("section", { id: "charts", class: "charts" }),
    ];
  },
  async refresh(stale) {
    const params = chartQueue ? `?queue=${encodeURIComponent(chartQueue)}` : "";
    const data = await api(`/ui/api/overview${params}`);
    if (stale() || !changed("overview", { ...data, now: 0 })) return;
    const totals = data.totals;
    const h = data.history;
    const done = h.succeeded.reduce((a, b) => a + b, 0);
    const bad = h.failed.reduce((a, b) => a + b, 0) + h.dead.reduce((a, b) => a + b, 0);
    replace("cards",
      STATES.map((s) => el("a", { class: `card ${s}`, href: `${PREFIX}/ui/jobs?state=${s}`, "data-state": s },
        el("span", { class: "value", text: number(totals[s]) }), el("span", { class: "label", text: s }))),
      el("div", { class: "card workers" },
        el("span", { class: "value", text: `${data.workers.busy}/${data.workers.concurrency}` }),
        el("span", { class: "label", text: `busy slots, ${data.workers.count} worker${data.workers.count === 1 ? "" : "s"}` })),
      el("div", { class: "card latency", id: "latency" },
        el("span", { class: "value", text: duration(h.recent_wait_ms) }),
        el("span", { class: "label", text: "enqueue → start, last 5 min" })));
    const rows = data.queues.map((q) => el("tr", { "data-queue": q.name },
      el("td", {}, link(`/ui/jobs?queue=${encodeURIComponent(q.name)}`, q.name)),
      STATES.map((s) => el("td", { class: "num", "data-state": s },
        link(`/ui/jobs?queue=${encodeURIComponent(q.name)}&state=${s}`, number(q.counts[s])))),
      el("td", { "data-field": "paused" }, q.paused ? badge("paused") : "–"),
      el("td", { class: "num", "data-field": "max_queued" }, number(q.max_queued)),
      el("td", {}, queueButtons(q), q.counts.dead > 0
        ? el("button", { class: "small danger", "data-action": "retry-dead",
          onclick: () => act(`Retry all ${q.counts.dead} dead jobs of queue “${q.name}”?`,
            `/ui/api/retry-dead?queue=${encodeURIComponent(q.name)}`,
            (r) => flash(`${r.retried} dead jobs of ${r.queue} are queued again.` +
              (r.skipped ? ` ${r.skipped} were left: their uploaded files are gone.` : ""))) }, "Retry dead")
        : null)));
    fillTable("queues", ["queue", ...STATES, "paused", "max queued", ""], rows, "No jobs yet.");
    const limits = data.limits || [];
    replace("limits-section", limits.length ? [
      el("h2", { text: "Limits" }),
      el("table", { id: "limits", class: "grid" },
        el("thead", {}, el("tr", {}, ["job", "group", "running / cap", "ready", "throttled", "rate"].map((h) => el("th", { text: h })))),
        el("tbody", {}, limits.map((l) => el("tr", { "data-name": l.name, "data-group": l.group === null ? "" : l.group },
          el("td", { text: l.name }), el("td", { text: l.group === null ? "(all)" : l.group }),
          el("td", { class: "num", "data-field": "running" }, `${number(l.running)} / ${l.cap === null ? "–" : number(l.cap)}`),
          el("td", { class: "num" }, number(l.ready)),
          el("td", { class: "num", "data-field": "throttled" }, number(l.throttled)),
          el("td", { text: l.rate || "–" }))))),
    ] : []);
    const select = document.getElementById("chart-queue");
    const names = ["", ...data.queues.map((q) => q.name)];
    if (chartQueue && !names.includes(chartQueue)) names.push(chartQueue);
    if (select.options.length !== names.length || [...select.options].some((o, i) => o.value !== names[i])) {
      select.replaceChildren(...names.map((n) => el("option", { value: n, text: n || "all queues" })));
    }
    select.value = chartQueue;
    replace("charts",
      chart("chart-throughput", `Throughput: ${number(done)} succeeded, ${number(bad)} failed in the last hour (jobs per minute)`, "",
        h.minutes, [
          { name: "succeeded", values: h.succeeded, kind: "bar" },
          { name: "failed", values: h.failed.map((v, i) => v + h.dead[i]), kind: "bar", label: "failed or dead" },
        ], null, WIDE),
      chart("chart-failures", "Failure rate (% of attempts that ended)", "%", h.minutes,
        [{ name: "failure-rate", values: h.failure_rate, kind: "line", label: "failure rate" }],
        Math.max(niceMax(Math.max(0, ...h.failure_rate.filter((v) => v !== null))), 1)),
      chart("chart-latency", "Enqueue-to-start latency (mean per minute)", " ms", h.minutes,
        [{ name: "latency", values: h.wait_ms, kind: "line", label: "mean wait" }]));
  },
};

pages.workers = {
  frame() {
    return [el("h2", { text: "Workers" }), el("table", { id: "workers", class: "grid" }),
      el("h2", { text: "Jobs known" }),
      el("p", { class: "hint", text: "The jobs workers run, as they publish them when they start and every minute." }),
      el("table", { id: "known", class: "grid" })];
  },
  async refresh(stale) {
    const [data, known] = await Promise.all([api("/ui/api/workers"), api("/ui/api/known")]);
    if (stale()) return;
    fillTable("known", ["name", "queue", "parameters", "executor", "last seen"],
      known.jobs.map((j) => el("tr", { "data-known": j.name },
        el("td", { text: j.name }), el("td", { text: j.queue }),
        el("td", { class: "mono", text: j.signature.slice(j.name.length) }),
        el("td", { text: j.executor }),
        el("td", {}, when(j.seen_at)))),
      "No worker has published its jobs to this store yet.");
    const cols = ["host", "pid", "queues", "concurrency", "min", "max", "busy", "done", "failed", "started", "heartbeat"];
    const rows = data.workers.map((w) => el("tr", { "data-worker": w.id },
      el("td", { text: w.host }), el("td", { class: "num", text: w.pid }),
      el("td", { text: w.queues.join(", ") }),
      el("td", { class: "num", text: w.concurrency }), el("td", { class: "num", text: w.min_concurrency }),
      el("td", { class: "num", text: w.max_concurrency }),
      el("td", { class: "num" }, el("span", { class: "meter", title: `${w.busy} of ${w.concurrency} slots busy` },
        fill(w.concurrency ? w.busy / w.concurrency : 0)), ` ${w.busy}`),
      el("td", { class: "num", text: number(w.processed) }), el("td", { class: "num", text: number(w.failed) }),
      el("td", {}, when(w.started_at)), el("td", { text: `${w.heartbeat_age} s ago` })));
    fillTable("workers", cols, rows, "No live workers.");
  },
};

pages.schedules = {
  frame() {
    return [el("div", { id: "flash" }), el("h2", { text: "Schedules" }),
      el("p", { class: "hint", text: "Workers store their app's schedules when they start and every minute; one no live worker registered for 5 minutes is orphaned (never fired)." }),
      el("table", { id: "schedules", class: "grid" })];
  },
  async refresh(stale) {
    const data = await api("/ui/api/schedules");
    if (stale()) return;
    const path = (s, verb) => `/ui/api/schedules/${encodeURIComponent(s.name)}/${verb}`;
    const rows = data.schedules.map((s) => el("tr", { "data-schedule": s.name },
      el("td", { text: s.name }), el("td", { class: "mono", text: s.timing }),
      el("td", { text: s.job }), el("td", {}, s.paused ? "paused" : when(s.next_run)),
      el("td", {}, when(s.last_run)),
      el("td", {}, s.last_job ? link(`/ui/jobs/${encodeURIComponent(s.last_job)}`, s.last_job) : "–",
        " ", s.last_job_state ? badge(s.last_job_state) : ""),
      el("td", { text: s.orphaned ? "orphaned" : s.paused ? "paused" : "active" }),
      el("td", {},
        s.paused
          ? el("button", { class: "small", "data-action": "resume", onclick: () => act(`Resume schedule “${s.name}”?`, path(s, "resume"), () => flash(`Schedule ${s.name} resumed.`)) }, "Resume")
          : el("button", { class: "small", "data-action": "pause", onclick: () => act(`Pause schedule “${s.name}”?`, path(s, "pause"), () => flash(`Schedule ${s.name} paused.`)) }, "Pause"),
        " ",
        el("button", { class: "small", "data-action": "run", onclick: () => act(`Run the job of schedule “${s.name}” now?`, path(s, "run"), (r) => flash(`Enqueued job ${r.id}.`)) }, "Run now"),
        s.orphaned ? el("button", { class: "small danger", "data-action": "delete", onclick: () => act(`Delete schedule “${s.name}”?`, path(s, "delete"), () => flash(`Schedule ${s.name} deleted.`)) }, "Delete") : "")));
    fillTable("schedules", ["name", "timing", "job", "next run", "last run", "last job", "status", ""], rows,
      "No schedule is stored yet: workers store their app's schedules when they start.");
  },
};

function jobFilters() {
  const params = new URLSearchParams(window.location.search);
  return { state: params.get("state") || "", queue: params.get("queue") || "",
    q: params.get("q") || "", cursor: params.get("cursor") || "" };
}

function jobsUrl(filters) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
  const text = params.toString();
  return `${PREFIX}/ui/jobs${text ? `?${text}` : ""}`;
}

// the cursors of the newer pages, so "Newer" can go back one page (not one history entry)
function newerCursors() {
  return (window.history.state && window.history.state.cursors) || [];
}

function goJobs(filters, cursors) {
  window.history.pushState({ cursors: cursors || [] }, "", jobsUrl(filters));
  refreshNow();
}

function plainClick(event) {
  return event.button === 0 && !(event.ctrlKey || event.metaKey || event.shiftKey || event.altKey);
}

pages.jobs = {
  frame() {
    const f = jobFilters();
    const submit = (event) => {
      event.preventDefault();
      const form = event.target;
      goJobs({ state: form.state.value, queue: form.queue.value, q: form.q.value.trim(), cursor: "" });
    };
    return [
      el("div", { id: "flash" }),
      el("nav", { id: "state-tabs", class: "tabs" }),
      el("form", { id: "job-filters", class: "filters", onsubmit: submit },
        el("label", { text: "State " }, el("select", { name: "state" },
          el("option", { value: "", text: "any" }), STATES.map((s) => el("option", { value: s, text: s, selected: s === f.state })))),
        el("label", { text: "Queue " }, el("input", { name: "queue", value: f.queue, placeholder: "any", list: "queue-names" })),
        el("datalist", { id: "queue-names" }),
        el("label", { text: "Search " }, el("input", { name: "q", type: "search", value: f.q, placeholder: "job id or name" })),
        el("button", { type: "submit", text: "Show" })),
      el("table", { id: "jobs", class: "grid" }),
      el("div", { class: "pager", id: "pager" }),
    ];
  },
  async refresh(stale) {
    const f = jobFilters();
    const params = new URLSearchParams({ limit: "25" });
    for (const key of ["state", "queue", "q", "cursor"]) if (f[key]) params.set(key, f[key]);
    const [page, overview] = await Promise.all([api(`/ui/api/jobs?${params}`), api("/ui/api/counts")]);
    if (stale() || !changed("jobs", { page, overview, f })) return;
    const form = document.getElementById("job-filters");
    if (form && !form.contains(document.activeElement)) { // the filters follow tabs and history
      form.state.value = f.state;
      form.queue.value = f.queue;
      form.q.value = f.q;
    }
    const counts = f.queue ? (overview.queues.find((q) => q.name === f.queue) || { counts: {} }).counts : overview.totals;
    replace("state-tabs", ["", ...STATES].map((s) => el("a", {
      href: jobsUrl({ ...f, state: s, cursor: "" }), class: s === f.state ? "active" : null,
      onclick: (e) => { if (plainClick(e)) { e.preventDefault(); goJobs({ ...f, state: s, cursor: "" }); } },
    }, s || "all", s ? el("span", { class: "count", text: number(counts[s] || 0) }) : null)));
    replace("queue-names", overview.queues.map((q) => el("option", { value: q.name })));
    const rows = page.jobs.map((j) => el("tr", { "data-job": j.id },
      el("td", { class: "mono" }, link(`/ui/jobs/${j.id}`, j.id)),
      el("td", { text: j.name }), el("td", { text: j.queue }), el("td", {}, badge(j.state)),
      el("td", { class: "num", text: j.attempts }), el("td", {}, when(j.created_at)),
      el("td", {}, when(j.finished_at)), el("td", { class: "error-cell", text: j.error || "" })));
    fillTable("jobs", ["id", "name", "queue", "state", "attempts", "created", "finished", "error"], rows,
      "No jobs match.");
    const newer = () => {
      const cursors = newerCursors().slice();
      goJobs({ ...f, cursor: cursors.pop() || "" }, cursors);
    };
    replace("pager",
      f.cursor ? el("button", { type: "button", id: "newest", onclick: () => goJobs({ ...f, cursor: "" }) }, "⇤ Newest") : null,
      f.cursor ? el("button", { type: "button", id: "newer", onclick: newer }, "← Newer") : null,
      page.next_cursor ? el("button", { type: "button", id: "older",
        onclick: () => goJobs({ ...f, cursor: page.next_cursor }, [...newerCursors(), f.cursor]) }, "Older →") : null);
  },
};

pages.job = {
  frame() {
    return [el("div", { id: "flash" }), el("article", { id: "job" })];
  },
  async refresh(stale) {
    const id = body.dataset.job;
    let j;
    try {
      j = await api(`/ui/api/jobs/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status === 404) {
        if (changed("job", null)) {
          replace("job", el("h2", { text: "No such job" }), el("p", { text: `There is no job with id ${id}.` }));
        }
        return;
      }
      throw error;
    }
    // redrawn only when something changed, so a selection (a traceback being copied) stays
    if (stale() || !changed("job", j)) return;
    const path = `/ui/api/jobs/${j.id}`;
    const actions = [];
    if (j.state === "dead" || j.state === "cancelled") {
      actions.push(el("button", { id: "retry", onclick: () => act(`Retry job ${j.name} (${j.id})?`, `${path}/retry`,
        () => flash("The job is queued again.")) }, "Retry"));
    }
    if (["queued", "scheduled", "running"].includes(j.state) && !j.cancel_requested) {
      actions.push(el("button", { id: "cancel", class: "danger", onclick: () => act(`Cancel job ${j.name} (${j.id})?`, `${path}/cancel`,
        () => flash("Cancellation asked for.")) }, "Cancel"));
    }
    if (j.state === "queued" || j.state === "scheduled") {
      actions.push(el("button", { id: "priority", onclick: async () => {
        const value = window.prompt(`Priority of job ${j.name} (-10 to 10, higher runs sooner):`, String(j.priority));
        if (value === null) return;
        try {
          const r = await post(`${path}/priority?priority=${encodeURIComponent(value.trim())}`);
          flash(`The job's priority is ${r.priority}.`);
        } catch (error) {
          flash(error.message, "error");
        }
        refreshNow();
      } }, "Priority…"));
    }
    if (j.state !== "running") {
      actions.push(el("button", { id: "delete", class: "danger", onclick: () => act(`Delete job ${j.name} (${j.id}) for good?`, `${path}/delete`,
        () => leave(`${PREFIX}/ui/jobs`)) }, "Delete"));
    }
    const progress = j.progress === null ? null : Math.max(0, Math.min(1, j.progress));
    const facts = [
      ["queue", link(`/ui/jobs?queue=${encodeURIComponent(j.queue)}`, j.queue)],
      ["priority", String(j.priority)],
      ["attempts", `${j.attempts}${j.recoveries ? ` (${j.recoveries} recovered after a lost worker)` : ""}`],
      ["worker", j.worker_id || "–"], ["created", when(j.created_at)], ["runs at", when(j.run_at)],
      ["started", when(j.started_at)], ["finished", when(j.finished_at)], ["kept until", when(j.expires_at)],
    ];
    if (j.unique_key) facts.push(["unique key", j.unique_key]);
    const parts = [
      el("header", { class: "job-head" }, el("h2", {}, el("span", { class: "job-name", text: j.name }), " ", badge(j.state)),
        el("div", { class: "mono", text: j.id }), el("div", { class: "actions" }, actions)),
      j.cancel_requested && j.state === "running" ? el("p", { class: "note", text: "Cancellation asked for; the worker stops the job at its next heartbeat." }) : null,
      progress === null ? null : el("div", { class: "progress", id: "progress" },
        el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(progress * 100) },
          fill(progress)),
        el("span", { class: "progress-text", text: `${Math.round(progress * 100)} %${j.progress_message ? ` · ${j.progress_message}` : ""}` })),
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)])),
      el("h3", { text: "Arguments" }), pretty(j.args),
      Object.keys(j.kwargs || {}).length ? [el("h3", { text: "Keyword arguments" }), pretty(j.kwargs)] : null,
      j.state === "succeeded" ? [el("h3", { text: "Result" }), pretty(j.result)] : null,
      j.error ? [el("h3", { text: "Error" }), el("pre", { class: "error", id: "error", text: j.error })] : null,
      j.traceback ? [el("h3", { text: "Traceback" }), el("pre", { class: "traceback", id: "traceback", text: j.traceback })] : null,
    ];
    replace("job", parts);
  },
};

// -- the refresh loop -------------------------------------------------------------------------
let timer = null;
let running = false;
// refreshes asked for; one asked for while another runs makes that one's answer stale
let asked = 0;
const drawn = {};

// true when data differs from what the page last drew under this name
function changed(name, data) {
  const key = JSON.stringify(data);
  if (drawn[name] === key) return false;
  drawn[name] = key;
  return true;
}

async function refreshNow() {
  if (leaving) return;
  asked += 1;
  if (timer) clearTimeout(timer);
  timer = null;
  if (running) return; // the running refresh sees it was overtaken and runs again
  running = true;
  const live = document.getElementById("live");
  let ticket;
  do {
    ticket = asked;
    try {
      await pages[PAGE].refresh(() => ticket !== asked);
      if (live) { live.textContent = "live"; live.className = "live"; }
    } catch (error) {
      if (live) { live.textContent = `offline: ${error.message}`; live.className = "live offline"; }
    }
  } while (ticket !== asked && !leaving);
  running = false;
  if (!leaving) timer = setTimeout(refreshNow, REFRESH_MS);
}

function start() {
  const page = pages[PAGE] || pages.overview;
  replace("main", page.frame());
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try { await post("/ui/logout"); } finally { leave(`${PREFIX}/ui/login`); }
    });
  }
  window.addEventListener("popstate", () => {
    if (PAGE === "jobs") {
      replace("main", pages.jobs.frame());
      delete drawn.jobs;
    }
    refreshNow();
  });
  refreshNow();
}

start();
