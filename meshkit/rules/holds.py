"""Why a worker claims no new work now: its guards' holds, and the disk guard's decision. Pure.

A worker has guards that may each hold back its claims: the memory guard (memguard.hold, reason
"memory_guard") and the disk guard (here, reason DISK_FULL). Each sets its own hold; the
heartbeat carries one (wire "hold"): combine() picks it, so one guard ending never clears the
other's.

The disk guard: the work dir's file system is short of space when it has less free space than
worker.min_free_mb (0: no such threshold), or when writing there (a task directory, the outbox)
failed for lack of space (ENOSPC, EDQUOT) less than FAILED_WRITE_POLLS poll intervals ago (30 s by
default), whatever the threshold: the free-space figure does not show every way to be full (no
inodes left, a quota), and a worker that cannot write takes no task it would only fail.
"""

import errno

from meshkit.rules.memguard import HOLD_REASON as MEMORY_GUARD, MB

DISK_FULL = "disk_full"         # the heartbeat's hold.reason while the disk guard holds back claims
ORDER = (MEMORY_GUARD, DISK_FULL)       # when several hold, the heartbeat says the first
FAILED_WRITE_POLLS = 6          # poll intervals a write that failed for lack of space holds back claims
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def no_space(err) -> bool:
    """err (an OSError) says the file system is full."""
    return getattr(err, "errno", None) in NO_SPACE


def disk_short(free_bytes, min_free_mb: int, failed_at, now: float, poll_interval: float) -> bool:
    """True while the disk guard holds back claims. free_bytes None: unknown (not short by the
    figure); failed_at: monotonic time of the last write that failed for lack of space, or None."""
    if min_free_mb and free_bytes is not None and free_bytes < min_free_mb * MB:
        return True
    return failed_at is not None and now - failed_at < FAILED_WRITE_POLLS * poll_interval


def disk_hold(short: bool) -> dict | None:
    """The hold the disk guard sets (the wire's hold figures are the memory guard's: none here)."""
    return {"reason": DISK_FULL} if short else None


def combine(holds: dict) -> dict | None:
    """The one hold a heartbeat carries from each guard's own ({guard: hold or None}): the first
    held by ORDER (then any other, by name), or None when none holds."""
    held = {name: h for name, h in holds.items() if h is not None}
    for name in list(ORDER) + sorted(set(held) - set(ORDER)):
        if name in held:
            return held[name]
    return None
