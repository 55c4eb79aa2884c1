"""A worker key may name the nodes it speaks for (`ID worker SECRET NODE[,NODE...]`): the
supervisor refuses (403 node_not_bound) its heartbeats, claims, starts, results and fleet lease
calls for any other node, and stores nothing; for its own node it works as any key. A worker key
without nodes (init's worker-1) and admin keys speak for every node, as before. Real processes:
`meshkit keys add-worker`, `meshkit supervisor`, `meshkit worker`; the state is read from the
SQLite file."""

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import unittest

from meshkit.adapters import keyfile
from meshkit.adapters.client import SignedClient
from meshkit.core.errors import ApiError, ConfigError
from meshkit.roles.worker import refusals
from meshkit.rules import auth
from tests.helpers import ROOT, Fleet, meshkit, register
from tests.test_worker_harness import MODES, WorkerProc, close_fleet, dispatch, wait_state, worker_fleet

S = "s" * 20


def add_worker(fleet, *args) -> str:
    """`meshkit keys add-worker ARGS` on the fleet's config: the one line it prints."""
    r = meshkit("keys", "add-worker", *args, "--config", fleet.config)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    fleet.keys = keyfile.load(os.path.join(fleet.dir, "keys"))
    return r.stdout.strip()


class BoundKeys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = fleet = Fleet(supervisor__lease_ttl=600, supervisor__cycle=0.2)
        add_worker(fleet, "gpu-1")
        add_worker(fleet, "cpu-1")
        fleet.start_supervisor()
        cls.db = os.path.join(fleet.dir, "data", "meshkit.db")
        cls.admin = fleet.client("admin")
        cls.shared = fleet.client("worker")             # worker-1: bound to no node
        cls.gpu, cls.cpu = cls.key("worker-gpu-1"), cls.key("worker-cpu-1")
        register(cls.gpu, "gpu-1", kinds=("echo",))
        register(cls.cpu, "cpu-1", kinds=("echo",))

    @classmethod
    def key(cls, kid) -> SignedClient:
        return SignedClient(cls.fleet.url, kid, cls.fleet.keys[kid][1], timeout=30)

    @classmethod
    def tearDownClass(cls):
        for c in (cls.admin, cls.shared, cls.gpu, cls.cpu):
            c.close()
        cls.fleet.close()

    def rows(self, sql, *args) -> list:
        with sqlite3.connect(self.db) as db:
            return db.execute(sql, args).fetchall()

    def state(self) -> dict:
        """Everything a forged call could change: tasks, nodes, leases, history."""
        return {"tasks": self.rows("SELECT n, state, node, fence, result FROM tasks ORDER BY n"),
                "nodes": self.rows("SELECT name, info, last_seen, state FROM nodes ORDER BY name"),
                "leases": self.rows("SELECT name, holder, token, expires FROM leases ORDER BY name"),
                "history": self.rows("SELECT COUNT(*) FROM history")}

    def refused(self, client, path, body, node):
        """`client` posts `body` speaking for `node`: 403 node_not_bound, nothing stored."""
        before = self.state()
        status, answer = client.request("POST", path, body)
        err = answer["error"]
        self.assertEqual((status, err["code"], err["reason"], err["key"], err["node"]),
                         (403, "forbidden", "node_not_bound", client.key_id, node), answer)
        self.assertIn(client.key_id, err["message"])
        self.assertIn(repr(node), err["message"])
        self.assertEqual(self.state(), before)

    def leased_to_cpu(self) -> dict:
        tid = dispatch(self.admin, "echo")
        [task] = [t for t in self.cpu.call("POST", "/v1/claim", {"node": "cpu-1", "wait": 0})["tasks"]
                  if t["id"] == tid]
        return task

    def test_results_and_start_for_another_nodes_task_are_refused(self):
        t = self.leased_to_cpu()
        forged = {"task": t["id"], "fence": t["fence"], "node": "cpu-1", "outcome": "succeeded", "result": "forged"}
        self.refused(self.gpu, "/v1/results", forged, "cpu-1")
        self.refused(self.gpu, f"/v1/tasks/{t['id']}/start", {"node": "cpu-1", "fence": t["fence"]}, "cpu-1")
        self.assertEqual(self.rows("SELECT state, node FROM tasks WHERE n=?", int(t["id"][1:])), [("leased", "cpu-1")])
        # its own key does both
        self.cpu.call("POST", f"/v1/tasks/{t['id']}/start", {"node": "cpu-1", "fence": t["fence"]})
        self.cpu.call("POST", "/v1/results", dict(forged, result="real"))
        self.assertEqual(self.rows("SELECT state FROM tasks WHERE n=?", int(t["id"][1:])), [("succeeded",)])

    def test_heartbeats_for_another_or_a_made_up_node_are_refused(self):
        self.refused(self.gpu, "/v1/heartbeat", {"node": "cpu-1", "slots": 9, "kinds": [], "running": []}, "cpu-1")
        self.refused(self.gpu, "/v1/heartbeat", {"node": "fake-1", "slots": 1}, "fake-1")
        self.assertEqual(self.rows("SELECT name FROM nodes WHERE name='fake-1'"), [])
        self.assertEqual(json.loads(self.rows("SELECT info FROM nodes WHERE name='cpu-1'")[0][0])["slots"], 1)
        self.assertEqual(self.gpu.call("POST", "/v1/heartbeat", {"node": "gpu-1", "slots": 1, "kinds": ["echo"]})["ok"],
                         True)

    def test_claims_for_another_node_are_refused(self):
        tid = dispatch(self.admin, "echo", requires=["none-has-this"])   # stays queued: only its state matters
        self.refused(self.gpu, "/v1/claim", {"node": "cpu-1", "wait": 0}, "cpu-1")
        self.assertEqual(self.rows("SELECT state FROM tasks WHERE n=?", int(tid[1:])), [("queued",)])
        self.assertEqual(self.gpu.call("POST", "/v1/claim", {"node": "gpu-1", "wait": 0})["tasks"], [])

    def test_fleet_leases_of_another_node_are_refused(self):
        cpu_holder = "cpu-1:4242"
        got = self.cpu.call("POST", "/v1/leases/shared-disk/acquire", {"holder": cpu_holder, "ttl": 600})
        for op, body in (("acquire", {"holder": cpu_holder, "ttl": 600}),       # would extend it: a takeover
                         ("renew", {"holder": cpu_holder, "token": got["token"], "ttl": 5}),
                         ("release", {"holder": cpu_holder, "token": got["token"]}),
                         ("acquire", {"holder": "cpu-1", "ttl": 600})):
            with self.subTest(op=op, holder=body["holder"]):
                self.refused(self.gpu, f"/v1/leases/shared-disk/{op}", body, "cpu-1")
        self.assertEqual(self.rows("SELECT holder, token FROM leases WHERE name='shared-disk'"),
                         [(cpu_holder, got["token"])])
        mine = self.gpu.call("POST", "/v1/leases/gpu-slot/acquire", {"holder": "gpu-1:7", "ttl": 60})
        self.assertEqual(self.gpu.call("POST", "/v1/leases/gpu-slot/release",
                                       {"holder": "gpu-1:7", "token": mine["token"]})["released"], True)

    def test_a_key_without_nodes_and_an_admin_key_speak_for_any_node(self):
        t = self.leased_to_cpu()
        for client in (self.shared, self.admin):
            with self.subTest(key=client.key_id):
                self.assertTrue(client.call("POST", "/v1/heartbeat", {"node": "cpu-1", "running": [
                    {"task": t["id"], "fence": t["fence"]}]})["ok"])
        self.shared.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": "cpu-1",
                                                 "outcome": "succeeded"})
        self.assertEqual(self.rows("SELECT state FROM tasks WHERE n=?", int(t["id"][1:])), [("succeeded",)])

    def test_refusals_are_logged_without_secrets(self):
        self.refused(self.gpu, "/v1/heartbeat", {"node": "log-me"}, "log-me")
        path = os.path.join(self.fleet.dir, "supervisor-0.log")
        with open(path) as f:
            text = f.read()
        lines = [json.loads(line) for line in text.splitlines() if '"node_not_bound"' in line]
        self.assertTrue(lines)
        self.assertEqual((lines[0]["event"], lines[0]["status"], lines[0]["key"]),
                         ("request_refused", 403, "worker-gpu-1"))
        for _, secret, _ in self.fleet.keys.values():
            self.assertNotIn(secret, text)


