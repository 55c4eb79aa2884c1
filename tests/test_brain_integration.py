"""Integration: the scheduling brain in a real supervisor process, one test per family."""

import json
import multiprocessing as mp
import os
import sqlite3
import time
import unittest

from meshkit.rules.auth import pick_key
from tests.helpers import Fleet, register


def wait_for(fn, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    return fn()


def post_result(client, node, t, outcome="succeeded", **kw):
    body = {"task": t["id"], "fence": t["fence"], "node": node, "outcome": outcome}
    body.update(kw)
    return client.call("POST", "/v1/results", body)


class Brain(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__cycle=0.2, supervisor__stale_after=2, supervisor__lease_ttl=60,
                          supervisor__priorities_file="prio.toml", tasks__backoff_base=0.01, tasks__backoff_cap=0.02)
        cls.prio = os.path.join(cls.fleet.dir, "prio.toml")
        with open(cls.prio, "w") as f:
            f.write('[kinds.capped]\nmax_running = 1\n[kinds.important]\npriority = 25\n'
                    '[kinds.flaky]\ntransient_patterns = ["429"]\n')
        cls.fleet.start_supervisor()
        cls.admin, cls.worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        cls.db = os.path.join(cls.fleet.dir, "data", "meshkit.db")

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def dispatch(self, kind, **kw):
        return self.admin.call("POST", "/v1/tasks", dict(kind=kind, **kw))["task"]["id"]

    def claim(self, node, **kw):
        return self.worker.call("POST", "/v1/claim", dict(node=node, **kw))["tasks"]

    def explain(self, tid):
        return self.admin.call("GET", f"/v1/tasks/{tid}/explain")

    def task(self, tid):
        return self.admin.call("GET", f"/v1/tasks/{tid}")["task"]

    def test_routing_by_capability_and_kind(self):
        register(self.worker, "cpu-box", kinds=["route"], slots=4)
        register(self.worker, "gpu-box", kinds=["route"], caps=["gpu"], slots=4)
        gpu = self.dispatch("route", requires=["gpu"])
        self.assertEqual([t["id"] for t in self.claim("cpu-box", max=4)], [])
        self.assertIn("no worker has capability `tpu`", self.explain(self.dispatch("route", requires=["tpu"]))["reason"])
        self.assertEqual([t["id"] for t in self.claim("gpu-box", max=4)], [gpu])

    def test_priorities_file_defaults_and_reload_error_keeps_last_good(self):
        self.assertEqual(self.task(self.dispatch("important"))["priority"], 25)
        with open(self.prio, "w") as f:
            f.write("[kinds.important\npriority = 1\n")
        err = wait_for(lambda: self.admin.call("GET", "/v1/status")["priorities_error"], 5)
        self.assertIn("prio.toml", err)
        self.assertIn(f"priorities file: {err}", self.fleet.cli("status").stdout)     # not only in --json
        self.assertEqual(self.task(self.dispatch("important"))["priority"], 25)
        with open(self.prio, "w") as f:
            f.write('[kinds.capped]\nmax_running = 1\n[kinds.important]\npriority = 26\n[kinds.flaky]\n'
                    'transient_patterns = ["429"]\n')
        os.utime(self.prio, (time.time() + 5, time.time() + 5))
        self.assertTrue(wait_for(lambda: self.admin.call("GET", "/v1/status")["priorities_error"] is None, 5))
        self.assertEqual(self.task(self.dispatch("important"))["priority"], 26)

    def test_priority_order(self):
        register(self.worker, "prio-node", kinds=["ordered"])
        low, high = self.dispatch("ordered", priority=1), self.dispatch("ordered", priority=9)
        self.assertEqual(self.claim("prio-node")[0]["id"], high)
        self.assertTrue(low)

    def test_dag_graph_cycle_and_upstream_failure(self):
        status, body = self.admin.request("POST", "/v1/graph", {"tasks": [
            {"name": "a", "kind": "dag", "after": ["b"]}, {"name": "b", "kind": "dag", "after": ["a"]}]})
        self.assertEqual(status, 400)
        self.assertIn("cycle a -> b -> a", body["error"]["message"])
        self.assertEqual(self.admin.request("POST", "/v1/tasks", {"kind": "dag", "after": ["t999999"]})[0], 400)
        g = self.admin.call("POST", "/v1/graph", {"tasks": [
            {"name": "fetch", "kind": "dag", "max_attempts": 1}, {"name": "sum", "kind": "dag", "after": ["fetch"]},
            {"name": "mail", "kind": "dag", "after": ["sum"]}]})["tasks"]
        self.assertEqual([g[n]["state"] for n in ("fetch", "sum", "mail")], ["queued", "waiting", "waiting"])
        self.assertIn(f"waiting for `{g['fetch']['id']}` (queued)", self.explain(g["sum"]["id"])["reasons"])
        register(self.worker, "dag-node", kinds=["dag"])
        t = self.claim("dag-node")[0]
        post_result(self.worker, "dag-node", t, "failed", error="exit code 1")
        for name in ("sum", "mail"):
            self.assertEqual(self.task(g[name]["id"])["state"], "failed")
        self.assertEqual(self.task(g["sum"]["id"])["history"][-1]["reason"], f"upstream failed: {g['fetch']['id']}")
        self.assertEqual(self.task(g["mail"]["id"])["history"][-1]["reason"], f"upstream failed: {g['sum']['id']}")

    def test_retry_transient_quarantine_and_resume(self):
        register(self.worker, "q-node", kinds=["flaky", "broken"], slots=1)
        tid = self.dispatch("flaky", max_attempts=5)
        for attempt in range(1, 5):           # transient (429): retried, never quarantined
            t = wait_for(lambda: self.claim("q-node", wait=1), 5)[0]
            self.assertEqual(t["attempt"], attempt)
            post_result(self.worker, "q-node", t, "failed", stderr_tail="HTTP 429 too many requests", exit_code=1)
        self.assertFalse([k for k in self.admin.call("GET", "/v1/kinds")["kinds"] if k["kind"] == "flaky" and k["quarantined"]])
        self.assertEqual(self.task(tid)["state"], "queued")
        post_result(self.worker, "q-node", wait_for(lambda: self.claim("q-node", wait=1), 5)[0])
        for _ in range(3):                    # non-transient, 3 in a row: quarantined
            self.dispatch("broken", max_attempts=1)
            t = wait_for(lambda: self.claim("q-node", wait=1), 5)[0]
            post_result(self.worker, "q-node", t, "failed", error="exit code 2", exit_code=2)
        held = self.dispatch("broken")
        self.assertEqual(self.claim("q-node", wait=0.3), [])
        self.assertIn("kind `broken` quarantined since", self.explain(held)["reason"])
        self.assertTrue(any(k["kind"] == "broken" for k in self.admin.call("GET", "/v1/status")["quarantined"]))
        r = self.fleet.cli("status")
        self.assertIn("quarantined kind broken: 3 failures in a row", r.stdout)
        self.assertIn("meshkit kinds resume broken", r.stdout)
        r = self.fleet.cli("kinds", "resume", "broken")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.claim("q-node", wait=2)[0]["id"], held)
        # Resuming a kind that is not quarantined (any more, or never was) conflicts with the state: 409.
        for kind in ("broken", "never-seen"):
            status, answer = self.admin.request("POST", f"/v1/kinds/{kind}/resume")
            self.assertEqual(status, 409, answer)
            self.assertEqual(answer["error"]["code"], "conflict")
            self.assertIn(f"kind '{kind}' is not quarantined", answer["error"]["message"])
        status, answer = self.admin.request("POST", "/v1/kinds/bad%20kind/resume")     # not a kind name: 400
        self.assertEqual((status, answer["error"]["field"]), (400, "kind"), answer)
        r = self.fleet.cli("kinds", "resume", "broken")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("not quarantined", r.stderr)

    def test_stale_node_requeued_elsewhere_and_fenced(self):
        register(self.worker, "lost", kinds=["stale-kind"])
        tid = self.dispatch("stale-kind")
        t = self.claim("lost")[0]
        self.worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "lost", "fence": t["fence"]})
        st = wait_for(lambda: self.task(tid)["state"] == "queued" and self.task(tid), 8)
        self.assertIn("node lost stale", st["history"][-1]["reason"])
        self.assertIn("worker `lost` stale", self.explain(tid)["reasons"][0] + " ".join(self.explain(tid)["reasons"]))
        register(self.worker, "found", kinds=["stale-kind"])
        t2 = self.claim("found")[0]
        self.assertEqual((t2["id"], t2["attempt"]), (tid, 2))
        register(self.worker, "lost", kinds=["stale-kind"])     # comes back: selectable again
        nodes = {n["name"]: n["state"] for n in self.admin.call("GET", "/v1/status")["nodes"]}
        self.assertEqual(nodes["lost"], "alive")
        status, body = self.worker.request("POST", "/v1/results", {"task": tid, "fence": t["fence"], "node": "lost",
                                                                   "outcome": "succeeded"})
        self.assertEqual((status, body["error"]["code"]), (409, "stale_fence"))

    def test_heal_missing_from_heartbeats(self):
        register(self.worker, "forgetful", kinds=["heal-kind"])
        tid = self.dispatch("heal-kind")
        t = self.claim("forgetful")[0]
        self.worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "forgetful", "fence": t["fence"]})
        for _ in range(2):          # two heartbeats that don't list the running task (an explicit []: a
            self.worker.call("POST", "/v1/heartbeat",      # "running" left out reports nothing)
                             {"node": "forgetful", "kinds": ["heal-kind"], "running": []})
        st = wait_for(lambda: self.task(tid)["state"] == "queued" and self.task(tid), 5)
        self.assertIn("heal rule missing_from_heartbeats", st["history"][-1]["reason"])

    def test_corrupted_database_violation_recorded_and_repaired(self):
        tid = self.dispatch("corrupt-kind")
        with sqlite3.connect(self.db, timeout=10) as db:   # a task "running" with no node and no lease
            db.execute("UPDATE tasks SET state='running', node=NULL, lease_deadline=NULL WHERE n=?", (int(tid[1:]),))
        path = os.path.join(self.fleet.dir, "data", "invariant_violations.jsonl")
        found = wait_for(lambda: os.path.exists(path) and [json.loads(l) for l in open(path) if tid in l], 5)
        self.assertTrue(any(v["invariant"] == "no running task without a live lease" and v["repaired"] for v in found), found)
        self.assertEqual(self.task(tid)["state"], "queued")

    def test_maintenance_mode_holds_new_work(self):
        register(self.worker, "maint-node", kinds=["maint-kind"])
        r = self.fleet.cli("mode", "maintenance", "--reason", "test")
        self.assertEqual(r.returncode, 0, r.stderr)
        try:
            tid = self.dispatch("maint-kind")
            self.assertEqual(self.claim("maint-node", wait=0.3), [])
            self.assertIn("mode `maintenance` dispatches nothing new", self.explain(tid)["reasons"])
            self.assertEqual(self.admin.call("GET", "/v1/status")["mode"], "maintenance")
            self.assertEqual(self.admin.call("GET", "/v1/status")["mode_reason"], "operator: maintenance: test")
        finally:
            self.assertEqual(self.fleet.cli("mode", "normal").returncode, 0)
        self.assertEqual(wait_for(lambda: self.claim("maint-node", wait=1), 5)[0]["id"], tid)

    def test_fleet_cap(self):
        register(self.worker, "cap-a", kinds=["capped"])
        register(self.worker, "cap-b", kinds=["capped"])
        first, second = self.dispatch("capped"), self.dispatch("capped")
        self.assertEqual(len(self.claim("cap-a")), 1)
        self.assertEqual(self.claim("cap-b", wait=0.3), [])
        self.assertIn("fleet cap for kind `capped` reached (1/1)", self.explain(second)["reasons"])
        explained = self.fleet.cli("explain", second)
        self.assertIn("fleet cap", explained.stdout)
        self.assertTrue(first)


