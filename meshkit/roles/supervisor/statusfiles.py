"""Status files in the supervisor's data dir, rewritten atomically every cycle, so that
`cat` answers "what is happening now?":

- HEARTBEAT.md      for people: the supervisor, every node, tasks by state
- LOAD_STATUS.json  for scripts: load (queue, slots, utilization), mode, memory

and supervisor.url, the URL a running supervisor serves (written at start, removed at a clean
stop), where client commands look for it.

render_* are pure functions of the status dict (Supervisor.status()) and the time.
"""

import datetime
import os
import shlex

from meshkit.adapters.atomic import write_json, write_text

HEARTBEAT = "HEARTBEAT.md"
LOAD_STATUS = "LOAD_STATUS.json"
URL_FILE = "supervisor.url"
STATES = ("waiting", "queued", "leased", "running", "succeeded", "failed", "cancelled")


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_bytes(n) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def human_age(seconds) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def _cell(v) -> str:
    return str(v).replace("|", "/").replace("\n", " ")


def load_status(st: dict, now: float, memory: dict) -> dict:
    """The machine-readable load: what a script or another node needs to decide."""
    nodes = st.get("nodes", [])
    alive = [n for n in nodes if n.get("state") == "alive"]
    slots = sum(int(n.get("slots") or 0) for n in alive)
    busy = sum(int(n.get("running") or 0) for n in alive)
    tasks = {s: int(st.get("tasks", {}).get(s, 0)) for s in STATES}
    return {
        "updated_at": round(now, 3), "updated": iso(now),
        "role": st.get("role"), "epoch": st.get("epoch"), "mode": st.get("mode"),
        "mode_reason": st.get("mode_reason"), "url": st.get("url"),
        "nodes": {"total": len(nodes), "alive": len(alive), "by_state": _count(n.get("state") for n in nodes)},
        "slots": {"total": slots, "busy": busy, "free": max(0, slots - busy)},
        "utilization": round(busy / slots, 3) if slots else None,
        "tasks": tasks, "backlog": tasks["queued"] + tasks["waiting"],
        "oldest_queued_age": st.get("oldest_queued_age"),
        "memory": memory, "last_cycle_error": st.get("last_cycle_error"),
    }


def _count(values) -> dict:
    out = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def render_heartbeat(st: dict, now: float, memory: dict) -> str:
    """The human-readable fleet status (Markdown)."""
    nodes = st.get("nodes", [])
    alive = sum(1 for n in nodes if n.get("state") == "alive")
    tasks = st.get("tasks", {})
    rss = memory.get("rss_bytes")
    lines = [f"# meshkit fleet: {iso(now)}", "",
             f"Supervisor **{st.get('role')}**, epoch {st.get('epoch')}, mode **{st.get('mode')}**"
             + (f" ({st['mode_reason']})" if st.get("mode_reason") else "")
             + f", {st.get('url') or 'not serving yet'}, up {human_age(st.get('uptime'))}, "
             f"memory {human_bytes(rss)} ({memory.get('state', 'ok')}).", ""]
    if st.get("last_cycle_error"):
        lines += [f"**Cycle error:** {st['last_cycle_error']}", ""]
    lines += [f"## Nodes: {alive} alive of {len(nodes)}", ""]
    if nodes:
        lines += ["| node | state | last seen | running/slots | load (1m) | mem free | disk free | version |",
                  "|---|---|---|---|---|---|---|---|"]
        for n in sorted(nodes, key=lambda n: (n.get("state") != "alive", n.get("name", ""))):
            load = n.get("load") or []
            lines.append("| " + " | ".join(_cell(x) for x in (
                n.get("name"), n.get("state"), human_age(n.get("last_seen_age")) + " ago",
                f"{n.get('running', 0)}/{n.get('slots', 1)}", f"{load[0]:.2f}" if load else "-",
                human_bytes(n.get("mem_available")), human_bytes(n.get("disk_free")), n.get("version") or "-")) + " |")
    else:
        lines.append("No node has sent a heartbeat yet.")
    lines += ["", "## Tasks", "",
              " · ".join(f"{s} {tasks.get(s, 0)}" for s in STATES),
              "", f"Oldest queued task: {human_age(st.get('oldest_queued_age'))}."]
    quarantined = st.get("quarantined") or []
    if quarantined:      # each with its reason and the command that releases it
        lines += ["", "## Quarantined kinds (their tasks wait)", ""]
        for q in quarantined:
            kind = q.get("kind") or "?"
            lines.append(f"- {_cell(kind)}: {_cell(q.get('reason') or 'failing')}"
                         f" (release: `python3 -m meshkit kinds resume {shlex.quote(kind)}`)")
    return "\n".join(lines) + "\n"


def write(data_dir: str, st: dict, now: float, memory: dict) -> None:
    """Both files, each replaced atomically (no fsync: they are rewritten every cycle)."""
    write_text(os.path.join(data_dir, HEARTBEAT), render_heartbeat(st, now, memory), fsync=False)
    write_json(os.path.join(data_dir, LOAD_STATUS), load_status(st, now, memory), fsync=False)


def write_url(data_dir: str, url: str) -> None:
    write_text(os.path.join(data_dir, URL_FILE), url + "\n")


def remove_url(data_dir: str, url: str) -> None:
    """At a clean stop: remove supervisor.url if it still holds this supervisor's URL (a killed
    one leaves it; client commands then say where the URL they could not reach came from)."""
    path = os.path.join(data_dir, URL_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read().strip() != url:
                return
        os.unlink(path)
    except (OSError, UnicodeDecodeError):
        pass                # gone already, or not ours to remove: nothing to clean