class KeysFile(unittest.TestCase):
    def test_the_nodes_field_and_its_errors_name_the_line(self):
        keys = auth.parse_keys(f"# c\na admin {S}\nw worker {S}\nb worker {S} gpu-1,gpu-2\n")
        self.assertEqual({k: v[2] for k, v in keys.items()},
                         {"a": frozenset(), "w": frozenset(), "b": frozenset({"gpu-1", "gpu-2"})})
        self.assertEqual(auth.pick_key(keys, "b"), ("b", "worker", S))
        self.assertEqual(auth.pick_key(keys, "", "worker")[1:], ("worker", S))
        for bad, expected, found in [
                (f"a admin {S} n1", "`ID ROLE SECRET` for role admin (only a worker key names nodes)",
                 "a 4th field 'n1'"),
                (f"v viewer {S} n1", "`ID ROLE SECRET` for role viewer", "a 4th field 'n1'"),
                (f"w worker {S} n1,,n2", "nodes NODE[,NODE...]", "an empty node in 'n1,,n2'"),
                (f"w worker {S} n1,", "nodes NODE[,NODE...]", "an empty node"),
                (f"w worker {S} ../x", "nodes NODE[,NODE...]", "'../x'"),
                (f"w worker {S} n1 n2", "`ID ROLE SECRET` (a worker key may add NODE[,NODE...])", "5 fields")]:
            with self.subTest(bad=bad), self.assertRaises(ConfigError) as cm:
                auth.parse_keys(f"# first\n{bad}\n", "/etc/meshkit/keys")
            self.assertTrue(cm.exception.message.startswith(f"/etc/meshkit/keys: line 2: expected {expected}"),
                            cm.exception.message)
            self.assertIn(f"found {found}", cm.exception.message)

    def test_a_repeated_id_is_refused_with_or_without_nodes(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        path = os.path.join(fleet.dir, "keys")
        with open(path, "a") as f:
            f.write(f"worker-1 worker {S} n1\n")
        with self.assertRaises(ConfigError) as cm:
            keyfile.load(path)
        self.assertIn("'worker-1', already on line", cm.exception.message)

    def test_holder_node_and_the_workers_refusal_reason(self):
        self.assertEqual([auth.holder_node(h) for h in ("gpu-1:42", "gpu-1", "a:b:42")], ["gpu-1", "gpu-1", "a:b"])
        bound = ApiError(403, "forbidden", "key w speaks only for node a", reason="node_not_bound")
        self.assertEqual(refusals.reason_of(bound), "node_not_bound")
        self.assertTrue(refusals.for_good("node_not_bound"))
        self.assertIn("worker.name", refusals.hint("node_not_bound"))
        self.assertEqual(refusals.reason_of(ApiError(403, "forbidden", "needs admin")), "role")


class AddWorkerCommand(unittest.TestCase):
    def test_the_printed_line_runs_a_real_worker_for_its_node_only(self):
        fleet = worker_fleet()
        self.addCleanup(close_fleet, fleet)
        path = os.path.join(fleet.dir, "keys")
        before = open(path).read()
        line = add_worker(fleet, "w-bound")
        kid, role, secret, nodes = line.split()
        self.assertEqual((kid, role, nodes), ("worker-w-bound", "worker", "w-bound"))
        self.assertGreaterEqual(len(secret), 32)
        self.assertEqual(open(path).read(), before + line + "\n")           # appended, the rest untouched
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        r = meshkit("keys", "add-worker", "w-bound", "--config", fleet.config)
        self.assertEqual(r.returncode, 2)
        self.assertIn("'worker-w-bound', already there", r.stderr)
        self.assertEqual(open(path).read(), before + line + "\n")
        r = meshkit("keys", "add-worker", "a@b", "--config", fleet.config)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--id ID", r.stderr)

        # the worker's machine: a keys file holding that one line, a config pointing at it
        wkeys = os.path.join(fleet.dir, "worker-keys")
        with open(wkeys, "w") as f:
            f.write(line + "\n")
        os.chmod(wkeys, 0o600)
        wcfg = fleet.other_config("wb", auth__keys_file=wkeys)
        script = os.path.join(fleet.dir, "task.py")             # worker_fleet's test kinds
        with open(wcfg, "a") as f:
            for mode in MODES:
                f.write(f'\n[worker.kinds.{mode}]\nargv = {json.dumps([sys.executable, script, mode])}\n')
        fleet.start_supervisor()
        admin = fleet.client("admin")
        self.addCleanup(admin.close)

        r = meshkit("worker", "--config", wcfg, "--supervisor", fleet.url, "--name", "someone-else")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--name: expected one of the nodes key worker-w-bound speaks for (w-bound;", r.stderr)
        self.assertIn("found 'someone-else'", r.stderr)

        WorkerProc(fleet, "w-bound", "--config", wcfg).start()
        tid = dispatch(admin, "ok")
        task = wait_state(admin, tid, "succeeded")
        self.assertEqual(task["result"]["node"], "w-bound")

    def test_two_at_once_take_turns(self):
        """While one add-worker holds the keys directory's lock, another waits for it, then
        keeps both lines (it used to read, then replace the file: one line could be lost)."""
        fleet = Fleet()
        self.addCleanup(fleet.close)
        lock = os.open(fleet.dir, os.O_RDONLY)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)            # as a first add-worker in the middle of its rewrite
        second = subprocess.Popen([sys.executable, "-m", "meshkit", "keys", "add-worker", "b-1", "--config",
                                   fleet.config], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(second.kill)
        with self.assertRaises(subprocess.TimeoutExpired):
            second.wait(1.5)                        # (bounded: started in well under that when not waiting)
        with open(os.path.join(fleet.dir, "keys"), "a") as f:     # the first one's line, written under the lock
            f.write(f"worker-a-1 worker {'a' * 64} a-1\n")
        fcntl.flock(lock, fcntl.LOCK_UN)
        self.assertEqual(second.wait(30), 0, second.stderr.read())
        keys = keyfile.load(os.path.join(fleet.dir, "keys"))
        self.assertEqual((keys["worker-a-1"][2], keys["worker-b-1"][2]), ({"a-1"}, {"b-1"}))

    def test_locks_run_fleet_holds_the_lease_as_worker_name(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        line = add_worker(fleet, "lockhost")
        wkeys = os.path.join(fleet.dir, "lockhost-keys")
        with open(wkeys, "w") as f:
            f.write(line + "\n")
        os.chmod(wkeys, 0o600)
        wcfg = fleet.other_config("lh", auth__keys_file=wkeys, worker__name="lockhost")
        fleet.start_supervisor()
        r = meshkit("locks", "run", "--config", wcfg, "--supervisor", fleet.url, "--fleet", "gpu", "--", "true")
        self.assertEqual(r.returncode, 0, r.stderr)
        with sqlite3.connect(os.path.join(fleet.dir, "data", "meshkit.db")) as db:
            holders = [h for (h,) in db.execute("SELECT holder FROM lease_history WHERE name='gpu'")]
        self.assertEqual([h.rpartition(":")[0] for h in holders], ["lockhost", "lockhost"])   # granted, released


if __name__ == "__main__":
    unittest.main()
