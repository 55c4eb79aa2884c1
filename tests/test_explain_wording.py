"""`explain`'s words fit the task's state: table-driven on the pure decision (rules/dispatch.py
explain and headline) with a fake clock. A task waiting to be dispatched shows its priority, its
class (always the base priority's: what a mode holds back) and, apart, the aged priority (the queue
order); a leased, running or ended one is never "not dispatched" and never aged; a leased one says
when it is requeued if its worker never starts it; an ended one says when, and why from its
history (a cancel's reason, not the worker's bare "cancelled")."""

import unittest

from meshkit.core.clock import FakeClock
from meshkit.rules import dispatch
from meshkit.rules.policy import Policy

CLOCK = FakeClock()
NOW = CLOCK.time()
T = dispatch.clock_text
NODE = {"name": "w1", "kinds": ["llm"], "capabilities": [], "slots": 1, "running": 0, "state": "alive",
        "last_seen": NOW - 5}


def task(**kw):
    t = {"id": "t7", "kind": "llm", "state": "queued", "requires": [], "priority": 2, "not_before": 0,
         "created_at": NOW - 19 * 60, "updated_at": NOW - 19 * 60, "node": None, "lease_deadline": None,
         "started_at": None, "error": None, "cancel_requested": False}
    t.update(kw)
    return t


def leased(**kw):
    return task(**dict(dict(state="leased", node="w1", updated_at=NOW - 30, lease_deadline=NOW + 270), **kw))


CANCEL_ROWS = [{"from": None, "to": "queued", "at": NOW - 60, "reason": "dispatched by admin-1"},
               {"from": "queued", "to": "leased", "at": NOW - 50, "reason": "leased to w1 (attempt 1)"},
               {"from": "leased", "to": "running", "at": NOW - 49, "reason": "started on w1"},
               {"from": "running", "to": "running", "at": NOW - 20,
                "reason": "cancel requested by admin-1: wrong input"},
               {"from": "running", "to": "cancelled", "at": NOW - 10, "reason": "cancelled while running: wrong input"}]


class Wording(unittest.TestCase):
    def decide(self, t, start_timeout=None, history=None, nodes=(NODE,), mode="normal"):
        fleet = dispatch.Fleet(now=NOW, mode=mode, policy=Policy(aging=60.0), nodes=list(nodes))
        return dispatch.explain(t, [], fleet, 600, start_timeout=start_timeout, history=history)

    def test_verdict_reason_and_priority_by_state(self):
        cases = [
            # name, task, start_timeout, history -> verdict, first reason, JSON priority
            ("queued, free worker: aged for the queue", task(), None, None,
             "queued, would dispatch now", "ready: the next claim from `w1` takes it", 21.0),
            ("queued, nobody runs it", task(kind="bad"), None, None,
             "queued, not dispatched", "no worker runs kind `bad`", 21.0),
            ("leased: requeued after start_timeout", leased(), 120, None,
             f"leased to `w1` at {T(NOW - 30)}, not started yet",
             f"leased to `w1` at {T(NOW - 30)}, not started yet; requeued at {T(NOW + 90)} if `w1` has not "
             "started it by then (supervisor.start_timeout 120 s)", 2),
            ("leased: its lease ends sooner", leased(lease_deadline=NOW + 10), 120, None,
             f"leased to `w1` at {T(NOW - 30)}, not started yet",
             f"leased to `w1` at {T(NOW - 30)}, not started yet; requeued at {T(NOW + 10)} if `w1` has not "
             "started it by then (its lease ends then)", 2),
            ("leased: start_timeout passed", leased(updated_at=NOW - 130, cancel_requested=True), 120, None,
             f"leased to `w1` at {T(NOW - 130)}, not started yet",
             f"leased to `w1` at {T(NOW - 130)}, not started yet; not started in time (supervisor.start_timeout "
             "120 s): requeued at the supervisor's next cycle (cancel requested)", 2),
            ("leased: no start_timeout given", leased(), None, None,
             f"leased to `w1` at {T(NOW - 30)}, not started yet",
             f"leased to `w1` at {T(NOW - 30)}, not started yet; requeued at {T(NOW + 270)} if `w1` has not "
             "started it by then (its lease ends then)", 2),
            ("running", task(state="running", node="w1", started_at=NOW - 40, lease_deadline=NOW + 260), None, None,
             f"running on `w1` since {T(NOW - 40)}", f"running on `w1` since {T(NOW - 40)}, lease until {T(NOW + 260)}",
             2),
            ("succeeded long ago: not aged", task(state="succeeded", updated_at=NOW - 600), None, None,
             f"ended succeeded at {T(NOW - 600)}", f"ended succeeded at {T(NOW - 600)}", 2),
            ("failed: its error", task(state="failed", updated_at=NOW - 5, error="exit code 3"), None, None,
             f"ended failed at {T(NOW - 5)}: exit code 3", f"ended failed at {T(NOW - 5)}: exit code 3", 2),
            ("cancelled, no history: no bare `cancelled`",
             task(state="cancelled", updated_at=NOW - 10, error="cancelled"), None, None,
             f"ended cancelled at {T(NOW - 10)}", f"ended cancelled at {T(NOW - 10)}", 2),
            ("cancelled, with history: the reason given", task(state="cancelled", error="cancelled"), None, CANCEL_ROWS,
             f"ended cancelled at {T(NOW - 10)}: cancelled while running: wrong input",
             f"ended cancelled at {T(NOW - 10)}: cancelled while running: wrong input", 2),
        ]
        for name, t, start_timeout, history, verdict, reason, priority in cases:
            with self.subTest(name):
                d = self.decide(t, start_timeout, history)
                self.assertEqual((d["verdict"], d["reason"], d["priority"]), (verdict, reason, priority))
                self.assertEqual((d["base_priority"], d["class"]), (2, "P2"))
                if t["state"] not in ("waiting", "queued"):
                    self.assertNotIn("dispatch", d["verdict"])

    def test_headline(self):
        ended = dict(self.decide(task(state="cancelled", error="cancelled", updated_at=NOW - 10)), task="t7",
                     mode="normal", history=CANCEL_ROWS)          # a supervisor that gave explain no history
        cases = [
            ("aged: the class is the base priority's", dict(self.decide(task()), task="t7", mode="normal"),
             "t7: queued, would dispatch now (priority 2, class P2; aged to 21.00 for queue order; mode normal)"),
            ("not aged yet", dict(self.decide(task(created_at=NOW)), task="t7", mode="degraded"),
             "t7: queued, would dispatch now (priority 2, class P2; mode degraded)"),
            ("high base priority, P0", dict(self.decide(task(priority=35, kind="bad")), task="t7", mode="normal"),
             "t7: queued, not dispatched (priority 35, class P0; aged to 54.00 for queue order; mode normal)"),
            ("running: no aging, no mode",
             dict(self.decide(task(state="running", node="w1", started_at=NOW - 40, lease_deadline=NOW + 60)),
                  task="t7", mode="normal"),
             f"t7: running on `w1` since {T(NOW - 40)} (priority 2, class P2)"),
            ("ended: its history's last row", ended,
             f"t7: ended cancelled at {T(NOW - 10)}: cancelled while running: wrong input (priority 2, class P2)"),
            ("ended succeeded",
             dict(self.decide(task(state="succeeded", updated_at=NOW - 3)), task="t7", mode="normal"),
             f"t7: ended succeeded at {T(NOW - 3)} (priority 2, class P2)"),
        ]
        for name, d, want in cases:
            with self.subTest(name):
                self.assertEqual(dispatch.headline(d), want)


if __name__ == "__main__":
    unittest.main()
