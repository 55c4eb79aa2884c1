"""A client's word of a higher epoch (X-Meshkit-Epoch: not signed; learned from answers nobody
signs) never demotes a supervisor on its own: without a peer it is ignored, with one the peer
is asked (a primary promoted past us: follow; anything else: serve). A worker fed a forged
epoch still delivers its work. Rules table-driven with a fake clock; behaviour with real
processes on loopback."""

import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import unittest

from meshkit.core.clock import FakeClock
from meshkit.core.errors import ApiError
from meshkit.roles.worker.link import Link
from meshkit.rules import breaker as br
from meshkit.rules import epochclaim as ec
from meshkit.rules import failover
from tests.helpers import ROOT, Fleet, env
from tests.test_ha import free_port
from tests.test_ha_modes import Pair
from tests.test_ha_rejoin import events
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, wait_for, wait_state, worker_fleet

H = "X-Meshkit-Epoch"
STANDBY1 = {"role": "standby", "epoch": 1}
PRIMARY3 = {"role": "primary", "epoch": 3}


class ParseEpoch(unittest.TestCase):
    def test_table(self):
        cases = [("1", 1), ("0042", 42), ("9" * 19, int("9" * 19)), ("9" * 20, None), ("9" * 5000, None),
                 ("", None), (None, None), ("-1", None), ("+1", None), (" 1", None), ("1.0", None),
                 ("0x5", None), ("\u00b2", None), ("\u0663", None), (7, None)]
        for value, want in cases:
            with self.subTest(value=value if not isinstance(value, str) or len(value) < 30 else "long"):
                self.assertEqual(ec.parse_epoch(value), want)


class ClaimRule(unittest.TestCase):
    """Steps against a primary at epoch 1: ("claim", value, has_peer) -> the action; ("ask",) ->
    the asked value; ("answer", peer) -> the verdict; ("advance", s). After each step: fence()
    and ask_in()."""

    CASES = {
        "no claim, or not above ours: nothing": [
            (("claim", None, True), None, 0), (("claim", 1, True), None, 0), (("claim", 0, False), None, 0)],
        "no peer: served, noted once a minute": [
            (("claim", 5, False), "note", 0), (("claim", 9, False), None, 0), (("advance", 59.0), None, 0),
            (("claim", 5, False), None, 0), (("advance", 1.0), None, 0), (("claim", 5, False), "note", 0)],
        "peer refutes: served, not asked again for a minute": [
            (("claim", 7, True), "check", 7), (("ask",), 7, 7), (("answer", STANDBY1), "refuted", 0),
            (("claim", 7, True), None, 0), (("claim", 5, True), None, 0),
            (("advance", ec.REFUTED_FOR - 0.1), None, 0), (("claim", 7, True), None, 0),
            (("advance", 0.1), None, 0), (("claim", 7, True), "check", 7)],
        "a higher claim than the refuted one is asked about": [
            (("claim", 7, True), "check", 7), (("ask",), 7, 7), (("answer", STANDBY1), "refuted", 0),
            (("claim", 8, True), "check", 8)],
        "peer promoted past us: follow": [
            (("claim", 2, True), "check", 2), (("ask",), 2, 2), (("answer", PRIMARY3), "follow", 0)],
        "peer primary at our epoch refutes": [
            (("claim", 2, True), "check", 2), (("ask",), 2, 2), (("answer", {"role": "primary", "epoch": 1}),
                                                                  "refuted", 0)],
        "peer standby at a higher epoch refutes": [
            (("claim", 9, True), "check", 9), (("ask",), 9, 9), (("answer", {"role": "standby", "epoch": 5}),
                                                                  "refuted", 0)],
        "no answer (or no epoch): still fenced, asked again after CHECK_EVERY": [
            (("claim", 2, True), "check", 2), (("ask",), 2, 2), (("answer", None), None, 2),
            (("answer", {"role": "standby"}), None, 2), (("answer", {"role": "standby", "epoch": True}), None, 2),
            (("claim", 2, True), "check", 2)],
        "a claim that came while the peer was asked stays pending": [
            (("claim", 2, True), "check", 2), (("ask",), 2, 2), (("claim", 4, True), "check", 4),
            (("answer", STANDBY1), "refuted", 4), (("advance", ec.CHECK_EVERY), None, 4), (("ask",), 4, 4),
            (("answer", STANDBY1), "refuted", 0)],
        "each answer that still refutes renews the refutation": [
            (("claim", 7, True), "check", 7), (("ask",), 7, 7), (("answer", STANDBY1), "refuted", 0),
            (("advance", 50.0), None, 0), (("ask",), 0, 0), (("answer", STANDBY1), "refuted", 0),
            (("advance", 50.0), None, 0), (("claim", 7, True), None, 0)],
    }

    def test_table(self):
        for name, steps in self.CASES.items():
            with self.subTest(name):
                clock, c, asked = FakeClock(), ec.Claims(), 0
                for i, (step, want, fence) in enumerate(steps):
                    now = clock.monotonic()
                    if step[0] == "claim":
                        c, got = ec.claimed(c, 1, step[1], step[2], now)
                    elif step[0] == "ask":
                        self.assertEqual(ec.ask_in(c, now) if asked else 0.0, 0.0, f"step {i}: asked too soon")
                        c, got = ec.asking(c, now)
                        asked = got
                    elif step[0] == "answer":
                        c, got = ec.answered(c, 1, asked, step[1], now)
                    else:
                        clock.advance(step[1])
                        got = None
                    self.assertEqual((got, ec.fence(c, 1)), (want, fence), f"step {i} {step}")

    def test_asked_at_most_once_every_few_seconds(self):
        clock = FakeClock()
        c, _ = ec.claimed(ec.Claims(), 1, 5, True, clock.monotonic())
        self.assertEqual(ec.ask_in(c, clock.monotonic()), 0.0)
        c, _ = ec.asking(c, clock.monotonic())
        for advance, want in ((0.0, ec.CHECK_EVERY), (1.5, ec.CHECK_EVERY - 1.5), (0.5, 0.0)):
            clock.advance(advance)
            self.assertAlmostEqual(ec.ask_in(c, clock.monotonic()), want)


