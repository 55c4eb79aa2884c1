"""The supervisor's log lines for what an operator needs to see afterwards: a task cancelled
(who, why, from which state), a task failed because a task it depends on failed or was
cancelled, and refused requests (401, 403), at most one line per (client, reason) per window
with a count of those left out. Also: a query parameter given twice is refused (400).

Pure parts table-driven with a fake clock; the rest through a real supervisor, reading its
log lines as JSON."""

import http.client
import json
import os
import time
import unittest

from tests.helpers import Fleet, register

from meshkit.adapters import httpapp
from meshkit.adapters.client import SignedClient
from meshkit.core.clock import FakeClock
from meshkit.core.errors import BadRequest, Unauthorized
from meshkit.roles.supervisor import openapi
from meshkit.rules import auth

KEYS = {"admin-1": ("admin", "s" * 32), "viewer-1": ("viewer", "v" * 32)}


def log_lines(fleet, n=0) -> list:
    with open(os.path.join(fleet.dir, f"supervisor-{n}.log")) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def events(lines, name) -> list:
    return [r for r in lines if r["event"] == name]


class RefusalVerdict(unittest.TestCase):
    def test_table(self):
        every = 60.0
        cases = [
            # last record, now -> (log it?, count the line carries, new record)
            (None, 100.0, (True, 0, (100.0, 0))),               # the first refusal of a key: a line
            ((100.0, 0), 100.0, (False, 0, (100.0, 1))),        # same instant: counted
            ((100.0, 1), 159.9, (False, 0, (100.0, 2))),        # still inside the window
            ((100.0, 2), 160.0, (True, 2, (160.0, 0))),         # window over: a line carrying the 2 left out
            ((100.0, 0), 500.0, (True, 0, (500.0, 0))),         # long after, nothing left out
            ((100.0, 7), 99.0, (True, 7, (99.0, 0))),           # the clock went back: a new window
        ]
        for last, now, want in cases:
            with self.subTest(last=last, now=now):
                self.assertEqual(auth.refusal_verdict(last, now, every), want)


class RefusalLog(unittest.TestCase):
    def test_a_flood_gets_one_line_per_key_and_window_and_every_count_is_reported(self):
        clock = FakeClock()
        rl = auth.RefusalLog(every=10.0)
        a, b = ("10.0.0.1", "bad_signature"), ("10.0.0.1", "stale_timestamp")
        steps = [
            # (advance, key) -> note(); or (advance, None) -> due()
            (0, a, (0, a)), (0, a, None), (1, a, None), (0, b, (0, b)), (2, a, None),
            (0, None, []),                               # nothing ended yet
            (7, a, (3, a)),                              # t=10: a's window ended: a line carrying 3
            (0, a, None), (5, None, []),                 # t=15: b ended with nothing left out: forgotten silently
            (5, None, [(a, 1)]),                         # t=20: a ended with 1 left out and no line since
            (0, None, []),                               # reported once
            (0, a, (0, a)),                              # forgotten: the next refusal is a first one
            (0, a, None), (0, a, None),
        ]
        for i, (advance, key, want) in enumerate(steps):
            clock.advance(advance)
            got = rl.note(key, clock.monotonic()) if key else rl.due(clock.monotonic())
            self.assertEqual(got, want, f"step {i}")
        self.assertEqual(rl.due(clock.monotonic(), final=True), [(a, 2)], "at shutdown: every count")
        self.assertEqual(rl.due(clock.monotonic(), final=True), [])

    def test_past_max_keys_new_clients_share_one_key_per_reason(self):
        clock = FakeClock()
        rl = auth.RefusalLog(every=10.0, max_keys=2)
        others = (auth.RefusalLog.OTHERS, "bad_signature")
        steps = [
            (0, ("c1", "bad_signature"), (0, ("c1", "bad_signature"))),
            (0, ("c2", "bad_signature"), (0, ("c2", "bad_signature"))),
            (0, ("c3", "bad_signature"), (0, others)),      # full: counted for all other clients
            (0, ("c4", "bad_signature"), None),
            (0, ("c1", "bad_signature"), None),             # held keys go on as before
            (10, ("c5", "bad_signature"), (0, ("c5", "bad_signature"))),   # ended windows make room
        ]
        for i, (advance, key, want) in enumerate(steps):
            clock.advance(advance)
            self.assertEqual(rl.note(key, clock.monotonic()), want, f"step {i}")
        # The counts of the windows forgotten to make room are not lost.
        self.assertEqual(sorted(rl.due(clock.monotonic())), [(others, 1), (("c1", "bad_signature"), 1)])


