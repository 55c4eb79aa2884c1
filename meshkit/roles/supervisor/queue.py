"""Which queued tasks a node may claim, best first, without walking the ones it can't run.

The queue index holds queued tasks only (partial, on kind, requires, rank: a task leaves
it once, when it is leased, and its later changes don't touch it). For each kind the
node runs, the distinct requirement sets among queued tasks are found by index seeks (a
handful per kind, whatever the queue's length), those the node's capabilities cover get
one lazy cursor each in rank order, and the cursors are merged by rank. A task needing a GPU
the node lacks, or of a kind it doesn't run, is never read, so a backlog of work for
other nodes doesn't slow this node's claims (and a query with `kind IN (...)` would
make SQLite sort every queued task of those kinds on each claim).
"""

import heapq
import json

from meshkit.adapters.storetx import Tx

MAX_GROUPS = 16     # requirement sets per kind walked one cursor each; beyond that, one filtered walk

# What choosing needs, and what transition() needs to lease the chosen one without reading
# its row again (the payload is read by the lease's UPDATE ... RETURNING, never for the
# tasks walked past).
_COLUMNS = "n, kind, requires, priority, attempts, not_before, rank, state, fence, trace_id"


def candidates(tx: Tx, kinds: list, caps: list, now: float):
    """Queued tasks of these kinds whose requirements `caps` cover, highest rank first (lazy)."""
    have = set(caps)
    cursors = []
    try:
        for kind in dict.fromkeys(kinds):
            groups = requirement_sets(tx, kind)
            if groups is None:          # too many distinct sets: filter in SQL on one walk
                cursors.append(_filtered(tx, kind, caps, now))
                continue
            for requires in groups:
                if set(json.loads(requires)) <= have:
                    cursors.append(tx.cursor(f"SELECT {_COLUMNS} FROM tasks WHERE state='queued' AND kind=?"
                                             " AND requires=? AND not_before<=? ORDER BY rank DESC",
                                             (kind, requires, now)))
        if len(cursors) == 1:
            yield from cursors[0]
        else:
            yield from heapq.merge(*cursors, key=lambda row: -row["rank"])
    finally:
        for cur in cursors:
            cur.close()


def requirement_sets(tx: Tx, kind: str):
    """The distinct `requires` values of queued tasks of `kind`, or None when there are
    more than MAX_GROUPS. Kept in the store's row cache: found once by a skip-scan of the
    index (one seek per distinct value), then every task that becomes queued adds its own
    (storetx.RowCache.queued), so the list may name sets no queued task has any more (an
    empty cursor) but never misses one; grown past MAX_GROUPS, it is found again."""
    key = tx.cache.requires_key(kind)
    found = tx.cache.get(key)
    if found is None or len(found) > MAX_GROUPS:
        found = _scan_requirement_sets(tx, kind)
        if found is None:
            tx.cache.pop(key, None)
        else:
            tx.cache[key] = found
    return found


def _scan_requirement_sets(tx: Tx, kind: str):
    found, last = [], None
    while True:
        if last is None:
            row = tx.one("SELECT requires FROM tasks WHERE state='queued' AND kind=?"
                         " ORDER BY requires LIMIT 1", (kind,))
        else:
            row = tx.one("SELECT requires FROM tasks WHERE state='queued' AND kind=? AND requires>?"
                         " ORDER BY requires LIMIT 1", (kind, last))
        if row is None:
            return found
        if len(found) == MAX_GROUPS:
            return None
        last = row["requires"]
        found.append(last)


def _filtered(tx: Tx, kind: str, caps: list, now: float):
    cap_marks = ",".join("?" * len(caps)) or "NULL"
    return tx.cursor(f"SELECT {_COLUMNS} FROM tasks WHERE state='queued' AND kind=? AND not_before<=?"
                     " AND (requires='[]' OR NOT EXISTS (SELECT 1 FROM json_each(tasks.requires)"
                     f" WHERE value NOT IN ({cap_marks}))) ORDER BY rank DESC", (kind, now, *caps))


def next_due(tx: Tx, kinds: list, now: float):
    """The earliest `not_before` after `now` among queued tasks of these kinds, or None: when
    a claim that found nothing must look again (a failed attempt requeued with a backoff
    wakes the waiting claims while its backoff still runs, and nothing changes when it ends).
    Asked only by a claim about to wait; it reads the queued tasks of the node's kinds (the
    queue index), as the claim that found nothing has just done."""
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        return None
    marks = ",".join("?" * len(kinds))
    row = tx.one(f"SELECT MIN(not_before) AS due FROM tasks WHERE state='queued' AND kind IN ({marks})"
                 " AND not_before>?", (*kinds, now))
    return None if row is None else row["due"]
