"""Graceful shutdown of a real supervisor under load: SIGTERM -> new work refused with 503 +
Retry-After (or the connection refused once closed), the request in flight is answered,
exit 0 within a bounded time, WAL checkpointed, and a restart has everything acknowledged."""

import http.client
import json
import os
import secrets
import signal
import socket
import threading
import time
import unittest
import urllib.parse

from tests.helpers import Fleet, register

from meshkit.core.errors import ApiError, ClientError
from meshkit.rules.auth import pick_key, signed_headers

LOAD_THREADS = 3


def signed_request(fleet, method, path, body=None, role="admin"):
    """One request on a fresh connection: (status, headers, json)."""
    kid, _, secret = pick_key(fleet.keys, "", role)
    data = json.dumps(body).encode() if body is not None else b""
    headers = signed_headers(kid, secret, method, path, data, time.time(), secrets.token_hex(16))
    headers["Content-Type"] = "application/json"
    u = urllib.parse.urlsplit(fleet.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, path, body=data if data else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"null")
    finally:
        conn.close()


class Load:
    """Dispatchers and a worker-like claimer hammering the supervisor until it goes away."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}            # key -> task id (dispatch answered 2xx)
        self.results = {}          # task id -> state answered by /v1/results
        self.refused = []          # (kind of refusal, detail)
        self.threads = [threading.Thread(target=self.dispatcher, args=(i,), daemon=True) for i in range(LOAD_THREADS)]
        self.threads.append(threading.Thread(target=self.worker, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()

    def note_refusal(self, e) -> None:
        """Record why a call failed (the caller then stops and hangs up)."""
        with self.lock:
            if isinstance(e, ApiError):
                self.refused.append(("api", e.status, e.code, e.details.get("retry_after")))
            else:
                self.refused.append(("network", str(e)))

    def dispatcher(self, i):
        client = self.fleet.client("admin")
        n = 0
        while not self.stop.is_set():
            key = f"load-{i}-{n}"
            try:
                answer = client.call("POST", "/v1/tasks", {"kind": "echo", "payload": {"n": n}, "key": key})
                with self.lock:
                    self.acked[key] = answer["task"]["id"]
                n += 1
            except (ApiError, ClientError) as e:
                self.note_refusal(e)
                break
        client.close()

    def worker(self):
        client = self.fleet.client("worker")
        try:
            register(client, "w-load", slots=4)
            while not self.stop.is_set():
                got = client.call("POST", "/v1/claim", {"node": "w-load", "max": 4, "wait": 1})
                for t in got["tasks"]:
                    client.call("POST", f"/v1/tasks/{t['id']}/start", {"node": "w-load", "fence": t["fence"]})
                    ans = client.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": "w-load",
                                                              "outcome": "succeeded", "result": {"ok": 1}})
                    with self.lock:
                        self.results[t["id"]] = ans["state"]
        except (ApiError, ClientError) as e:
            self.note_refusal(e)
        client.close()


class GracefulShutdown(unittest.TestCase):
    def test_sigterm_under_load(self):
        fleet = Fleet(supervisor__cycle=0.2)
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        load = Load(fleet)
        self.addCleanup(load.stop.set)
        load.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(load.acked) < 40 or len(load.results) < 5):
            time.sleep(0.05)
        self.assertGreaterEqual(len(load.acked), 40, "the load did not get going")

        # A request in flight: a signed dispatch whose body is only half sent yet.
        kid, _, secret = pick_key(fleet.keys, "", "admin")
        body = json.dumps({"kind": "echo", "key": "in-flight"}).encode()
        headers = signed_headers(kid, secret, "POST", "/v1/tasks", body, time.time(), secrets.token_hex(16))
        u = urllib.parse.urlsplit(fleet.url)
        slow = socket.create_connection((u.hostname, u.port), timeout=10)
        self.addCleanup(slow.close)
        head = "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
        slow.sendall(head.encode() + body[:5])
        time.sleep(0.2)                                  # the server is now reading that body

        fleet.supervisor.send_signal(signal.SIGTERM)
        # While it drains, new work is refused with 503 and Retry-After.
        status, hdrs, answer, probes = None, {}, None, {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and status != 503:      # until the signal is handled
            key = f"probe-{len(probes)}"
            status, hdrs, answer = signed_request(fleet, "POST", "/v1/tasks", {"kind": "echo", "key": key})
            probes[key] = status
        self.assertEqual(status, 503, answer)
        self.assertEqual(answer["error"]["code"], "unavailable")
        self.assertTrue(hdrs.get("Retry-After", "").isdigit(), hdrs)
        self.assertIsNone(fleet.supervisor.poll(), "it must wait for the request in flight")

        # The request in flight is answered; then the process exits 0, promptly.
        slow.sendall(body[5:])
        slow.settimeout(10)
        reply = slow.recv(65536).decode(errors="replace")
        self.assertTrue(reply.startswith("HTTP/1.1 "), reply)
        slow.close()
        finished = time.monotonic()
        code = fleet.stop(timeout=15)
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - finished, 10, "exit took too long after the last request")
        load.stop.set()
        for t in load.threads:
            t.join(10)

        # Every refusal was a 503 (with retry_after) or a network error after close.
        for r in load.refused:
            if r[0] == "api":
                self.assertEqual(r[1:3], (503, "unavailable"), r)
                self.assertTrue(r[3], r)
        wal = os.path.join(fleet.dir, "data", "meshkit.db-wal")
        self.assertTrue(not os.path.exists(wal) or os.path.getsize(wal) == 0, "WAL not checkpointed")
        with open(os.path.join(fleet.dir, "supervisor-0.log")) as f:
            self.assertIn('"event":"supervisor_stopped"', f.read())

        # A restart has every acknowledged dispatch and result; the refused ones are not there.
        fleet.start_supervisor()
        viewer = fleet.client("viewer")
        for key, tid in load.acked.items():
            task = viewer.call("GET", f"/v1/tasks/{tid}")["task"]
            self.assertEqual(task["key"], key)
        for tid, state in load.results.items():
            self.assertEqual(viewer.call("GET", f"/v1/tasks/{tid}")["task"]["state"], state)
        states = {}
        after = "t0"
        while True:
            page = viewer.call("GET", f"/v1/tasks?limit=1000&after={after}")["tasks"]
            if not page:
                break
            for t in page:
                states[t["key"]] = t["state"]
            after = page[-1]["id"]
        for key, status in probes.items():
            self.assertEqual(key in states, status == 201, (key, status))
        self.assertEqual(set(load.acked) - set(states), set())


if __name__ == "__main__":
    unittest.main()
