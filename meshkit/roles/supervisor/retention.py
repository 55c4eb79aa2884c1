"""Retention, run by the maintenance cycle (brain.py): on the primary, ended tasks are deleted
supervisor.retain_ended after they ended, with everything keyed by them (history, results,
dependency rows), and fleet lease events as old; on either node the replication changelog
is compacted (storerepl.py). Each part is one bounded transaction per cycle, so the loop
thread, which waits for the store's lock meanwhile, never waits long; a backlog drains over
several cycles. What may go is decided by rules/retention.py.

The tasks are looked at in number order, PRUNE_BATCH a cycle, going round the table (an
index of ended tasks by end time would cost a write at every task's end and update:
measured, ~15 us of the ~160 us a request costs); a task goes on the first round after
its retention ran out.

The row cache (storetx.RowCache) holds nothing about ended tasks, so deleting them leaves
it right; the counts by state (/metrics, status) are counted from the table each time."""

from meshkit.core import metrics as m
from meshkit.rules import fsm
from meshkit.rules import retention as rules

SWEEP_PAUSE_CYCLES = 20     # cycles between two rounds of compaction over the whole changelog
ENDED = "(" + ",".join(f"'{s}'" for s in sorted(fsm.TERMINAL)) + ")"


class Retention:
    def __init__(self, store, cfg, clock, log):
        self.store, self.cfg, self.clock, self.log = store, cfg, clock, log
        self.cursor = 0             # the number of the last task looked at; 0: from the first
        self.compact_after = 0      # changelog position the compaction goes on from
        self.mark = None            # (time, changelog head then): rules.deletions_expiry
        self.next_sweep = 0.0       # monotonic time the next round of compaction may start
        self.pruned = m.Counter("pruned", "")     # the API's meshkit_tasks_pruned_total, set by the supervisor

    def retain(self) -> float:
        return float(self.cfg.get("supervisor.retain_ended"))

    def prune(self) -> int:
        """Delete up to rules.PRUNE_BATCH ended tasks past their retention, and old lease events."""
        retain = self.retain()
        if retain <= 0:
            return 0
        now = self.clock.time()
        with self.store.tx() as tx:
            newest = tx.one("SELECT task FROM history ORDER BY seq DESC LIMIT 1")
            rows = tx.all(f"SELECT t.n, t.state, t.updated_at AS ended_at, CASE WHEN t.state IN {ENDED} THEN"
                          f" (SELECT COUNT(*) FROM deps d JOIN tasks w ON w.n=d.task WHERE d.dep=t.n AND w.state"
                          f" NOT IN {ENDED}) END AS open_dependents FROM tasks t WHERE t.n > ? ORDER BY t.n LIMIT ?",
                          (self.cursor, rules.PRUNE_BATCH))
            candidates = [dict(r, newest_history=newest is not None and r["n"] == newest["task"]) for r in rows]
            ns = rules.prunable(candidates, now, retain)
            deleted = self._delete(tx, ns) if ns else {}
            events = rules.expired_events(tx.all("SELECT seq, at FROM lease_history ORDER BY seq LIMIT ?",
                                                 (rules.EVENTS_BATCH,)), now, retain)
            if events:
                tx.execute(f"DELETE FROM lease_history WHERE seq IN ({','.join('?' * len(events))})", events)
        # A full batch: the next cycle goes on after it; else the next round starts from the first.
        self.cursor = rows[-1]["n"] if len(rows) == rules.PRUNE_BATCH else 0
        if ns:
            self.pruned.inc(by=len(ns))
            oldest = min(c["ended_at"] for c in candidates if c["n"] in set(ns))
            self.log.info("tasks_pruned", count=len(ns), oldest_ended_at=oldest, oldest_age=round(now - oldest, 1),
                          kept=len(rows) - len(ns), rows=deleted, lease_events=len(events) or None,
                          more=self.cursor > 0 or None)
        elif events:
            self.log.info("lease_events_pruned", count=len(events))
        return len(ns)

    @staticmethod
    def _delete(tx, ns: list) -> dict:
        """Delete tasks `ns` and every row keyed by them; the rows deleted per table. A result
        is keyed by its lease's fencing number, which the task's history rows carry."""
        marks = ",".join("?" * len(ns))
        return {"results": tx.execute(f"DELETE FROM results WHERE fence IN (SELECT fence FROM history WHERE task"
                                     f" IN ({marks}) AND fence IS NOT NULL) AND task IN ({marks})", (*ns, *ns)).rowcount,
               "history": tx.execute(f"DELETE FROM history WHERE task IN ({marks})", ns).rowcount,
               "deps": tx.execute(f"DELETE FROM deps WHERE task IN ({marks})", ns).rowcount
               + tx.execute(f"DELETE FROM deps WHERE dep IN ({marks})", ns).rowcount,
               "tasks": tx.execute(f"DELETE FROM tasks WHERE n IN ({marks}) AND state IN {ENDED}", ns).rowcount}

    def compact(self) -> None:
        """Drop changelog entries no pull needs: older entries of a row changed again (up to
        rules.COMPACT_BATCH looked at, going round the changelog), and entries of deletions
        older than the retention."""
        mono = self.clock.monotonic()
        if self.compact_after == 0 and mono < self.next_sweep:
            dropped = 0             # a round over the whole changelog ended lately: rest (each window holds
        else:                       # the store's lock ~15 ms; going round without a pause cost that every cycle)
            self.compact_after, dropped = self.store.compact_changelog(self.compact_after, rules.COMPACT_BATCH)
            if self.compact_after == 0:
                self.next_sweep = mono + SWEEP_PAUSE_CYCLES * float(self.cfg.get("supervisor.cycle"))
        now, head = self.clock.time(), self.store.head_seq()
        upto, self.mark = rules.deletions_expiry(self.mark, now, self.retain(), head)
        expired = 0
        if upto is not None:
            expired, more = self.store.expire_deletions(upto, rules.COMPACT_BATCH)
            if not more:
                self.mark = (now, head)
        if dropped or expired:
            self.log.debug("changelog_compacted", dropped=dropped, deletions=expired, head=head)
