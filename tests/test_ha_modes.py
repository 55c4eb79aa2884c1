"""HA behaviours on loopback with real supervisor processes: sync replication and its
bounded fallback, a client's higher epoch checked with the peer, the primary's self-lease, drill, auto failback."""

import json
import os
import subprocess
import sys
import time
import unittest

from tests.helpers import ROOT, Fleet, env, meshkit
from tests.test_ha import free_port
from tests.test_worker_harness import wait_for


class Pair(unittest.TestCase):
    """A primary and its standby, each with its own data dir."""

    primary_overrides = {}

    def setUp(self):
        pp, ps = free_port(), free_port()
        self.p_url, self.s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
        self.fleet = Fleet(supervisor__cycle=0.2, supervisor__peer=self.s_url, **self.primary_overrides)
        self.s_config = self.fleet.other_config("standby", supervisor__role="standby", supervisor__peer=self.p_url)
        self.p = self.start("primary")       # its standby is not up yet: it starts fenced...
        self.s = self.start("standby")
        self.admin = self.fleet.client(url=self.p_url)
        wait_for(lambda: self.replication(self.p_url).get("fenced") is None, 10,
                 "the primary to see its standby and serve")     # ...until it sees its standby

    def tearDown(self):
        self.fleet.close()

    def start(self, which):
        if which == "primary":
            self.fleet.start_supervisor(listen=self.p_url[7:])
        else:
            self.fleet.start_supervisor(config=self.s_config, listen=self.s_url[7:])
        return self.fleet.supervisor

    def health(self, url):
        return self.fleet.client(url=url).request("GET", "/health", timeout=3)[1]

    def replication(self, url):
        return self.fleet.client(url=url).call("GET", "/v1/status")["replication"]


class SyncReplication(Pair):
    primary_overrides = {"supervisor__replication": "sync", "supervisor__sync_timeout": 1.0}

    def test_acknowledged_means_on_the_standby_and_bounded_fallback(self):
        standby = self.fleet.client(url=self.s_url)
        wait_for(lambda: self.replication(self.p_url).get("lag_changes") == 0, 10, "the standby to attach")
        for i in range(5):
            tid = self.admin.call("POST", "/v1/tasks", {"kind": "x", "payload": i})["task"]["id"]
            self.assertEqual(standby.call("GET", f"/v1/tasks/{tid}")["task"]["payload"], i)  # already there
        self.s.kill()
        self.s.wait(5)
        t0 = time.monotonic()
        self.admin.call("POST", "/v1/tasks", {"kind": "x"})           # waits sync_timeout, then async
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertTrue(self.replication(self.p_url)["sync_degraded"])
        t0 = time.monotonic()
        self.admin.call("POST", "/v1/tasks", {"kind": "x"})           # no more waiting while degraded
        self.assertLess(time.monotonic() - t0, 0.5)
        self.start("standby")
        wait_for(lambda: self.replication(self.p_url).get("lag_changes") == 0, 15, "the standby to catch up")
        self.admin.call("POST", "/v1/tasks", {"kind": "x"})
        self.assertFalse(self.replication(self.p_url)["sync_degraded"])


class Fencing(Pair):
    def test_a_client_with_a_higher_epoch_is_checked_with_the_peer(self):
        """The header is not signed: the primary asks its standby before it believes it (refuted
        here: served again); promoting the standby past it makes the primary follow."""
        status, body = self.admin.request("POST", "/v1/tasks", {"kind": "x"})
        self.assertEqual(status, 201)
        self.admin.headers["X-Meshkit-Epoch"] = "7"
        status, body = self.admin.request("POST", "/v1/tasks", {"kind": "x"})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))     # until the peer answers
        wait_for(lambda: self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0] == 201, 10,
                 "the standby to refute epoch 7")
        self.assertEqual(self.health(self.p_url)["role"], "primary")
        promoted = self.fleet.client(url=self.s_url).call("POST", "/v1/promote", {"epoch": 7})
        self.assertEqual((promoted["role"], promoted["epoch"]), ("primary", 8))
        wait_for(lambda: self.health(self.p_url)["role"] == "standby", 10, "the primary to follow epoch 8")
        self.admin.headers.clear()
        self.assertEqual(self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 409)     # never two

    def test_returning_primary_follows_a_promoted_peer(self):
        self.p.kill()
        self.p.wait(5)
        self.fleet.client(url=self.s_url).call("POST", "/v1/promote", {})
        self.start("primary")
        self.assertEqual(self.health(self.p_url)["role"], "standby")
        self.assertEqual(self.health(self.s_url)["role"], "primary")


