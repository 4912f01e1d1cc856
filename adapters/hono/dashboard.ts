/**
 * The relay app's dashboard page (`GET /`): a static shell, its stylesheet and script, all served by the app with a
 * strict Content-Security-Policy (scripts and styles from the app only; no CDN, no inline script). The shell holds no
 * data: the script asks for a read or admin secret, keeps it in `sessionStorage` (this tab only, gone when it
 * closes) and sends it as `Authorization: Bearer` to the JSON routes (`health`, `dead-letters`, and the admin-only
 * replay). Charts use uPlot (embedded, see `uplot.ts`). Every value from the server reaches the page as text
 * (`textContent`), never as HTML: dead-letter errors and payloads are attacker-influenced.
 *
 * Opt-in through {@link relayDashboard} (re-exported by `edge-outbox/hono`): an app that does not call it carries
 * none of this module or of uPlot in its bundle.
 *
 * @module
 */
import * as v from "valibot";
import { parseOptions } from "../../src/options.ts";
import { UPLOT_CSS, UPLOT_JS, UPLOT_VERSION } from "./uplot.ts";

/** Options of {@link relayDashboard}. */
export interface RelayDashboardOptions {
  /** How often the page re-reads the counters (one chart point each), ms. @default 5000 */
  refreshMs?: number | undefined;
}

/** One file the dashboard serves. */
export interface DashboardAsset {
  /** The file's text. */
  readonly body: string;
  /** Its `Content-Type`. */
  readonly type: string;
}

/** The dashboard, ready for `createRelayApp({ dashboard })`: the page and its assets. */
export interface RelayDashboard {
  /** Marks a value made by {@link relayDashboard}. */
  readonly kind: "edge-outbox:dashboard";
  /** The page, with asset URLs led by `prefix` (`./`, or `./outbox/` for a page at `/outbox`). */
  page(prefix: string): string;
  /** Response headers of the page (a strict Content-Security-Policy, no caching, no referrer). */
  readonly pageHeaders: Readonly<Record<string, string>>;
  /** The assets by path below the app (`/assets/…`). */
  readonly assets: Readonly<Record<string, DashboardAsset>>;
}

const JS = "text/javascript; charset=utf-8";
const CSS = "text/css; charset=utf-8";

/**
 * Makes the dashboard page for `createRelayApp`'s `dashboard` option: `GET /` shows the health status and checks,
 * the counts, charts (uPlot, served by the app: no CDN) of pending/due/dead and of delivery latency sampled while the
 * page is open, and the dead letters with their errors and a Replay button. The page and its assets hold no data and
 * are served without a secret; the page asks for a read or admin secret, keeps it in `sessionStorage` and sends it as
 * `Authorization: Bearer` to `/health` and `/dead-letters` (replaying needs the admin secret).
 *
 * @param options refreshMs (5000)
 * @returns the dashboard to pass as `dashboard`
 * @throws {OutboxError} CONFIG for a bad option, e.g. `relayDashboard options: refreshMs: …`
 * @example
 * ```ts
 * import { createRelayApp, relayDashboard } from "edge-outbox/hono";
 *
 * const app = createRelayApp({ relay, outbox, auth: { read: env.OUTBOX_READ_SECRET }, dashboard: relayDashboard() });
 * ```
 */
export function relayDashboard(options: RelayDashboardOptions = {}): RelayDashboard {
  const { refreshMs } = parseOptions(
    "relayDashboard options",
    v.strictObject({ refreshMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1_000), v.maxValue(3_600_000)), 5_000) }),
    options ?? {},
  );
  return {
    kind: "edge-outbox:dashboard",
    page: (prefix) => dashboardHtml(prefix, refreshMs, UPLOT_VERSION),
    pageHeaders: DASHBOARD_HEADERS,
    assets: {
      [`/assets/uplot-${UPLOT_VERSION}.min.js`]: { body: UPLOT_JS, type: JS },
      [`/assets/uplot-${UPLOT_VERSION}.min.css`]: { body: UPLOT_CSS, type: CSS },
      "/assets/dashboard.js": { body: DASHBOARD_JS, type: JS },
      "/assets/dashboard.css": { body: DASHBOARD_CSS, type: CSS },
    },
  };
}

/** Response headers of the shell. */
const DASHBOARD_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "Content-Type": "text/html; charset=utf-8",
  "Cache-Control": "no-store",
  "Content-Security-Policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
});

/**
 * The shell. `prefix` leads from the page's URL to the app's mount point (`./`, or `./outbox/` for a page at
 * `/outbox` without a trailing slash); the script finds the API from its own URL.
 */
