"""A failed attempt requeued with a backoff reaches a worker's waiting long-poll when its
backoff ends, not when the long-poll does (poll_wait, 25 s by default): the wake at the
requeue comes while `not_before` is still ahead, so a waiting claim bounds its wait by the
earliest backoff of the queued tasks it could take (roles/supervisor/queue.next_due,
rules/backoff.wake_in)."""

import json
import os
import re
import tempfile
import unittest

from tests.helpers import Fleet
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, wait_state

from meshkit.adapters.store import Store
from meshkit.core.clock import FakeClock
from meshkit.roles.supervisor import queue
from meshkit.rules import backoff


class WakeIn(unittest.TestCase):
    def test_table(self):
        now = 1_700_000_000.0
        cases = [
            # remaining, next_due, expected wait
            (25.0, None, 25.0),                 # nothing backing off: the whole long-poll
            (25.0, now + 0.3, 0.31),            # a retry due in 0.3 s: wake then (+ slack)
            (25.0, now + 40.0, 25.0),           # due after the long-poll ends: the long-poll
            (0.2, now + 0.3, 0.2),              # never past the claim's own deadline
            (25.0, now - 1.0, 0.01),            # already due (a race): look again at once
            (-1.0, now + 0.3, 0.0),             # never negative
            (-1.0, None, 0.0),
        ]
        for remaining, due, want in cases:
            with self.subTest(remaining=remaining, due=due):
                self.assertAlmostEqual(backoff.wake_in(remaining, due, now), want, places=6)


class NextDue(unittest.TestCase):
    """queue.next_due on a real SQLite file, with a fake clock moving past the backoffs."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.store = Store(os.path.join(self.dir.name, "q.db"))
        self.clock = FakeClock()

    def tearDown(self):
        self.store.close()
        self.dir.cleanup()

    def add(self, kind, not_before, state="queued"):
        now = self.clock.time()
        with self.store.tx() as tx:
            n = tx.insert_task({"kind": kind, "payload": {}, "requires": [], "priority": 0, "timeout": 60,
                                "max_attempts": 3, "trace_id": "x", "rank": 0, "not_before": not_before},
                               "queued", "test", "test", now)
            if state != "queued":
                tx.transition(n, "queued", state, "test", "test", now)

    def due(self, kinds):
        with self.store.tx() as tx:
            return queue.next_due(tx, kinds, self.clock.time())

    def test_earliest_future_backoff_of_the_nodes_kinds(self):
        t0 = self.clock.time()
        self.add("a", t0 + 5)
        self.add("a", t0 + 2)
        self.add("a", 0)                                  # due already: the claim takes it, no wake needed
        self.add("b", t0 + 1)                             # a kind the node does not run
        self.add("a", t0 + 0.5, state="cancelled")        # not queued
        self.assertEqual(self.due(["a"]), t0 + 2)
        self.assertEqual(self.due(["a", "b", "a"]), t0 + 1)
        self.assertIsNone(self.due([]))
        self.assertIsNone(self.due(["c"]))
        self.clock.advance(2)                             # t0 + 2 has passed: the next one
        self.assertEqual(self.due(["a"]), t0 + 5)
        self.assertAlmostEqual(backoff.wake_in(25.0, self.due(["a"]), self.clock.time()), 3.01)
        self.clock.advance(10)
        self.assertIsNone(self.due(["a", "b"]))
        self.assertEqual(backoff.wake_in(25.0, self.due(["a", "b"]), self.clock.time()), 25.0)


class RetryReachesTheWaitingWorker(unittest.TestCase):
    """Real processes, the default poll_wait (25 s): a kind that fails its first attempt."""

    def setUp(self):
        # backoff after attempt 1: uniform(0, 2) s
        self.fleet = Fleet(tasks__backoff_base=2.0, tasks__backoff_cap=2.0, tasks__quarantine_after=0)
        self.fleet.workers = []
        self.addCleanup(close_fleet, self.fleet)
        marks = os.path.join(self.fleet.dir, "marks")
        os.mkdir(marks)
        script = f'test -f "{marks}/$MESHKIT_TASK_ID" && exit 0; touch "{marks}/$MESHKIT_TASK_ID"; exit 3'
        with open(self.fleet.config, "a") as f:
            f.write(f'\n[worker.kinds.flaky]\nargv = {json.dumps(["sh", "-c", script])}\n')
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")

    def test_the_retry_is_leased_when_its_backoff_ends(self):
        w = WorkerProc(self.fleet, "w1").start()
        # A backoff shorter than the worker's way back to its claim proves nothing (it would
        # find the task due anyway): try again with a new task, up to 4 times.
        for _ in range(4):
            tid = dispatch(self.admin, "flaky", {}, max_attempts=2)
            task = wait_state(self.admin, tid, ("succeeded", "failed"), timeout=60)
            hist = task["history"]
            self.assertEqual(task["state"], "succeeded", hist)
            requeue = next(h for h in hist if h["to"] == "queued" and h["from"] in ("leased", "running"))
            self.assertIn("attempt 1 failed", requeue["reason"])
            delay = float(re.search(r"backoff ([0-9.]+) s", requeue["reason"]).group(1))
            relet = [h for h in hist if h["to"] == "leased"][1]
            gap = relet["at"] - requeue["at"]
            self.assertLess(gap, min(delay + 2.5, 5.0),
                            f"retry leased {gap:.2f} s after its requeue (backoff {delay} s); {hist}; "
                            f"worker log:\n{w.tail()}")
            if delay >= 0.5:
                break


if __name__ == "__main__":
    unittest.main()
