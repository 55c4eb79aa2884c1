"""What the supervisor keeps of a node from its heartbeats (pure).

A heartbeat updates the fields it gives and keeps the others as the node last reported them
(a first heartbeat starts from DEFAULTS): a client that sends {"node", "running"} does not wipe
the node's kinds, capabilities or slots. `hold` is the exception (wire protocol: left out
means null, claiming as usual). What a left-out `running` means is the caller's: not reported
(no lease renewed or judged missing from it), unlike an explicit [] (none running).
"""

from meshkit.core.errors import BadRequest

DEFAULTS = {"capabilities": [], "kinds": [], "slots": 1, "free_slots": None, "running": None, "load": None,
            "mem_available": None, "disk_free": None, "version": None, "hold": None}
LEFT_OUT_IS_NULL = ("hold",)


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
    info = dict(DEFAULTS, **(prev or {}))
    for field in LEFT_OUT_IS_NULL:
        info[field] = None
    info.update((k, v) for k, v in body.items() if k != "node")
    info["capabilities"] = sorted(set(info["capabilities"] or []))
    info["kinds"] = sorted(set(info["kinds"] or []))
    info["slots"] = max(1, int(info["slots"] or 1))
    if info["free_slots"] is not None:      # a free_slots kept from before cannot exceed new slots
        info["free_slots"] = min(info["free_slots"], info["slots"])
    return info
