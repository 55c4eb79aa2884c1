"""The claim's candidate walk (roles/supervisor/queue.py) on a real SQLite file: best
first across kinds and requirement sets, never a task the node can't run."""

import os
import tempfile
import unittest

from meshkit.adapters.store import Store
from meshkit.adapters.storetx import task_n
from meshkit.core.errors import NotFound
from meshkit.roles.supervisor import queue

NOW = 1_700_000_000.0


class Candidates(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.store = Store(os.path.join(self.dir.name, "q.db"))

    def tearDown(self):
        self.store.close()
        self.dir.cleanup()

    def add(self, kind, rank, requires=(), state="queued", not_before=0.0) -> int:
        with self.store.tx() as tx:
            n = tx.insert_task({"kind": kind, "payload": {}, "requires": sorted(requires), "priority": 0,
                                "timeout": 60, "max_attempts": 3, "trace_id": "x", "rank": rank,
                                "not_before": not_before}, "queued", "test", "test", NOW)
            if state != "queued":
                tx.transition(n, "queued", "cancelled", "test", "test", NOW)
            return n

    def walk(self, kinds, caps, limit=None):
        with self.store.tx() as tx:
            it = queue.candidates(tx, kinds, caps, NOW)
            out = []
            for row in it:
                out.append(row["n"])
                if limit and len(out) >= limit:
                    break
            it.close()
            return out

    def test_order_and_fit(self):
        t = {}
        t["a_hi"] = self.add("a", 50)
        t["a_gpu"] = self.add("a", 90, ["gpu"])
        t["b_mid"] = self.add("b", 70)
        t["a_lo"] = self.add("a", 10)
        t["b_gpu_ssd"] = self.add("b", 80, ["gpu", "ssd"])
        t["c_top"] = self.add("c", 99)                      # a kind no node below runs but one
        t["a_later"] = self.add("a", 95, not_before=NOW + 60)
        t["a_done"] = self.add("a", 97, state="cancelled")
        cases = [
            # kinds, caps, expected order (names)
            (["a"], [], ["a_hi", "a_lo"]),
            (["a", "b"], [], ["b_mid", "a_hi", "a_lo"]),
            (["a", "b"], ["gpu"], ["a_gpu", "b_mid", "a_hi", "a_lo"]),
            (["b", "a"], ["ssd", "gpu"], ["a_gpu", "b_gpu_ssd", "b_mid", "a_hi", "a_lo"]),
            (["a", "a"], [], ["a_hi", "a_lo"]),             # a kind listed twice is walked once
            (["c"], ["gpu"], ["c_top"]),
            (["zzz"], ["gpu"], []),
        ]
        names = {n: k for k, n in t.items()}
        for kinds, caps, expected in cases:
            with self.subTest(kinds=kinds, caps=caps):
                self.assertEqual([names[n] for n in self.walk(kinds, caps)], expected)

    def test_lazy_stop_closes_cursors(self):
        for r in range(5):
            self.add("a", r)
            self.add("b", r + 0.5, ["gpu"])
        self.assertEqual(len(self.walk(["a", "b"], ["gpu"], limit=2)), 2)
        with self.store.tx() as tx:      # nothing left open: a write transaction still works
            tx.execute("UPDATE tasks SET priority=1")

    def test_many_requirement_sets_fall_back_to_one_filtered_walk(self):
        expected = []
        for i in range(queue.MAX_GROUPS + 5):
            self.add("a", i, [f"cap{i}"])
            if i % 2 == 0:
                expected.append(i)
        with self.store.tx() as tx:
            self.assertIsNone(queue.requirement_sets(tx, "a"))
        caps = [f"cap{i}" for i in expected]
        ranks = [self.store.read("SELECT rank FROM tasks WHERE n=?", (n,))[0]["rank"] for n in self.walk(["a"], caps)]
        self.assertEqual(ranks, sorted(expected, reverse=True))
        with self.store.tx() as tx:
            self.assertEqual(len(queue.requirement_sets(tx, "b") or []), 0)


if __name__ == "__main__":
    unittest.main()


class TaskIds(unittest.TestCase):
    def test_one_spelling_per_task(self):
        for tid, n in [("t1", 1), ("t12", 12), ("t01", None), ("t0", None), ("t", None), ("12", None),
                       ("t1\n", None), ("t²", None), ("t" + "9" * 19, None), (None, None)]:
            with self.subTest(tid=tid):
                if n is None:
                    with self.assertRaises(NotFound):
                        task_n(tid)
                else:
                    self.assertEqual(task_n(tid), n)