class RefusalReasons(unittest.TestCase):
    def test_each_refusal_carries_its_reason(self):
        now, nonces = 1_700_000_000.0, auth.NonceCache(300)

        def headers(kid="admin-1", secret="s" * 32, ts=now, nonce="n" * 16, path="/v1/status"):
            return auth.signed_headers(kid, secret, "GET", path, b"", ts, nonce)

        good = headers(nonce="r" * 16)
        cases = [
            ({}, "missing_headers"),
            (headers(kid="nobody"), "unknown_key"),
            (dict(headers(), **{auth.H_TS: "soon"}), "bad_timestamp"),
            (headers(ts=now - 301), "stale_timestamp"),
            (headers(nonce="short"), "bad_nonce"),
            (headers(secret="x" * 32), "bad_signature"),
            (good, None),
            (good, "replayed_nonce"),
        ]
        for h, want in cases:
            with self.subTest(want=want):
                if want is None:
                    self.assertEqual(auth.verify(h, "GET", "/v1/status", b"", KEYS, nonces, now, 300), ("admin-1", "admin"))
                    continue
                with self.assertRaises(Unauthorized) as cm:
                    auth.verify(h, "GET", "/v1/status", b"", KEYS, nonces, now, 300)
                self.assertEqual(cm.exception.to_json()["error"]["reason"], want)   # in the answer too


class QueryParameters(unittest.TestCase):
    def test_table(self):
        cases = [
            ([], (), {}),
            ([("state", "queued"), ("limit", "5")], (), {"state": "queued", "limit": "5"}),
            ([("state", "queued"), ("state", "failed")], (), "state"),
            ([("state", ""), ("state", "")], (), "state"),
            ([("a", "1"), ("b", "2"), ("a", "1")], (), "a"),
            ([("tag", "x"), ("tag", "y"), ("limit", "1")], ("tag",), {"tag": ["x", "y"], "limit": "1"}),
            ([("tag", "x")], ("tag",), {"tag": ["x"]}),
            ([("tag", "x"), ("limit", "1"), ("limit", "2")], ("tag",), "limit"),
        ]
        for pairs, repeatable, want in cases:
            with self.subTest(pairs=pairs, repeatable=repeatable):
                if isinstance(want, dict):
                    self.assertEqual(httpapp.query_dict(pairs, repeatable), want)
                    continue
                with self.assertRaises(BadRequest) as cm:
                    httpapp.query_dict(pairs, repeatable)
                self.assertIn(f"query parameter {want!r} is given more than once", cm.exception.message)

    def test_the_document_says_so(self):
        # One value (not an array) unless the route lists the parameter as repeatable; the 400 says why.
        self.assertEqual(openapi.query_parameter("state", {"type": "string"}, False)["schema"], {"type": "string"})
        self.assertEqual(openapi.query_parameter("tag", {"type": "string"}, True)["schema"],
                         {"type": "array", "items": {"type": "string"}})
        self.assertIn("a query parameter given more than once", openapi.ERRORS[400])