function dashboardHtml(prefix: string, refreshMs: number, uplotVersion: string): string {
  return `<!doctype html>
<html lang="en" data-refresh-ms="${refreshMs}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>edge-outbox</title>
<link rel="stylesheet" href="${prefix}assets/uplot-${uplotVersion}.min.css">
<link rel="stylesheet" href="${prefix}assets/dashboard.css">
</head>
<body>
<section id="login" hidden>
  <form id="login-form">
    <h1>edge-outbox</h1>
    <p>Enter the relay app's <b>read</b> secret (to look) or <b>admin</b> secret (to also replay dead letters). It is kept in this tab only.</p>
    <label for="token">Secret</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required minlength="16">
    <button type="submit">Open the dashboard</button>
    <p id="login-error" class="error" role="alert"></p>
  </form>
</section>
<main id="main" hidden>
  <header>
    <h1>edge-outbox</h1>
    <span id="health" class="badge">…</span>
    <span id="updated" class="muted"></span>
    <button id="logout" type="button">Sign out</button>
  </header>
  <p id="message" role="status"></p>
  <section class="cards" aria-label="Counts">
    <div class="card"><span class="label">pending</span><span class="value" id="pending">–</span></div>
    <div class="card"><span class="label">due</span><span class="value" id="due">–</span></div>
    <div class="card"><span class="label">leased</span><span class="value" id="leased">–</span></div>
    <div class="card"><span class="label">dead</span><span class="value" id="dead">–</span></div>
    <div class="card"><span class="label">oldest pending</span><span class="value" id="oldest-pending">–</span></div>
    <div class="card"><span class="label">oldest due</span><span class="value" id="oldest-due">–</span></div>
    <div class="card"><span class="label" id="window-label">last window</span><span class="value small" id="window">–</span></div>
    <div class="card"><span class="label">latency avg / max</span><span class="value small" id="latency">–</span></div>
  </section>
  <ul id="checks" class="checks" aria-label="Health checks"></ul>
  <section class="charts">
    <figure><figcaption>Queue: pending, due and dead over time</figcaption><div id="chart-queue" class="chart"></div></figure>
    <figure><figcaption>Delivery latency over the stats window, seconds</figcaption><div id="chart-latency" class="chart"></div></figure>
  </section>
  <p class="muted">The charts sample the database counters every <span id="refresh"></span> s while this page is open (kept in this tab). For history, scrape <code>/metrics</code> with Prometheus.</p>
  <section>
    <h2>Dead letters <span id="dead-count" class="muted"></span></h2>
    <table id="dead-letters">
      <thead><tr><th>id</th><th>topic</th><th>key</th><th>attempts</th><th>dead at</th><th>error</th><th>payload</th><th></th></tr></thead>
      <tbody></tbody>
    </table>
    <p id="no-dead" class="muted" hidden>No dead letters.</p>
    <button id="more" type="button" hidden>Next page</button>
  </section>
</main>
<script src="${prefix}assets/uplot-${uplotVersion}.min.js"></script>
<script src="${prefix}assets/dashboard.js"></script>
</body>
</html>
`;
}

/** The page's stylesheet. */
const DASHBOARD_CSS: string = `
[hidden] { display: none !important; }
:root { color-scheme: light; --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f9fafb; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
main, #login { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
#login form { max-width: 420px; margin: 12vh auto; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 24px; }
#login input { display: block; width: 100%; margin: 6px 0 12px; padding: 8px; font: inherit; border: 1px solid #cbd5e1; border-radius: 6px; }
button { font: inherit; padding: 6px 12px; border-radius: 6px; border: 1px solid #cbd5e1; background: #fff; cursor: pointer; }
button:hover { background: #f1f5f9; }
button.primary, #login button { background: #2563eb; border-color: #2563eb; color: #fff; }
header { display: flex; align-items: center; gap: 12px; border-bottom: 1px solid var(--line); padding-bottom: 12px; }
header h1 { font-size: 20px; margin: 0; }
header #logout { margin-left: auto; }
.badge { padding: 2px 10px; border-radius: 999px; font-weight: 600; background: #e5e7eb; }
.badge.healthy { background: #dcfce7; color: #166534; }
.badge.degraded { background: #fef9c3; color: #854d0e; }
.badge.unhealthy { background: #fee2e2; color: #991b1b; }
.muted { color: var(--muted); }
.error { color: #b91c1c; }
#message { min-height: 1.4em; margin: 8px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 12px; margin: 12px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .label { display: block; color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { display: block; font-size: 26px; font-weight: 600; }
.card .value.small { font-size: 15px; padding-top: 8px; }
.checks { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 8px; }
.checks li { border: 1px solid var(--line); border-radius: 6px; padding: 2px 8px; background: var(--card); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.chart { min-height: 240px; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); text-transform: uppercase; }
td.mono, td .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; word-break: break-all; }
td.error-text { color: #b91c1c; max-width: 320px; word-break: break-word; }
`;

