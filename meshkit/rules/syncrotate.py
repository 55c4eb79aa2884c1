"""Snapshot names and which snapshots to remove.

A snapshot is named by its UTC start time, 20250102T030405Z, with -2, -3 ...
added if that name is taken. While it is written its directory carries the
suffix .incomplete. Rotation is planned only after a new snapshot succeeded,
never removes the one `current` points to, never removes an incomplete one that
a run will resume, and keeps the newest invalid ones as evidence.
"""

import re
from datetime import datetime, timezone

from meshkit.core.record import Record

INCOMPLETE = ".incomplete"
_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


def stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def parse_name(name: str) -> tuple[float, int] | None:
    """(start time, sequence) of a snapshot name (without .incomplete); None if not one."""
    m = _NAME.match(name)
    if not m:
        return None
    d = m.group(1)      # not strptime: its first call costs ~2 ms (locale, regexes) per run
    try:
        t = datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]), int(d[13:15]),
                     tzinfo=timezone.utc)
    except ValueError:
        return None
    return t.timestamp(), int(m.group(2) or 1)


def new_name(now: float, taken) -> str:
    """The name for a snapshot started at now that is not in taken (and sorts after it)."""
    base = stamp(now)
    newest = max((parse_name(n) or (0, 0) for n in taken if n.startswith(base)), default=(0, 0))
    if newest == (0, 0):
        return base
    return f"{base}-{newest[1] + 1}"


def sort_key(name: str):
    return parse_name(name) or (0.0, 0)


class Plan(Record):
    __slots__ = ("remove", "keep")

    def __init__(self, remove: list | None = None, keep: dict | None = None):
        self.remove = [] if remove is None else remove      # complete snapshots to remove
        self.keep = {} if keep is None else keep            # name -> why it is kept


def rotation_plan(complete, current: str | None, keep_last: int,
                  keep_hourly: int = 0, keep_daily: int = 0) -> Plan:
    """Which complete snapshots to keep and which to remove.

    Kept: the one current points to; the newest keep_last; the newest snapshot
    of each of the last keep_hourly hours (and keep_daily days) that have one.
    Names that are not snapshot names are never touched."""
    names = sorted((n for n in complete if parse_name(n)), key=sort_key, reverse=True)
    plan = Plan()
    if current in names:
        plan.keep[current] = "current"
    for n in names[:max(keep_last, 0)]:
        plan.keep.setdefault(n, "newest")
    for width, count, why in ((3600, keep_hourly, "hourly"), (86400, keep_daily, "daily")):
        seen = []
        for n in names:
            bucket = int(parse_name(n)[0] // width)
            if bucket in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(bucket)
            plan.keep.setdefault(n, why)
    plan.remove = [n for n in names if n not in plan.keep]
    plan.remove.reverse()       # oldest first
    return plan


def invalid_plan(invalid, keep: int) -> list:
    """Invalid snapshots to remove: all but the newest `keep` (and never the newest one)."""
    names = sorted((n for n in invalid if parse_name(n)), key=sort_key, reverse=True)
    return list(reversed(names[max(keep, 1):]))


def incomplete_plan(incomplete) -> tuple[str | None, list]:
    """(the incomplete snapshot a run resumes, older incomplete ones it removes).
    Each run resumes the newest one, so more than one appears only after a crash
    of a run that did not get to resume (they are partial copies, not evidence)."""
    names = sorted((n for n in incomplete if parse_name(n)), key=sort_key, reverse=True)
    if not names:
        return None, []
    return names[0], list(reversed(names[1:]))
