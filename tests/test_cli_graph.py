"""`meshkit graph FILE`: a real supervisor, the real CLI. A graph is dispatched from a file or
stdin; run again with a key on every task it dispatches nothing twice; --wait follows every
task (claimed and ended here by a signed worker client) and exits 0 only if all succeeded;
a file that can't be read or is not JSON, and a graph the supervisor refuses, are one line."""

import json
import os
import subprocess
import sys
import unittest

from tests.helpers import ROOT, Fleet, env, register
from tests.test_brain_integration import post_result, wait_for

GRAPH = {"tasks": [{"name": "fetch", "kind": "echo", "key": "cli-fetch", "max_attempts": 1},
                   {"name": "sum", "kind": "echo", "after": ["fetch"], "key": "cli-sum"}]}


class GraphCommand(unittest.TestCase):
    def setUp(self):
        self.fleet = Fleet()
        self.addCleanup(self.fleet.close)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")
        self.addCleanup(self.admin.close)

    def write(self, name, text):
        path = os.path.join(self.fleet.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def stored(self):
        return sorted(t["id"] for t in self.admin.call("GET", "/v1/tasks")["tasks"])

    def test_dispatch_then_again_dispatches_nothing(self):
        path = self.write("g.json", json.dumps(GRAPH))
        first = self.fleet.cli("graph", path)
        self.assertEqual(first.returncode, 0, first.stderr)
        rows = [line.split() for line in first.stdout.splitlines()]
        self.assertEqual(rows[0], ["NAME", "ID", "STATE"])
        self.assertEqual([(r[0], r[2]) for r in rows[1:]], [("fetch", "queued"), ("sum", "waiting")])
        ids = sorted(r[1] for r in rows[1:])
        self.assertEqual(self.stored(), ids)
        again = self.fleet.cli("graph", path, "--json")
        self.assertEqual(again.returncode, 0, again.stderr)
        answer = json.loads(again.stdout)
        self.assertFalse(answer["created"])
        self.assertEqual(sorted(t["id"] for t in answer["tasks"].values()), ids)
        self.assertEqual(self.stored(), ids)
        text = self.fleet.cli("graph", "-", input=json.dumps(GRAPH["tasks"]))    # a bare list, on stdin
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("dispatched before (every key is used): nothing new", text.stderr)
        self.assertEqual(self.stored(), ids)

    def test_bad_files_and_refused_graphs_are_one_line(self):
        cases = [
            ((os.path.join(self.fleet.dir, "missing.json"),), 2, "graph: cannot read "),
            ((self.write("bad.json", "{tasks: 1"),), 2, "is not valid JSON"),
            ((self.write("cycle.json", json.dumps({"tasks": [{"name": "a", "kind": "echo", "after": ["b"]},
                                                              {"name": "b", "kind": "echo", "after": ["a"]}]})),),
             2, "dependency cycle a -> b -> a"),
        ]
        for args, code, words in cases:
            with self.subTest(args=args):
                r = self.fleet.cli("graph", *args)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(words, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertEqual(self.stored(), [])

    def run_waiting(self, outcomes: dict):
        """`graph --wait` while a worker client claims each task and ends it as outcomes says."""
        path = self.write("w.json", json.dumps(GRAPH))
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "graph", path, "--wait", "--config",
                                 self.fleet.config, "--supervisor", self.fleet.url], cwd=ROOT, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        worker = self.fleet.client("worker")
        self.addCleanup(worker.close)
        register(worker, "w1")
        for _ in outcomes:
            t = wait_for(lambda: worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 1})["tasks"], 15)
            self.assertTrue(t, "nothing to claim")
            name = next(n for n, tid in self.ids().items() if tid == t[0]["id"])
            post_result(worker, "w1", t[0], outcomes[name], **({"error": "exit code 1"}
                                                                if outcomes[name] == "failed" else {}))
            if outcomes[name] != "succeeded":
                break
        out, err = proc.communicate(timeout=30)
        return proc.returncode, out, err

    def ids(self):
        """{name: id}: the graph sent again (every task keyed) answers with the stored tasks."""
        return {name: t["id"] for name, t in self.admin.call("POST", "/v1/graph", GRAPH)["tasks"].items()}

    def test_wait_exits_0_when_all_succeeded(self):
        code, out, err = self.run_waiting({"fetch": "succeeded", "sum": "succeeded"})
        self.assertEqual(code, 0, err)
        last = [line.split() for line in out.splitlines()][-2:]
        self.assertEqual([(r[0], r[2]) for r in last], [("fetch", "succeeded"), ("sum", "succeeded")])
        self.assertIn("leased -> succeeded", err)

    def test_wait_exits_1_naming_what_did_not_succeed(self):
        code, out, err = self.run_waiting({"fetch": "failed"})      # sum: upstream failed
        self.assertEqual(code, 1, err)
        self.assertIn("graph: 2 of 2 tasks did not succeed: fetch (", err)
        self.assertIn("sum (", err)
        last = [line.split() for line in out.splitlines()][-2:]
        self.assertEqual([(r[0], r[2]) for r in last], [("fetch", "failed"), ("sum", "failed")])


if __name__ == "__main__":
    unittest.main()