/** The page's script (plain ES2020 for current browsers; no template literals so it can live in this string). */
const DASHBOARD_JS: string = String.raw`(function () {
  "use strict";
  var TOKEN_KEY = "edge-outbox:dashboard:token";
  var SERIES_KEY = "edge-outbox:dashboard:series";
  var MAX_POINTS = 720;
  var BASE = new URL("../", document.currentScript.src); // the app's mount point: this script is at assets/dashboard.js
  var refreshMs = Number(document.documentElement.getAttribute("data-refresh-ms")) || 5000;
  var token = sessionStorage.getItem(TOKEN_KEY);
  var timer = null;
  var charts = null;
  var cursor = null;
  var series = load();

  function $(id) { return document.getElementById(id); }
  function text(id, value) { $(id).textContent = value; }
  function load() {
    try {
      var s = JSON.parse(sessionStorage.getItem(SERIES_KEY) || "null");
      if (s && Array.isArray(s.t)) return s;
    } catch (e) { /* start over */ }
    return { t: [], pending: [], due: [], dead: [], avg: [], max: [] };
  }
  function api(method, path) {
    return fetch(new URL(path, BASE), { method: method, headers: { authorization: "Bearer " + token }, cache: "no-store", credentials: "omit" });
  }
  function age(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return ms + " ms";
    if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 7200000) return (ms / 60000).toFixed(1) + " min";
    return (ms / 3600000).toFixed(1) + " h";
  }
  function say(message, isError) {
    var m = $("message");
    m.textContent = message;
    m.className = isError ? "error" : "";
  }

  function showLogin(error) {
    if (timer) clearInterval(timer);
    timer = null;
    $("main").hidden = true;
    $("login").hidden = false;
    text("login-error", error || "");
    $("token").value = "";
    $("token").focus();
  }

  async function signIn(candidate) {
    token = candidate;
    var res;
    try {
      res = await api("GET", "health");
    } catch (e) {
      return showLogin("The relay app did not answer.");
    }
    if (res.status === 401 || res.status === 403) {
      token = null;
      return showLogin(res.status === 401 ? "This secret was refused." : "This secret cannot read (use the read or admin secret).");
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  }

  function start() {
    $("login").hidden = true;
    $("main").hidden = false;
    text("refresh", String(refreshMs / 1000));
    if (!charts) charts = makeCharts();
    refresh();
    if (timer) clearInterval(timer);
    timer = setInterval(refresh, refreshMs);
  }

  function makeCharts() {
    var width = function (id) { return Math.max(320, $(id).clientWidth || 480); };
    var common = function (id) {
      return { width: width(id), height: 240, scales: { x: { time: true } }, legend: { live: false } };
    };
    var queue = new uPlot(Object.assign(common("chart-queue"), {
      series: [{}, { label: "pending", stroke: "#2563eb", width: 2 }, { label: "due", stroke: "#16a34a", width: 2 },
        { label: "dead", stroke: "#dc2626", width: 2 }],
      axes: [{}, { label: "messages" }],
    }), [series.t, series.pending, series.due, series.dead], $("chart-queue"));
    var latency = new uPlot(Object.assign(common("chart-latency"), {
      series: [{}, { label: "avg", stroke: "#7c3aed", width: 2 }, { label: "max", stroke: "#ea580c", width: 2, dash: [6, 4] }],
      axes: [{}, { label: "seconds" }],
    }), [series.t, series.avg, series.max], $("chart-latency"));
    window.addEventListener("resize", function () {
      queue.setSize({ width: width("chart-queue"), height: 240 });
      latency.setSize({ width: width("chart-latency"), height: 240 });
    });
    return { queue: queue, latency: latency };
  }

  function record(stats) {
    var w = stats.window;
    series.t.push(stats.now / 1000);
    series.pending.push(stats.pending);
    series.due.push(stats.due);
    series.dead.push(stats.dead);
    series.avg.push(w.avgLatencyMs === null ? null : w.avgLatencyMs / 1000);
    series.max.push(w.maxLatencyMs === null ? null : w.maxLatencyMs / 1000);
    var extra = series.t.length - MAX_POINTS;
    if (extra > 0) Object.keys(series).forEach(function (k) { series[k].splice(0, extra); });
    try { sessionStorage.setItem(SERIES_KEY, JSON.stringify(series)); } catch (e) { /* full: keep in memory */ }
    charts.queue.setData([series.t, series.pending, series.due, series.dead]);
    charts.latency.setData([series.t, series.avg, series.max]);
  }

  function render(body) {
    var stats = body.stats;
    var badge = $("health");
    badge.textContent = body.status;
    badge.className = "badge " + body.status;
    text("updated", "updated " + new Date(stats.now).toLocaleTimeString());
    text("pending", String(stats.pending));
    text("due", String(stats.due));
    text("leased", String(stats.leased));
    text("dead", String(stats.dead));
    text("oldest-pending", age(stats.oldestPendingAgeMs));
    text("oldest-due", age(stats.oldestDueAgeMs));
    var w = stats.window;
    text("window-label", "last " + age(w.windowMs));
    text("window", w.delivered + " delivered · " + w.retried + " retried · " + w.dead + " dead");
    text("latency", age(w.avgLatencyMs) + " / " + age(w.maxLatencyMs));
    var checks = $("checks");
    checks.replaceChildren();
    (body.checks || []).forEach(function (c) {
      var li = document.createElement("li");
      li.className = c.status;
      var value = c.value === null ? "none" : /AgeMs$/.test(c.name) ? age(c.value) : String(c.value);
      li.textContent = c.name + ": " + c.status + " (" + value + ")";
      checks.appendChild(li);
    });
    record(stats);
  }

  async function refresh() {
    var res;
    try {
      res = await api("GET", "health");
    } catch (e) {
      return say("The relay app did not answer; retrying.", true);
    }
    if (res.status === 401 || res.status === 403) return signOut("The secret is no longer accepted.");
    var body = await res.json();
    if (!body.stats) {
      $("health").textContent = "unhealthy";
      $("health").className = "badge unhealthy";
      return say(body.message || "The stats could not be read.", true);
    }
    render(body);
    await loadDead(false);
  }

  async function loadDead(next) {
    var res = await api("GET", "dead-letters?limit=50" + (next && cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    if (!res.ok) return say("The dead letters could not be read (HTTP " + res.status + ").", true);
    var page = await res.json();
    cursor = page.cursor;
    var tbody = $("dead-letters").tBodies[0];
    if (!next) tbody.replaceChildren();
    page.items.forEach(function (d) { tbody.appendChild(row(d)); });
    var shown = tbody.rows.length;
    $("no-dead").hidden = shown > 0;
    $("dead-letters").hidden = shown === 0;
    $("more").hidden = !cursor;
    text("dead-count", shown > 0 ? "(" + shown + " shown)" : "");
  }

  function cell(tr, value, cls) {
    var td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function row(d) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", d.id);
    cell(tr, d.id, "mono");
    cell(tr, d.topic);
    cell(tr, d.key === null ? "–" : d.key, "mono");
    cell(tr, String(d.attempts));
    cell(tr, new Date(d.deadAt).toISOString().replace("T", " ").slice(0, 19));
    cell(tr, d.lastError === null ? "–" : d.lastError, "error-text");
    var payload = JSON.stringify(d.payload);
    cell(tr, payload.length > 160 ? payload.slice(0, 160) + "…" : payload, "mono");
    var td = cell(tr, "");
    var button = document.createElement("button");
    button.type = "button";
    button.className = "primary replay";
    button.textContent = "Replay";
    button.addEventListener("click", function () { replay(d.id, button); });
    td.appendChild(button);
    return tr;
  }

  async function replay(id, button) {
    button.disabled = true;
    var res = await api("POST", "dead-letters/" + encodeURIComponent(id) + "/replay");
    if (res.ok) {
      say("Replayed " + id + ": it is pending again.", false);
      await refresh();
      return;
    }
    button.disabled = false;
    if (res.status === 403) return say("Replaying needs the admin secret: sign out and sign in with it.", true);
    if (res.status === 404) {
      say("Dead letter " + id + " is gone (replayed or purged elsewhere).", true);
      return refresh();
    }
    say("Replay failed (HTTP " + res.status + ").", true);
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    showLogin(reason || "");
  }

  $("login-form").addEventListener("submit", function (e) {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("logout").addEventListener("click", function () { signOut(""); });
  $("more").addEventListener("click", function () { loadDead(true); });
  if (token) start(); else showLogin("");
})();
`;
