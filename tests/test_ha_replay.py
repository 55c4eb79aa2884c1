"""HA control requests replayed where they were not meant to go: the signature does not name
the supervisor, and each process remembers the nonces it accepted only while it lives. The
epoch a control request names binds it (409 epoch_mismatch), and one signed before this
process started is refused (401 signed_before_start). Rules table-driven; behaviour with
real processes on loopback."""

import http.client
import json
import os
import secrets
import time
import unittest

from meshkit.core.clock import FakeClock
from meshkit.rules import failover
from meshkit.rules.auth import pick_key, signed_headers
from tests.helpers import Fleet
from tests.test_ha import free_port
from tests.test_epoch_claims import WatchdogPair
from tests.test_ha_modes import Pair
from tests.test_worker_harness import wait_for


class Rules(unittest.TestCase):
    def test_demote(self):
        cases = [  # role, own epoch, epoch named, hold -> refused?
            ("primary", 1, None, False, False),        # an operator's, without an epoch: as before
            ("primary", 1, 2, False, False),           # the new primary's epoch: follow it
            ("primary", 2, 2, False, True),            # the demote B sent A, replayed to B
            ("primary", 3, 2, False, True),
            ("primary", 2, 2, True, False),            # a hold for the epoch we are at
            ("primary", 2, 3, True, False),
            ("primary", 3, 2, True, True),             # an old hold replayed after a later promotion
            ("standby", 1, 2, False, False),           # already following (promotion.py told it): again
            ("standby", 2, 2, False, False),
            ("standby", 3, 2, False, True),            # older than what it follows
        ]
        for role, own, epoch, hold, refused in cases:
            with self.subTest(role=role, own=own, epoch=epoch, hold=hold):
                self.assertEqual(failover.demote_refusal(role, own, epoch, hold) is not None, refused)

    def test_promote_and_feed(self):
        for known, epoch, refused in ((1, None, False), (1, 1, False), (1, 7, False), (2, 1, True), (3, 0, True)):
            with self.subTest(known=known, epoch=epoch):
                self.assertEqual(failover.promote_refusal(known, epoch) is not None, refused)
        for own, epoch, refused in ((1, None, False), (1, 1, False), (1, 2, True), (2, 1, True)):
            with self.subTest(own=own, epoch=epoch):
                self.assertEqual(failover.feed_refusal(own, epoch) is not None, refused)

    def test_signed_before_start(self):
        for ts, started, want in ((99, 100.5, True), (100, 100.5, False), (101, 100.0, False)):
            self.assertEqual(failover.signed_before_start(ts, started), want)


def signed(fleet, method, path, body=None, clock=None):
    """A signed request as bytes on the wire would carry it: (method, path, data, headers)."""
    kid, _, secret = pick_key(fleet.keys, "", "admin")
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    now = (clock or FakeClock(time.time())).time()
    headers = signed_headers(kid, secret, method, path, data, now, secrets.token_hex(16))
    headers["Content-Type"] = "application/json"
    return method, path, data, headers


def send(url, request):
    method, path, data, headers = request
    host, port = url[7:].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=data if method != "GET" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


