"""The brain's invariant check reads only what changed since the last one (history rows
after the highest it saw), on a real SQLite file: a change after a check is found, one
before the first check too, and a new epoch looks at everything again."""

import unittest

from meshkit.core.errors import BadRequest
from tests.test_rowcache import RowCacheCase


class IncrementalCheck(RowCacheCase):
    def bad_history(self, tid, state="succeeded"):
        """A history row that does not match the task's state (as a bug would leave it)."""
        with self.store.tx() as tx:
            tx.execute("INSERT INTO history(task, from_state, to_state, at, reason, actor)"
                       " VALUES(?, 'queued', ?, 0, 'test', 'test')", (int(tid[1:]), state))

    def found(self):
        return sorted((v["invariant"], v["task"]) for v in self.brain.check_invariants())

    def test_steps(self):
        mismatch = "history ends in the current state"
        before = self.dispatch()
        self.bad_history(before)
        steps = [
            ("a mismatch made before the first check", lambda: None, [(mismatch, before)]),
            ("nothing changed since", lambda: None, []),
            ("a mismatch made after a check", lambda: self.bad_history(self.dispatch()), "new"),
            ("ordinary work since", lambda: [self.dispatch() for _ in range(3)], []),
            ("a new epoch: everything again", self.new_epoch, "all"),
        ]
        seen = [(mismatch, before)]
        for what, change, expected in steps:
            with self.subTest(step=what):
                change()
                if expected == "new":
                    newest = self.store.tasks(limit=1000)[-1]["id"]
                    expected = [(mismatch, newest)]
                    seen.append((mismatch, newest))
                elif expected == "all":
                    expected = sorted(seen)
                self.assertEqual(self.found(), expected)

    def new_epoch(self):
        with self.store.tx() as tx:
            tx.set_meta("epoch", int(tx.meta("epoch")) + 1)

    def test_a_rolled_back_change_is_not_reported(self):
        tid = self.dispatch()
        self.found()
        with self.assertRaises(BadRequest), self.store.tx() as tx:
            tx.execute("INSERT INTO history(task, from_state, to_state, at, reason, actor)"
                       " VALUES(?, 'queued', 'failed', 0, 'test', 'test')", (int(tid[1:]),))
            raise BadRequest("refused")
        self.assertEqual(self.found(), [])


if __name__ == "__main__":
    unittest.main()
