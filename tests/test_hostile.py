"""Hostile clients against a real supervisor (and a real worker for artifact paths): each attack
is refused and nothing changes; slow clients and floods do not exhaust the server."""

import json
import os
import socket
import sqlite3
import sys
import threading
import time
import unittest

from tests.helpers import Fleet, register
from tests.test_fuzz import send
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, wait_state, worker_fleet

from meshkit.rules import auth

REFUSED = []      # (attack, status) for the figures line


def note(attack, status):
    REFUSED.append((attack, status))


def raw(port, data: bytes, shut=True, timeout=10.0) -> tuple:
    """(status, parsed JSON or None, raw bytes) of one request sent byte for byte."""
    answer = send(port, data, shut, timeout)
    try:
        parsed = json.loads(answer.body) if answer.body else None
    except ValueError:
        parsed = None
    return answer.status, parsed, answer.raw


def request_bytes(method, path, body=b"", headers=(), content_length=None) -> bytes:
    cl = len(body) if content_length is None else content_length
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {cl}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Attacks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__request_timeout=2, supervisor__max_connections=256)
        cls.url = cls.fleet.start_supervisor()
        cls.port = int(cls.url.rsplit(":", 1)[1])
        cls.db = os.path.join(cls.fleet.dir, "data", "meshkit.db")
        cls.admin, cls.worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        register(cls.worker, "hw", kinds=["h"])
        cls.queued = cls.admin.call("POST", "/v1/tasks", {"kind": "h"})["task"]["id"]

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()
        if REFUSED:
            print(f"\n  hostile: {len(REFUSED)} attacks refused: "
                  + ", ".join(f"{a} {s}" for a, s in REFUSED), file=sys.stderr)

    def state(self) -> tuple:
        db = sqlite3.connect(self.db, timeout=10)
        try:
            return tuple(db.execute(q).fetchall() for q in (
                "SELECT n, state, fence, attempts, cancel_requested FROM tasks ORDER BY n",
                "SELECT COUNT(*) FROM history", "SELECT name, info FROM nodes ORDER BY name",
                "SELECT * FROM meta WHERE key != 'mode' ORDER BY key"))
        finally:
            db.close()

    def signed(self, method, path, body=b"", kid="admin-1", secret=None, ts=None, nonce=None):
        secret = secret or self.fleet.keys[kid][1]
        return list(auth.signed_headers(kid, secret, method, path, body, time.time() if ts is None else ts,
                                        nonce or os.urandom(12).hex()).items())

    def refused(self, attack, data, status, code=None):
        before = self.state()
        got, answer, rawb = raw(self.port, data)
        self.assertIn(got, status if isinstance(status, tuple) else (status,), f"{attack}: {rawb[:300]!r}")
        if code:
            self.assertEqual(answer["error"]["code"], code, attack)
        self.assertEqual(self.state(), before, f"{attack}: something changed")
        note(attack, got)
        return answer

    def test_forged_signature(self):
        body = json.dumps({"kind": "h"}).encode()
        data = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body,
                                                                     secret="forged-secret-0123456789"))
        self.refused("forged signature", data, 401, "unauthorized")
        # a valid signature of another body
        other = self.signed("POST", "/v1/tasks", b'{"kind": "other"}')
        self.refused("signature of another body", request_bytes("POST", "/v1/tasks", body, other), 401)

    def test_replayed_request(self):
        body = json.dumps({"kind": "h", "payload": {"replay": 1}}).encode()
        data = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body))
        status, answer, _ = raw(self.port, data)
        self.assertEqual(status, 201)
        answer = self.refused("replayed request (same nonce)", data, 401, "unauthorized")
        self.assertIn("replay", answer["error"]["message"])

    def test_request_ten_minutes_old(self):
        body = json.dumps({"kind": "h"}).encode()
        data = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body, ts=time.time() - 600))
        answer = self.refused("request 10 minutes old", data, 401)
        self.assertIn("off the server's clock", answer["error"]["message"])
        future = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body, ts=time.time() + 600))
        self.refused("request 10 minutes in the future", future, 401)

    def test_worker_credential_cannot_dispatch_or_cancel(self):
        for method, path, body in (("POST", "/v1/tasks", b'{"kind": "h"}'),
                                   ("POST", f"/v1/tasks/{self.queued}/cancel", b"{}"),
                                   ("POST", "/v1/graph", b'{"tasks": [{"name": "a", "kind": "h"}]}'),
                                   ("POST", "/v1/mode", b'{"mode": "maintenance"}')):
            data = request_bytes(method, path, body, self.signed(method, path, body, kid="worker-1"))
            self.refused(f"worker key on {path}", data, 403, "forbidden")
        data = request_bytes("GET", "/v1/status", b"", self.signed("GET", "/v1/status", kid="viewer-1"))
        self.assertEqual(raw(self.port, data)[0], 200)
        body = b'{"node": "hw"}'
        data = request_bytes("POST", "/v1/heartbeat", body, self.signed("POST", "/v1/heartbeat", body, kid="viewer-1"))
        self.refused("viewer key on /v1/heartbeat", data, 403)

    def test_task_ids_that_try_to_escape(self):
        for path in ("/v1/tasks/../../keys", "/v1/tasks/..%2F..%2Fkeys", "/v1/tasks/t1%2F..%2F..%2Fkeys",
                     "/v1/tasks/%2e%2e", "/v1/tasks/t1/../../../etc/passwd", "/../keys", "/v1/tasks/t1%00"):
            data = request_bytes("GET", path, b"", self.signed("GET", path))
            status = raw(self.port, data)[0]
            self.assertIn(status, (400, 404), path)
            note(f"task id {path}", status)
        for bad in ("../t1", "t1/../t2", "/etc/passwd", "t1\u0000"):
            body = json.dumps({"task": bad, "fence": 1, "node": "hw", "outcome": "succeeded"}).encode()
            data = request_bytes("POST", "/v1/results", body, self.signed("POST", "/v1/results", body, kid="worker-1"))
            self.refused(f"result for task {bad!r}", data, 400)
        body = json.dumps({"node": "../hw"}).encode()
        self.refused("node name ../hw", request_bytes("POST", "/v1/heartbeat", body,
                                                      self.signed("POST", "/v1/heartbeat", body, kid="worker-1")), 400)

    def test_content_length_smaller_than_the_body(self):
        body = json.dumps({"kind": "h", "payload": "x" * 4000}).encode()
        data = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body), content_length=10)
        # the signature covers the whole body, so the 10 bytes read fail it (or fail as JSON)
        self.refused("Content-Length 10, body 4 KB", data, (400, 401))
        # the rest is never taken for a second request that could run
        smuggled = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body))
        data = request_bytes("GET", "/health", smuggled, content_length=0)[:-len(smuggled)]
        data = data.replace(b"Content-Length: 0", b"Content-Length: 5") + b"xxxxx" + b"garbage\r\n\r\n" + smuggled
        self.refused("a body after a bogus request", data, 200)

    def test_content_length_larger_than_the_body(self):
        body = json.dumps({"kind": "h"}).encode()
        headers = self.signed("POST", "/v1/tasks", body)
        self.refused("Content-Length 5000, body 15 B, then EOF", request_bytes(
            "POST", "/v1/tasks", body, headers, content_length=5000), 400)
        # the same without EOF: the client waits for an answer that comes only when it gives up
        before = self.state()
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body), content_length=5000))
        t0 = time.monotonic()
        got = s.recv(1000)      # the server drops it after request_timeout (2 s)
        waited = time.monotonic() - t0
        s.close()
        self.assertEqual(got, b"")
        self.assertLess(waited, 5)
        self.assertEqual(self.state(), before)
        note("Content-Length 5000, body 15 B, client silent (dropped)", f"after {waited:.1f}s")

    def test_body_over_max_body_is_refused_before_it_is_read(self):
        big = b'{"kind": "h", "payload": "' + b"a" * (2 << 20) + b'"}'
        data = request_bytes("POST", "/v1/tasks", big, self.signed("POST", "/v1/tasks", big))
        answer = self.refused("2 MB body", data, 413, "too_large")
        self.assertIn("limit", answer["error"]["message"])


    def test_any_transfer_encoding_field_is_refused(self):
        """An empty Transfer-Encoding field before `chunked` was let through (only the first field
        was looked at) and the body framed by Content-Length, where a proxy in front may read it as
        chunked: any such field, whatever its value, however many, is refused; a signed dispatch
        sent right after it on the same connection is not run either."""
        body = json.dumps({"kind": "h", "payload": {"te": 1}}).encode()
        for fields in ([("Transfer-Encoding", ""), ("Transfer-Encoding", "chunked")],
                       [("Transfer-Encoding", "")], [("transfer-encoding", " ")], [("Transfer-Encoding", "identity")],
                       [("Transfer-Encoding", "gzip"), ("TRANSFER-ENCODING", "chunked")]):
            with self.subTest(fields=fields):
                then = request_bytes("POST", "/v1/tasks", body, self.signed("POST", "/v1/tasks", body))
                data = request_bytes("POST", "/v1/tasks", body, fields + self.signed("POST", "/v1/tasks", body))
                answer = self.refused(f"Transfer-Encoding fields {[v for _, v in fields]}", data + then, 400,
                                      "bad_request")
                self.assertIn("Transfer-Encoding is not accepted", answer["error"]["message"])
                self.assertEqual(raw(self.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0], 200)

    def test_lone_surrogate_sent_as_utf8_bytes(self):
        # json.loads(bytes) decodes with "surrogatepass": ED A0 80 became a string SQLite can't store (a 500)
        for path, body, kid in (("/v1/leases/hz/acquire", '{"holder": "hw", "ttl": 10, "purpose": "\ud800"}', "worker-1"),
                                ("/v1/tasks", '{"kind": "h", "payload": "\udfff"}', "admin-1")):
            raw_body = body.encode("utf-8", "surrogatepass")
            self.assertIn(b"\xed", raw_body)
            answer = self.refused(f"lone surrogate as UTF-8 bytes on {path}", request_bytes(
                "POST", path, raw_body, self.signed("POST", path, raw_body, kid=kid)), 400, "bad_request")
            self.assertIn("not valid JSON", answer["error"]["message"])

    def test_malformed_header_lines(self):
        for attack, line, status in (("space before the colon", "X-Meshkit-Key : admin-1", 400),
                                     ("folded continuation line", "X-A: 1\r\n  folded", 400),
                                     ("header line without a colon", "NoColonHere", 400),
                                     ("NUL in a header value (RFC 9110 5.5)", "X-A: 1\x002", 400),
                                     ("header line of 70,000 bytes", "X-Long: " + "a" * 70000, 431)):
            data = ("GET /v1/status HTTP/1.1\r\nHost: x\r\n" + line + "\r\n\r\n").encode()
            self.refused(attack, data, status)
        many = "".join(f"X-H{i}: {i}\r\n" for i in range(101))
        self.refused("101 header fields", ("GET /health HTTP/1.1\r\n" + many + "\r\n").encode(), 431)
        self.refused("HTTP/2.0 request line", b"GET /health HTTP/2.0\r\n\r\n", 400)
        self.refused("HTTP/0.9 request line", b"GET /health\r\n\r\n", 400)
        # repeated fields: the first one counts, as before; names are case-insensitive
        status, answer, _ = raw(self.port, b"GET /health HTTP/1.1\r\nhOsT: a\r\nConnection: close\r\n\r\n")
        self.assertEqual(status, 200)

    def test_request_targets_that_are_not_paths(self):
        # urlsplit raised ValueError on "http://[x" (an unclosed IPv6 bracket): it was answered 500
        for target in ("http://[x", "http://[::1/v1/status", "https://]x[/", "http://127.0.0.1/v1/status", "*",
                       "v1/status"):
            with self.subTest(target=target):
                answer = self.refused(f"request target {target}", f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"
                                      .encode(), 400, "bad_request")
                self.assertIn("must be a path", answer["error"]["message"])
                status, _, _ = raw(self.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(status, 200)


class ArtifactEscape(unittest.TestCase):
    """expects.path escaping the task directory: refused at dispatch (400, nothing stored) when the
    path says so itself (`..`, absolute); a symlink the task makes pointing out, which only the
    worker can see, fails the task there and nothing outside is read."""

    SCRIPT = r'''
import json, os, sys
p = json.load(sys.stdin)
for rel, content in p.get("write", {}).items():
    full = os.path.join(os.getcwd(), rel)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        json.dump(content, f)
for name, target in p.get("links", {}).items():
    os.symlink(target, name)
'''

    def test_expects_paths_escaping_the_task_dir_fail_the_task(self):
        fleet = worker_fleet()
        self.addCleanup(close_fleet, fleet)
        script = os.path.join(fleet.dir, "escape.py")
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        with open(fleet.config, "a") as f:
            f.write(f'\n[worker.kinds.escape]\nargv = {json.dumps([sys.executable, script])}\n')
        fleet.start_supervisor()
        admin = fleet.client("admin")
        WorkerProc(fleet, "esc", slots=4).start()
        outside = os.path.join(fleet.dir, "outside.json")
        with open(outside, "w") as f:
            json.dump({"secret": 1}, f)
        good = {"a": 1}
        refused = [
            ({"write": {"../escaped.json": good}}, {"path": "../escaped.json", "keys": ["a"]}),
            ({}, {"path": outside, "keys": ["secret"]}),
            ({"write": {"sub/x.json": good}}, {"path": "sub/../../" + os.path.basename(fleet.dir) + "/outside.json"}),
            ({}, {"path": "../../../../../../etc/hostname"}),
            ({}, {"path": "./"}),
        ]
        before = admin.call("GET", "/v1/tasks?limit=1000")["tasks"]
        for payload, expects in refused:
            for path, body in (("/v1/tasks", {"kind": "escape", "payload": payload, "expects": expects}),
                               ("/v1/graph", {"tasks": [{"name": "a", "kind": "escape", "expects": expects}]})):
                status, answer = admin.request("POST", path, body)
                self.assertEqual(status, 400, (path, expects, answer))
                self.assertEqual(answer["error"]["field"], "expects", answer)
                self.assertIn("inside the task directory", answer["error"]["message"])
            note(f"expects.path {expects['path'][-30:]!r} at dispatch", status)
        self.assertEqual(admin.call("GET", "/v1/tasks?limit=1000")["tasks"], before, "a refused dispatch stored a task")
        link = dispatch(admin, "escape", {"links": {"out.json": outside}}, expects={"path": "out.json", "keys": ["secret"]},
                        max_attempts=1)
        ok = dispatch(admin, "escape", {"write": {"sub/in.json": good}}, expects={"path": "sub/in.json", "keys": ["a"]})
        t = wait_state(admin, link, ("succeeded", "failed"), timeout=20)
        self.assertEqual(t["state"], "failed", t.get("error"))
        self.assertIn("not a path inside the task directory", t["error"])
        note("expects.path symlink 'out.json' -> outside", "task failed")
        self.assertEqual(wait_state(admin, ok, ("succeeded", "failed"), timeout=20)["state"], "succeeded")


class SlowClients(unittest.TestCase):
    def test_200_slow_clients_and_a_flood_do_not_starve_a_good_client(self):
        fleet = Fleet(supervisor__request_timeout=3, supervisor__max_connections=256)
        self.addCleanup(fleet.close)
        url = fleet.start_supervisor()
        port = int(url.rsplit(":", 1)[1])
        admin = fleet.client("admin")
        stop = threading.Event()
        slow = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            slow.append(s)
        msg = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200

        def dribble():     # one byte a second on each of the 200 connections
            i = 0
            while not stop.is_set() and i < len(msg):
                for s in slow:
                    try:
                        s.send(msg[i:i + 1])
                    except OSError:
                        pass
                i += 1
                stop.wait(1.0)

        t = threading.Thread(target=dribble, daemon=True)
        t.start()
        self.addCleanup(lambda: [s.close() for s in slow])
        self.addCleanup(stop.set)
        time.sleep(1.2)
        latencies = []
        for i in range(10):      # the good client, while 200 slow ones hang
            t0 = time.monotonic()
            got = admin.call("POST", "/v1/tasks", {"kind": "good", "payload": {"i": i}})
            latencies.append(time.monotonic() - t0)
            self.assertTrue(got["created"])
            admin.close()        # a new connection each time, as a new client would
        latencies.sort()
        self.assertLess(latencies[-1], 1.0, latencies)
        # the dribblers are cut off after request_timeout (3 s) although they keep sending
        time.sleep(3.5)
        cut = 0
        for s in slow:
            s.settimeout(0.01)
            try:
                cut += s.recv(1) == b""
            except socket.timeout:
                pass
            except OSError:
                cut += 1
        self.assertEqual(cut, 200, "slow connections still open after request_timeout")
        # a flood beyond max_connections: the excess is refused at once with 503, the server lives on
        flood = []
        for _ in range(300):
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        self.addCleanup(lambda: [s.close() for s in flood])
        time.sleep(0.5)
        refused = 0
        for s in flood:
            s.settimeout(0.05)
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 503")
            except (socket.timeout, OSError):
                pass
        self.assertGreater(refused, 0)
        for s in flood:
            s.close()
        t0 = time.monotonic()
        while True:       # slots free again as soon as the flood hangs up
            try:
                admin.call("GET", "/v1/status")
                break
            except Exception:
                if time.monotonic() - t0 > 5:
                    raise
                time.sleep(0.05)
        after_flood = time.monotonic() - t0
        with open(os.path.join(fleet.dir, "supervisor-0.log")) as f:
            self.assertNotIn("Traceback", f.read())
        print(f"\n  slow clients: good client served in p50 {latencies[4] * 1000:.1f} ms, max "
              f"{latencies[-1] * 1000:.1f} ms with 200 slow connections dribbling 1 byte/s; all 200 cut after "
              f"request_timeout 3 s; flood of {len(flood)} connections: {refused} refused with 503 at once, "
              f"good client served {after_flood * 1000:.0f} ms after", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
