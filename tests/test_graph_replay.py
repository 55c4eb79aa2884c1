"""Integration: a retried POST /v1/graph (every task keyed, every key used) answers 200 with the
tasks of the first one and stores nothing, like a dispatch with a known key; a graph only partly
sent before, or with a task that has no key, is refused whole (409)."""

import os
import sqlite3
import threading
import unittest

from tests.helpers import Fleet

GRAPH = {"tasks": [{"name": "fetch", "kind": "echo", "key": "replay-fetch"},
                   {"name": "build", "kind": "echo", "key": "replay-build", "after": ["fetch"]}]}


class GraphReplay(unittest.TestCase):
    def setUp(self):
        self.fleet = Fleet()
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")
        self.db = os.path.join(self.fleet.dir, "data", "meshkit.db")

    def tearDown(self):
        self.fleet.close()

    def counts(self) -> tuple:
        """(tasks, history rows) stored."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("tasks", "history"))
        finally:
            db.close()

    def log(self) -> str:
        with open(os.path.join(self.fleet.dir, "supervisor-0.log")) as f:
            return f.read()

    def test_a_retried_graph_answers_its_tasks_and_stores_nothing(self):
        status, first = self.admin.request("POST", "/v1/graph", GRAPH)
        self.assertEqual((status, first["created"]), (201, True), first)
        before = self.counts()
        status, again = self.admin.request("POST", "/v1/graph", GRAPH)
        self.assertEqual((status, again["created"]), (200, False), again)
        self.assertEqual(again["tasks"], first["tasks"])
        self.assertEqual(again["epoch"], first["epoch"])
        self.assertEqual(self.counts(), before)
        self.assertEqual(before[0], 2)
        ids = sorted(t["id"] for t in first["tasks"].values())
        self.assertEqual(sorted(t["id"] for t in self.admin.call("GET", "/v1/tasks")["tasks"]), ids)
        log = self.log()
        self.assertEqual(log.count("graph_dispatched"), 1, log)
        self.assertEqual(log.count("graph_replayed"), 1, log)
        replay_line = next(line for line in log.splitlines() if "graph_replayed" in line)
        self.assertTrue(all(i in replay_line for i in ids), replay_line)

    def test_a_graph_with_some_keys_used_is_refused_whole(self):
        self.assertEqual(self.admin.request("POST", "/v1/graph", {"tasks": GRAPH["tasks"][:1]})[0], 201)
        used = self.admin.call("GET", "/v1/tasks")["tasks"][0]["id"]
        before = self.counts()
        status, body = self.admin.request("POST", "/v1/graph", GRAPH)
        self.assertEqual((status, body["error"]["code"]), (409, "conflict"), body)
        self.assertIn(f"task 'fetch' has key 'replay-fetch', already used by {used}", body["error"]["message"])
        self.assertIn("task 'build'", body["error"]["message"])
        self.assertIn("nothing was dispatched", body["error"]["message"])
        self.assertEqual(self.counts(), before)
        self.assertEqual(self.admin.call("POST", "/v1/tasks", {"kind": "echo", "key": "replay-build"})["created"], True)

    def test_a_graph_with_a_task_without_key_cannot_be_replayed(self):
        graph = {"tasks": [GRAPH["tasks"][0], {"name": "note", "kind": "echo", "after": ["fetch"]}]}
        self.assertEqual(self.admin.request("POST", "/v1/graph", graph)[0], 201)
        before = self.counts()
        status, body = self.admin.request("POST", "/v1/graph", graph)
        self.assertEqual((status, body["error"]["code"]), (409, "conflict"), body)
        message = body["error"]["message"]
        self.assertIn("looks already dispatched", message)
        self.assertIn("task 'note' has no key and cannot be matched", message)
        self.assertIn("give every task of a graph a key", message)
        self.assertEqual(self.counts(), before)

    def test_the_same_graph_sent_twice_at_once_is_stored_once(self):
        answers = []

        def send():
            answers.append(self.fleet.client("admin").request("POST", "/v1/graph", GRAPH))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(status for status, _ in answers), [200, 201], answers)
        ids = [{name: t["id"] for name, t in body["tasks"].items()} for _, body in answers]
        self.assertEqual(ids[0], ids[1])
        self.assertEqual(sorted(body["created"] for _, body in answers), [False, True])
        self.assertEqual(self.counts()[0], 2)

    def test_the_document_gives_200_for_a_replayed_graph(self):
        status, doc = self.admin.request("GET", "/v1/openapi.json")
        self.assertEqual(status, 200)
        answers = doc["paths"]["/v1/graph"]["post"]["responses"]
        self.assertIn("201", answers)
        self.assertIn("every key is used", answers["200"]["description"])


if __name__ == "__main__":
    unittest.main()
