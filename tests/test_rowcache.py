"""The claim path's row cache (adapters/storetx.py RowCache) on a real SQLite file: every
change made elsewhere (a heartbeat, the reaper, a quarantine, a requeue, a rollback,
rows from the primary) is seen by the next claim, and fencing numbers only grow."""

import io
import os
import tempfile
import unittest

from meshkit.adapters.log import Logger
from meshkit.adapters.store import Store
from meshkit.adapters.storetx import FENCE_BLOCK, FENCE_EPOCH_SHIFT
from meshkit.core.clock import FakeClock
from meshkit.core.errors import BadRequest
from meshkit.roles.supervisor import intake
from meshkit.roles.supervisor.brain import Brain
from meshkit.roles.supervisor.tasks import Tasks
from meshkit.rules.config import parse_config, render_default_toml


class Boom(Exception):
    pass


class RowCacheCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        d = self.dir.name
        self.cfg = parse_config(render_default_toml(), os.path.join(d, "meshkit.toml"), d)
        self.clock = FakeClock()
        self.path = os.path.join(d, "m.db")
        self.open()

    def open(self):
        self.store = Store(self.path)
        self.tasks = Tasks(self.store, self.cfg, self.clock, Logger("supervisor", stream=io.StringIO()))
        self.brain = Brain(self.tasks, self.dir.name)

    def tearDown(self):
        self.store.close()
        self.dir.cleanup()

    def heartbeat(self, node="w1", kinds=("a",), caps=(), slots=4):
        self.tasks.heartbeat({"node": node, "kinds": list(kinds), "capabilities": list(caps), "slots": slots})

    def dispatch(self, kind="a", requires=()):
        return intake.dispatch(self.tasks, {"kind": kind, "requires": list(requires)}, "admin")[0]["id"]

    def claim(self, node="w1", want=1):
        return self.tasks.claim({"node": node, "max": want, "wait": 0}, may_wait=False) or []

    def report_failure(self, t):
        self.tasks.result({"task": t["id"], "fence": t["fence"], "node": "w1", "outcome": "failed",
                           "ended_by": "exit", "exit_code": 2, "error": "bad input"})


