"""A worker whose memory guard holds back claims (over limits.rss_soft_mb) says so in its
heartbeat ("hold"), and the supervisor's `explain` and `status` say so too: explain never names
such a worker as the one whose next claim takes a task. The pure rule table-driven with a fake
clock; the wire field and its OpenAPI schema; the worker's guard with a fake link; then a real
supervisor and a real worker over its soft limit."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

from tests.helpers import ROOT, Fleet, env, register
from tests.test_openapi import conforms, routes
from tests.test_worker_units import WorkerCase, api

from meshkit.adapters.log import Logger
from meshkit.cli import memwire
from meshkit.cli.cmd_tasks import _node_row
from meshkit.core import wire
from meshkit.core.clock import FakeClock
from meshkit.core.errors import BadRequest
from meshkit.roles.supervisor import openapi
from meshkit.rules import dispatch, memguard
from meshkit.rules.memguard import MB

CLOCK = FakeClock()
NOW = CLOCK.time()
MEM = {"reason": "memory_guard", "rss_bytes": int(812.4 * MB), "soft_bytes": 800 * MB}
HELD = "worker `w1` claims nothing now: its memory guard holds it back"
HELD_FIGURES = f"{HELD} (resident 812.4 MB, over limits.rss_soft_mb 800 MB)"


def task(**kw):
    return dict({"id": "t1", "kind": "echo", "state": "queued", "requires": [], "priority": 0, "not_before": 0,
                 "created_at": NOW - 10, "updated_at": NOW - 10, "node": None, "lease_deadline": None,
                 "error": None}, **kw)


def node(name="w1", hold=None, **kw):
    return dict({"name": name, "kinds": ["echo"], "capabilities": [], "slots": 1, "running": 0, "state": "alive",
                 "last_seen": NOW - 5, "hold": hold}, **kw)


class ExplainRule(unittest.TestCase):
    def test_table(self):
        cases = [
            # nodes, task -> dispatch, target, reasons
            ([node()], task(), True, ["w1"], ["ready: the next claim from `w1` takes it"]),
            ([node(hold=MEM)], task(), False, [], [HELD_FIGURES]),
            ([node(hold={"reason": "memory_guard"})], task(), False, [], [HELD]),
            ([node(hold={"reason": "memory_guard", "rss_bytes": 30 * MB})], task(), False, [],
             [f"{HELD} (resident 30.0 MB)"]),
            ([node(hold={"reason": "disk_full"})], task(), False, [],
             ["worker `w1` claims nothing now: it holds back claims (`disk_full`)"]),
            # another worker is free: it takes the task; the held one is still named
            ([node(hold=MEM), node("w2")], task(), True, ["w2"],
             ["ready: the next claim from `w2` takes it", HELD_FIGURES]),
            # the other one is full: both reasons, the count only of workers that claim
            ([node(hold=MEM), node("w2", running=1)], task(), False, [],
             [HELD_FIGURES, "all 1 matching workers full (1/1 slots)"]),
            # stale wins: a silent worker is stale whatever it last said
            ([node(hold=MEM, state="stale", last_seen=NOW - 640)], task(), False, [],
             ["worker `w1` stale (last heartbeat 640 s ago)"]),
            # a fleet-wide reason comes first
            ([node(hold=MEM)], task(not_before=NOW + 30), False, [],
             [f"backoff until {dispatch.clock_text(NOW + 30)}", HELD_FIGURES]),
            # a worker that can't run the task anyway is not listed
            ([node(hold=MEM, kinds=["other"]), node("w2")], task(), True, ["w2"],
             ["ready: the next claim from `w2` takes it"]),
        ]
        for nodes, t, want_dispatch, want_target, want_reasons in cases:
            with self.subTest(nodes=[(n["name"], n["hold"]) for n in nodes], task=t["not_before"]):
                fleet = dispatch.Fleet(now=CLOCK.time(), nodes=nodes)
                d = dispatch.explain(t, [], fleet, 600)
                self.assertEqual((d["dispatch"], d["target"], d["reasons"]), (want_dispatch, want_target, want_reasons))
                self.assertEqual(d["reason"], want_reasons[0])
                # The claim path is unchanged: a held node that claims anyway is not refused.
                self.assertEqual(dispatch.may_claim(t, nodes[0], dispatch.Fleet(now=CLOCK.time())) is None,
                                 t["not_before"] <= NOW and "echo" in nodes[0]["kinds"])

    def test_status_row_and_line(self):
        n = {"name": "w1", "state": "alive", "last_seen_age": 1, "running": 0, "slots": 1, "kinds": ["echo"],
             "hold": MEM}
        self.assertEqual(_node_row(n)[1], "held")
        self.assertEqual(_node_row(dict(n, hold=None))[1], "alive")
        self.assertEqual(_node_row(dict(n, state="stale"))[1], "stale")
        self.assertEqual(dispatch.hold_text("w1", MEM), HELD_FIGURES)


class GuardHold(unittest.TestCase):
    def test_hold_from_the_decision(self):
        cases = [
            (memguard.OK, 10 * MB, 5 * MB, None),
            (memguard.SHED, 10 * MB, 5 * MB, {"reason": "memory_guard", "rss_bytes": 10 * MB, "soft_bytes": 5 * MB}),
            (memguard.EXIT, 10 * MB, 0, {"reason": "memory_guard", "rss_bytes": 10 * MB}),    # no soft limit set
        ]
        for decision, rss, soft, want in cases:
            with self.subTest(decision=decision, soft=soft):
                self.assertEqual(memguard.hold(decision, rss, soft), want)


class WireField(unittest.TestCase):
    GOOD = [None, {"reason": "memory_guard"}, MEM, {"reason": "x", "rss_bytes": 0}, {"reason": "x", "soft_bytes": 2 ** 53}]
    BAD = ["memory_guard", [], {}, {"rss_bytes": 1}, {"reason": "a b"}, {"reason": "x" * 129}, {"reason": "x\n"},
           {"reason": 5}, {"reason": "x", "rss_bytes": -1}, {"reason": "x", "rss_bytes": 1.5},
           {"reason": "x", "rss_bytes": True}, {"reason": "x", "soft_bytes": 2 ** 53 + 1}, {"reason": "x", "since": 1},
           {"reason": "x", "rss_bytes": None}]

    def test_validator_and_document_agree(self):
        doc = openapi.document(routes())
        schema = doc["components"]["schemas"]["HEARTBEAT"]
        self.assertIn("hold", schema["properties"])
        self.assertNotIn("hold", schema["required"])
        for value in self.GOOD + self.BAD:
            with self.subTest(hold=value):
                body = {"node": "w1", "hold": value}
                ok = value in self.GOOD
                self.assertEqual(conforms(doc, schema, body), ok)
                if ok:
                    wire.validate(body, wire.HEARTBEAT, "heartbeat")
                else:
                    with self.assertRaises(BadRequest) as cm:
                        wire.validate(body, wire.HEARTBEAT, "heartbeat")
                    self.assertEqual(cm.exception.details["field"], "hold")
        wire.validate({"node": "w1"}, wire.HEARTBEAT, "heartbeat")      # an older worker sends none


class WorkerSaysSo(WorkerCase):
    def guarded(self, soft_mb):
        w = self.worker({"/v1/heartbeat": [{"ok": True, "epoch": 1}], "/v1/claim": [{"tasks": []}]},
                        heartbeat_interval=300)
        guard = memwire.WorkerGuard(w, soft_mb, 0, self.clock, Logger("worker", "w1", stream=io.StringIO(),
                                                                     clock=self.clock)).install()
        return w, guard

    def heartbeats(self, w):
        return [body for path, body in w.link.calls if path == "/v1/heartbeat"]

    def test_hold_goes_out_at_once_and_claims_wait(self):
        w, guard = self.guarded(soft_mb=1)           # this process is over 1 MB
        w.step()                                     # registers, then the first reading: over
        self.assertNotIn("hold", self.heartbeats(w)[0])
        self.assertEqual(w.hold["reason"], "memory_guard")
        self.assertEqual(w.hold["soft_bytes"], 1 * MB)
        self.assertTrue(w.wake.is_set())
        self.assertEqual(w.next_heartbeat, 0.0)      # not in heartbeat_interval (300 s)
        w.step()
        self.assertEqual(self.heartbeats(w)[-1]["hold"], w.hold)
        self.assertEqual(w.claim_step(), 5)          # held: no claim sent
        self.assertNotIn("/v1/claim", w.link.paths())
        # Back under (the limit raised): the next reading clears it and it is said at once; claims
        # resume once the supervisor took that heartbeat (before, it would answer them empty).
        guard.soft = 1 << 50
        w.slot_freed.clear()
        self.clock.advance(memwire.CHECK_EVERY)
        w.step()
        self.assertIsNone(w.hold)
        self.assertFalse(w.slot_freed.is_set())
        self.assertEqual(w.claim_step(), 5)
        self.assertNotIn("/v1/claim", w.link.paths())
        w.step()
        self.assertNotIn("hold", self.heartbeats(w)[-1])
        self.assertTrue(w.slot_freed.is_set())          # the claim loop stops waiting at once
        w.claim_step()
        self.assertIn("/v1/claim", w.link.paths())      # claiming again

    def test_claims_wait_while_the_heartbeat_that_ends_the_hold_fails(self):
        w = self.worker({"/v1/heartbeat": [{"ok": True, "epoch": 1}, api(503, "unavailable"), {"ok": True}],
                         "/v1/claim": [{"tasks": []}]})
        w.set_hold({"reason": "memory_guard"})
        w.heartbeat()
        w.set_hold(None)
        w.slot_freed.clear()
        w.heartbeat()                                   # refused: the supervisor still has the hold
        self.assertEqual((w.claim_step(), w.slot_freed.is_set()), (5, False))
        w.heartbeat()
        self.assertTrue(w.slot_freed.is_set())
        self.assertEqual([p for p in w.link.paths() if p == "/v1/claim"], [])
        w.claim_step()
        self.assertIn("/v1/claim", w.link.paths())

    def test_no_claim_before_the_first_reading(self):
        w, guard = self.guarded(soft_mb=1 << 30)
        w.registered.set()
        self.assertEqual(w.claim_step(), 0.05)
        self.assertEqual(w.link.paths(), [])

    def test_an_older_supervisor_refusing_the_field_gets_heartbeats_without_it(self):
        refusal = api(400, "bad_request")
        refusal.details["field"] = "hold"
        w = self.worker({"/v1/heartbeat": [refusal, {"ok": True, "epoch": 1}]})
        w.set_hold({"reason": "memory_guard"})
        w.heartbeat()
        self.assertEqual(w.next_heartbeat, self.clock.monotonic())      # again at once
        w.heartbeat()
        self.assertTrue(w.registered.is_set())
        sent = [body for _, body in w.link.calls]
        self.assertEqual(("hold" in sent[0], "hold" in sent[1]), (True, False))
        self.assertIsNotNone(w.hold)                 # it still holds back claims


class RealWorker(unittest.TestCase):
    def wait_for(self, what, fn, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = fn()
            if got:
                return got
            time.sleep(0.1)
        self.fail(f"timed out waiting for {what}")

    def test_explain_and_status_name_a_worker_held_by_its_memory_guard(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        url = fleet.start_supervisor()
        admin = fleet.client("admin")
        self.addCleanup(admin.close)
        # heartbeat_interval 300: the hold must come with a heartbeat sent when it starts, not the idle one
        config = fleet.other_config("worker", limits__rss_soft_mb=1, worker__heartbeat_interval=300,
                                    worker__poll_wait=1, worker__poll_interval=0.5)
        log = open(os.path.join(fleet.dir, "worker.log"), "wb")
        self.addCleanup(log.close)
        worker = subprocess.Popen([sys.executable, "-m", "meshkit", "worker", "--config", config, "--supervisor", url,
                                   "--name", "w1", "--work-dir", os.path.join(fleet.dir, "work-w1")],
                                  cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=log)
        fleet.procs.append(worker)

        def held():
            nodes = [n for n in admin.call("GET", "/v1/status")["nodes"] if n["name"] == "w1"]
            return nodes and nodes[0].get("hold")
        self.wait_for("w1 to say it holds back claims", held)

        tid = admin.call("POST", "/v1/tasks", {"kind": "echo", "payload": {"n": 1}})["task"]["id"]
        out = fleet.cli("explain", tid, "--json")
        self.assertEqual(out.returncode, 0, out.stderr)
        d = json.loads(out.stdout)
        self.assertEqual(d, admin.call("GET", f"/v1/tasks/{tid}/explain"))
        self.assertFalse(d["dispatch"], d)
        self.assertEqual(d["target"], [], d)
        self.assertFalse(any(r.startswith("ready") for r in d["reasons"]), d)
        self.assertRegex(d["reason"], r"^worker `w1` claims nothing now: its memory guard holds it back "
                                      r"\(resident \d+\.\d MB, over limits\.rss_soft_mb 1 MB\)$")

        out = fleet.cli("status", "--json")
        self.assertEqual(out.returncode, 0, out.stderr)
        w1 = next(n for n in json.loads(out.stdout)["nodes"] if n["name"] == "w1")
        self.assertEqual(w1["state"], "alive")
        self.assertEqual((w1["hold"]["reason"], w1["hold"]["soft_bytes"]), ("memory_guard", 1 * MB))
        self.assertGreater(w1["hold"]["rss_bytes"], 1 * MB)
        out = fleet.cli("status")
        self.assertEqual(out.returncode, 0, out.stderr)
        row = next(line.split() for line in out.stdout.splitlines() if line.startswith("w1 "))
        self.assertEqual(row[1], "held", out.stdout)
        self.assertIn("worker `w1` claims nothing now: its memory guard holds it back (resident", out.stdout)

        time.sleep(2)                                # several claim rounds (poll_interval 0.5 s)
        t = admin.call("GET", f"/v1/tasks/{tid}")["task"]
        self.assertEqual((t["state"], t["attempts"]), ("queued", 0), t)
        self.assertIsNone(worker.poll())
        worker.send_signal(signal.SIGTERM)
        self.assertEqual(worker.wait(30), 0)


class SupervisorEndsAWaitingClaim(unittest.TestCase):
    """A long-poll claim already waiting when the worker's heartbeat says it holds back ends at
    once, empty, and nothing is leased to that worker until a heartbeat ends the hold."""

    def test_a_held_node_gets_nothing(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        admin, worker = fleet.client("admin"), fleet.client("worker")
        self.addCleanup(admin.close)
        self.addCleanup(worker.close)
        register(worker, "w1")
        waiting = fleet.client("worker")
        self.addCleanup(waiting.close)
        answer = {}

        def claim():
            t0 = time.monotonic()
            answer["tasks"] = waiting.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 20})["tasks"]
            answer["took"] = time.monotonic() - t0
        thread = threading.Thread(target=claim)
        thread.start()
        time.sleep(0.5)                                  # the claim is waiting
        worker.call("POST", "/v1/heartbeat", {"node": "w1", "hold": MEM})
        thread.join(10)
        self.assertFalse(thread.is_alive())
        self.assertEqual(answer["tasks"], [])
        self.assertLess(answer["took"], 10)              # not the claim's 20 s
        tid = admin.call("POST", "/v1/tasks", {"kind": "echo"})["task"]["id"]
        self.assertEqual(worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 5})["tasks"], [])
        self.assertEqual(admin.call("GET", f"/v1/tasks/{tid}")["task"]["state"], "queued")
        worker.call("POST", "/v1/heartbeat", {"node": "w1"})      # hold left out: it ends
        got = worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 5})["tasks"]
        self.assertEqual([t["id"] for t in got], [tid])


if __name__ == "__main__":
    unittest.main()
