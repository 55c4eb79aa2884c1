"""Table-driven unit tests of the scheduling brain's pure rules (fake time, no I/O)."""

import unittest

from meshkit.core.errors import ConfigError
from meshkit.rules import deps, dispatch, heal, modes
from meshkit.rules.policy import KindPolicy, Policy, effective_priority, is_transient, parse_policy

NOW = 1_700_000_000.0


def node(name, kinds=("llm",), caps=(), slots=1, running=0, state="alive", seen=NOW - 5):
    return {"name": name, "kinds": list(kinds), "capabilities": list(caps), "slots": slots, "running": running,
            "state": state, "last_seen": seen}


def task(**kw):
    t = {"id": "t1", "kind": "llm", "state": "queued", "requires": [], "priority": 0, "not_before": 0,
         "created_at": NOW - 10, "updated_at": NOW - 10, "node": None, "lease_deadline": None, "error": None}
    t.update(kw)
    return t


class PolicyFile(unittest.TestCase):
    def test_parse_and_classes(self):
        p = parse_policy('aging = 30\n[classes]\nP0 = 100\n[kinds.llm]\npriority = 25\nmax_running = 2\n'
                         'transient_exit_codes = [75]\n', "prio.toml")
        self.assertEqual((p.aging, p.kind("llm").priority, p.kind("llm").max_running), (30, 25, 2))
        self.assertEqual([p.class_of(x) for x in (100, 25, 20, 0, -1)], ["P0", "P1", "P1", "P2", "P3"])
        self.assertEqual(parse_policy('{"kinds": {"a": {"max_attempts": 2}}}', "p.json").kind("a").max_attempts, 2)

    def test_bad_files_name_the_key(self):
        for text, src, key in [("aging = -1", "p.toml", "aging"), ("[kinds.x]\nmax_running = 0", "p.toml", "kinds.x.max_running"),
                               ("[kinds.x]\nbogus = 1", "p.toml", "kinds.x.bogus"), ("[classes]\nP0 = 1\nP1 = 5", "p.toml", "classes"),
                               ("{", "p.json", "(file)"), ("[classes]\nP3 = 1", "p.toml", "classes.P3")]:
            with self.subTest(text=text), self.assertRaises(ConfigError) as cm:
                parse_policy(text, src)
            self.assertIn(key, cm.exception.message)

    def test_aging_and_transient(self):
        self.assertEqual(effective_priority(0, 600, 60), 10)
        self.assertEqual(effective_priority(5, 600, 0), 5)
        kp = KindPolicy(transient_exit_codes=(75,))
        cases = [("timeout", None, "", None, True), ("exit", 75, "", None, True), ("exit", 1, "HTTP 429", None, True),
                 ("exit", 1, "", "connection reset by peer", True), ("exit", 1, "syntax error", None, False),
                 ("signal", None, "", None, False)]
        for ended_by, code, out, err, want in cases:
            with self.subTest(ended_by=ended_by, code=code, out=out):
                self.assertEqual(is_transient(ended_by, code, out, err, kp), want)


class Explain(unittest.TestCase):
    def decide(self, t, nodes=(), deps_=(), **fleet):
        f = dispatch.Fleet(now=NOW, nodes=list(nodes), **fleet)
        return dispatch.explain(t, list(deps_), f, 600)

    def test_reasons_in_operator_words(self):
        prio = Policy(kinds={"llm": KindPolicy(max_running=2, max_per_minute=5)})
        cases = [
            ("no capability", task(requires=["gpu"]), [node("pi")], {}, "no worker has capability `gpu`"),
            ("no kind", task(kind="summarize"), [node("pi")], {}, "no worker runs kind `summarize`"),
            ("full", task(), [node("a", slots=3, running=3), node("b", slots=3, running=3)], {},
             "all 2 matching workers full (6/6 slots)"),
            ("stale", task(), [node("pi", state="stale", seen=NOW - 640)], {}, "worker `pi` stale (last heartbeat 640 s ago)"),
            ("backoff", task(not_before=NOW + 30), [node("pi")], {}, "backoff until"),
            ("quarantine", task(), [node("pi")], {"quarantined": {"llm": {"since": NOW - 60, "reason": "3 failures in a row"}}},
             "kind `llm` quarantined since"),
            ("degraded", task(priority=-5), [node("pi")], {"mode": "degraded"}, "mode `degraded` holds back P3"),
            ("emergency", task(priority=0), [node("pi")], {"mode": "emergency"}, "mode `emergency` holds back P2"),
            ("maintenance", task(priority=50), [node("pi")], {"mode": "maintenance"}, "mode `maintenance` dispatches nothing new"),
            ("fleet cap", task(), [node("pi")], {"policy": prio, "running_by_kind": {"llm": 2}},
             "fleet cap for kind `llm` reached (2/2)"),
            ("rate", task(), [node("pi")], {"policy": prio, "started_last_minute": {"llm": 5}},
             "start rate for kind `llm` reached (5/5 in the last 60 s)"),
        ]
        for name, t, nodes, fleet, want in cases:
            with self.subTest(name):
                d = self.decide(t, nodes, **fleet)
                self.assertFalse(d["dispatch"])
                self.assertTrue(any(want in r for r in d["reasons"]), d["reasons"])

    def test_ready_running_waiting_ended(self):
        d = self.decide(task(), [node("pi"), node("mac", slots=2, running=2)])
        self.assertEqual((d["dispatch"], d["target"]), (True, ["pi"]))
        d = self.decide(task(state="waiting"), deps_=[{"id": "t12", "state": "running", "node": "pi"},
                                                     {"id": "t13", "state": "succeeded", "node": "pi"}])
        self.assertEqual(d["reasons"], ["waiting for `t12` (running on `pi`)"])
        d = self.decide(task(state="running", node="pi", started_at=NOW - 5, lease_deadline=NOW + 60))
        self.assertIn("running on `pi` since", d["reason"])
        self.assertRegex(self.decide(task(state="failed", error="boom"))["reason"],
                         r"^ended failed at \d\d:\d\d:\d\d: boom$")

    def test_may_claim(self):
        f = dispatch.Fleet(now=NOW, mode="degraded")
        self.assertIsNone(dispatch.may_claim(task(), node("pi"), f))
        self.assertIsNotNone(dispatch.may_claim(task(priority=-1), node("pi"), f))
        self.assertIsNotNone(dispatch.may_claim(task(requires=["gpu"]), node("pi"), f))
        self.assertIsNone(dispatch.may_claim(task(requires=["gpu"]), node("pi", caps=["gpu", "x"]), f))