class ClaimsSeeEveryChange(RowCacheCase):
    def test_steps(self):
        # (what happens, what the next claim by w1 leases: task labels, in order)
        t = {}
        self.heartbeat()
        steps = [
            ("a plain task", lambda: t.update(p=self.dispatch()), ["p"]),
            ("a task needing a gpu w1 lacks", lambda: t.update(g=self.dispatch(requires=["gpu"])), []),
            ("w1 reports a gpu", lambda: self.heartbeat(caps=["gpu"]), ["g"]),
            ("a kind w1 does not run", lambda: t.update(b=self.dispatch(kind="b")), []),
            ("w1 now runs b", lambda: self.heartbeat(kinds=["a", "b"], caps=["gpu"]), ["b"]),
            ("w1 goes silent past stale_after; a new task", self.go_stale_then_dispatch(t), []),
            ("w1 is back: its lost tasks were requeued", lambda: self.heartbeat(kinds=["a", "b"], caps=["gpu"]),
             ["b", "g", "late", "p"]),
        ]
        for what, change, expected in steps:
            with self.subTest(step=what):
                change()
                names = {v: k for k, v in t.items()}
                self.assertEqual(sorted(names.get(x["id"], x["id"]) for x in self.claim(want=4)), expected)

    def go_stale_then_dispatch(self, t):
        def step():
            self.clock.advance(self.cfg.get("supervisor.stale_after") + 1)
            self.brain.reap()       # w1 stale: its leases are lost, the tasks requeued
            t["late"] = self.dispatch()
        return step

    def test_a_requeued_task_is_found_after_the_cache_was_filled_without_it(self):
        self.heartbeat(caps=["ssd"])
        tid = self.dispatch(requires=["ssd"])
        leased = self.claim()
        self.assertEqual([x["id"] for x in leased], [tid])
        self.store.cache.clear()          # as after a restart: the cache knows nothing...
        self.assertEqual(self.claim(), [])   # ...and is filled from the queued tasks (none with ssd)
        with self.store.tx() as tx:
            row = tx.task_row(int(tid[1:]))
            self.tasks.lose_lease(tx, row, "lease expired", "test", self.clock.time())
        self.assertEqual([x["id"] for x in self.claim()], [tid])

    def test_a_task_waiting_for_another_is_released(self):
        self.heartbeat()
        self.dispatch()
        self.succeed(self.claim()[0])           # no task waits: the cache says so
        first = self.dispatch()
        second = intake.dispatch(self.tasks, {"kind": "a", "after": [first]}, "admin")[0]["id"]
        self.assertEqual([x["id"] for x in self.claim(want=2)], [first])
        self.succeed(self.store.task(first))
        self.assertEqual([x["id"] for x in self.claim(want=2)], [second])

    def succeed(self, t):
        self.tasks.result({"task": t["id"], "fence": t["fence"], "node": "w1", "outcome": "succeeded"})

    def test_quarantine_and_resume_reach_the_claim(self):
        self.heartbeat()
        limit = self.cfg.get("tasks.quarantine_after")
        for _ in range(limit):
            self.dispatch()
            for t in self.claim():
                self.report_failure(t)
        self.dispatch()
        self.assertEqual(self.claim(), [], "a quarantined kind is not leased")
        self.tasks.resume_kind("a", "admin")
        self.clock.advance(3600)                     # past the retries' backoff
        self.assertEqual(len(self.claim(want=10)), 1 + limit)   # the new one and the retries
        with self.store.tx() as tx:
            self.assertEqual(tx.one("SELECT failures FROM kinds WHERE kind='a'")["failures"], 0)

    def test_a_success_after_failures_resets_the_count(self):
        self.heartbeat()
        self.dispatch()
        self.report_failure(self.claim()[0])
        self.clock.advance(3600)                     # past the retry's backoff
        t = self.claim()[0]
        self.tasks.result({"task": t["id"], "fence": t["fence"], "node": "w1", "outcome": "succeeded"})
        with self.store.tx() as tx:
            self.assertEqual(tx.one("SELECT failures FROM kinds WHERE kind='a'")["failures"], 0)


class SlotsFollowLeases(RowCacheCase):
    """A node's count of leased/running tasks is kept in the cache: every lease taken or
    ended changes it, so a node with one slot gets work exactly when its slot is free."""

    def test_steps(self):
        self.heartbeat(slots=1)
        for _ in range(6):
            self.dispatch()
        held = []

        def lease():
            held[:] = self.claim()
            return len(held)

        def end(outcome):
            t = held.pop()
            self.tasks.result({"task": t["id"], "fence": t["fence"], "node": "w1", "outcome": outcome,
                               "ended_by": "exit", "exit_code": 0 if outcome == "succeeded" else 1})

        def reap():
            self.clock.advance(self.cfg.get("supervisor.lease_ttl") + 1)
            self.brain.reap()
            self.heartbeat(slots=1)
            held.clear()

        def rolled_back_lease():
            end("succeeded")
            with self.assertRaises(Boom), self.store.batch():
                self.assertEqual(len(self.claim()), 1)      # leases (the count says 1)...
                raise Boom()                                # ...and the whole batch is undone

        def start():
            self.tasks.start(held[0]["id"], {"node": "w1", "fence": held[0]["fence"]})

        # (what happens, how many tasks the next claim by w1 gets)
        steps = [
            ("a lease fills the one slot", lease, 0),
            ("started: still one task on w1", start, 0),
            ("its success frees the slot", lambda: end("succeeded"), 1),
            ("a failure (retried later) frees it too", lambda: end("failed"), 1),
            ("a lease lost to the reaper frees it", reap, 1),
            ("a lease in a batch that rolled back took nothing", rolled_back_lease, 1),
            ("two slots now, one of them used", lambda: self.heartbeat(slots=2), 1),
        ]
        for what, change, expected in steps:
            with self.subTest(step=what):
                change()
                got = self.claim()
                self.assertEqual(len(got), expected)
                held.extend(got)
                with self.store.tx() as tx:     # the cached count is the table's
                    self.assertEqual(self.store.cache.get(("active", "w1")), tx.one(
                        "SELECT COUNT(*) AS c FROM tasks WHERE node='w1' AND state IN ('leased','running')")["c"])


