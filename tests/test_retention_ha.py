"""Retention with a primary and a standby as real processes on loopback
(supervisor.retain_ended = 3 s): the standby loses the rows the primary deleted and keeps the
others; a standby started from nothing after the primary compacted its changelog gets every
row; a standby that was away while the primary dropped the records of its deletions copies
everything again. Each ends with exactly the primary's rows."""

import os
import signal
import sqlite3
import unittest

from tests.helpers import Fleet, register
from tests.test_ha import free_port
from tests.test_ha_rejoin import events
from tests.test_worker_harness import dispatch, wait_for
from meshkit.adapters.storerepl import LOCAL_META

RETAIN = 3
TABLES = {"tasks": "n", "history": "seq", "deps": "task, dep", "results": "fence", "nodes": "name",
          "kinds": "kind", "leases": "name", "lease_history": "seq"}


def content(db_path) -> dict:
    with sqlite3.connect(db_path) as db:
        out = {t: db.execute(f"SELECT * FROM {t} ORDER BY {k}").fetchall() for t, k in TABLES.items()}
        marks = ",".join("?" * len(LOCAL_META))
        out["meta"] = db.execute(f"SELECT * FROM meta WHERE key NOT IN ({marks}) ORDER BY key", LOCAL_META).fetchall()
    return out


def task_numbers(db_path) -> set:
    with sqlite3.connect(db_path) as db:
        return {r[0] for r in db.execute("SELECT n FROM tasks")}


def meta(db_path, key) -> int:
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else 0


class Pair(unittest.TestCase):
    def setUp(self):
        pp, ps = free_port(), free_port()
        self.p_url, self.s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
        self.fleet = Fleet(supervisor__cycle=0.2, supervisor__retain_ended=RETAIN)      # no peer: serves at once
        self.addCleanup(self.fleet.close)
        self.s_config = self.fleet.other_config("standby", supervisor__role="standby", supervisor__peer=self.p_url)
        self.p_db = os.path.join(self.fleet.dir, "data", "meshkit.db")
        self.s_db = os.path.join(self.fleet.dir, "standby-data", "meshkit.db")
        self.fleet.start_supervisor(listen=self.p_url[7:])
        self.admin, self.worker = self.fleet.client(url=self.p_url), self.fleet.client("worker", url=self.p_url)
        register(self.worker, "w1", kinds=("echo",), slots=10)

    def start_standby(self):
        self.fleet.start_supervisor(config=self.s_config, listen=self.s_url[7:])
        self.s_proc = self.fleet.supervisor
        return os.path.join(self.fleet.dir, f"supervisor-{len(self.fleet.procs) - 1}.log")

    def caught_up(self):
        rep = self.fleet.client(url=self.s_url).call("GET", "/v1/status")["replication"]
        return rep["lag_changes"] == 0 and rep["replicated"] >= meta_head(self.p_db)

    def run_tasks(self, n) -> list:
        out = []
        for _ in range(n):
            tid = dispatch(self.admin, "echo")
            [t] = self.worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 0})["tasks"]
            self.worker.call("POST", "/v1/results", {"task": tid, "fence": t["fence"], "node": "w1",
                                                     "outcome": "succeeded", "ended_by": "exit"})
            out.append(int(tid[1:]))
        return out

    def kept_tasks(self) -> set:
        """A queued task, and a task that a waiting one depends on, with the waiting one."""
        dep = self.run_tasks(1)[0]
        other = dispatch(self.admin, "other")                 # no node runs it: queued
        waiting = dispatch(self.admin, "echo", after=[f"t{dep}", other])
        return {dep, int(other[1:]), int(waiting[1:])}

    def assertSameRows(self):
        wait_for(lambda: self.caught_up() and content(self.s_db) == content(self.p_db), 15,
                 "the standby to hold exactly the primary's rows")


def stale_entries(db_path) -> int:
    """Changelog entries of task rows that are gone (compaction drops them)."""
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COUNT(*) FROM changelog c WHERE deleted IS NULL AND tbl='tasks' AND NOT EXISTS"
                          " (SELECT 1 FROM tasks t WHERE t.n=c.rid)").fetchone()[0]


