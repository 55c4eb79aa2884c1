"""Store.batch(): group commit of several transactions (real SQLite files, no server)."""

import os
import sqlite3
import sys
import tempfile
import threading
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.adapters.store import Store  # noqa: E402
from meshkit.core.errors import Conflict, StoreError  # noqa: E402


class Batch(unittest.TestCase):
    def setUp(self):
        d = tempfile.mkdtemp(prefix="meshkit-batch-")
        self.path = os.path.join(d, "m.db")
        self.store = Store(self.path)
        self.addCleanup(self.store.close)
        with self.store.tx() as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS parent(id INTEGER PRIMARY KEY)")
            tx.execute("CREATE TABLE IF NOT EXISTS child(p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
        self.hooks = []
        self.store.commit_hooks.append(lambda: self.hooks.append(1))

    def outside(self) -> list:
        """What another connection sees (committed rows only)."""
        db = sqlite3.connect(self.path)
        try:
            return [r[0] for r in db.execute("SELECT key FROM meta WHERE key LIKE 'b%' ORDER BY key")]
        finally:
            db.close()

    def put(self, key, fail=None):
        with self.store.tx() as tx:
            tx.set_meta(key, 1)
            if fail:
                raise fail

    def test_cases(self):
        cases = [
            # (name, [(key, exception raised in its body)], keys stored, raises at the end, hooks run)
            ("all commit together", [("b1", None), ("b2", None)], ["b1", "b2"], None, 1),
            ("a failing body is undone alone", [("b1", None), ("b2", Conflict("no")), ("b3", None)],
             ["b1", "b3"], None, 1),
            ("nothing written: no commit, no hook", [], [], None, 0),
        ]
        for name, bodies, stored, raises, hooks in cases:
            with self.subTest(name):
                with self.store.tx() as tx:
                    tx.execute("DELETE FROM meta WHERE key LIKE 'b%'")
                self.hooks.clear()
                with self.store.batch():
                    for key, fail in bodies:
                        if fail:
                            with self.assertRaises(type(fail)):
                                self.put(key, fail)
                        else:
                            self.put(key)
                    self.assertEqual(self.outside(), [])          # nothing visible before the commit
                self.assertEqual(self.outside(), stored)
                self.assertEqual(len(self.hooks), hooks)

    def test_a_commit_that_fails_stores_nothing(self):
        with self.assertRaises(StoreError):
            with self.store.batch():
                self.put("b1")
                with self.store.tx() as tx:                     # passes now, fails at COMMIT
                    tx.execute("INSERT INTO child(p) VALUES (42)")
                self.put("b2")
        self.assertEqual(self.outside(), [])
        self.put("b3")                                           # the store goes on working
        self.assertEqual(self.outside(), ["b3"])

    def test_other_threads_wait_for_the_batch(self):
        order = []
        started = threading.Event()

        def other():
            started.set()
            self.put("b9")
            order.append("other")

        with self.store.batch():
            self.put("b1")
            t = threading.Thread(target=other)
            t.start()
            started.wait(5)
            t.join(0.3)
            self.assertTrue(t.is_alive(), "another thread's transaction ran inside the batch")
            order.append("batch")
        t.join(5)
        self.assertEqual(order, ["batch", "other"])
        self.assertEqual(self.outside(), ["b1", "b9"])


if __name__ == "__main__":
    unittest.main()
