"""The supervisor's API refuses what it used to take silently: heartbeats merge (never wipe a
node), heartbeat values in range, the viewer bearer token only where the README says,
duplicate JSON keys, unknown query parameters, and a request line without an HTTP version.
Real `python -m meshkit supervisor` processes, plus table-driven tests of the pure parts."""

import json
import os
import socket
import sqlite3
import time
import unittest

from tests.helpers import Fleet, register

from meshkit.adapters import httpapp, httpconn
from meshkit.core.errors import BadRequest
from meshkit.rules import auth, nodeinfo
from tests.test_supervisor_api import raw_request

FULL = {"node": "n1", "capabilities": ["gpu"], "kinds": ["echo"], "slots": 3, "free_slots": 3, "running": [],
        "load": [0.5, 0.4, 0.3], "mem_available": 1000, "disk_free": 2000, "version": "9.9"}


class Pure(unittest.TestCase):
    def test_check_heartbeat_values(self):
        for body, field in [({"slots": -3}, "slots"), ({"slots": 0}, "slots"), ({"free_slots": -1}, "free_slots"),
                            ({"slots": 2, "free_slots": 3}, "free_slots"), ({"slots": 1}, None), ({}, None),
                            ({"free_slots": 0}, None), ({"slots": 4, "free_slots": 4}, None),
                            ({"free_slots": 7}, None)]:
            with self.subTest(body=body):
                if field is None:
                    nodeinfo.check(body)
                else:
                    with self.assertRaises(BadRequest) as cm:
                        nodeinfo.check(body)
                    self.assertEqual(cm.exception.details.get("field"), field)
                    self.assertIn(repr(field), cm.exception.message)

    def test_merge(self):
        full = nodeinfo.merge(None, FULL)
        cases = [
            (None, {"node": "n"}, {"slots": 1, "kinds": [], "capabilities": [], "version": None, "hold": None}),
            (full, {"node": "n1", "running": []}, {"slots": 3, "kinds": ["echo"], "capabilities": ["gpu"],
                                                   "version": "9.9",       # what the node is: kept
                                                   "free_slots": None, "mem_available": None, "load": None,
                                                   "disk_free": None}),    # how it is now: not known
            (full, {"node": "n1", "kinds": ["b", "a", "b"]}, {"kinds": ["a", "b"], "slots": 3}),
            (full, {"node": "n1", "slots": 2}, {"slots": 2, "free_slots": None}),
            (dict(full, hold={"reason": "memory_guard"}), {"node": "n1"}, {"hold": None}),   # left out: null
            ({"slots": 0}, {"node": "n1"}, {"slots": 1}),          # a stored 0 (before the check) reads as 1
        ]
        for prev, body, want in cases:
            with self.subTest(body=body):
                got = nodeinfo.merge(prev, body)
                self.assertNotIn("node", got)
                for k, v in want.items():
                    self.assertEqual(got[k], v, k)

    def test_duplicate_json_keys(self):
        for text, key in [('{"kind":"echo","kind":"x"}', "kind"), ('{"a":{"b":1,"b":1}}', "b"),
                          ('[{"x":1},{"y":1,"y":2}]', "y"), ('{"a":1,"b":{"a":1},"c":[{"a":2}]}', None),
                          ('{"":1,"":2}', "")]:
            with self.subTest(text=text):
                if key is None:
                    self.assertEqual(httpapp._decode(text), json.loads(text))
                else:
                    with self.assertRaises(BadRequest) as cm:
                        httpapp._decode(text)
                    self.assertEqual(cm.exception.code, "bad_request")
                    self.assertIn(repr(key), cm.exception.message)

    def test_query_dict_refuses_names_a_route_does_not_take(self):
        for pairs, takes, refused in [([("x", "1")], (), "x"), ([("state", "q"), ("foo", "1")], ("state",), "foo"),
                                      ([("state", "q")], ("state",), None), ([("x", "1")], None, None),
                                      ([("tag", "a"), ("tag", "b")], (), None)]:
            with self.subTest(pairs=pairs, takes=takes):
                if refused is None:
                    httpapp.query_dict(pairs, ("tag",), takes)
                else:
                    with self.assertRaises(BadRequest) as cm:
                        httpapp.query_dict(pairs, (), takes)
                    self.assertIn(f"unknown query parameter {refused!r}", cm.exception.message)

    def test_frame_hands_over_a_request_line_without_a_version(self):
        for buf, whole in [(b"GET /health\r\n", True), (b"GET /health\n", True), (b"GET\r\n", True),
                           (b"GET /health HTTP/1.1\r\n", False), (b"GET /health", False), (b"", False),
                           (b"\r\n", False), (b"GET /health HTTP/1.1\r\nHost: x\r\n", False)]:
            with self.subTest(buf=buf):
                got = httpconn.frame(buf, 1000)
                self.assertEqual(got is not None, whole)
                if whole:
                    self.assertEqual(got[0], buf)


