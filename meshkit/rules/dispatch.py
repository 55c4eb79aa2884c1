"""Dispatch predicates: may this task go to this node now, and if not, why.

The same predicates serve the claim path (one node asking) and `meshkit explain`
(every reason a task is not running, in words an operator understands).
"""

import time
from dataclasses import dataclass, field

from meshkit.rules.memguard import HOLD_REASON, MB
from meshkit.rules.policy import Policy, effective_priority

MODE_ALLOWS = {
    "normal": ("P0", "P1", "P2", "P3"),
    "degraded": ("P0", "P1", "P2"),
    "emergency": ("P0",),
    "maintenance": (),
}


@dataclass
class Fleet:
    """What the supervisor knows right now, as plain data."""
    now: float
    mode: str = "normal"
    policy: Policy = field(default_factory=Policy)
    quarantined: dict = field(default_factory=dict)      # kind -> {"since": t, "reason": str}
    running_by_kind: dict = field(default_factory=dict)  # kind -> leased+running count
    started_last_minute: dict = field(default_factory=dict)  # kind -> leases in the last 60 s
    nodes: list = field(default_factory=list)            # [{"name","state","last_seen","capabilities","kinds","slots","running","hold"}]
    memory: dict | None = None     # while the memory guard sheds: {"rss_bytes", "soft_bytes"} (explain's words)