class Script:
    """A supervisor client whose answers the test sets (one function a call)."""

    def __init__(self, url, headers=True):
        self.url, self.answers, self.sent = url, [], []
        if headers:
            self.headers = {}

    def call(self, method, path, body=None, timeout=None):
        self.sent.append(dict(getattr(self, "headers", {})))
        got = self.answers.pop(0)()
        if isinstance(got, Exception):
            raise got
        return got


def down():
    return ApiError(503, "unavailable", "down")


class LinkEpochs(unittest.TestCase):
    def link(self, a, b):
        return Link([a, b], br.Breaker(3, 300), FakeClock())

    def test_an_answer_to_a_request_that_carried_the_highest_epoch_counts(self):
        fake, real = Script("http://fake"), Script("http://real")
        link = self.link(fake, real)
        fake.answers = [lambda: {"epoch": 99}]
        link.call("POST", "/v1/heartbeat", {})                   # a forged answer: 99 is now the highest seen
        self.assertEqual((link.epoch, real.headers), (99, {H: "99"}))
        fake.answers, real.answers = [down], [lambda: {"epoch": 1, "ok": True}]
        self.assertEqual(link.call("POST", "/v1/heartbeat", {}), {"epoch": 1, "ok": True})
        self.assertEqual((link.url, real.sent[-1], link.epoch), ("http://real", {H: "99"}, 99))
        real.answers = [lambda: {"epoch": 1, "tasks": []}]
        self.assertEqual(link.call("POST", "/v1/claim", {}), {"epoch": 1, "tasks": []})

    def test_an_answer_older_than_an_epoch_seen_since_the_request_left_is_passed_over(self):
        a, b = Script("http://a"), Script("http://b")
        link = self.link(a, b)

        def answer_while_b_was_promoted():      # a newer epoch arrives while this request is on its way
            link.epoch = 2
            return {"epoch": 1}
        a.answers, b.answers = [answer_while_b_was_promoted], [lambda: {"epoch": 2}]
        self.assertEqual(link.call("POST", "/v1/claim", {}), {"epoch": 2})
        self.assertEqual(link.url, "http://b")

    def test_epochs_no_supervisor_could_hold_are_not_adopted(self):
        a, b = Script("http://a"), Script("http://b")
        link = self.link(a, b)
        for bad in (10 ** 19, 10 ** 400, -1, True, "5", 2.5):
            a.answers = [lambda bad=bad: {"epoch": bad}]
            link.call("POST", "/v1/heartbeat", {})
            self.assertEqual((link.epoch, a.headers), (0, {}), bad)