def racer(url, kid, secret, name, out):
    from meshkit.adapters.client import SignedClient
    c = SignedClient(url, kid, secret, timeout=30)
    c.call("POST", "/v1/heartbeat", {"node": name, "kinds": ["race"], "slots": 2})
    done, idle_since = [], time.monotonic()
    while time.monotonic() - idle_since < 1.5:
        tasks = c.call("POST", "/v1/claim", {"node": name, "max": 2, "wait": 0.5})["tasks"]
        if tasks:
            idle_since = time.monotonic()
        for t in tasks:
            c.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": name, "outcome": "succeeded"})
            done.append(t["id"])
    out.put(done)


class AtomicClaims(unittest.TestCase):
    def test_8_workers_race_for_500_tasks(self):
        fleet = Fleet()
        try:
            url = fleet.start_supervisor()
            admin = fleet.client("admin")
            ids = [admin.call("POST", "/v1/tasks", {"kind": "race", "payload": i})["task"]["id"] for i in range(500)]
            kid, _, secret = pick_key(fleet.keys, "worker-1")
            out = mp.Queue()
            procs = [mp.Process(target=racer, args=(url, kid, secret, f"r{i}", out)) for i in range(8)]
            for p in procs:
                p.start()
            done = [x for _ in procs for x in out.get(timeout=120)]
            for p in procs:
                p.join(10)
            self.assertEqual(sorted(done), sorted(ids))   # every task done once, by exactly one worker
            with sqlite3.connect(os.path.join(fleet.dir, "data", "meshkit.db")) as db:
                rows = db.execute("SELECT t.n, t.attempts, SUM(h.to_state='leased'), SUM(h.to_state='succeeded')"
                                  " FROM tasks t JOIN history h ON h.task=t.n GROUP BY t.n").fetchall()
            self.assertEqual(len(rows), 500)
            for n, attempts, leased, succeeded in rows:
                self.assertEqual((attempts, leased, succeeded), (1, 1, 1), f"t{n}")
        finally:
            fleet.close()


if __name__ == "__main__":
    unittest.main()
