"""The durable outbox: one atomic file per result, exclusive per directory."""

import json
import os
import shutil
import tempfile
import unittest

from meshkit.adapters.outbox import Outbox, entry_name
from meshkit.core.errors import LockHeld


def body(task, fence, finished_at=1.0, **extra):
    return dict({"task": task, "fence": fence, "node": "w1", "outcome": "succeeded", "finished_at": finished_at},
                **extra)


class OutboxTest(unittest.TestCase):
    def setUp(self):
        self.d = os.path.join(tempfile.mkdtemp(prefix="mk-outbox-"), "outbox")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.d), True)

    def test_put_pending_remove_and_reopen(self):
        ob = Outbox(self.d)
        a = ob.put(body("t2", 5, finished_at=20))
        b = ob.put(body("t1", 3, finished_at=10))
        self.assertEqual((a, b), ("t2.5.json", "t1.3.json"))
        self.assertEqual([n for n, _ in ob.pending()], ["t1.3.json", "t2.5.json"])   # oldest first
        ob.put(body("t1", 3, finished_at=10, outcome="failed"))                     # same (task, fence): replaced
        self.assertEqual(len(ob), 2)
        ob.close()
        ob = Outbox(self.d)              # a restart finds everything
        pending = dict(ob.pending())
        self.assertEqual(pending["t1.3.json"]["outcome"], "failed")
        ob.remove("t1.3.json")
        ob.remove("t1.3.json")           # twice: harmless
        self.assertEqual([n for n, _ in ob.pending()], ["t2.5.json"])
        self.assertEqual(oct(os.stat(os.path.join(self.d, "t2.5.json")).st_mode & 0o777), "0o600")
        ob.close()

    def test_one_worker_per_outbox(self):
        ob = Outbox(self.d)
        with self.assertRaises(LockHeld):
            Outbox(self.d)
        ob.close()
        Outbox(self.d).close()

    def test_a_damaged_entry_is_set_aside_and_blocks_nothing(self):
        told = []
        ob = Outbox(self.d, on_bad=lambda path, why: told.append((os.path.basename(path), why)))
        ob.put(body("t1", 1))
        for name, text in (("t9.9.json", "{not json"), ("t8.8.json", json.dumps([1, 2])), (".tmp-x", "partial")):
            with open(os.path.join(self.d, name), "w") as f:
                f.write(text)
        self.assertEqual([n for n, _ in ob.pending()], ["t1.1.json"])
        self.assertEqual(sorted(n for n in os.listdir(self.d) if n.endswith(".bad")), ["t8.8.json.bad", "t9.9.json.bad"])
        self.assertEqual(sorted(name for name, _ in told), ["t8.8.json.bad", "t9.9.json.bad"])   # the worker logs them
        self.assertIn("not a result", dict(told)["t8.8.json.bad"])
        self.assertEqual(len(ob), 1)
        ob.close()

    def test_entry_names_never_escape(self):
        cases = [("t12", 3, "t12.3.json"), ("../../x", 1, None), ("a/b", 2, None)]
        for task, fence, expected in cases:
            with self.subTest(task=task):
                name = entry_name(task, fence)
                if expected:
                    self.assertEqual(name, expected)
                else:
                    self.assertNotIn("/", name)
                    self.assertTrue(name.endswith(f".{fence}.json"))


if __name__ == "__main__":
    unittest.main()
