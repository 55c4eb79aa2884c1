"""What a lock's state is and what the reaper should do about it: pure functions.

The observation is plain data gathered by meshkit.adapters.lockreap: the record in
the lock file, whether the kernel says the lock is held (a non-blocking try), and
facts about the recorded process. Nothing here reads a file or the time.

States (the kernel decides free vs taken; the record only explains):
  free          kernel lock free, no record
  held          kernel lock held, within its TTL
  stale-record  kernel lock free, but a record left by a holder that died
  hung          kernel lock held longer than its TTL

A recorded pid is "alive" only if the process exists and, where both are known,
its start time equals the recorded one; a live pid with another start time is a
reused pid and counts as dead ("reused"). Records written on another host, or on
this host before a reboot (another boot id), are "foreign": reported, never touched.
"""

STATES = ("free", "held", "stale-record", "hung")
PID_STATUSES = ("alive", "dead", "reused", "foreign", "unknown")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def usable(record) -> bool:
    """A record we can reason about (a dict with a host and an integer pid)."""
    return (isinstance(record, dict) and "unreadable" not in record
            and isinstance(record.get("host"), str)
            and isinstance(record.get("pid"), int) and not isinstance(record.get("pid"), bool))


def is_local(record, this_host: str, this_boot_id) -> bool:
    """Written on this host during this boot (boot ids compared where both are known)."""
    if not usable(record) or record["host"] != this_host:
        return False
    theirs = record.get("boot_id")
    return theirs is None or this_boot_id is None or theirs == this_boot_id


def pid_status(record, pid_alive: bool, pid_start_time, this_host: str, this_boot_id) -> str:
    """alive | dead | reused | foreign | unknown, for the pid in a record."""
    if not usable(record):
        return "unknown"
    if not is_local(record, this_host, this_boot_id):
        return "foreign"
    if not pid_alive:
        return "dead"
    recorded = record.get("start_time")
    if recorded is not None and pid_start_time is not None and recorded != pid_start_time:
        return "reused"
    return "alive"


def same_process(recorded_start, pid_alive: bool, start_now) -> bool:
    """May a signal go to this pid? Only if it is alive and not a reused pid.
    Where start times are unknown (macOS) the pid-alive check is all there is."""
    if not pid_alive:
        return False
    return recorded_start is None or start_now is None or recorded_start == start_now


def effective_ttl(record, ttl, override: bool = False):
    """The record's own TTL unless override (an explicit --ttl) or it has none."""
    if not override and usable(record) and _num(record.get("ttl")) and record["ttl"] > 0:
        return record["ttl"]
    return ttl


def age_of(record, now: float):
    if usable(record) and _num(record.get("acquired_at")):
        return max(0.0, now - record["acquired_at"])
    return None


def classify(record, kernel_says_held: bool, pid_alive: bool, pid_start_time,
             this_host: str, this_boot_id, now: float, ttl, *, override_ttl: bool = False,
             child_alive: bool = False) -> dict:
    """The state of one lock: {state, reason, pid_status, local, age, ttl, orphan}.

    child_alive: the record names a command run under the lock (`locks run`) and
    that process is still there (same start time) — if the holder is gone, it runs
    without the lock ("orphan").
    """
    status = pid_status(record, pid_alive, pid_start_time, this_host, this_boot_id)
    local = is_local(record, this_host, this_boot_id)
    age = age_of(record, now)
    limit = effective_ttl(record, ttl, override_ttl)
    who = _who(record)
    view = {"state": "", "reason": "", "pid_status": status, "local": local,
            "age": None if age is None else round(age, 3), "ttl": limit, "orphan": False}
    if not kernel_says_held:
        if record is None:
            view.update(state="free", reason="kernel lock free, no record")
            return view
        view["state"] = "stale-record"
        if not usable(record):
            view["reason"] = "kernel lock free; the record is unreadable"
        elif not local:
            view["reason"] = f"kernel lock free; record by {who} {_foreign_why(record, this_host)}"
        else:
            view["reason"] = f"kernel lock free; record left by {who}, which is {_status_words(status)}"
            if child_alive and status != "alive":
                view["orphan"] = True
                view["reason"] += f"; its command pid {_child_pid(record)} still runs without the lock"
        return view
    over = age is not None and _num(limit) and age > limit
    view["state"] = "hung" if over else "held"
    if not usable(record):
        view["reason"] = "kernel lock held; no usable record (a holder that writes none, or one starting)"
    elif not local:
        view["reason"] = f"kernel lock held; record by {who} {_foreign_why(record, this_host)}"
    elif status != "alive":
        view["reason"] = (f"kernel lock held, but the recorded {who} is {_status_words(status)}: "
                          "another process holds the descriptor")
    else:
        view["reason"] = f"held by {who}"
    if over:
        view["reason"] += f"; held {int(age)}s, past its TTL of {_fmt(limit)}s"
    return view


def plan(view: dict, kill: bool) -> dict:
    """What the reaper does about one lock: {action, reason}.

    action is one of: none, clear (truncate a stale record under the kernel lock),
    alert (report a hung holder or an orphan), kill (end it: TERM, grace, KILL).
    Foreign records are never touched; a pid that is not "alive" is never signalled.
    """
    state = view["state"]
    if state in ("free", "held"):
        return {"action": "none", "reason": view["reason"]}
    if not view["local"]:
        return {"action": "none", "reason": view["reason"] + "; not this host's: left alone"}
    if state == "stale-record":
        if view.get("orphan"):
            return {"action": "kill" if kill else "alert",
                    "reason": view["reason"] + ("" if kill else "; --kill would end it")}
        return {"action": "clear", "reason": view["reason"]}
    # hung
    if view["pid_status"] != "alive":
        return {"action": "alert", "reason": view["reason"] + "; nothing to kill safely"}
    if kill:
        return {"action": "kill", "reason": view["reason"]}
    return {"action": "alert", "reason": view["reason"] + "; --kill would end it"}


def _who(record) -> str:
    if not usable(record):
        return "an unknown holder"
    return f"pid {record['pid']} on {record['host']}"


def _child_pid(record):
    child = record.get("child") if isinstance(record, dict) else None
    return child.get("pid") if isinstance(child, dict) else None


def _status_words(status: str) -> str:
    return {"dead": "dead", "reused": "dead (its pid now belongs to another process: start time differs)",
            "alive": "still alive but no longer holds the lock", "unknown": "unknown"}.get(status, status)


def _foreign_why(record, this_host: str) -> str:
    if record["host"] != this_host:
        return "(another host)"
    return "(this host, an earlier boot)"


def _fmt(v) -> str:
    return str(int(v)) if _num(v) and float(v).is_integer() else str(v)


NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
NAME_MAX = 100


def name_problem(name) -> str | None:
    """Why a lock name is refused (it must stay a plain file name inside the lock
    dir: letters, digits, . _ -, starting with a letter or digit, no '..'); None if fine."""
    if not isinstance(name, str) or not name:
        return "a lock name must not be empty"
    if len(name) > NAME_MAX:
        return f"lock name longer than {NAME_MAX} characters"
    bad = sorted(set(name) - NAME_CHARS)
    if bad:
        return f"lock name {name!r} has {bad[0]!r}: use letters, digits, '.', '_' and '-'"
    if not name[0].isalnum():
        return f"lock name {name!r} must start with a letter or a digit"
    if ".." in name:
        return f"lock name {name!r} contains '..'"
    return None