class WithoutPeer(unittest.TestCase):
    def setUp(self):
        self.fleet = Fleet()
        self.addCleanup(self.fleet.close)
        self.url = self.fleet.start_supervisor()
        self.worker = self.fleet.client("worker")
        self.log = os.path.join(self.fleet.dir, "supervisor-0.log")

    def role(self):
        return self.fleet.client().request("GET", "/health")[1]["role"]

    def test_a_worker_key_and_a_higher_epoch_do_not_demote_a_primary_without_a_peer(self):
        self.worker.headers[H] = "2"
        for i in range(3):
            status, body = self.worker.request("POST", "/v1/heartbeat", {"node": "x"})
            self.assertEqual((status, body.get("epoch")), (200, 1), body)
        self.assertEqual(self.role(), "primary")
        ignored = events(self.log, "epoch_claim_ignored")
        self.assertEqual([(e["claimed"], e["epoch"]) for e in ignored], [(2, 1)])       # once, not per request
        self.fleet.stop()
        db = os.path.join(self.fleet.dir, "data", "meshkit.db")
        with sqlite3.connect(db) as c:
            self.assertEqual(c.execute("SELECT value FROM meta WHERE key='role'").fetchone(), ("primary",))
        self.fleet.start_supervisor()
        self.assertEqual(self.role(), "primary")
        self.assertEqual(self.fleet.client("worker").request("POST", "/v1/heartbeat", {"node": "x"})[0], 200)

    def test_an_epoch_header_that_is_not_a_plain_number_is_ignored(self):
        for value in ("9" * 5000, "9" * 20, "0x10", "+3", "1e9", "-5", "3,4"):
            with self.subTest(value=value[:25]):
                self.worker.headers[H] = value
                status, body = self.worker.request("POST", "/v1/heartbeat", {"node": "x"})
                self.assertEqual(status, 200, body)
        self.assertEqual(self.role(), "primary")
        self.assertEqual(events(self.log, "internal_error"), [])


    def test_a_standby_left_without_a_peer_says_so(self):
        """As an older meshkit left a primary without a peer that a client's epoch demoted: its
        puller used to die on the missing URL (AttributeError in its thread)."""
        self.fleet.stop()
        with sqlite3.connect(os.path.join(self.fleet.dir, "data", "meshkit.db")) as c:
            c.execute("UPDATE meta SET value='standby' WHERE key='role'")
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('peer', '')")
        self.fleet.start_supervisor()
        got = wait_for(lambda: self.fleet.client().call("GET", "/v1/status")["replication"]["replication_error"], 5,
                       "the standby to say why it does not replicate")
        self.assertIn("no peer to replicate from", got)
        log = open(os.path.join(self.fleet.dir, "supervisor-1.log")).read()
        self.assertNotIn("Traceback", log)


class RefutedByThePeer(Pair):
    def test_a_claim_the_standby_refutes_leaves_the_primary_serving(self):
        self.admin.headers[H] = "7"
        status, body = self.admin.request("POST", "/v1/tasks", {"kind": "x"})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))    # unverified: no work meanwhile
        self.assertIn("confirms or refutes", body["error"]["message"])
        wait_for(lambda: self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0] == 201, 10,
                 "the standby's answer to refute the claim")
        for _ in range(5):                      # refuted: served at once, not asked again
            self.assertEqual(self.admin.request("POST", "/v1/tasks", {"kind": "x"})[0], 201)
        self.assertEqual(self.health(self.p_url)["role"], "primary")
        self.assertEqual(self.health(self.s_url)["role"], "standby")
        log = os.path.join(self.fleet.dir, "supervisor-0.log")
        self.assertEqual([e["claimed"] for e in events(log, "epoch_claim_refuted")], [7])
        del self.admin.headers[H]
        self.assertIsNone(self.admin.call("GET", "/v1/status")["replication"]["epoch_claim"])


class ConfirmedByANewPrimary(unittest.TestCase):
    """A standby promoted while its former primary can't be told (its peer URL is wrong) and
    that primary's cycle is slow: the first worker request carrying the new epoch makes it ask
    and follow."""

    def test_a_client_that_saw_the_new_primary_makes_the_old_one_ask_and_follow(self):
        pp, ps = free_port(), free_port()
        p_url, s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
        fleet = Fleet(supervisor__cycle=60, supervisor__peer=s_url)
        self.addCleanup(fleet.close)
        s_config = fleet.other_config("standby", supervisor__role="standby",
                                      supervisor__peer=f"http://127.0.0.1:{free_port()}")   # can't tell the primary
        fleet.start_supervisor(config=s_config, listen=s_url[7:])
        fleet.start_supervisor(listen=p_url[7:])               # asks its peer at start: a standby, so it serves
        old, new = fleet.client(url=p_url), fleet.client(url=s_url)
        self.assertEqual(old.request("POST", "/v1/tasks", {"kind": "x"})[0], 201)
        self.assertEqual(new.call("POST", "/v1/promote", {"epoch": 1})["epoch"], 2)
        self.assertEqual(old.request("POST", "/v1/tasks", {"kind": "x"})[0], 201)    # nobody told it yet
        worker = fleet.client("worker", url=p_url)
        worker.headers[H] = "2"
        status, body = worker.request("POST", "/v1/heartbeat", {"node": "w"})
        self.assertEqual((status, body["error"]["code"]), (409, "not_active"))
        wait_for(lambda: old.request("GET", "/health")[1]["role"] == "standby", 8, "the old primary to follow")
        self.assertEqual(old.request("POST", "/v1/tasks", {"kind": "x"})[0], 409)
        changed = events(os.path.join(fleet.dir, "supervisor-1.log"), "role_changed")
        self.assertIn("confirms", changed[-1]["reason"])


