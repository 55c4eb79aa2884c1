"""The durable outbox: one atomic file per result, exclusive per directory.

Across versions, through a real supervisor (its database read for the tasks' states): an
entry written with the trace id inside NAME.json (the layout before .NAME.local) and one
written now (body + .NAME.local) are both delivered by the worker's sender, each line
carrying its trace id; a worker from before the trace id (it sends each *.json entry whole)
gets an entry written now accepted, and the .local it leaves is removed at the next open."""

import io
import json
import os
import random
import shutil
import sqlite3
import tempfile
import unittest

from tests.helpers import Fleet, register

from meshkit.adapters.log import Logger
from meshkit.adapters.outbox import Outbox, entry_name
from meshkit.core.clock import REAL
from meshkit.core.errors import ApiError, LockHeld
from meshkit.roles.worker.link import Link
from meshkit.roles.worker.results import Sender
from meshkit.rules.breaker import Breaker


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

    def test_an_entry_with_its_trace_id_inside_is_rewritten_beside_at_open(self):
        os.makedirs(self.d)
        with open(os.path.join(self.d, "t1.3.json"), "w") as f:     # as the version before .local wrote it
            json.dump(body("t1", 3, trace_id="tr-1"), f)
        ob = Outbox(self.d)
        self.addCleanup(ob.close)
        with open(os.path.join(self.d, "t1.3.json")) as f:
            self.assertEqual(json.load(f), body("t1", 3), "NAME.json is now exactly the body sent")
        self.assertEqual(ob.pending(), [("t1.3.json", body("t1", 3, trace_id="tr-1"))])
        self.assertEqual(sorted(os.listdir(self.d)), [".lock", ".t1.3.json.local", "t1.3.json"])

    def test_a_rewrite_the_disk_refuses_leaves_the_entry_as_it_was(self):
        class FullDisk(Outbox):
            def put(self, result):
                raise OSError(28, "No space left on device")
        os.makedirs(self.d)
        with open(os.path.join(self.d, "t1.3.json"), "w") as f:
            json.dump(body("t1", 3, trace_id="tr-1"), f)
        ob = FullDisk(self.d)                   # opens all the same (a traceback stopped the worker)
        self.addCleanup(ob.close)
        self.assertEqual(ob.pending(), [("t1.3.json", body("t1", 3, trace_id="tr-1"))])

    def test_a_result_of_the_old_node_name_a_bound_key_refuses_is_set_aside(self):
        """worker.name changed (e.g. hostname gpu-1.lan -> gpu-1, the key bound to gpu-1): the
        supervisor refuses the old name's result for good; it goes aside, the worker goes on."""
        class Link:
            def __init__(self):
                self.sent = []

            def call(self, method, path, body):
                self.sent.append(body["node"])
                if body["node"] != "gpu-1":
                    raise ApiError(403, "forbidden", "key worker-gpu-1 speaks only for node gpu-1",
                                   reason="node_not_bound")
                return {"state": "succeeded"}
        ob = Outbox(self.d)
        self.addCleanup(ob.close)
        ob.put(body("t1", 3, node="gpu-1.lan", finished_at=1))
        ob.put(body("t2", 4, node="gpu-1", finished_at=2))
        refused, stream, link = [], io.StringIO(), Link()
        sender = Sender(ob, link, REAL, random.random, 0.1, 1.0, Logger("worker", stream=stream),
                        on_refused=lambda err: refused.append(err) or True, node="gpu-1")
        sender.step(force=True)
        self.assertEqual((link.sent, refused, ob.pending()), (["gpu-1.lan", "gpu-1"], [], []))
        self.assertEqual(sorted(os.listdir(self.d)), [".lock", "t1.3.json.bad"])
        self.assertIn('"event":"result_set_aside"', stream.getvalue())

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


def sent_whole(directory: str, client) -> list:
    """A worker from before the trace id: each *.json entry (hidden ones skipped) is read
    and sent as it is; acknowledged, its file is removed (that version's pending/remove)."""
    answers = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(directory, name), "rb") as f:
                answers.append(client.request("POST", "/v1/results", json.loads(f.read())))
            if answers[-1][0] == 200:
                os.unlink(os.path.join(directory, name))
    return answers


class AcrossVersions(unittest.TestCase):
    def test_each_layout_is_delivered_and_a_downgraded_worker_sends_the_new_one(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        admin, worker = fleet.client("admin"), fleet.client("worker")
        register(worker, "w1", kinds=("d",), slots=3)
        formats = ("downgraded", "inside", "beside")
        for f in formats:
            admin.call("POST", "/v1/tasks", {"kind": "d", "key": f, "trace_id": f"trace-{f}"})
        leased = worker.call("POST", "/v1/claim", {"node": "w1", "max": 3, "wait": 0})["tasks"]
        entries = {}
        for t in leased:
            worker.call("POST", f"/v1/tasks/{t['id']}/start", {"node": "w1", "fence": t["fence"]})
            f = t["trace_id"][len("trace-"):]
            entries[f] = {"task": t["id"], "fence": t["fence"], "node": "w1", "outcome": "succeeded",
                          "ended_by": "exit", "exit_code": 0, "result": {"format": f}, "finished_at": 1.0,
                          "trace_id": t["trace_id"]}
        self.assertEqual(sorted(entries), sorted(formats))
        d = os.path.join(fleet.dir, "outbox")

        ob = Outbox(d)                                    # written now, then the worker downgraded
        name = ob.put(entries["downgraded"])
        ob.close()
        self.assertEqual(sorted(os.listdir(d)), [".lock", f".{name}.local", name])
        self.assertEqual([(status, answer.get("state")) for status, answer in sent_whole(d, worker)],
                         [(200, "succeeded")])

        ob = Outbox(d)                                    # upgraded again
        self.addCleanup(ob.close)
        self.assertEqual(os.listdir(d), [".lock"], "the .local the old worker left is removed")
        inside = entry_name(entries["inside"]["task"], entries["inside"]["fence"])
        with open(os.path.join(d, inside), "w") as f:    # as the version before .local wrote it
            json.dump(entries["inside"], f)
        ob.put(entries["beside"])
        stream = io.StringIO()
        log = Logger("worker", stream=stream)
        link = Link([worker], Breaker(), REAL, log)
        Sender(ob, link, REAL, random.random, 0.1, 1.0, log).step(force=True)
        self.assertEqual((ob.pending(), os.listdir(d)), ([], [".lock"]))
        delivered = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.assertEqual(sorted((r["event"], r["task"], r.get("trace_id")) for r in delivered),
                         sorted(("result_delivered", entries[f]["task"], f"trace-{f}") for f in ("inside", "beside")))

        db = sqlite3.connect(f"file:{os.path.join(fleet.dir, 'data', 'meshkit.db')}?mode=ro", uri=True)
        self.addCleanup(db.close)
        for f, e in entries.items():
            with self.subTest(format=f):
                row = db.execute("SELECT state, result FROM tasks WHERE n = ?", (int(e["task"][1:]),)).fetchone()
                self.assertEqual((row[0], json.loads(row[1])["result"]), ("succeeded", {"format": f}))


if __name__ == "__main__":
    unittest.main()