class Fences(RowCacheCase):
    def fences(self, n):
        with self.store.tx() as tx:
            return [tx.next_fence() for _ in range(n)]

    def test_fences_only_grow(self):
        seen = []
        steps = [
            ("first numbers", lambda: None),
            ("past one reserved block", lambda: seen.extend(self.fences(FENCE_BLOCK))),
            ("a transaction that reserved a block and rolled back", self.rolled_back_reservation),
            ("a reopened store (a restart)", self.reopen),
            ("rows applied from a primary", self.apply_primary_fence),
            ("promoted to epoch 2", lambda: self.floor(2)),
            ("a floor below what was handed out", lambda: self.floor(1)),
        ]
        for what, change, in steps:
            with self.subTest(step=what):
                change()
                got = self.fences(3)
                self.assertTrue(not seen or got[0] > max(seen), (what, got, max(seen or [0])))
                self.assertEqual(got, sorted(set(got)))
                seen.extend(got)
                with self.store.tx() as tx:     # the database always covers what was handed out
                    self.assertGreaterEqual(int(tx.meta("fence_seq")), max(seen))

    def floor(self, epoch):
        with self.store.tx() as tx:
            tx.fence_floor(epoch)

    def test_a_promoted_supervisor_never_reuses_a_number_of_the_lost_window(self):
        # The primary handed out numbers from a block whose reservation never reached its
        # standby (asynchronous replication); promoted, the standby starts above them all.
        primary = self.fences(1500)
        standby = Store(os.path.join(self.dir.name, "standby.db"))
        self.addCleanup(standby.close)
        standby.apply_changes([{"table": "meta", "row": {"key": "fence_seq", "value": str(FENCE_BLOCK)}}], 1)
        with standby.tx() as tx:
            tx.fence_floor(2)
            got = [tx.next_fence() for _ in range(3)]
        self.assertGreater(min(got), max(primary))
        self.assertEqual(got[0], (2 << FENCE_EPOCH_SHIFT) + 1)

    def rolled_back_reservation(self):
        self.store.cache.clear()
        with self.assertRaises(Boom), self.store.tx() as tx:
            tx.next_fence()                 # reserves a block...
            raise Boom()                    # ...which the rollback undoes
        self.assertNotIn("fence", self.store.cache)

    def reopen(self):
        self.store.close()
        self.open()

    def apply_primary_fence(self):
        with self.store.tx() as tx:
            top = int(tx.meta("fence_seq"))
        self.store.apply_changes([{"table": "meta", "row": {"key": "fence_seq", "value": str(top + 5000)}}], 1)


class Rollbacks(RowCacheCase):
    def test_a_failed_transaction_that_changed_rows_empties_the_cache(self):
        self.heartbeat()
        self.claim()                        # fills the node's copy
        self.assertIn(("node", "w1"), self.store.cache)
        with self.assertRaises(BadRequest), self.store.tx() as tx:
            tx.execute("UPDATE nodes SET info=? WHERE name='w1'", ('{"kinds": ["zzz"]}',))
            raise BadRequest("refused after a write")
        self.assertEqual(dict(self.store.cache), {})

    def test_a_failed_transaction_that_changed_nothing_keeps_it(self):
        self.heartbeat()
        self.claim()
        with self.assertRaises(BadRequest), self.store.tx():
            raise BadRequest("refused before any write")
        self.assertIn(("node", "w1"), self.store.cache)


if __name__ == "__main__":
    unittest.main()
