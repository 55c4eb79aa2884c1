"""Why the worker claims no new work now: its guards' holds, said in its heartbeat ("hold").
Mixed into Worker (worker.py), whose settings, link, clock, log, condition and wake these use.

Each guard sets its own hold (set_hold): the memory guard (cli/memwire.py) and the disk guard
(check_disk, here: the work dir's file system short of worker.min_free_mb, or a write there that
failed for lack of space; rules/holds.py decides). The heartbeat carries the one holds.combine
picks, so one guard ending never clears the other's; claims wait while any holds.
"""

import math

from meshkit.core.errors import ApiError
from meshkit.rules import holds


class Holds:
    """Worker's holds (needs self.s, link, clock, log, cond, wake, hold, holds, hold_unknown_to,
    next_heartbeat, next_disk_check, disk_failed_at, disk_free)."""

    def set_hold(self, hold, guard: str = holds.MEMORY_GUARD) -> None:
        """Any thread: `guard` ("memory_guard": memwire.py; holds.DISK_FULL: check_disk) holds back
        claims because of `hold` (a wire "hold"), or no longer (None). When what the heartbeat says
        changes, the supervisor hears it at once (explain and status say so), not at the next idle
        heartbeat."""
        with self.cond:
            self.holds[guard] = hold
            before, self.hold = self.hold, holds.combine(self.holds)
            changed = (before or {}).get("reason") != (self.hold or {}).get("reason")
        if changed:
            self.next_heartbeat = 0.0
            self.wake.set()

    def check_disk(self) -> None:
        """Any thread: read the work dir's free space and set or clear the disk guard's hold
        (logged when it starts and ends). Again within poll_interval (the control loop)."""
        now = self.clock.monotonic()
        free = self.disk_free(self.s.work_dir) if self.s.min_free_mb else None
        short = holds.disk_short(free, self.s.min_free_mb, self.disk_failed_at, now, self.s.poll_interval)
        # no threshold (min_free_mb 0): checked again only while a failed write holds claims back
        self.next_disk_check = now + self.s.poll_interval if self.s.min_free_mb or short else math.inf
        with self.cond:
            changed = short != (self.holds.get(holds.DISK_FULL) is not None)
            self.set_hold(holds.disk_hold(short), holds.DISK_FULL)
        if changed:
            fields = dict(free=free, min_free_mb=self.s.min_free_mb, work_dir=self.s.work_dir)
            if short:
                self.log.warning(holds.DISK_FULL, reason="claims held back until there is space", **fields)
            else:
                self.log.info("disk_ok", **fields)

    def disk_write_failed(self, err) -> None:
        """A task-dir or outbox write failed (any thread): out of space holds claims back at once."""
        if holds.no_space(err):
            self.disk_failed_at = self.clock.monotonic()
        self.check_disk()

    def _hold_refused(self, e) -> bool:
        """A supervisor from before the heartbeat's "hold" refuses it (400 on that field): True,
        and heartbeats to it go without it from now on (the worker holds back claims all the same)."""
        if not (isinstance(e, ApiError) and e.status == 400 and e.details.get("field") == "hold") or \
                self.hold_unknown_to == self.link.url:
            return False
        self.hold_unknown_to = self.link.url
        self.log.warning("heartbeat_hold_refused", supervisor=self.link.url, error=e.message)
        return True

