"""Integration: a real `python -m meshkit supervisor` process driven over real sockets."""

import http.client
import json
import os
import socket
import sqlite3
import stat
import tempfile
import threading
import time
import unittest

from tests.helpers import Fleet, meshkit, register

from meshkit.rules import auth


def raw_request(url, method, path, body=b"", headers=None, timeout=10):
    host, port = url[7:].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data and resp.getheader("Content-Type", "").startswith("application/json") else data)


class SupervisorApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__lease_ttl=2, supervisor__cycle=0.2, tasks__backoff_base=0.01,
                          tasks__backoff_cap=0.05)
        cls.fleet.make_viewer_token()
        cls.url = cls.fleet.start_supervisor()
        cls.admin = cls.fleet.client("admin")
        cls.worker = cls.fleet.client("worker")
        cls.db = os.path.join(cls.fleet.dir, "data", "meshkit.db")

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def count(self, sql="SELECT COUNT(*) FROM tasks"):
        with sqlite3.connect(self.db) as db:
            return db.execute(sql).fetchone()[0]

    def signed(self, method, path, body=b"", kid="admin-1", ts=None, nonce=None):
        secret = self.fleet.keys[kid][1]
        return auth.signed_headers(kid, secret, method, path, body, ts or time.time(), nonce or os.urandom(12).hex())

    # -- startup ---------------------------------------------------------------

    def test_url_file_and_first_line(self):
        with open(os.path.join(self.fleet.dir, "data", "supervisor.url")) as f:
            self.assertEqual(f.read().strip(), self.url)
        self.assertEqual(raw_request(self.url, "GET", "/health")[1]["ok"], True)

    # -- protocol ----------------------------------------------------------------

    def test_claim_long_poll_returns_when_work_arrives(self):
        register(self.worker, "lp", kinds=["lp-kind"])
        timer = threading.Timer(0.4, lambda: self.admin.call("POST", "/v1/tasks", {"kind": "lp-kind"}))
        timer.start()
        t0 = time.monotonic()
        got = self.worker.call("POST", "/v1/claim", {"node": "lp", "wait": 10}, timeout=20)["tasks"]
        elapsed = time.monotonic() - t0
        self.assertEqual(len(got), 1)
        self.assertTrue(0.3 < elapsed < 3, elapsed)
        t0 = time.monotonic()
        empty = self.worker.call("POST", "/v1/claim", {"node": "lp", "wait": 0.5})["tasks"]
        self.assertEqual(empty, [])  # slot taken: answers at once
        self.assertLess(time.monotonic() - t0, 0.4)

    def test_claim_waits_until_deadline_then_returns_nothing(self):
        register(self.worker, "idle", kinds=["never-dispatched"])
        t0 = time.monotonic()
        got = self.worker.call("POST", "/v1/claim", {"node": "idle", "wait": 0.6})
        self.assertEqual(got["tasks"], [])
        self.assertGreaterEqual(time.monotonic() - t0, 0.55)

    def test_claim_before_heartbeat_is_refused(self):
        with self.assertRaises(Exception) as cm:
            self.worker.call("POST", "/v1/claim", {"node": "nobody"})
        self.assertEqual(cm.exception.code, "unknown_node")

    def test_full_cycle_idempotent_result_and_history(self):
        register(self.worker, "cyc", kinds=["cyc"], slots=2)
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "cyc", "payload": {"x": 1}})["task"]["id"]
        t = self.worker.call("POST", "/v1/claim", {"node": "cyc", "max": 2})["tasks"][0]
        self.assertEqual((t["id"], t["payload"], t["attempt"]), (tid, {"x": 1}, 1))
        self.worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "cyc", "fence": t["fence"]})
        res = {"task": tid, "fence": t["fence"], "node": "cyc", "outcome": "succeeded", "result": {"ok": 1}}
        a1 = self.worker.call("POST", "/v1/results", res)
        a2 = self.worker.call("POST", "/v1/results", res)
        self.assertEqual((a1["state"], a1["duplicate"], a2["state"], a2["duplicate"]), ("succeeded", False, "succeeded", True))
        task = self.admin.call("GET", f"/v1/tasks/{tid}")["task"]
        self.assertEqual([h["to"] for h in task["history"]], ["queued", "leased", "running", "succeeded"])
        self.assertEqual(task["result"]["result"], {"ok": 1})
        self.assertEqual(self.count(f"SELECT COUNT(*) FROM history WHERE task={tid[1:]} AND to_state='succeeded'"), 1)

    def test_stale_fence_refused_and_nothing_changes(self):
        register(self.worker, "fen", kinds=["fen"])
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "fen"})["task"]["id"]
        t = self.worker.call("POST", "/v1/claim", {"node": "fen"})["tasks"][0]
        before = self.count("SELECT COUNT(*) FROM history")
        for body in ({"task": tid, "fence": t["fence"] - 1, "node": "fen", "outcome": "succeeded"},
                     {"task": tid, "fence": t["fence"], "node": "other", "outcome": "succeeded"}):
            status, answer = raw_request(self.url, "POST", "/v1/results", json.dumps(body).encode(),
                                         self.signed("POST", "/v1/results", json.dumps(body).encode(), "worker-1"))
            self.assertEqual((status, answer["error"]["code"]), (409, "stale_fence"))
        self.assertEqual(self.count("SELECT COUNT(*) FROM history"), before)

    def test_expired_lease_is_requeued_and_late_result_fenced(self):
        register(self.worker, "exp", kinds=["exp"])
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "exp"})["task"]["id"]
        t = self.worker.call("POST", "/v1/claim", {"node": "exp"})["tasks"][0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # lease_ttl 2 s, cycle 0.2 s; no heartbeat renews it
            state = self.admin.call("GET", f"/v1/tasks/{tid}")["task"]
            if state["state"] == "queued":
                break
            time.sleep(0.2)
        self.assertEqual(state["state"], "queued")
        self.assertIn("lease on exp expired", state["history"][-1]["reason"])
        register(self.worker, "exp", kinds=["exp"])
        t2 = self.worker.call("POST", "/v1/claim", {"node": "exp"})["tasks"][0]
        self.assertEqual((t2["attempt"], t2["fence"] > t["fence"]), (2, True))
        with self.assertRaises(Exception) as cm:
            self.worker.call("POST", "/v1/results", {"task": tid, "fence": t["fence"], "node": "exp", "outcome": "succeeded"})
        self.assertEqual(cm.exception.code, "stale_fence")

    def test_dispatch_idempotency_key(self):
        a = self.admin.call("POST", "/v1/tasks", {"kind": "idem", "key": "job-42"})
        b = self.admin.call("POST", "/v1/tasks", {"kind": "idem", "key": "job-42"})
        self.assertEqual((a["created"], b["created"], a["task"]["id"]), (True, False, b["task"]["id"]))

    def test_cancel_queued_and_running(self):
        register(self.worker, "can", kinds=["can"])
        q = self.admin.call("POST", "/v1/tasks", {"kind": "can-not-claimed"})["task"]["id"]
        self.assertEqual(self.admin.call("POST", f"/v1/tasks/{q}/cancel", {})["task"]["state"], "cancelled")
        r = self.admin.call("POST", "/v1/tasks", {"kind": "can"})["task"]["id"]
        t = self.worker.call("POST", "/v1/claim", {"node": "can"})["tasks"][0]
        self.admin.call("POST", f"/v1/tasks/{r}/cancel", {})
        hb = self.worker.call("POST", "/v1/heartbeat", {"node": "can", "kinds": ["can"],
                                                         "running": [{"task": r, "fence": t["fence"]}]})
        self.assertEqual(hb["cancel"], [r])
        ans = self.worker.call("POST", "/v1/results", {"task": r, "fence": t["fence"], "node": "can",
                                                       "outcome": "failed", "ended_by": "cancel"})
        self.assertEqual(ans["state"], "cancelled")
        status, body = raw_request(self.url, "POST", f"/v1/tasks/{r}/cancel", b"{}",
                                   self.signed("POST", f"/v1/tasks/{r}/cancel", b"{}"))
        self.assertEqual((status, body["error"]["code"]), (409, "invalid_transition"))

    def test_list_status_metrics(self):
        self.admin.call("POST", "/v1/tasks", {"kind": "listed"})
        tasks = self.admin.call("GET", "/v1/tasks?state=queued&limit=1000")["tasks"]
        self.assertTrue(all(t["state"] == "queued" for t in tasks) and tasks)
        st = self.worker.call("GET", "/v1/status")
        for key in ("role", "epoch", "nodes", "tasks"):
            self.assertIn(key, st)
        status, text = raw_request(self.url, "GET", "/metrics",
                                   headers={"Authorization": f"Bearer {self.fleet.viewer_token}"})
        self.assertEqual(status, 200)
        self.assertIn(b'meshkit_tasks{state="queued"}', text)
        self.assertIn(b"meshkit_http_requests_total", text)
        self.assertEqual(raw_request(self.url, "GET", "/metrics", headers={"Authorization": "Bearer nope"})[0], 401)

    # -- auth ----------------------------------------------------------------------

    def test_auth_refusals_store_nothing(self):
        body = json.dumps({"kind": "evil"}).encode()
        before = self.count()
        forged = dict(self.signed("POST", "/v1/tasks", body), **{auth.H_SIG: "0" * 64})
        old = self.signed("POST", "/v1/tasks", body, ts=time.time() - 600)
        as_worker = self.signed("POST", "/v1/tasks", body, kid="worker-1")
        for name, headers, status in [("forged", forged, 401), ("10 min old", old, 401), ("worker", as_worker, 403),
                                      ("unsigned", {}, 401)]:
            with self.subTest(name):
                got, answer = raw_request(self.url, "POST", "/v1/tasks", body, headers)
                self.assertEqual(got, status)
                self.assertIn("message", answer["error"])
        good = self.signed("POST", "/v1/tasks", body)
        self.assertEqual(raw_request(self.url, "POST", "/v1/tasks", body, good)[0], 201)
        got, answer = raw_request(self.url, "POST", "/v1/tasks", body, good)    # replay
        self.assertEqual((got, "replay" in answer["error"]["message"]), (401, True))
        self.assertEqual(self.count(), before + 1)

    def test_rows_by_key_for_a_rejoin(self):
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "fetched"})["task"]["id"]
        n = int(tid[1:])
        got = self.admin.call("POST", "/v1/replicate/rows", {"rows": [{"table": "tasks", "key": {"n": n}},
                                                                      {"table": "tasks", "key": {"n": n + 10**6}}]})
        self.assertEqual([(r["table"], r["row"]["n"], r["row"]["kind"]) for r in got["rows"]], [("tasks", n, "fetched")])
        cases = [  # body, key id -> status (and the field named)
            ({"rows": [{"table": "tasks", "key": {"n": n}}]}, "worker-1", 403),
            ({"rows": [{"table": "changelog", "key": {"seq": 1}}]}, "admin-1", 400),
            ({"rows": [{"table": "tasks", "key": {"kind": "x"}}]}, "admin-1", 400),
            ({"rows": [{"table": "tasks"}]}, "admin-1", 400),
            ({"rows": [{"table": "tasks", "key": {"n": 1.5}}]}, "admin-1", 400),
            ({}, "admin-1", 400),
        ]
        for body, kid, status in cases:
            with self.subTest(body=body, kid=kid):
                raw = json.dumps(body).encode()
                got, answer = raw_request(self.url, "POST", "/v1/replicate/rows", raw,
                                          self.signed("POST", "/v1/replicate/rows", raw, kid=kid))
                self.assertEqual(got, status, answer)
                if status == 400:
                    self.assertEqual(answer["error"].get("field"), "rows", answer)

    # -- bad input -------------------------------------------------------------------

    def test_bad_input_gets_json_4xx_and_stores_nothing(self):
        before = self.count()
        cases = [
            ("POST", "/v1/tasks", b"{not json", 400),
            ("POST", "/v1/tasks", b"[1,2]", 400),
            ("POST", "/v1/tasks", b'{"kind": "x", "surprise": 1}', 400),
            ("POST", "/v1/tasks", b'{"payload": 1}', 400),
            ("POST", "/v1/tasks", b'{"kind": 5}', 400),
            ("POST", "/v1/tasks", b'{"kind": "x", "timeout": NaN}', 400),
            ("POST", "/v1/tasks", b"[" * 100000 + b"]" * 100000, 400),
            ("POST", "/v1/tasks", b'{"kind": "x", "payload": "' + b"a" * (1 << 20) + b'"}', 413),
            ("GET", "/v1/nowhere", b"", 404),
            ("DELETE", "/v1/tasks", b"", 405),
            ("GET", "/v1/tasks/..%2F..%2Fetc", b"", 404),
            ("GET", "/v1/tasks?state=bogus", b"", 400),
        ]
        for method, path, body, status in cases:
            with self.subTest(path=path, body=body[:30]):
                got, answer = raw_request(self.url, method, path, body, self.signed(method, path, body))
                self.assertEqual(got, status)
                self.assertIsInstance(answer["error"]["code"], str)
        self.assertEqual(self.count(), before)

    def test_garbage_on_raw_socket_then_good_request(self):
        host, port = self.url[7:].split(":")
        for junk in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/tasks HTTP/1.1\r\n"
                     b"Content-Length: 999999999999\r\n\r\n", b"X" * 70000 + b"\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                self.assertTrue(reply.startswith(b"HTTP/1.") and b" 4" in reply[:13], reply[:80])
        self.assertEqual(raw_request(self.url, "GET", "/health")[0], 200)
        self.admin.call("GET", "/v1/status")

    def test_kill_9_loses_no_acknowledged_dispatch(self):
        fleet = Fleet()
        try:
            fleet.start_supervisor()
            client = fleet.client()
            ids = [client.call("POST", "/v1/tasks", {"kind": "durable", "payload": i})["task"]["id"] for i in range(30)]
            fleet.stop(sig=9)
            fleet.start_supervisor()
            client = fleet.client()
            for tid in ids:
                self.assertEqual(client.call("GET", f"/v1/tasks/{tid}")["task"]["state"], "queued")
            self.assertEqual(fleet.stop(), 0)   # SIGTERM: clean exit 0
        finally:
            fleet.close()


