"""Heal rules and invariants over plain task rows (dicts). Each returns actions as data;
the supervisor carries them out through transition()."""

ACTIVE = ("leased", "running")


# Each heal rule: (name, the failure it cures, predicate(task, now, bounds) -> reason or None).

def missing_from_heartbeats(task, now, bounds):
    # Cures: the worker lost the process (crashed and restarted, or killed it) but keeps
    # heartbeating, so the lease would be renewed by nobody yet never expire by staleness.
    if task["state"] == "running" and task.get("hb_missing", 0) >= 2:
        return f"running on {task['node']} but missing from its last {task['hb_missing']} heartbeats"
    return None


def never_started(task, now, bounds):
    # Cures: a claim answer lost on the way (network cut, worker died before starting it):
    # the task would sit leased until its lease expired.
    if task["state"] == "leased" and now - task["updated_at"] > bounds["start_timeout"]:
        return f"leased to {task['node']} but never started within {bounds['start_timeout']:.0f} s"
    return None


HEAL_RULES = (("missing_from_heartbeats", missing_from_heartbeats), ("never_started", never_started))


def heal_actions(tasks: list, now: float, bounds: dict) -> list:
    """[(task n, rule name, reason)] to requeue."""
    actions = []
    for t in tasks:
        for name, rule in HEAL_RULES:
            reason = rule(t, now, bounds)
            if reason:
                actions.append((t["n"], name, reason))
                break
    return actions


def invariant_violations(tasks: list, last_history: dict) -> list:
    """Every broken invariant: [{"invariant", "task", "detail", "repair"}]; repair is
    "requeue", "clear_lease" or None (record only)."""
    out = []
    fences = {}
    for t in tasks:
        tid = f"t{t['n']}"
        active = t["state"] in ACTIVE
        if active and (not t.get("node") or not t.get("fence") or t.get("lease_deadline") is None):
            out.append({"invariant": "no running task without a live lease", "task": tid,
                        "detail": f"{t['state']} with node={t.get('node')} fence={t.get('fence')} "
                                  f"lease_deadline={t.get('lease_deadline')}", "repair": "requeue"})
        if not active and t.get("lease_deadline") is not None:
            out.append({"invariant": "no lease without a leased task", "task": tid,
                        "detail": f"{t['state']} but holds a lease until {t['lease_deadline']}", "repair": "clear_lease"})
        if active and t.get("fence"):
            if t["fence"] in fences:
                out.append({"invariant": "no task leased twice", "task": tid,
                            "detail": f"fence {t['fence']} also held by {fences[t['fence']]}", "repair": None})
            fences[t["fence"]] = tid
        last = last_history.get(t["n"])
        if last != t["state"]:
            out.append({"invariant": "history ends in the current state", "task": tid,
                        "detail": f"state {t['state']}, last history row says {last}", "repair": None})
    return out
