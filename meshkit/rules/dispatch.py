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


def explain(task: dict, deps: list, fleet: Fleet, stale_after: float) -> dict:
    """Decision for one task: {dispatch, reason, reasons, priority, class, target}."""
    state = task["state"]
    prio = effective_priority(task["priority"], fleet.now - task["created_at"], fleet.policy.aging)
    out = {"dispatch": False, "reasons": [], "priority": round(prio, 2),
           "class": fleet.policy.class_of(task["priority"]), "target": [], "state": state}
    if state == "waiting":
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
        if free and not fleet_blocks(task, fleet):
            out["dispatch"] = True
            out["reasons"] = [f"ready: the next claim from {', '.join(f'`{n}`' for n in free)} takes it"] + node_reasons
    elif state in ("leased", "running"):
        since = task.get("started_at") or task["updated_at"]
        out["target"] = [task["node"]]
        out["reasons"].append(f"{state} on `{task['node']}` since {clock_text(since)}, "
                              f"lease until {clock_text(task['lease_deadline'])}"
                              + (" (cancel requested)" if task.get("cancel_requested") else ""))
    else:
        out["reasons"].append(f"ended {state}" + (f": {task['error']}" if task.get("error") else ""))
    out["reason"] = out["reasons"][0] if out["reasons"] else "no reason found"
    return out
