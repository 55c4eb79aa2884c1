"""`explain` names the memory guard, with its figures, when the supervisor's memory over
limits.rss_soft_mb is what holds a task back (the `degraded` mode it causes holds back P3):
the pure decision table-driven, then through a real supervisor's explain route and the CLI."""

import time
import unittest

from tests.helpers import Fleet, register

from meshkit.rules import dispatch
from meshkit.rules.memguard import MB

NOW = 1_700_000_000.0
SHED = {"state": "shed", "rss_bytes": int(312.4 * MB), "soft_bytes": 300 * MB, "hard_bytes": None}
GUARD = "memory guard holds back P3: the supervisor's resident memory is 312.4 MB, over limits.rss_soft_mb (300 MB)"


def task(priority):
    return {"id": "t1", "kind": "llm", "state": "queued", "requires": [], "priority": priority, "not_before": 0,
            "created_at": NOW - 10, "updated_at": NOW - 10, "node": None, "lease_deadline": None, "error": None}


class Explain(unittest.TestCase):
    def test_table(self):
        node = {"name": "pi", "kinds": ["llm"], "capabilities": [], "slots": 1, "running": 0, "state": "alive",
                "last_seen": NOW - 5}
        cases = [
            # priority, mode, memory guard -> dispatch, first reason
            (-5, "degraded", SHED, False, f"{GUARD}; mode `degraded` holds back P3"),
            (-5, "emergency", SHED, False, f"{GUARD}; mode `emergency` holds back P3"),
            (0, "emergency", SHED, False, "mode `emergency` holds back P2"),     # not the memory guard's doing
            (-5, "maintenance", SHED, False, "mode `maintenance` dispatches nothing new"),
            (-5, "degraded", None, False, "mode `degraded` holds back P3"),       # degraded for another reason
            (0, "degraded", SHED, True, "ready: the next claim from `pi` takes it"),   # P2 is not held back
            (-5, "normal", SHED, True, "ready: the next claim from `pi` takes it"),    # not yet: the claim takes it too
            (-5, "degraded", dict(SHED, rss_bytes=None), False, "mode `degraded` holds back P3"),   # no figures, no claim
        ]
        for priority, mode, memory, want_dispatch, want_reason in cases:
            with self.subTest(priority=priority, mode=mode, memory=memory):
                fleet = dispatch.Fleet(now=NOW, mode=mode, nodes=[node], memory=memory)
                d = dispatch.explain(task(priority), [], fleet, 600)
                self.assertEqual((d["dispatch"], d["reason"]), (want_dispatch, want_reason))
                # The claim path decides the same (it is never told the figures: words only).
                claim = dispatch.may_claim(task(priority), node, dispatch.Fleet(now=NOW, mode=mode))
                self.assertEqual(claim is None, want_dispatch)


class RealSupervisor(unittest.TestCase):
    def test_explain_says_the_memory_guard_holds_a_p3_task_and_why(self):
        fleet = Fleet(limits__rss_soft_mb=1, supervisor__cycle=0.1)
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        admin = fleet.client("admin")
        self.addCleanup(admin.close)
        register(admin, node="w1")
        deadline = time.monotonic() + 10
        while admin.call("GET", "/v1/status")["mode"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.05)
        tid = admin.call("POST", "/v1/tasks", {"kind": "echo", "priority": -5})["task"]["id"]
        d = admin.call("GET", f"/v1/tasks/{tid}/explain")
        self.assertFalse(d["dispatch"], d)
        self.assertEqual(d["mode"], "degraded")
        self.assertRegex(d["reason"], r"^memory guard holds back P3: the supervisor's resident memory is \d+\.\d MB, "
                                      r"over limits\.rss_soft_mb \(1 MB\); mode `degraded` holds back P3$")
        out = fleet.cli("explain", tid)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("not dispatched", out.stdout)
        self.assertNotIn("would dispatch now", out.stdout)
        self.assertIn("  - memory guard holds back P3: the supervisor's resident memory is", out.stdout)
        # The claim agrees: nothing is leased while the guard holds the task.
        self.assertEqual(admin.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 0})["tasks"], [])


if __name__ == "__main__":
    unittest.main()
