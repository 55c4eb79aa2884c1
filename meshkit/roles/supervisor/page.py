"""The status page: GET / serves one self-contained HTML page (inline CSS and JS, no
external assets, works offline) that asks for the viewer token (a login form, or
`/#token=TOKEN` once), keeps it in sessionStorage, and refreshes itself from
GET /v1/overview every 5 s with `Authorization: Bearer`. The page holds no data itself;
only the viewer token (auth.viewer_token_file) is accepted as a bearer token, never a
key's signing secret.

Data goes into the DOM with textContent only, never as HTML.
"""

import shlex

from meshkit.adapters.httpapp import Raw
from meshkit.adapters.storetx import task_id
from meshkit.rules.policy import quarantine_last_error

REFRESH_SECONDS = 5
MAX_RUNNING = 200
MAX_FAILURES = 20
REASON_CHARS = 300

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshkit fleet</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:10px 18px;display:flex;gap:14px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:17px;margin:0}
main{padding:14px 18px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px;margin:0 0 14px}
h2{font-size:14px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.04em;color:#555}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f2;font-variant-numeric:tabular-nums}
th{font-weight:600;color:#555}
.counts{display:flex;gap:10px;flex-wrap:wrap}
.count{border:1px solid #dde1e6;border-radius:6px;padding:6px 12px;min-width:76px}
.count b{display:block;font-size:20px}
.badge{border-radius:10px;padding:1px 8px;font-size:12px;background:#e7eaee;color:#1d232b}
.ok{background:#d8f3dc}.warn{background:#ffe8a3}.bad{background:#ffc9c9}
.muted{color:#777}.err{color:#b00020}
#login{max-width:360px;margin:60px auto}
#login input{width:100%;box-sizing:border-box;padding:7px;margin:8px 0;font:inherit}
button{font:inherit;padding:5px 12px;cursor:pointer}
.hidden{display:none}
</style></head>
<body>
<header><h1>meshkit</h1><span id="sup" class="muted">not connected</span>
<span id="mode" class="badge">mode ?</span><span id="updated" class="muted"></span>
<span style="flex:1"></span><button id="logout" class="hidden" type="button">log out</button></header>
<div id="login" class="hidden"><section>
<h2>Viewer token</h2>
<p class="muted">The viewer token: the supervisor's <code>viewer.token</code> file (not a key's secret).
It stays in this tab (sessionStorage).</p>
<form id="loginform"><input id="token" type="password" autocomplete="off" placeholder="viewer token" required>
<button type="submit">Show the fleet</button></form>
<p id="loginerr" class="err"></p></section></div>
<noscript><p class="err">This page needs JavaScript: it reads <code>/v1/overview</code> with a viewer token.
Without it: <code>python3 -m meshkit status</code>, or
<code>curl -H "Authorization: Bearer VIEWER_TOKEN" http://HOST:PORT/v1/overview</code>.</p></noscript>
<main id="app" class="hidden">
<p id="problem" class="err"></p>
<section><h2>Tasks</h2><div id="counts" class="counts"></div>
<p class="muted" id="oldest"></p><p id="notes"></p></section>
<section id="quarantine" class="hidden"><h2>Quarantined kinds</h2>
<p class="muted">No task of these kinds is handed out (they stay queued) until the kind is released
with the admin key: the command in the last column.</p>
<table><thead><tr><th>kind</th><th>since</th><th>failures in a row</th><th>last error</th>
<th>release with</th></tr></thead><tbody id="quarantined"></tbody></table></section>
<section><h2>Nodes</h2><table><thead><tr><th>node</th><th>health</th><th>last seen</th>
<th>running / slots</th><th>load 1m</th><th>mem free</th><th>disk free</th><th>capabilities</th></tr></thead>
<tbody id="nodes"></tbody></table></section>
<section><h2>Running</h2><table><thead><tr><th>task</th><th>kind</th><th>state</th><th>node</th>
<th>attempt</th><th>for</th></tr></thead><tbody id="running"></tbody></table></section>
<section><h2>Recent failures</h2><table><thead><tr><th>task</th><th>kind</th><th>node</th><th>when</th>
<th>attempts</th><th>reason</th></tr></thead><tbody id="failures"></tbody></table></section>
</main>
<script>
"use strict";
const REFRESH = __REFRESH__ * 1000, KEY = "meshkit-viewer-token";
const STATES = ["waiting", "queued", "leased", "running", "succeeded", "failed", "cancelled"];
const $ = (id) => document.getElementById(id);
let timer = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? wrap(c) : el("td", c));
  return tr;
}
function wrap(node) { const td = document.createElement("td"); td.appendChild(node); return td; }
function fill(id, rows, empty, cols) {
  const body = $(id);
  body.replaceChildren(...rows);
  if (!rows.length) { const td = el("td", empty, "muted"); td.colSpan = cols; const tr = document.createElement("tr"); tr.appendChild(td); body.appendChild(tr); }
}
function age(s) {
  if (s === null || s === undefined) return "-";
  s = Math.max(0, Math.floor(s));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.floor(s / 60) + "m";
  if (s < 172800) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d";
}
function bytes(n) {
  if (typeof n !== "number") return "-";
  const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + u[i];
}
function health(state) { return el("span", state, "badge " + (state === "alive" ? "ok" : state === "stale" ? "warn" : "bad")); }

function showLogin(message) {
  if (timer) { clearTimeout(timer); timer = null; }
  $("app").classList.add("hidden"); $("logout").classList.add("hidden");
  $("login").classList.remove("hidden"); $("loginerr").textContent = message || "";
  $("sup").textContent = "not connected";
}
function render(d) {
  const st = d.status, now = d.server_time;
  $("login").classList.add("hidden"); $("app").classList.remove("hidden"); $("logout").classList.remove("hidden");
  $("problem").textContent = "";
  $("sup").textContent = st.role + " \\u00b7 epoch " + st.epoch + " \\u00b7 " + (st.url || "") + " \\u00b7 up " + age(st.uptime);
  const mode = $("mode");
  mode.textContent = "mode " + st.mode; mode.className = "badge " + (st.mode === "normal" ? "ok" : "warn");
  $("updated").textContent = "updated " + new Date(now * 1000).toLocaleTimeString();
  const counts = STATES.map((s) => { const c = el("div", null, "count"); const b = el("b", (st.tasks || {})[s] || 0);
    b.id = "count-" + s; c.appendChild(b); c.appendChild(document.createTextNode(s)); return c; });
  $("counts").replaceChildren(...counts);
  $("oldest").textContent = "oldest queued task: " + age(st.oldest_queued_age);
  const notes = [];
  if (st.mode_reason) notes.push("mode: " + st.mode_reason);
  if (st.last_cycle_error) notes.push("cycle error: " + st.last_cycle_error);
  (st.leases || []).forEach((l) => notes.push("lease " + l.name + ": " + l.explain));
  (st.sync || []).forEach((j) => notes.push("sync " + j.job + ": " + (j.last_result || "?") + ", last success " +
      (j.last_success ? age(now - j.last_success) + " ago" : "never") + ", " + (j.consecutive_failures || 0) + " failures in a row"));
  if (st.replication && st.replication.lag_changes) notes.push("replication lag: " + st.replication.lag_changes + " changes");
  $("notes").textContent = notes.join(" \\u00b7 ");
  const quarantined = d.quarantined || [];
  $("quarantine").classList.toggle("hidden", !quarantined.length);
  fill("quarantined", quarantined.map((q) => { const r = row([q.kind,
      q.since ? new Date(q.since * 1000).toLocaleString() + " (" + age(now - q.since) + " ago)" : "-",
      q.failures_in_a_row, q.last_error || q.reason || "-", el("code", q.release)]);
      r.dataset.kind = q.kind; return r; }), "no kind is quarantined", 5);
  fill("nodes", (st.nodes || []).map((n) => { const r = row([n.name, health(n.state), age(n.last_seen_age) + " ago",
      (n.running || 0) + " / " + (n.slots || 1), n.load && n.load.length ? n.load[0].toFixed(2) : "-",
      bytes(n.mem_available), bytes(n.disk_free), (n.capabilities || []).join(", ") || "-"]);
      r.dataset.node = n.name; return r; }), "no node has sent a heartbeat yet", 8);
  fill("running", d.running.map((t) => row([t.id, t.kind, t.state, t.node || "-", t.attempts,
      age(now - (t.started_at || t.updated_at))])), "nothing running", 6);
  fill("failures", d.failures.map((t) => row([t.id, t.kind, t.node || "-", age(now - t.updated_at) + " ago",
      t.attempts, t.error || "-"])), "no failures", 6);
}
async function refresh() {
  const token = sessionStorage.getItem(KEY);
  if (!token) { showLogin(); return; }
  try {
    const r = await fetch("/v1/overview", {headers: {"Authorization": "Bearer " + token}, cache: "no-store"});
    if (r.status === 401 || r.status === 403) { sessionStorage.removeItem(KEY); showLogin("That token was refused: use the supervisor's viewer.token."); return; }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    $("problem").textContent = "supervisor unreachable (" + e.message + "); retrying every " + REFRESH / 1000 + " s";
  }
  timer = setTimeout(refresh, REFRESH);
}
$("loginform").addEventListener("submit", (ev) => { ev.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim()); $("token").value = ""; refresh(); });
$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
const m = /^#token=([^&]+)/.exec(location.hash);
if (m) { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
refresh();
</script>
</body></html>
"""

PAGE = HTML.replace("__REFRESH__", str(REFRESH_SECONDS)).encode("utf-8")


def page(req) -> Raw:
    """GET /: the page itself (public; it shows nothing until a viewer token works)."""
    return Raw(200, PAGE, "text/html; charset=utf-8", dict(HEADERS))


def _tasks(store, where: str, order: str, limit: int) -> list:
    rows = store.read(f"SELECT n, kind, state, node, attempts, started_at, updated_at, error, trace_id"
                      f" FROM tasks WHERE {where} ORDER BY {order} LIMIT ?", (limit,))
    return [{"id": task_id(r["n"]), "kind": r["kind"], "state": r["state"], "node": r["node"],
             "attempts": r["attempts"], "started_at": r["started_at"], "updated_at": r["updated_at"],
             "error": (r["error"] or "")[:REASON_CHARS] or None, "trace_id": r["trace_id"]} for r in rows]


def quarantined(kinds: list) -> list:
    """The quarantined kinds (status()["quarantined"]) as the page shows them: since when, the
    failures in a row, the last failure's error, and the command that releases the kind."""
    return [{"kind": k["kind"], "since": k["since"], "failures_in_a_row": k["failures_in_a_row"],
             "reason": k["reason"], "last_error": quarantine_last_error(k["reason"]),
             "release": f"python3 -m meshkit kinds resume {shlex.quote(k['kind'])}"} for k in kinds]


def overview(sup) -> dict:
    """GET /v1/overview (viewer): what the page shows, in one answer."""
    status = sup.status()
    return {"status": status, "server_time": sup.clock.time(),
            "quarantined": quarantined(status["quarantined"]),
            "running": _tasks(sup.store, "state IN ('leased','running')", "n", MAX_RUNNING),
            "failures": _tasks(sup.store, "state='failed'", "updated_at DESC", MAX_FAILURES)}
