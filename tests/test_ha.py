"""High availability with real processes on loopback: a primary, a standby, a watchdog
and a worker. The primary is killed with kill -9, the standby takes over, the old
primary returns as a standby, and the watchdog hands back (failback)."""

import os
import socket
import sqlite3
import subprocess
import sys
import unittest

from tests.helpers import ROOT, env, meshkit
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, wait_for, wait_state, worker_fleet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Failover(unittest.TestCase):
    def setUp(self):
        pp, ps = free_port(), free_port()
        self.p_url, self.s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
        self.fleet = worker_fleet(supervisor__peer=self.s_url)
        self.s_config = self.fleet.other_config("standby", supervisor__role="standby", supervisor__peer=self.p_url)
        self.wd_config = self.fleet.other_config("watchdog", watchdog__primary=self.p_url, watchdog__standby=self.s_url,
                                                 watchdog__interval=0.3, watchdog__failures=2, watchdog__recoveries=2,
                                                 watchdog__state_file="watchdog.json")
        self.primary = self.start_primary()
        self.standby = self.fleet.start_supervisor(config=self.s_config, listen=f"127.0.0.1:{ps}")
        self.wd = subprocess.Popen([sys.executable, "-m", "meshkit", "watchdog", "--config", self.wd_config],
                                   cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(self.fleet.dir, "watchdog.log"), "wb"))
        wait_for(lambda: self.fleet.client(url=self.p_url).call("GET", "/v1/status")["replication"]["fenced"] is None,
                 10, "the primary to see its standby and serve")       # started before it: fenced until then
        self.worker = WorkerProc(self.fleet, "w1", "--supervisor", self.s_url, url=self.p_url, slots=2).start()

    def tearDown(self):
        if self.wd.poll() is None:
            self.wd.kill()
            self.wd.wait(5)
        close_fleet(self.fleet)

    def start_primary(self):
        url = self.fleet.start_supervisor(listen=self.p_url[7:])
        self.p_proc = self.fleet.supervisor
        return url

    def health(self, url):
        status, body = self.fleet.client(url=url).request("GET", "/health", timeout=3)
        return body

    def run_ok(self, url, n):
        client = self.fleet.client(url=url)
        ids = [dispatch(client, "ok", {"i": i}) for i in range(n)]
        for tid in ids:
            self.assertEqual(wait_state(client, tid, ("succeeded", "failed"), 30)["state"], "succeeded")
        return ids

    def test_kill_primary_failover_return_as_standby_and_failback(self):
        before = self.run_ok(self.p_url, 4)
        self.p_proc.kill()                                           # kill -9
        self.p_proc.wait(5)
        wait_for(lambda: self.health(self.s_url)["role"] == "primary", 15, "the standby to be promoted")
        self.assertEqual(self.health(self.s_url)["epoch"], 2)
        admin_s = self.fleet.client(url=self.s_url)
        for tid in before:                                           # replicated before the crash
            self.assertEqual(admin_s.call("GET", f"/v1/tasks/{tid}")["task"]["state"], "succeeded")
        during = self.run_ok(self.s_url, 4)                         # the worker followed

        self.start_primary()                                         # the old primary comes back...
        self.assertEqual(self.health(self.p_url)["role"], "standby")  # ...and follows the newer epoch
        status, body = self.fleet.client(url=self.p_url).request("POST", "/v1/tasks", {"kind": "ok"})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
        self.assertIn(self.s_url, body["error"]["message"])
        wait_for(lambda: self.fleet.client(url=self.p_url).call("GET", "/v1/status")["replication"]["lag_changes"] == 0,
                 15, "the old primary to catch up")

        r = meshkit("watchdog", "failback", "--config", self.wd_config, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual((self.health(self.p_url)["role"], self.health(self.p_url)["epoch"]), ("primary", 3),
                         r.stdout + r.stderr + open(os.path.join(self.fleet.dir, "watchdog.log")).read()[-3000:])
        self.assertEqual(self.health(self.s_url)["role"], "standby")
        after = self.run_ok(self.p_url, 3)

        # Nothing lost, nothing run twice: every task once in the primary's database.
        db = os.path.join(self.fleet.dir, "data", "meshkit.db")
        with sqlite3.connect(db) as c:
            rows = dict(c.execute("SELECT task, SUM(to_state='succeeded') FROM history GROUP BY task").fetchall())
            fences = dict(c.execute("SELECT n, fence FROM tasks").fetchall())
        for tid in before + during + after:
            self.assertEqual(rows.get(int(tid[1:])), 1, tid)
        # Each promotion's fencing numbers start above every earlier epoch's (epoch << 32).
        for epoch, tids in ((1, before), (2, during), (3, after)):
            low = 0 if epoch == 1 else epoch << 32
            for tid in tids:
                self.assertTrue(low < fences[int(tid[1:])] < (epoch + 1) << 32, (epoch, tid, fences[int(tid[1:])]))
        st = meshkit("watchdog", "status", "--config", self.wd_config, "--json")
        self.assertIn('"active": "primary"', st.stdout)
        self.assertEqual(st.returncode, 0, st.stderr)


if __name__ == "__main__":
    unittest.main()