class InitAndEmbeddedDefault(unittest.TestCase):
    def test_init_writes_config_and_0600_keys_and_refuses_overwrite(self):
        with tempfile.TemporaryDirectory() as d:
            r = meshkit("init", "--dir", d)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(d, "keys")).st_mode), 0o600)
            with open(os.path.join(d, "meshkit.toml")) as f:
                self.assertIn('keys_file = "keys"', f.read())
            keys_before = open(os.path.join(d, "keys")).read()
            r = meshkit("init", "--dir", d)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--force", r.stderr)
            self.assertEqual(open(os.path.join(d, "keys")).read(), keys_before)
            self.assertEqual(meshkit("init", "--dir", d, "--force").returncode, 0)
            self.assertNotEqual(open(os.path.join(d, "keys")).read(), keys_before)

    def test_no_config_at_all(self):
        with tempfile.TemporaryDirectory() as home:
            fleet_home = os.path.join(home, "mh")
            import subprocess, sys
            from tests.helpers import ROOT, env, read_line
            proc = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--listen", "127.0.0.1:0"],
                                    cwd=ROOT, env=env(MESHKIT_HOME=fleet_home), stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            try:
                url = read_line(proc, 15)
                self.assertTrue(url.startswith("http://127.0.0.1:"))
                instructions = "".join(read_line(proc, 5) + "\n" for _ in range(4))
                self.assertIn("python3 -m meshkit worker", instructions)
                self.assertIn("python3 -m meshkit dispatch", instructions)
                self.assertEqual(stat.S_IMODE(os.stat(os.path.join(fleet_home, "keys")).st_mode), 0o600)
                self.assertTrue(os.path.exists(os.path.join(fleet_home, "data", "meshkit.db")))
                # made now, so private: the database holds every payload and result
                self.assertEqual(stat.S_IMODE(os.stat(os.path.join(fleet_home, "data")).st_mode), 0o700)
                self.assertEqual(stat.S_IMODE(os.stat(fleet_home).st_mode), 0o700)
                r = meshkit("dispatch", "echo", home=fleet_home)   # finds it from data/supervisor.url
                self.assertEqual((r.returncode, r.stdout.strip()), (0, "t1"), r.stderr)
            finally:
                proc.terminate()
                self.assertEqual(proc.wait(15), 0)
                proc.stdout.close()


if __name__ == "__main__":
    unittest.main()
