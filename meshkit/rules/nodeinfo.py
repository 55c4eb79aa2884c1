"""What the supervisor keeps of a node from its heartbeats (pure).

A heartbeat updates the fields it gives. Of those it leaves out, what the node is (KEPT: its
capabilities, kinds, slots, version) stays as last reported (a first heartbeat starts from
DEFAULTS), so a client that sends {"node", "running"} does not wipe them; how the node is now
(free_slots, load, mem_available, disk_free, hold) is not known, null: never a stale figure
(a worker leaves out what it could not measure; a left-out hold means claiming as usual).
What a left-out `running` means is the caller's: not reported (no lease renewed or judged
missing from it), unlike an explicit [] (none running).
"""

from meshkit.core.errors import BadRequest

DEFAULTS = {"capabilities": [], "kinds": [], "slots": 1, "free_slots": None, "running": None, "load": None,
            "mem_available": None, "disk_free": None, "version": None, "hold": None}
KEPT = ("capabilities", "kinds", "slots", "version")


def check(body: dict) -> None:
    """BadRequest naming the field for values the wire types let through: slots < 1,
    free_slots < 0, or free_slots > slots when both are given."""
    slots, free = body.get("slots"), body.get("free_slots")
    if slots is not None and slots < 1:
        raise BadRequest(f"heartbeat: field 'slots' must be at least 1 (got {slots})", field="slots")
    if free is not None and free < 0:
        raise BadRequest(f"heartbeat: field 'free_slots' must be at least 0 (got {free})", field="free_slots")
    if free is not None and slots is not None and free > slots:
        raise BadRequest(f"heartbeat: field 'free_slots' ({free}) must not be more than 'slots' ({slots})",
                         field="free_slots")


def merge(prev, body: dict) -> dict:
    """The node's info after heartbeat `body` (checked: check()), given the info stored before
    (None for a node never seen)."""
    info = dict(DEFAULTS)
    info.update((k, prev[k]) for k in KEPT if k in (prev or {}))
    info.update((k, v) for k, v in body.items() if k != "node")
    info["capabilities"] = sorted(set(info["capabilities"] or []))
    info["kinds"] = sorted(set(info["kinds"] or []))
    info["slots"] = max(1, int(info["slots"] or 1))
    return info