class Replayed(Pair):
    def promote_standby(self):
        """The standby promoted (as the watchdog would: it expects epoch 1); the primary follows."""
        promote = signed(self.fleet, "POST", "/v1/promote", {"epoch": 1})
        status, body = send(self.s_url, promote)
        self.assertEqual((status, body["role"], body["epoch"]), (200, "primary", 2), body)
        wait_for(lambda: self.health(self.p_url)["role"] == "standby", 10, "the former primary to follow")
        return promote

    def test_a_demote_replayed_to_the_new_primary_is_refused(self):
        self.promote_standby()
        for body in ({"epoch": 2}, {"peer": self.s_url, "epoch": 2}):   # what promotion.py / the watchdog send
            with self.subTest(body=body):
                demote = signed(self.fleet, "POST", "/v1/demote", body)
                self.assertEqual(send(self.p_url, demote)[0], 200)          # meant for the former primary
                status, answer = send(self.s_url, demote)                   # the same bytes, to the new one
                self.assertEqual((status, answer["error"]["code"]), (409, "epoch_mismatch"), answer)
                self.assertIn("demote refused", answer["error"]["message"])
                self.assertEqual(self.health(self.s_url)["role"], "primary")
        self.assertEqual(self.fleet.client(url=self.s_url).request("POST", "/v1/tasks", {"kind": "x"})[0], 201)

    def test_a_hold_naming_ourselves_is_refused(self):
        self.promote_standby()
        status, answer = send(self.s_url, signed(self.fleet, "POST", "/v1/demote", {"peer": self.s_url, "hold": True}))
        self.assertEqual((status, answer["error"]["code"]), (409, "epoch_mismatch"), answer)
        self.assertIsNone(self.fleet.client(url=self.s_url).call("GET", "/v1/status")["replication"]["handing_over"])

    def test_a_promote_replayed_to_the_former_primary_is_refused(self):
        promote = self.promote_standby()
        wait_for(lambda: self.replication(self.p_url).get("lag_changes") == 0, 10, "the former primary to pull")
        status, answer = send(self.p_url, promote)          # the watchdog's promote of the standby, replayed
        self.assertEqual((status, answer["error"]["code"]), (409, "epoch_mismatch"), answer)
        self.assertEqual(answer["error"]["epoch"], 2)
        self.assertEqual(self.health(self.p_url)["role"], "standby")
        self.assertEqual(self.health(self.s_url)["role"], "primary")

    def test_a_pull_naming_another_epoch_renews_nothing(self):
        for query, want in (("&epoch=2", (409, "epoch_mismatch")), ("&epoch=0", (409, "epoch_mismatch")),
                            ("&epoch=x", (400, "bad_request")), ("&epoch=1", (200, None)), ("", (200, None))):
            with self.subTest(query=query):
                status, body = send(self.p_url, signed(self.fleet, "GET", f"/v1/replicate?since=0&wait=0{query}"))
                self.assertEqual((status, (body.get("error") or {}).get("code")), want, body)


class SignedBeforeStart(unittest.TestCase):
    def test_a_check_signed_before_a_restart_does_not_lift_the_start_fence(self):
        fleet = Fleet(supervisor__cycle=0.2, supervisor__peer=f"http://127.0.0.1:{free_port()}")   # nobody there
        self.addCleanup(fleet.close)
        before = FakeClock(time.time() - 2)          # a check signed before the start (captured, replayed)
        url = fleet.start_supervisor()
        check = signed(fleet, "GET", "/v1/ha/check?active=1", clock=before)
        status, body = send(url, check)
        self.assertEqual((status, body["error"].get("reason")), (401, "signed_before_start"), body)
        admin = fleet.client()
        self.assertIn("started fenced", admin.call("GET", "/v1/status")["replication"]["fenced"])
        for path in ("/v1/promote", "/v1/demote"):
            status, body = send(url, signed(fleet, "POST", path, {}, clock=before))
            self.assertEqual((status, body["error"].get("reason")), (401, "signed_before_start"), (path, body))
        status, _ = send(url, signed(fleet, "GET", "/v1/ha/check", clock=before))   # names nobody active: harmless
        self.assertEqual(status, 200)
        admin.call("GET", "/v1/ha/check?active=1")   # the watchdog's check, signed now
        self.assertIsNone(admin.call("GET", "/v1/status")["replication"]["fenced"])
        log = open(os.path.join(fleet.dir, "supervisor-0.log")).read()
        self.assertIn('"reason":"signed_before_start"', log)


class WatchdogPromote(WatchdogPair):
    def test_a_promote_refused_for_an_old_epoch_is_asked_again_with_the_known_one(self):
        self.p.kill()
        self.p.wait(5)
        self.watchdog({"epoch": 0})         # e.g. rebuilt while nobody answered
        wait_for(lambda: self.health(self.s_url)["role"] == "primary", 15, "the failover")
        self.assertEqual(self.health(self.s_url)["epoch"], 2)
        log = open(self.wd_log).read()
        self.assertIn('"event":"epoch_behind"', log)


if __name__ == "__main__":
    unittest.main()