class RealSupervisor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__lease_ttl=600, supervisor__cycle=0.2, supervisor__request_timeout=30)
        cls.viewer_token = cls.fleet.make_viewer_token()
        cls.url = cls.fleet.start_supervisor()
        cls.admin = cls.fleet.client("admin")
        cls.worker = cls.fleet.client("worker")
        cls.db = os.path.join(cls.fleet.dir, "data", "meshkit.db")

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def signed(self, method, path, body=b"", role="admin"):
        kid, _, secret = auth.pick_key(self.fleet.keys, "", role)
        headers = auth.signed_headers(kid, secret, method, path, body, time.time(), os.urandom(12).hex())
        return raw_request(self.url, method, path, body, headers)

    def node(self, name):
        nodes = {n["name"]: n for n in self.admin.call("GET", "/v1/status")["nodes"]}
        return nodes.get(name)

    def row(self, tid, cols="state, hb_missing, lease_deadline"):
        with sqlite3.connect(self.db) as db:
            return db.execute(f"SELECT {cols} FROM tasks WHERE n=?", (int(tid[1:]),)).fetchone()

    def assert_refused(self, got, status, code, *words):
        self.assertEqual(got[0], status, got)
        self.assertEqual(got[1]["error"]["code"], code, got)
        for w in words:
            self.assertIn(w, got[1]["error"]["message"])

    # -- 1. a heartbeat merges ---------------------------------------------------------

    def test_a_minimal_heartbeat_keeps_the_node_claiming(self):
        self.worker.call("POST", "/v1/heartbeat", dict(FULL, node="merge-1", kinds=["merge-kind"]))
        self.worker.call("POST", "/v1/heartbeat", {"node": "merge-1", "running": []})
        n = self.node("merge-1")
        self.assertEqual((n["kinds"], n["capabilities"], n["slots"], n["version"], n["mem_available"]),
                         (["merge-kind"], ["gpu"], 3, "9.9", None))       # a figure left out: not known now
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "merge-kind", "requires": ["gpu"]})["task"]["id"]
        got = self.worker.call("POST", "/v1/claim", {"node": "merge-1", "wait": 5})["tasks"]
        self.assertEqual([t["id"] for t in got], [tid])
        # a first heartbeat gets the defaults
        self.worker.call("POST", "/v1/heartbeat", {"node": "merge-2"})
        n = self.node("merge-2")
        self.assertEqual((n["kinds"], n["capabilities"], n["slots"], n["version"]), ([], [], 1, None))

    def test_a_hold_left_out_is_no_hold(self):
        self.worker.call("POST", "/v1/heartbeat", dict(FULL, node="hold-1", hold={"reason": "memory_guard"}))
        self.assertEqual(self.node("hold-1")["hold"], {"reason": "memory_guard"})
        self.worker.call("POST", "/v1/heartbeat", dict(FULL, node="hold-1"))
        self.assertIsNone(self.node("hold-1")["hold"])

    def test_running_left_out_is_not_reported(self):
        register(self.worker, "run-1", kinds=("run-kind",))
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "run-kind"})["task"]["id"]
        task = self.worker.call("POST", "/v1/claim", {"node": "run-1", "wait": 5})["tasks"][0]
        self.worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "run-1", "fence": task["fence"]})
        before = self.row(tid)
        time.sleep(1.1)
        for _ in range(3):     # left out: no lease renewed, not counted missing (the heal rule requeues at 2)
            got = self.worker.call("POST", "/v1/heartbeat", {"node": "run-1"})
            self.assertEqual(got["fenced"], [])
        self.assertEqual(self.row(tid), before)
        self.assertEqual(before[:2], ("running", 0))
        self.worker.call("POST", "/v1/heartbeat", {"node": "run-1", "running": []})    # explicit []: none running
        self.assertEqual(self.row(tid)[:2], ("running", 1))
        self.worker.call("POST", "/v1/heartbeat", {"node": "run-1", "running": [{"task": tid, "fence": task["fence"]}]})
        state, missing, deadline = self.row(tid)
        self.assertEqual((state, missing), ("running", 0))
        self.assertGreater(deadline, before[2])     # listed: renewed

    # -- 2. heartbeat values -------------------------------------------------------------

    def test_heartbeat_values_out_of_range_are_refused(self):
        self.worker.call("POST", "/v1/heartbeat", dict(FULL, node="range-1", slots=2, free_slots=1))
        for extra, field in [({"slots": -3}, "slots"), ({"slots": 0}, "slots"), ({"free_slots": -1}, "free_slots"),
                             ({"slots": 2, "free_slots": 3}, "free_slots"), ({"slots": 2 ** 53 + 1}, "slots")]:
            with self.subTest(extra=extra):
                body = json.dumps(dict({"node": "range-1"}, **extra)).encode()
                got = self.signed("POST", "/v1/heartbeat", body, role="worker")
                self.assert_refused(got, 400, "bad_request", repr(field))
                self.assertEqual(got[1]["error"].get("field"), field)
                self.assertEqual(self.node("range-1")["slots"], 2)       # nothing stored
        self.assertEqual(self.signed("POST", "/v1/heartbeat", json.dumps(
            {"node": "range-1", "slots": 4, "free_slots": 4}).encode(), role="worker")[0], 200)
        self.assertEqual(self.node("range-1")["slots"], 4)

    # -- 3. the viewer bearer token ----------------------------------------------------------

    def test_the_viewer_token_opens_only_metrics_overview_and_the_page(self):
        bearer = {"Authorization": f"Bearer {self.viewer_token}"}
        for path in ("/metrics", "/v1/overview", "/"):
            with self.subTest(path=path):
                self.assertEqual(raw_request(self.url, "GET", path, headers=bearer)[0], 200)
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "viewer-kind", "payload": {"secret": 1}})["task"]["id"]
        for path in ("/v1/status", "/v1/tasks", f"/v1/tasks/{tid}", f"/v1/tasks/{tid}/explain", "/v1/kinds",
                     "/v1/leases", "/v1/leases/x"):
            with self.subTest(path=path):
                got = raw_request(self.url, "GET", path, headers=bearer)
                self.assert_refused(got, 401, "unauthorized", "/metrics")
                self.assertEqual(got[1]["error"]["reason"], "bearer_not_accepted")
                self.assertNotIn("secret", json.dumps(got[1]))
                self.assertEqual(self.signed("GET", path, role="viewer")[0], 200 if path != "/v1/leases/x" else 404)

    # -- 4. duplicate JSON keys -------------------------------------------------------------

    def test_a_key_given_twice_is_refused(self):
        with sqlite3.connect(self.db) as db:
            before = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        for path, body, key, role in [
                ("/v1/tasks", b'{"kind": "echo", "kind": "x"}', "kind", "admin"),
                ("/v1/tasks", b'{"kind": "echo", "payload": {"a": 1, "a": 2}}', "a", "admin"),
                ("/v1/heartbeat", b'{"node": "dup-1", "slots": 2, "slots": 9}', "slots", "worker")]:
            with self.subTest(body=body):
                self.assert_refused(self.signed("POST", path, body, role=role), 400, "bad_request", repr(key))
        with sqlite3.connect(self.db) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], before)
        self.assertIsNone(self.node("dup-1"))

    # -- 5. unknown query parameters ----------------------------------------------------------

    def test_every_route_refuses_a_query_parameter_it_does_not_take(self):
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "query-kind"})["task"]["id"]
        with sqlite3.connect(self.db) as db:
            before = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        for method, path, body in [("GET", f"/v1/tasks/{tid}?x=1", b""), ("GET", "/v1/status?x=1", b""),
                                   ("GET", "/v1/tasks?foo=1", b""), ("GET", f"/v1/tasks/{tid}/explain?x=", b""),
                                   ("GET", "/metrics?x=1", b""), ("GET", "/v1/kinds?x=1", b""),
                                   ("GET", "/health?x=1", b""), ("GET", "/v1/replicate?since=0&x=1", b""),
                                   ("POST", "/v1/tasks?x=1", b'{"kind": "query-kind"}'),
                                   ("POST", "/v1/heartbeat?x=1", b'{"node": "query-node"}')]:
            with self.subTest(path=path):
                self.assert_refused(self.signed(method, path, body), 400, "bad_request", "unknown query parameter 'x'"
                                    if "foo" not in path else "unknown query parameter 'foo'")
        with sqlite3.connect(self.db) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], before)
        self.assertIsNone(self.node("query-node"))
        # the parameters the CLI, the standby and the watchdog send still work
        for path in ("/v1/tasks?limit=5&state=queued", "/v1/tasks?after=t1", "/v1/ha/check?active=1",
                     "/v1/replicate?since=0&wait=0&limit=1"):
            with self.subTest(path=path):
                self.assertEqual(self.signed("GET", path)[0], 200)

    # -- 6. a request line without a version ------------------------------------------------

    def test_a_request_line_without_a_version_is_refused_at_once(self):
        host, port = self.url[7:].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            start = time.monotonic()
            s.sendall(b"GET /health\r\n")
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
            self.assertLess(time.monotonic() - start, 5)        # request_timeout is 30 s
        self.assertTrue(data.startswith(b"HTTP/1.1 400"), data[:200])
        self.assertIn(b'"bad_request"', data)
        self.assertEqual(raw_request(self.url, "GET", "/health")[0], 200)


if __name__ == "__main__":
    unittest.main()
