"""Retention: which ended tasks the supervisor deletes, and which rows of the replication
changelog it may drop (pure; roles/supervisor/retention.py gathers the facts and deletes).

Ended tasks (succeeded, failed, cancelled) go `supervisor.retain_ended` seconds after they
ended, with their history, results and dependency rows; the cycle looks at PRUNE_BATCH
tasks a cycle, going round the table. The changelog (adapters/storerepl.py) keeps, for
every row that exists, its newest entry: a standby pulling from 0 still gets every row. An
older entry of a row goes once a later one is known (always for the small tables updated
in place, nodes, kinds, leases and meta; for tasks when close together, or once the task is
deleted); an entry saying a row was deleted stays for `retain_ended` (a standby further
behind than that copies everything again: the primary's answer carries the highest one
dropped).
"""

from meshkit.rules import fsm

PRUNE_BATCH = 500           # tasks looked at (so at most deleted) per cycle, in one transaction
EVENTS_BATCH = 500          # fleet lease events looked at per cycle
COMPACT_BATCH = 5000        # changelog rows looked at (and records of deletions dropped) per cycle


def prunable(candidates: list, now: float, retain: float) -> list:
    """The numbers of the tasks in `candidates` that may be deleted now, oldest end first.

    candidates: [{"n", "state", "ended_at", "open_dependents", "newest_history"}] (ended_at:
    when it last changed, which for an ended task is when it ended), where
    open_dependents counts the tasks not ended yet that depend on it (a waiting task reads
    its dependencies' state: it must still find this one succeeded) and newest_history says
    it holds the history row with the highest number (history.seq is max + 1: deleting that
    row would give its number to the next one). retain 0: keep every task."""
    if retain <= 0:
        return []
    out = []
    for t in sorted(candidates, key=lambda t: (t["ended_at"], t["n"])):
        if (t["state"] in fsm.TERMINAL and now - t["ended_at"] > retain
                and not t["open_dependents"] and not t["newest_history"]):
            out.append(t["n"])
    return out


def expired_events(events: list, now: float, retain: float) -> list:
    """The seqs of the fleet lease events (lease_history rows [{"seq", "at"}], oldest first)
    older than `retain`: the leading run of them (the first newer one ends it)."""
    out = []
    if retain <= 0:
        return out
    for e in events:
        if now - e["at"] <= retain:
            break
        out.append(e["seq"])
    return out


def deletions_expiry(mark, now: float, retain: float, head: int) -> tuple:
    """(entries saying a row was deleted up to this changelog position may go, or None; the
    mark to keep). mark: (time, changelog head then) or None: the head recorded at least
    `retain` seconds ago bounds the entries that are that old. The caller takes a new mark
    (new_mark) once it has dropped every one up to it. retain 0: keep them all."""
    if mark is None:
        return None, (now, head)
    if retain <= 0 or now - mark[0] < retain:
        return None, mark
    return mark[1], mark


def changelog_drops(entries: list, later: set, gone: set, head: int) -> list:
    """The seqs of changelog entries for a row (insert or update) that may be dropped: those
    with a later entry for the same (table, rowid), which a standby reads wherever it stands,
    getting the row as it is now or its deletion, and those of a row that is gone (deleted:
    nothing to send; a standby behind gets the deletion's own entry).
    entries: [(seq, table, rowid, deleted)] in seq order (a window of the changelog); later:
    (table, rowid) pairs known to have an entry after the window; gone: pairs with no row now.
    Entries saying a row was deleted are not dropped here (deletions_expiry). The newest
    entry (head) never goes: its seq would be handed out again."""
    seen_after = set(later)
    drops = []
    for seq, table, rid, deleted in reversed(entries):
        if not deleted and seq < head and ((table, rid) in seen_after or (table, rid) in gone):
            drops.append(seq)
        seen_after.add((table, rid))
    return sorted(drops)