class Forger(http.server.BaseHTTPRequestHandler):
    """Answers its first request with a forged epoch, then 503 (as a stale URL taken over would)."""

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        first = not self.server.answered
        self.server.answered = True
        body = json.dumps({"ok": True, "epoch": 99, "cancel": [], "fenced": [], "tasks": []} if first else
                          {"error": {"code": "unavailable", "message": "gone"}}).encode()
        self.send_response(200 if first else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


class ForgedEpochFedToAWorker(unittest.TestCase):
    def test_the_worker_still_delivers_work_to_the_real_primary(self):
        fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forger)
        fake.answered = False
        threading.Thread(target=fake.serve_forever, daemon=True).start()
        self.addCleanup(fake.server_close)
        self.addCleanup(fake.shutdown)
        fleet = worker_fleet()
        self.addCleanup(close_fleet, fleet)
        url = fleet.start_supervisor()
        worker = WorkerProc(fleet, "w1", "--supervisor", url, url=f"http://127.0.0.1:{fake.server_address[1]}")
        worker.start()                          # registered: with the fake, which claims epoch 99
        self.assertTrue(fake.answered)
        admin = fleet.client()
        tid = dispatch(admin, "ok", {"n": 1})
        self.assertEqual(wait_state(admin, tid, ("succeeded", "failed"), 20)["state"], "succeeded", worker.tail())
        self.assertEqual(admin.call("GET", "/v1/status")["role"], "primary")
        time.sleep(0.3)
        self.assertEqual(fleet.client().request("GET", "/health")[1]["role"], "primary")


class WatchdogRule(unittest.TestCase):
    def test_watchdog_epoch_nobody_holds(self):
        p = lambda e: {"role": "primary", "epoch": e}     # noqa: E731
        s = lambda e: {"role": "standby", "epoch": e}     # noqa: E731
        cases = [  # remembered, answers -> the epoch to remember instead (None: keep)
            (99, [p(1), s(1)], 1),          # a forged answer put 99 there: nobody holds it
            (99, [p(1), s(2)], 2),
            (3, [p(1), p(3)], None),        # the other one is at 3: the active one is behind
            (3, [p(1), s(3)], None),
            (99, [p(1), None], None),       # the other can't be asked: can't tell
            (99, [p(1), {"role": "standby"}], None),
            (2, [p(2), s(1)], None),
        ]
        for remembered, answers, want in cases:
            with self.subTest(remembered=remembered, answers=answers):
                self.assertEqual(failover.unconfirmed_epoch(remembered, answers), want)


class WatchdogPair(Pair):
    """A pair and a watchdog started from a given view (no tests here)."""

    def watchdog(self, state: dict):
        with open(os.path.join(self.fleet.dir, "watchdog.json"), "w") as f:
            json.dump(dict({"active": "primary", "failures": 0, "recoveries": 0, "ready_for_failback": False},
                           **state), f)
        config = self.fleet.other_config("watchdog", watchdog__primary=self.p_url, watchdog__standby=self.s_url,
                                         watchdog__interval=0.3, watchdog__failures=2, watchdog__recoveries=2,
                                         watchdog__state_file="watchdog.json", watchdog__failback="manual")
        self.wd_log = os.path.join(self.fleet.dir, "wd.log")
        wd = subprocess.Popen([sys.executable, "-m", "meshkit", "watchdog", "--config", config], cwd=ROOT, env=env(),
                              stdout=subprocess.DEVNULL, stderr=open(self.wd_log, "ab"))
        self.addCleanup(wd.wait, 5)
        self.addCleanup(wd.kill)

    def wd_state(self):
        try:
            with open(os.path.join(self.fleet.dir, "watchdog.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


class WatchdogEpochs(WatchdogPair):
    """The watchdog's remembered epoch comes from answers nobody signs."""

    def test_an_epoch_nobody_holds_does_not_fail_over_a_healthy_primary(self):
        self.watchdog({"epoch": 99})        # as one forged answer would have left it
        wait_for(lambda: self.wd_state().get("epoch") == 1, 10, "the watchdog to drop the epoch nobody holds")
        time.sleep(1.5)                     # 5 intervals: room for 2 failed checks and a failover
        self.assertEqual((self.health(self.p_url)["role"], self.health(self.p_url)["epoch"]), ("primary", 1))
        self.assertEqual(self.health(self.s_url)["role"], "standby")
        self.assertEqual(self.wd_state()["active"], "primary")
        self.assertIn('"event":"epoch_unconfirmed"', open(self.wd_log).read())


if __name__ == "__main__":
    unittest.main()