class Modes(unittest.TestCase):
    def test_hysteresis_table(self):
        # (disk share, db errors, operator) per check -> mode after it
        steps = [((0.5, 0, None), "normal"), ((0.9, 0, None), "degraded"), ((0.5, 0, None), "degraded"),
                 ((0.5, 0, None), "normal"), ((0.97, 0, None), "emergency"), ((0.9, 0, None), "emergency"),
                 ((0.9, 0, None), "degraded"), ((0.5, 3, None), "degraded"), ((0.5, 0, "maintenance"), "maintenance"),
                 ((0.99, 0, "maintenance"), "maintenance"), ((0.5, 0, "normal"), "normal"), ((None, 0, None), "normal"),
                 ((0.5, 0, None, True), "degraded"), ((0.5, 0, None), "degraded"), ((0.5, 0, None), "normal")]
        state = modes.ModeState()
        for i, (cond, want) in enumerate(steps):
            disk, errors, op, *shed = cond
            state = modes.next_mode(state, modes.wanted_mode(disk, errors, bool(shed and shed[0])), op)
            self.assertEqual(state.mode, want, f"step {i}: {state}")

    def test_the_operators_reason_is_the_modes_reason(self):
        cases = [("disk swap", "operator: maintenance: disk swap"), ("", "operator: maintenance")]
        for given, want in cases:
            with self.subTest(given=given):
                state = modes.next_mode(modes.ModeState(), ("normal", "all checks good"), "maintenance", given)
                self.assertEqual((state.mode, state.reason), ("maintenance", want))


class HealAndInvariants(unittest.TestCase):
    def row(self, **kw):
        r = {"n": 1, "state": "running", "node": "pi", "fence": 7, "lease_deadline": NOW + 60, "updated_at": NOW,
             "hb_missing": 0}
        r.update(kw)
        return r

    def test_heal_rules(self):
        b = {"start_timeout": 120}
        cases = [(self.row(hb_missing=2), "missing_from_heartbeats"), (self.row(hb_missing=1), None),
                 (self.row(state="leased", updated_at=NOW - 121), "never_started"),
                 (self.row(state="leased", updated_at=NOW - 60), None)]
        for row, want in cases:
            with self.subTest(row=row):
                acts = heal.heal_actions([row], NOW, b)
                self.assertEqual(acts[0][1] if acts else None, want)

    def test_invariants(self):
        cases = [
            ([self.row()], {1: "running"}, []),
            ([self.row(node=None)], {1: "running"}, ["no running task without a live lease"]),
            ([self.row(state="succeeded")], {1: "succeeded"}, ["no lease without a leased task"]),
            ([self.row(), self.row(n=2)], {1: "running", 2: "running"}, ["no task leased twice"]),
            ([self.row()], {1: "leased"}, ["history ends in the current state"]),
        ]
        for rows, last, want in cases:
            with self.subTest(want=want):
                self.assertEqual([v["invariant"] for v in heal.invariant_violations(rows, last)], want)


class Deps(unittest.TestCase):
    def test_cycles_and_order(self):
        self.assertEqual(deps.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}), ["a", "b", "c", "a"])
        self.assertIsNone(deps.find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}))
        self.assertEqual(deps.find_cycle({"a": ["a"]}), ["a", "a"])
        order = deps.topological({"c": ["a", "b"], "a": ["b"], "b": []})
        self.assertEqual(order, ["b", "a", "c"])


if __name__ == "__main__":
    unittest.main()