def clock_text(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def fleet_blocks(task: dict, fleet: Fleet) -> list:
    """Reasons, independent of any node, that keep a queued task from being dispatched."""
    reasons = []
    kind = task["kind"]
    if task.get("not_before", 0) > fleet.now:
        reasons.append(f"backoff until {clock_text(task['not_before'])}")
    q = fleet.quarantined.get(kind)
    if q:
        reasons.append(f"kind `{kind}` quarantined since {clock_text(q['since'])}: {q['reason']}")
    cls = fleet.policy.class_of(task["priority"])
    if cls not in MODE_ALLOWS.get(fleet.mode, ()):
        reasons.append(mode_hold(fleet, cls))
    kp = fleet.policy.kind(kind)
    running = fleet.running_by_kind.get(kind, 0)
    if kp.max_running is not None and running >= kp.max_running:
        reasons.append(f"fleet cap for kind `{kind}` reached ({running}/{kp.max_running})")
    started = fleet.started_last_minute.get(kind, 0)
    if kp.max_per_minute is not None and started >= kp.max_per_minute:
        reasons.append(f"start rate for kind `{kind}` reached ({started}/{kp.max_per_minute} in the last 60 s)")
    return reasons


def mode_hold(fleet: Fleet, cls: str) -> str:
    """Why the mode holds back class `cls`, naming the memory guard (and its figures) when the
    supervisor's memory over limits.rss_soft_mb alone would hold it back."""
    if fleet.mode == "maintenance":
        return "mode `maintenance` dispatches nothing new"
    held = f"mode `{fleet.mode}` holds back {cls}"
    mem = fleet.memory
    if mem and mem.get("rss_bytes") and mem.get("soft_bytes") and cls not in MODE_ALLOWS["degraded"]:
        return (f"memory guard holds back {cls}: the supervisor's resident memory is {mem['rss_bytes'] / MB:.1f} MB, "
                f"over limits.rss_soft_mb ({mem['soft_bytes'] / MB:g} MB); {held}")
    return held


def hold_text(name: str, hold: dict) -> str:
    """Why worker `name` claims no new work, from its heartbeat's "hold" (wire.HEARTBEAT), in words
    (explain's reason and status's line)."""
    if hold.get("reason") != HOLD_REASON:
        return f"worker `{name}` claims nothing now: it holds back claims (`{hold.get('reason')}`)"
    figures = ", ".join(([f"resident {hold['rss_bytes'] / MB:.1f} MB"] if "rss_bytes" in hold else []) +
                        ([f"over limits.rss_soft_mb {hold['soft_bytes'] / MB:g} MB"] if "soft_bytes" in hold else []))
    return f"worker `{name}` claims nothing now: its memory guard holds it back" + (f" ({figures})" if figures else "")


def node_fits(task: dict, node: dict) -> bool:
    return task["kind"] in node.get("kinds", ()) and set(task.get("requires", ())) <= set(node.get("capabilities", ()))


def node_blocks(task: dict, fleet: Fleet, stale_after: float) -> tuple:
    """(reasons, free matching node names) from the fleet's nodes."""
    kind, requires = task["kind"], set(task.get("requires", ()))
    runs_kind = [n for n in fleet.nodes if kind in n.get("kinds", ())]
    if not runs_kind:
        return [f"no worker runs kind `{kind}`"], []
    matching = [n for n in runs_kind if requires <= set(n.get("capabilities", ()))]
    if not matching:
        missing = sorted(requires - set().union(*(set(n.get("capabilities", ())) for n in runs_kind)))
        if missing:
            return [f"no worker has capability `{c}`" for c in missing], []
        return [f"no single worker has all of {', '.join(sorted(requires))}"], []
    reasons, free = [], []
    alive = []
    for n in matching:
        if n["state"] != "alive":
            reasons.append(f"worker `{n['name']}` stale (last heartbeat {fleet.now - n['last_seen']:.0f} s ago)")
        elif n.get("hold"):          # it said it claims nothing now (its memory guard): its next claim is no claim
            reasons.append(hold_text(n["name"], n["hold"]))
        else:
            alive.append(n)
    for n in alive:
        if n.get("running", 0) < n.get("slots", 1):
            free.append(n["name"])
    if alive and not free:
        used = sum(n.get("running", 0) for n in alive)
        slots = sum(n.get("slots", 1) for n in alive)
        reasons.append(f"all {len(alive)} matching workers full ({used}/{slots} slots)")
    return reasons, free


def may_claim(task: dict, node: dict, fleet: Fleet) -> str | None:
    """None if `node` may lease `task` now; else the reason it may not."""
    if not node_fits(task, node):
        return "node lacks kind or capability"
    blocks = fleet_blocks(task, fleet)
    return blocks[0] if blocks else None


def explain(task: dict, deps: list, fleet: Fleet, stale_after: float, start_timeout: float | None = None,
            history: list | None = None) -> dict:
    """Decision for one task: {dispatch, verdict, reason, reasons, priority, base_priority, class, target}.
    `verdict` says in a few words where the task is ("queued, not dispatched", "running on `w1` since
    12:00:00", "ended succeeded at 12:00:03"); `reasons` why, in full. Aging (`priority`) applies only
    while a task waits to be dispatched: the priority of a task that was leased or ended is its own.
    `class` always comes from the task's own priority (what a mode holds back; aging orders the queue
    only). `start_timeout` (supervisor.start_timeout): when a leased task that never starts is requeued;
    `history` (the task's rows): an ended task's last row says why it ended (a cancel's reason)."""
    state = task["state"]
    base = task["priority"]
    waits = state in ("waiting", "queued")
    prio = effective_priority(base, fleet.now - task["created_at"], fleet.policy.aging) if waits else base
    out = {"dispatch": False, "reasons": [], "priority": round(prio, 2), "base_priority": base,
           "class": fleet.policy.class_of(base), "target": [], "state": state}
    if state == "waiting":
        out["verdict"] = "waiting, not dispatched"
        for d in deps:
            if d["state"] != "succeeded":
                where = f"{d['state']} on `{d['node']}`" if d.get("node") and d["state"] in ("leased", "running") else d["state"]
                out["reasons"].append(f"waiting for `{d['id']}` ({where})")
    elif state == "queued":
        reasons = fleet_blocks(task, fleet)
        node_reasons, free = node_blocks(task, fleet, stale_after)
        reasons += node_reasons
        out["target"] = free
        out["reasons"] = reasons
        out["verdict"] = "queued, not dispatched"
        if free and not fleet_blocks(task, fleet):
            out["dispatch"] = True
            out["verdict"] = "queued, would dispatch now"
            out["reasons"] = [f"ready: the next claim from {', '.join(f'`{n}`' for n in free)} takes it"] + node_reasons
    elif state == "leased":
        node, cancel = task["node"], " (cancel requested)" if task.get("cancel_requested") else ""
        out["target"] = [node]
        out["verdict"] = f"leased to `{node}` at {clock_text(task['updated_at'])}, not started yet"
        out["reasons"].append(out["verdict"] + "; " + requeue_text(task, fleet.now, start_timeout) + cancel)
    elif state == "running":
        node, cancel = task["node"], " (cancel requested)" if task.get("cancel_requested") else ""
        out["target"] = [node]
        out["verdict"] = f"running on `{node}` since {clock_text(task.get('started_at') or task['updated_at'])}"
        out["reasons"].append(f"{out['verdict']}, lease until {clock_text(task['lease_deadline'])}{cancel}")
    else:
        row = ending_row(history or [], state)
        if row:
            out["verdict"] = ended_text(state, row["at"], row["reason"])
        else:       # no history given: the task's own error (a worker's bare "cancelled" says nothing more)
            error = task.get("error")
            out["verdict"] = ended_text(state, task["updated_at"], None if error == state else error)
        out["reasons"].append(out["verdict"])
    out["reason"] = out["reasons"][0] if out["reasons"] else "no reason found"
    return out


def requeue_text(task: dict, now: float, start_timeout: float | None) -> str:
    """When a leased task its worker never starts goes back to the queue: after start_timeout
    (the heal rule never_started, from the lease: updated_at), or when its lease ends if that is sooner."""
    node, deadline = task["node"], task["lease_deadline"]
    at, why = deadline, "its lease ends then"
    if start_timeout is not None and task["updated_at"] + start_timeout < deadline:
        at, why = task["updated_at"] + start_timeout, f"supervisor.start_timeout {start_timeout:g} s"
    if at <= now:
        return f"not started in time ({why}): requeued at the supervisor's next cycle"
    return f"requeued at {clock_text(at)} if `{node}` has not started it by then ({why})"


def ending_row(history: list, state: str) -> dict | None:
    """The history row by which a task entered its end state `state`, if there is one."""
    return next((h for h in reversed(history) if h.get("to") == state), None)


def ended_text(state: str, at: float, detail: str | None) -> str:
    """"ended failed at 12:00:03: exit code 3"; a success's detail says nothing more ("attempt succeeded")."""
    return f"ended {state} at {clock_text(at)}" + (f": {detail}" if detail and state != "succeeded" else "")


def headline(d: dict) -> str:
    """`explain`'s first line from the decision as the API answers it (with its "task", "mode",
    and "history" for an ended task), e.g. `t12: queued, not dispatched (priority 2, class P2;
    aged to 21.27 for queue order; mode normal)` or `t12: ended cancelled at 12:00:03: wrong input
    (priority 2, class P2)`. An ended task's words come from the history row that ended it, so a
    cancel's reason shows even when the supervisor gave explain() no history."""
    state, base = d["state"], d.get("base_priority", d["priority"])
    verdict = d.get("verdict") or state
    row = ending_row(d.get("history") or [], state) if state in ("succeeded", "failed", "cancelled") else None
    if row:
        verdict = ended_text(state, row["at"], row["reason"])
    if state in ("waiting", "queued"):
        aged = f"; aged to {d['priority']:.2f} for queue order" if d["priority"] != base else ""
        figures = f"priority {base}, class {d['class']}{aged}; mode {d.get('mode', '?')}"
    else:
        figures = f"priority {base}, class {d['class']}"
    return f"{d['task']}: {verdict} ({figures})"