def meta_head(db_path) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COALESCE(MAX(seq), 0) FROM changelog").fetchone()[0]


class StandbyFollows(Pair):
    def test_the_standby_loses_the_deleted_rows_and_keeps_the_others(self):
        s_log = self.start_standby()
        ended = set(self.run_tasks(5))
        kept = self.kept_tasks()
        wait_for(self.caught_up, 10, "the standby to catch up")
        self.assertTrue(ended | kept <= task_numbers(self.s_db))          # it held them
        wait_for(lambda: not ended & task_numbers(self.p_db), 15, "the primary to delete the ended tasks")
        self.assertSameRows()
        self.assertFalse(ended & task_numbers(self.s_db))
        self.assertTrue(kept <= task_numbers(self.s_db))
        with sqlite3.connect(self.s_db) as db:
            marks = ",".join("?" * len(ended))
            self.assertEqual(db.execute(f"SELECT COUNT(*) FROM history WHERE task IN ({marks})", tuple(ended))
                             .fetchone()[0], 0)
            self.assertEqual(db.execute(f"SELECT COUNT(*) FROM results WHERE task IN ({marks})", tuple(ended))
                             .fetchone()[0], 0)
            self.assertEqual(len(db.execute("SELECT * FROM deps").fetchall()), 2)
        self.assertEqual(events(s_log, "replication_resync"), [])      # by the records of the deletions


class FreshStandby(Pair):
    def test_a_standby_pulling_from_0_after_the_compaction_gets_every_row(self):
        # More rows below the records dropped than one pull carries (2,000 changes): the copy
        # from 0 is still below that point after its first pull, and must not start over.
        graph = {"tasks": [{"name": f"q{i}", "kind": "other"} for i in range(1000)]}
        queued = {int(t["id"][1:]) for t in self.admin.call("POST", "/v1/graph", graph)["tasks"].values()}
        ended = set(self.run_tasks(8))
        kept = self.kept_tasks()
        self.run_tasks(2)                                    # more rows changed, and deleted in turn
        wait_for(lambda: not ended & task_numbers(self.p_db), 15, "the primary to delete the ended tasks")
        wait_for(lambda: meta(self.p_db, "changelog_floor") > 0, 20, "the records of deletions to expire")
        wait_for(lambda: stale_entries(self.p_db) == 0, 10, "the compaction to drop the entries of deleted tasks")
        s_log = self.start_standby()
        self.assertGreater(meta(self.p_db, "changelog_floor"), 2000)
        self.assertSameRows()
        self.assertTrue(kept | queued <= task_numbers(self.s_db))
        self.assertEqual(events(s_log, "replication_resync"), [])      # from 0: nothing to miss


class StandbyAway(Pair):
    def test_a_standby_behind_the_dropped_records_copies_everything_again(self):
        self.start_standby()
        ended = set(self.run_tasks(4))
        kept = self.kept_tasks()             # (the newest history row is theirs: the ended ones can go)
        wait_for(self.caught_up, 10, "the standby to catch up")
        self.assertEqual(self.fleet.stop(self.s_proc, signal.SIGTERM), 0)
        self.assertTrue(ended <= task_numbers(self.s_db))          # it holds them, and stopped
        at = meta(self.s_db, "replicated_seq")
        wait_for(lambda: not ended & task_numbers(self.p_db), 15, "the primary to delete the ended tasks")
        wait_for(lambda: meta(self.p_db, "changelog_floor") > at, 20, "the records of those deletions to expire")
        s_log = self.start_standby()
        self.assertSameRows()
        self.assertFalse(ended & task_numbers(self.s_db))
        self.assertTrue(kept <= task_numbers(self.s_db))
        resync = events(s_log, "replication_resync")
        self.assertEqual(len(resync), 1, resync)
        self.assertEqual(resync[0]["since"], at)


if __name__ == "__main__":
    unittest.main()
