"""The changelog with deletions and compaction (adapters/storerepl.py), on real stores in
one process: random inserts, updates and deletes on a primary's store, pulled by a standby
in small steps while the primary compacts; the standby ends with exactly the primary's
rows, and so does a store pulling everything from 0 after the compaction, which left no
older entry of a node and no entry of a deleted row."""

import io
import os
import random
import tempfile
import unittest

from meshkit.adapters.log import Logger
from meshkit.adapters.store import Store
from meshkit.adapters.storerepl import LOCAL_META
from meshkit.core.clock import FakeClock
from meshkit.roles.supervisor.retention import SWEEP_PAUSE_CYCLES, Retention
from meshkit.rules.config import parse_config, render_default_toml

TABLES = {"tasks": "n", "history": "seq", "deps": "task, dep", "nodes": "name", "results": "fence"}


def task_row(n, state="queued", at=0.0):
    return ("INSERT INTO tasks(n, kind, payload, requires, priority, timeout, max_attempts, state, created_at,"
            " updated_at, trace_id) VALUES(?, 'k', 'null', '[]', 0, 1, 1, ?, 0, ?, 'tr')", (n, state, at))


def content(store) -> dict:
    out = {t: [tuple(r) for r in store.read(f"SELECT * FROM {t} ORDER BY {k}")] for t, k in TABLES.items()}
    marks = ",".join("?" * len(LOCAL_META))
    out["meta"] = [tuple(r) for r in store.read(f"SELECT * FROM meta WHERE key NOT IN ({marks}) ORDER BY key",
                                                LOCAL_META)]
    return out


def pull(src, dst, limit, compact=None):
    """Pull src's changelog into dst, `limit` entries at a time, compacting src in between."""
    while True:
        since = int(dst.meta("replicated_seq", "0"))
        changes, last = src.changes_since(since, limit)
        dst.apply_changes(changes, last)
        if compact:
            compact()
        if last >= src.head_seq():
            return