class RealSupervisor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__cycle=0.2)
        cls.fleet.start_supervisor()
        cls.admin = cls.fleet.client("admin")

    @classmethod
    def tearDownClass(cls):
        cls.admin.close()
        cls.fleet.close()

    def wait_for(self, name, pred=lambda r: True, timeout=10) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in events(log_lines(self.fleet), name) if pred(r)]
            if found:
                return found
            time.sleep(0.05)
        self.fail(f"no {name} line")

    def dispatch(self, **body):
        return self.admin.call("POST", "/v1/tasks", dict({"kind": "echo"}, **body))["task"]

    def test_cancel_and_upstream_failures_are_logged(self):
        a = self.dispatch(trace_id="trace-cancel-a")["id"]
        b = self.dispatch(after=[a])["id"]
        c = self.dispatch(after=[b])["id"]
        self.admin.call("POST", f"/v1/tasks/{a}/cancel", {"reason": "wrong input"})
        cancelled = self.wait_for("task_cancelled", lambda r: r["task"] == a)
        self.assertEqual(len(cancelled), 1)
        line = cancelled[0]
        self.assertEqual({k: line.get(k) for k in ("kind", "actor", "reason", "from_state", "trace_id", "level")},
                         {"kind": "echo", "actor": "admin-1", "reason": "wrong input", "from_state": "queued",
                          "trace_id": "trace-cancel-a", "level": "info"})
        upstream = {r["task"]: r for r in self.wait_for("task_upstream_failed", lambda r: r["task"] in (b, c))}
        self.assertEqual({t: (r["upstream"], r["upstream_state"], r["state"]) for t, r in upstream.items()},
                         {b: (a, "cancelled", "failed"), c: (b, "failed", "failed")})
        self.assertEqual(upstream[b]["level"], "warning")
        names = [(r["event"], r.get("task")) for r in log_lines(self.fleet)]
        self.assertLess(names.index(("task_cancelled", a)), names.index(("task_upstream_failed", b)))

    def test_a_running_tasks_cancel_request_is_logged_once(self):
        worker = self.fleet.client("worker")
        self.addCleanup(worker.close)
        register(worker, node="w-cancel", kinds=("cancel-kind",))
        tid = self.dispatch(kind="cancel-kind")["id"]
        leased = worker.call("POST", "/v1/claim", {"node": "w-cancel", "max": 1, "wait": 0})["tasks"]
        self.assertEqual([t["id"] for t in leased], [tid])
        worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "w-cancel", "fence": leased[0]["fence"]})
        self.admin.call("POST", f"/v1/tasks/{tid}/cancel")
        self.admin.call("POST", f"/v1/tasks/{tid}/cancel", {"reason": "again"})     # already asked: no new line
        marker = self.dispatch()["id"]          # logged after both cancels
        self.wait_for("task_dispatched", lambda r: r["task"] == marker)
        lines = [r for r in events(log_lines(self.fleet), "task_cancel_requested") if r["task"] == tid]
        self.assertEqual(len(lines), 1)
        self.assertEqual({k: lines[0].get(k) for k in ("actor", "from_state", "node", "reason", "kind")},
                         {"actor": "admin-1", "from_state": "running", "node": "w-cancel", "reason": None,
                          "kind": "cancel-kind"})
        self.assertFalse([r for r in events(log_lines(self.fleet), "task_cancelled") if r["task"] == tid])

    def test_a_failed_result_and_a_dispatch_after_a_failed_task_log_the_upstream_failure(self):
        worker = self.fleet.client("worker")
        self.addCleanup(worker.close)
        register(worker, node="w-fail", kinds=("fail-kind",))
        up = self.dispatch(kind="fail-kind", max_attempts=1)["id"]
        down = self.dispatch(after=[up], trace_id="trace-down")["id"]
        lease = worker.call("POST", "/v1/claim", {"node": "w-fail", "max": 1, "wait": 0})["tasks"][0]
        worker.call("POST", "/v1/results", {"task": up, "fence": lease["fence"], "node": "w-fail",
                                            "outcome": "failed", "ended_by": "exit", "exit_code": 1, "error": "boom"})
        line = self.wait_for("task_upstream_failed", lambda r: r["task"] == down)[0]
        self.assertEqual((line["upstream"], line["upstream_state"], line["trace_id"]), (up, "failed", "trace-down"))
        late = self.dispatch(after=[up])
        self.assertEqual(late["state"], "failed")
        line = self.wait_for("task_upstream_failed", lambda r: r["task"] == late["id"])[0]
        self.assertEqual((line["upstream"], line["upstream_state"]), (up, "failed"))

    def test_a_repeated_query_parameter_is_refused_naming_it(self):
        viewer = self.fleet.client("viewer")
        self.addCleanup(viewer.close)
        cases = [("/v1/tasks?state=queued&state=failed", "state"), ("/v1/tasks?limit=1&state=queued&limit=2", "limit"),
                 ("/v1/tasks?st%61te=queued&state=queued", "state")]
        for path, name in cases:
            with self.subTest(path=path):
                status, answer = viewer.request("GET", path)
                self.assertEqual(status, 400, answer)
                self.assertEqual(answer["error"]["code"], "bad_request")
                self.assertIn(f"query parameter '{name}' is given more than once", answer["error"]["message"])
        status, answer = self.admin.request("GET", "/v1/replicate?since=1&since=2")
        self.assertEqual((status, answer["error"]["code"]), (400, "bad_request"))
        self.assertIn("'since'", answer["error"]["message"])
        status, answer = viewer.request("GET", "/v1/tasks?state=queued&limit=5")
        self.assertEqual(status, 200, answer)


