"""A standby promoted while its former primary still serves (the watchdog lost sight of a
healthy primary, or an operator promoted by hand): never two supervisors taking work.
Real supervisor processes on loopback."""

import os
import signal
import time
import unittest

from meshkit.rules import failover
from meshkit.adapters import keyfile
from tests.helpers import Fleet, meshkit
from tests.test_ha import free_port
from tests.test_ha_modes import Pair
from tests.test_worker_harness import wait_for

LEASE = 3.0


def dispatch_status(client) -> int:
    return client.request("POST", "/v1/tasks", {"kind": "x"})[0]


class SettleUntil(unittest.TestCase):
    def test_table(self):
        m = failover.SETTLE_MARGIN
        cases = [  # now, lease, pull in flight, last answer, started -> until
            (100.0, 0.0, True, 99.0, 0.0, None),             # no lease: nothing bounds the former primary
            (100.0, 5.0, True, 99.0, 0.0, 100.0 + 5 + m),     # a pull on its way may renew it now
            (100.0, 5.0, False, 98.0, 0.0, 98.0 + 5 + m),     # answered pulls arrived before their answer
            (100.0, 5.0, False, 90.0, 0.0, None),             # its lease ran out already
            (100.0, 5.0, False, None, 97.0, 97.0 + 5 + m),    # no answer yet: our previous run's pull
            (100.0, 5.0, False, None, 50.0, None),
        ]
        for now, lease, flying, answered, started, want in cases:
            with self.subTest(now=now, lease=lease, flying=flying, answered=answered, started=started):
                self.assertEqual(failover.settle_until(now, lease, flying, answered, started), want)


class NamesItself(unittest.TestCase):
    def test_table(self):
        cases = [  # peer host, peer port, listen host, listen port -> the peer is this supervisor
            ("127.0.0.1", 8765, "127.0.0.1", 8765, True),
            ("localhost", 8765, "0.0.0.0", 8765, True),
            ("10.0.0.2", 8765, "10.0.0.2", 8765, True),
            ("10.0.0.1", 8765, "10.0.0.2", 8765, False),     # the other machine, same port
            ("10.0.0.1", 8765, "0.0.0.0", 8765, False),      # can't tell from the text: allowed
            ("127.0.0.1", 8766, "127.0.0.1", 8765, False),
            ("127.0.0.1", 0, "127.0.0.1", 0, False),         # port 0: a free port, never the same
        ]
        for ph, pp, lh, lp, want in cases:
            with self.subTest(peer=(ph, pp), listen=(lh, lp)):
                self.assertEqual(failover.names_itself(ph, pp, lh, lp), want)

    def test_the_supervisor_refuses_to_follow_itself_or_a_bad_url(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        port = free_port()
        for extra, words in ((["--standby-of", f"http://127.0.0.1:{port}"], "--standby-of: expected the other"),
                             (["--standby-of", "127.0.0.1:9"], "--standby-of: expected")):
            with self.subTest(extra=extra):
                r = meshkit("supervisor", "--config", fleet.config, "--listen", f"127.0.0.1:{port}", *extra,
                            timeout=30)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(words, r.stderr)
                self.assertNotIn("Traceback", r.stderr)


class PromotedWhilePrimaryServes(Pair):
    primary_overrides = {"supervisor__primary_lease": LEASE}

    def setUp(self):
        super().setUp()
        self.new = self.fleet.client(url=self.s_url)
        wait_for(lambda: self.replication(self.p_url).get("lag_changes") == 0, 10, "the standby to attach")

    def test_the_former_primary_is_told_to_follow_before_the_new_one_takes_work(self):
        self.new.call("POST", "/v1/promote", {})
        took = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            new, old = dispatch_status(self.new), dispatch_status(self.admin)
            if took is None and new == 201:
                took = time.monotonic()
            if took is not None:
                self.assertEqual(old, 409, "the former primary still took work after the new one did")
                if time.monotonic() - took > 1.0:
                    break
        self.assertIsNotNone(took, "the promoted standby never took work")
        self.assertEqual(self.health(self.p_url)["role"], "standby")

    def test_a_former_primary_that_cannot_be_told_is_waited_out(self):
        os.kill(self.p.pid, signal.SIGSTOP)        # up, holding the lease our pulls renewed, silent
        try:
            t0 = time.monotonic()
            view = self.new.call("POST", "/v1/promote", {})
            self.assertEqual(view["role"], "primary")
            self.assertIn("just promoted", view["settling"])
            status, body = self.new.request("POST", "/v1/tasks", {"kind": "x"})
            self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
            r = meshkit("status", "--config", self.fleet.config, "--supervisor", self.s_url)
            self.assertIn("not taking work yet: just promoted", r.stdout)
            self.assertIn(f"peer {self.p_url}", r.stdout)
            epoch = view["epoch"]

            def takes_work():       # as the watchdog would, name it active (renews its own lease)
                self.new.call("GET", f"/v1/ha/check?active={epoch}")
                return dispatch_status(self.new) == 201
            wait_for(takes_work, LEASE + 8, "the promoted standby to take work")
            self.assertGreaterEqual(time.monotonic() - t0, LEASE - 0.5)
        finally:
            os.kill(self.p.pid, signal.SIGCONT)
        # the former primary's lease ran out while it was stopped: it takes nothing, then follows
        self.assertEqual(dispatch_status(self.admin), 409)
        wait_for(lambda: self.health(self.p_url)["role"] == "standby", 10, "the former primary to follow")


class CorrectedPeer(Pair):
    def test_a_peer_corrected_in_the_config_wins_over_the_remembered_one(self):
        self.fleet.stop(self.s)
        wrong = "http://127.0.0.1:1"
        self.fleet.start_supervisor("--standby-of", wrong, config=self.s_config, listen=self.s_url[7:])
        self.assertEqual(self.replication(self.s_url)["peer"], wrong)
        self.fleet.stop(self.fleet.supervisor)
        self.s = self.start("standby")          # its config names the right primary
        self.assertEqual(self.replication(self.s_url)["peer"], self.p_url)
        tid = self.admin.call("POST", "/v1/tasks", {"kind": "x"})["task"]["id"]
        wait_for(lambda: self.fleet.client(url=self.s_url).request("GET", f"/v1/tasks/{tid}")[0] == 200, 10,
                 "the standby to replicate from the corrected peer")


class PeerWithOtherKeys(unittest.TestCase):
    def test_a_standby_without_our_keys_does_not_lift_the_start_fence(self):
        pp, ps = free_port(), free_port()
        p_url, s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
        fleet = Fleet(supervisor__cycle=0.2, supervisor__peer=s_url)
        self.addCleanup(fleet.close)
        other_keys = os.path.join(fleet.dir, "other.keys")
        keyfile.create(other_keys)          # as from a separate `meshkit init`
        s_config = fleet.other_config("standby", supervisor__role="standby", supervisor__peer=p_url,
                                      auth__keys_file=other_keys)
        fleet.start_supervisor(listen=p_url[7:])
        fleet.start_supervisor(config=s_config, listen=s_url[7:])
        admin = fleet.client(url=p_url)
        time.sleep(1.5)                     # several cycles: the peer answers "standby" on /health
        status, body = admin.request("POST", "/v1/tasks", {"kind": "x"})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
        self.assertIn("started fenced", body["error"]["message"])
        log = open(os.path.join(fleet.dir, "supervisor-0.log")).read()
        self.assertIn('"event":"peer_refuses_us"', log)


if __name__ == "__main__":
    unittest.main()