class Lease(Pair):
    primary_overrides = {"supervisor__primary_lease": 1.5}

    def test_primary_without_contact_stops_accepting(self):
        self.s.kill()                       # no standby pulls, no watchdog checks
        self.s.wait(5)
        status, body = (0, None)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = self.admin.request("POST", "/v1/tasks", {"kind": "x"})
            if status == 409:
                break
            time.sleep(0.2)
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
        self.assertIn("fenced", body["error"]["message"])
        self.admin.call("GET", "/v1/ha/check")          # a check that does not name it active: no renewal
        self.assertEqual(self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 409)
        self.admin.call("GET", "/v1/ha/check?active=2")  # names it active, but at a later epoch: no renewal
        self.assertEqual(self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 409)
        self.admin.call("GET", "/v1/ha/check?active=1")  # the watchdog's check of the active one renews it
        self.assertEqual(self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 201)


class Watchdog(Pair):
    def wd_config(self, **kw):
        return self.fleet.other_config("watchdog", watchdog__primary=self.p_url, watchdog__standby=self.s_url,
                                       watchdog__interval=0.3, watchdog__failures=2, watchdog__recoveries=2,
                                       watchdog__state_file="watchdog.json", **kw)

    def test_drill_switches_over_and_back_without_loss(self):
        for i in range(10):
            self.admin.call("POST", "/v1/tasks", {"kind": "x", "payload": i})
        r = meshkit("watchdog", "drill", "--config", self.wd_config(), "--json", timeout=90)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('"lost": 0', r.stdout)
        self.assertIn('"catch_up"', r.stdout)
        self.assertEqual(self.health(self.p_url)["role"], "primary")
        self.assertEqual(self.health(self.s_url)["role"], "standby")
        self.assertEqual(self.health(self.p_url)["epoch"], 3)
        self.assertEqual(sum(self.admin.call("GET", "/v1/status")["tasks"].values()), 10)

    def test_auto_failback_and_no_flap_on_watchdog_restart(self):
        config = self.wd_config(watchdog__failback="auto")
        log = open(os.path.join(self.fleet.dir, "wd.log"), "wb")
        wd = subprocess.Popen([sys.executable, "-m", "meshkit", "watchdog", "--config", config], cwd=ROOT, env=env(),
                              stdout=subprocess.DEVNULL, stderr=log)
        try:
            self.p.kill()
            self.p.wait(5)
            wait_for(lambda: self.health(self.s_url)["role"] == "primary", 15, "failover")
            wd.kill()                         # the watchdog dies during the outage and comes back
            wd.wait(5)
            wd = subprocess.Popen([sys.executable, "-m", "meshkit", "watchdog", "--config", config], cwd=ROOT,
                                  env=env(), stdout=subprocess.DEVNULL, stderr=log)
            self.start("primary")             # returns as standby, then gets the role back
            wait_for(lambda: self.health(self.p_url)["role"] == "primary", 20, "automatic failback")
            self.assertEqual(self.health(self.p_url)["epoch"], 3)
            self.assertEqual(self.health(self.s_url)["role"], "standby")
        finally:
            wd.kill()
            wd.wait(5)
            log.close()

    def test_lost_state_file_is_rebuilt_from_both_answers(self):
        """After a failover the watchdog's state file is lost (here: garbage). The new view
        comes from both supervisors' answers: the promoted standby (epoch 2) stays active,
        nobody is promoted again. (With the old defaults, "primary active at epoch 0", it
        counted the primary's standby answers as failures and promoted the standby again.)"""
        config = self.wd_config(watchdog__failback="manual")
        state_file = os.path.join(self.fleet.dir, "watchdog.json")
        log = open(os.path.join(self.fleet.dir, "wd.log"), "wb")
        run = lambda: subprocess.Popen([sys.executable, "-m", "meshkit", "watchdog", "--config", config],  # noqa: E731
                                       cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=log)
        wd = run()
        try:
            self.p.kill()
            self.p.wait(5)
            wait_for(lambda: self.health(self.s_url)["role"] == "primary", 15, "failover")
            self.start("primary")             # returns as the standby of the promoted one
            wait_for(lambda: self.health(self.p_url)["role"] == "standby", 15, "the old primary to follow")
            wd.kill()
            wd.wait(5)
            with open(state_file, "w") as f:
                f.write("{not json")
            wd = run()
            wait_for(lambda: read_state(state_file).get("active") == "standby", 10, "the rebuilt state")
            checks = lambda: open(os.path.join(self.fleet.dir, "wd.log")).read().count('"check_failed"')  # noqa: E731
            before = checks()
            time.sleep(2.0)                   # about 6 intervals: room for 2 failed checks and a failover
            self.assertEqual(read_state(state_file)["epoch"], 2)
            self.assertEqual((self.health(self.s_url)["role"], self.health(self.s_url)["epoch"]), ("primary", 2))
            self.assertEqual(self.health(self.p_url)["role"], "standby")
            self.assertEqual(checks(), before)
        finally:
            wd.kill()
            wd.wait(5)
            log.close()


def read_state(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    unittest.main()