class RefusedRequests(unittest.TestCase):
    def test_401_and_403_are_logged_once_per_client_and_reason_with_counts(self):
        fleet = Fleet(supervisor__cycle=0.2)
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        admin_id, _, admin_secret = auth.pick_key(fleet.keys, "", "admin")
        clients = {
            "bad_signature": SignedClient(fleet.url, admin_id, "x" * 40),
            "stale_timestamp": SignedClient(fleet.url, admin_id, admin_secret, clock=FakeClock(time.time() - 3600)),
            "unknown_key": SignedClient(fleet.url, "retired-7", admin_secret),
            "role_not_allowed": fleet.client("viewer"),
        }
        sent = {"bad_signature": 5, "stale_timestamp": 3, "unknown_key": 2, "role_not_allowed": 2}
        for reason, client in clients.items():
            self.addCleanup(client.close)
            for _ in range(sent[reason]):
                status, _ = client.request("POST", "/v1/tasks", {"kind": "echo"})
                self.assertEqual(status, 403 if reason == "role_not_allowed" else 401, reason)
        # A replay: the same signed request three times (accepted once, then refused twice).
        host, port = fleet.url[7:].rsplit(":", 1)
        headers = auth.signed_headers(admin_id, admin_secret, "GET", "/v1/status", b"", time.time(), "replay" * 4)
        statuses = []
        for _ in range(3):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/v1/status", headers=headers)
            statuses.append(conn.getresponse().status)
            conn.close()
        self.assertEqual(statuses, [200, 401, 401])
        sent["replayed_nonce"] = 2
        self.assertEqual(fleet.stop(), 0)

        lines = log_lines(fleet)
        refused = {r["reason"]: r for r in events(lines, "request_refused")}
        self.assertEqual(len(events(lines, "request_refused")), len(sent), "one line per (client, reason)")
        self.assertEqual(set(refused), set(sent))
        for reason, r in refused.items():
            with self.subTest(reason=reason):
                self.assertEqual((r["level"], r["client"], r["suppressed"]), ("warning", "127.0.0.1", 0))
                self.assertEqual(r["status"], 403 if reason == "role_not_allowed" else 401)
                self.assertEqual(r["route"], "status" if reason == "replayed_nonce" else "dispatch")
        self.assertEqual(refused["bad_signature"]["key"], admin_id)
        self.assertEqual(refused["role_not_allowed"]["key"], auth.pick_key(fleet.keys, "", "viewer")[0])
        self.assertNotIn("key", refused["unknown_key"], "only a key id the keys file has")
        self.assertEqual(refused["bad_signature"]["message"], "bad signature")
        # The refusals left out are counted; at shutdown every count is logged.
        counts = {r["reason"]: r["suppressed"] for r in events(lines, "request_refused_suppressed")}
        self.assertEqual(counts, {reason: n - 1 for reason, n in sent.items()})
        with open(os.path.join(fleet.dir, "supervisor-0.log")) as f:
            text = f.read()
        for _, secret, _ in fleet.keys.values():
            self.assertNotIn(secret, text)
        self.assertNotIn(headers[auth.H_SIG], text)
        self.assertNotIn("x" * 40, text)


if __name__ == "__main__":
    unittest.main()