class ChangelogWithDeletions(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="meshkit-retention-")
        self.addCleanup(tmp.cleanup)
        self.stores = []
        self.dir = tmp.name

    def store(self, name):
        s = Store(os.path.join(self.dir, f"{name}.db"))
        self.stores.append(s)
        self.addCleanup(s.close)
        return s

    def random_ops(self, a, rnd, steps):
        for _ in range(steps):
            with a.tx() as tx:
                for _ in range(rnd.randint(1, 4)):
                    op, n = rnd.random(), rnd.randint(1, 40)
                    if op < 0.3:
                        tx.execute(*task_row(n)) if not tx.one("SELECT 1 FROM tasks WHERE n=?", (n,)) else None
                        tx.execute("INSERT INTO history(task, to_state, at, reason, actor) VALUES(?, 'queued', 0,"
                                   " 'r', 'a')", (n,))
                    elif op < 0.5:
                        tx.execute("UPDATE tasks SET attempts=attempts+1, state='succeeded' WHERE n=?", (n,))
                    elif op < 0.65:
                        tx.execute("INSERT OR IGNORE INTO deps(task, dep) VALUES(?, ?)", (n, rnd.randint(1, 40)))
                    elif op < 0.75:
                        tx.execute("INSERT INTO nodes(name, info, first_seen, last_seen) VALUES(?, '{}', 0, ?)"
                                   " ON CONFLICT(name) DO UPDATE SET last_seen=excluded.last_seen",
                                   (f"w{n % 5}", rnd.random()))
                    elif op < 0.8:
                        tx.execute("INSERT OR REPLACE INTO results(fence, task, answer, at) VALUES(?, ?, '{}', 0)",
                                   (rnd.randint(1, 60), n))
                    else:                   # what retention does: a task and everything keyed by it
                        tx.execute("DELETE FROM history WHERE task=?", (n,))
                        tx.execute("DELETE FROM results WHERE task=?", (n,))
                        tx.execute("DELETE FROM deps WHERE task=? OR dep=?", (n, n))
                        tx.execute("DELETE FROM tasks WHERE n=?", (n,))

    def test_random_changes_reach_a_following_and_a_fresh_store(self):
        for seed in range(6):
            with self.subTest(seed=seed):
                rnd = random.Random(seed)
                a, b = self.store(f"a{seed}"), self.store(f"b{seed}")
                state = {"after": 0}

                def compact():
                    state["after"] = a.compact_changelog(state["after"], rnd.choice((3, 10, 50)))[0]

                for _ in range(8):
                    self.random_ops(a, rnd, 30)
                    compact()
                    pull(a, b, rnd.choice((2, 7, 40)), compact)
                    self.assertEqual(content(b), content(a))
                after = 0
                while True:                   # one whole round of the compaction
                    after = a.compact_changelog(after, 50)[0]
                    if after == 0:
                        break
                self.assertLess(a.read("SELECT COUNT(*) AS c FROM changelog")[0]["c"], a.head_seq())
                self.assertEqual(a.read("SELECT COUNT(*) AS c FROM changelog c WHERE deleted IS NULL AND tbl='nodes'"
                                        " AND EXISTS (SELECT 1 FROM changelog d WHERE d.tbl=c.tbl AND d.rid=c.rid"
                                        " AND d.seq > c.seq)")[0]["c"], 0, "an older entry of a node is left")
                left = [e for e in a.read("SELECT seq, tbl, rid FROM changelog WHERE deleted IS NULL AND seq < ?",
                                          (a.head_seq(),))
                        if not a.read(f"SELECT 1 FROM {e['tbl']} WHERE rowid=?", (e["rid"],))]
                self.assertEqual(left, [], "an entry of a row that is gone is left")
                gone = a.read("SELECT COUNT(*) AS c FROM changelog WHERE deleted IS NOT NULL")[0]["c"]
                self.assertGreater(gone, 0)
                a.expire_deletions(a.head_seq(), 10000)     # deletion records past their retention
                self.assertLessEqual(a.read("SELECT COUNT(*) AS c FROM changelog WHERE deleted IS NOT NULL")[0]["c"],
                                     1)                    # the newest entry stays, whatever it is
                self.assertGreater(a.changelog_floor(), 0)
                c = self.store(f"c{seed}")
                pull(a, c, rnd.choice((3, 25, 2000)))
                self.assertEqual(content(c), content(a))

    def test_a_deletion_is_applied_by_key_where_rowids_differ(self):
        a, b = self.store("a"), self.store("b")
        with a.tx() as tx:
            tx.execute("INSERT INTO deps(task, dep) VALUES(5, 1)")
            tx.execute("INSERT INTO deps(task, dep) VALUES(6, 1)")
        with b.tx() as tx:       # b's rowids are not a's (a table keyed by (task, dep))
            tx.execute("INSERT INTO deps(task, dep) VALUES(6, 1)")
            tx.execute("INSERT INTO deps(task, dep) VALUES(5, 1)")
        with a.tx() as tx:
            tx.execute("DELETE FROM deps WHERE task=5")
        changes, last = a.changes_since(0)
        self.assertIn({"seq": last, "table": "deps", "key": {"task": 5, "dep": 1}, "deleted": True}, changes)
        b.apply_changes(changes, last)
        self.assertEqual([tuple(r) for r in b.read("SELECT task, dep FROM deps")], [(6, 1)])

    def test_a_standby_applying_heartbeats_keeps_changelog_last_small(self):
        """INSERT OR REPLACE on the standby gives a node's row a new rowid at every applied
        update: compaction drops the changelog_last rows of rowids that are gone."""
        a, b = self.store("a"), self.store("b")
        for i in range(50):
            with a.tx() as tx:
                tx.execute("INSERT INTO nodes(name, info, first_seen, last_seen) VALUES('w1', '{}', 0, ?)"
                           " ON CONFLICT(name) DO UPDATE SET last_seen=excluded.last_seen", (i,))
            pull(a, b, 100)
        count = "SELECT COUNT(*) AS c FROM changelog_last WHERE tbl='nodes'"
        self.assertEqual(b.read(count)[0]["c"], 50)        # one per rowid the row had
        b.compact_changelog(0, 1000)
        self.assertEqual(b.read(count)[0]["c"], 1)
        self.assertEqual([r["last_seen"] for r in b.read("SELECT last_seen FROM nodes")], [49])

    def test_compaction_rests_between_rounds(self):
        """A round over the whole changelog holds the store's lock ~15 ms a window: after one
        ends, the next starts SWEEP_PAUSE_CYCLES cycles later, not at the next cycle."""
        a = self.store("a")
        cfg = parse_config(render_default_toml(), os.path.join(self.dir, "meshkit.toml"), self.dir)
        clock, rounds = FakeClock(), []
        compact = a.compact_changelog
        a.compact_changelog = lambda after, limit: rounds.append(after) or compact(after, limit)
        r = Retention(a, cfg, clock, Logger("supervisor", stream=io.StringIO()))
        pause = SWEEP_PAUSE_CYCLES * cfg.get("supervisor.cycle")
        for step in range(4):
            r.compact()
            clock.advance(pause / 4)
        self.assertEqual(len(rounds), 1)
        clock.advance(pause / 4)
        r.compact()
        self.assertEqual(len(rounds), 2)

    def test_the_newest_entry_is_never_dropped(self):
        a = self.store("a")
        with a.tx() as tx:
            tx.execute(*task_row(1, "succeeded"))
            tx.execute(*task_row(2, "succeeded"))
        with a.tx() as tx:
            tx.execute("UPDATE tasks SET attempts=1 WHERE n=1")
            tx.execute("DELETE FROM tasks WHERE n=2")         # the newest entry: a deletion
        head = a.head_seq()
        a.compact_changelog(0, 100)
        a.expire_deletions(head, 100)
        self.assertEqual(a.head_seq(), head)                 # else the next change would reuse its seq
        self.assertEqual(a.changelog_floor(), 0)

    def test_a_rejoin_asks_the_new_primary_for_rows_it_deleted(self):
        a = self.store("a")
        with a.tx() as tx:
            tx.execute(*task_row(3, "succeeded"))
        head = a.head_seq()
        with a.tx() as tx:
            tx.execute("DELETE FROM tasks WHERE n=3")
        self.assertIn({"table": "tasks", "key": {"n": 3}}, a.changed_keys(head))


if __name__ == "__main__":
    unittest.main()
