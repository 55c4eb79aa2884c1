"""The watchdog's decisions: count failed and good checks, decide failover and failback.

state: {"active": "primary" | "standby", "failures": n, "recoveries": n, "epoch": n,
        "ready_for_failback": bool}. "active" names which configured node is active.
"""

DEFAULT_STATE = {"active": "primary", "failures": 0, "recoveries": 0, "epoch": 0, "ready_for_failback": False}


def other(node: str) -> str:
    return "standby" if node == "primary" else "primary"


def after_check(state: dict, active_ok: bool, active_epoch, home_ok: bool, failures: int, recoveries: int,
                failback: str) -> tuple:
    """(new state, action): action is None, "failover", "failback" or "ready_for_failback".

    active_ok: the active node answered a deep check as primary. home_ok: the configured
    primary, while it is not active, answered as a healthy standby that has caught up.
    """
    s = dict(DEFAULT_STATE, **state)
    if active_ok:
        s["failures"] = 0
        if isinstance(active_epoch, int):
            s["epoch"] = max(s["epoch"], active_epoch)
    else:
        s["failures"] += 1
        if s["failures"] >= failures:
            s.update(active=other(s["active"]), failures=0, recoveries=0, ready_for_failback=False)
            return s, "failover"
        return s, None
    if s["active"] == "standby":
        s["recoveries"] = s["recoveries"] + 1 if home_ok else 0
        if s["recoveries"] >= recoveries:
            if failback == "auto":
                s.update(active="primary", recoveries=0, ready_for_failback=False)
                return s, "failback"
            if not s["ready_for_failback"]:
                s["ready_for_failback"] = True
                return s, "ready_for_failback"
    else:
        s.update(recoveries=0, ready_for_failback=False)
    return s, None
