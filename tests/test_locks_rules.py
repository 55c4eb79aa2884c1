"""meshkit.rules.lockview: lock states and reaper decisions, table-driven with plain values."""

import unittest

from meshkit.rules import lockview

HOST, BOOT, NOW = "box", "boot-1", 1_700_000_000.0


def rec(**kw):
    r = {"version": 1, "host": HOST, "pid": 4242, "start_time": 1000, "boot_id": BOOT,
         "acquired_at": NOW - 60, "ttl": 3600, "purpose": "sync"}
    r.update(kw)
    return r


class Classify(unittest.TestCase):
    # (name, record, kernel held, pid alive, pid start now, ttl, override, child alive) ->
    # (state, pid_status, local, action without --kill, action with --kill)
    CASES = [
        ("no record, free", None, False, False, None, 7200, False, False,
         "free", "unknown", False, "none", "none"),
        ("live holder within ttl", rec(), True, True, 1000, 7200, False, False,
         "held", "alive", True, "none", "none"),
        ("live holder, reaper ttl shorter but record's own ttl wins", rec(ttl=3600), True, True, 1000, 30, False, False,
         "held", "alive", True, "none", "none"),
        ("live holder past explicit --ttl", rec(ttl=3600), True, True, 1000, 30, True, False,
         "hung", "alive", True, "alert", "kill"),
        ("live holder past its own ttl", rec(ttl=10), True, True, 1000, 7200, False, False,
         "hung", "alive", True, "alert", "kill"),
        ("record without ttl uses reaper ttl", rec(ttl=None), True, True, 1000, 30, False, False,
         "hung", "alive", True, "alert", "kill"),
        ("dead holder: kernel freed it", rec(), False, False, None, 7200, False, False,
         "stale-record", "dead", True, "clear", "clear"),
        ("pid reused: alive, other start time = dead", rec(), False, True, 99999, 7200, False, False,
         "stale-record", "reused", True, "clear", "clear"),
        ("hung but pid reused: never killed", rec(ttl=10), True, True, 99999, 7200, False, False,
         "hung", "reused", True, "alert", "alert"),
        ("hung but recorded pid dead (descriptor inherited)", rec(ttl=10), True, False, None, 7200, False, False,
         "hung", "dead", True, "alert", "alert"),
        ("no start time known (macOS): pid alive is enough", rec(start_time=None), True, True, None, 7200, False, False,
         "held", "alive", True, "none", "none"),
        ("start time unknown now: pid alive is enough", rec(ttl=10), True, True, None, 7200, False, False,
         "hung", "alive", True, "alert", "kill"),
        ("another host, kernel free: left alone", rec(host="other"), False, False, None, 7200, False, False,
         "stale-record", "foreign", False, "none", "none"),
        ("another host, hung: never killed", rec(host="other", ttl=10), True, True, 1000, 7200, False, False,
         "hung", "foreign", False, "none", "none"),
        ("this host, earlier boot: left alone", rec(boot_id="boot-0"), False, False, None, 7200, False, False,
         "stale-record", "foreign", False, "none", "none"),
        ("record without boot id on this host counts as local", rec(boot_id=None), False, False, None, 7200, False, False,
         "stale-record", "dead", True, "clear", "clear"),
        ("unreadable record, kernel free", {"unreadable": "junk"}, False, False, None, 7200, False, False,
         "stale-record", "unknown", False, "none", "none"),
        ("held, no record (a flock(1) user)", None, True, False, None, 7200, False, False,
         "held", "unknown", False, "none", "none"),
        ("holder dead, its command still runs: orphan", rec(child={"pid": 5}), False, False, None, 7200, False, True,
         "stale-record", "dead", True, "alert", "kill"),
        ("holder dead, its command gone too: clear", rec(child={"pid": 5}), False, False, None, 7200, False, False,
         "stale-record", "dead", True, "clear", "clear"),
    ]

    def test_table(self):
        for (name, record, held, alive, start, ttl, override, child, state, status, local,
             action, kill_action) in self.CASES:
            with self.subTest(name):
                v = lockview.classify(record, held, alive, start, HOST, BOOT, NOW, ttl,
                                      override_ttl=override, child_alive=child)
                self.assertEqual((v["state"], v["pid_status"], v["local"]), (state, status, local), v)
                self.assertIn(v["state"], lockview.STATES)
                self.assertTrue(v["reason"])
                self.assertEqual(lockview.plan(v, kill=False)["action"], action, v)
                self.assertEqual(lockview.plan(v, kill=True)["action"], kill_action, v)

    def test_age_and_ttl_reported(self):
        v = lockview.classify(rec(acquired_at=NOW - 90.5, ttl=60), True, True, 1000, HOST, BOOT, NOW, 7200)
        self.assertEqual((v["age"], v["ttl"], v["state"]), (90.5, 60, "hung"))
        self.assertIn("past its TTL of 60s", v["reason"])

    def test_exactly_at_ttl_is_not_hung(self):
        v = lockview.classify(rec(acquired_at=NOW - 60, ttl=60), True, True, 1000, HOST, BOOT, NOW, 7200)
        self.assertEqual(v["state"], "held")

    def test_reason_names_pid_reuse(self):
        v = lockview.classify(rec(), False, True, 5, HOST, BOOT, NOW, 7200)
        self.assertIn("start time differs", v["reason"])


class Helpers(unittest.TestCase):
    def test_same_process(self):
        cases = [((1000, True, 1000), True), ((1000, True, 1001), False), ((1000, False, None), False),
                 ((None, True, 5), True), ((1000, True, None), True), ((None, False, None), False)]
        for args, want in cases:
            with self.subTest(args):
                self.assertEqual(lockview.same_process(*args), want)

    def test_usable(self):
        for record, want in [(rec(), True), (None, False), ({"unreadable": "x"}, False),
                             (rec(pid="12"), False), (rec(pid=True), False), (rec(host=None), False), ([], False)]:
            with self.subTest(record):
                self.assertEqual(lockview.usable(record), want)

    def test_effective_ttl(self):
        self.assertEqual(lockview.effective_ttl(rec(ttl=5), 100), 5)
        self.assertEqual(lockview.effective_ttl(rec(ttl=5), 100, override=True), 100)
        self.assertEqual(lockview.effective_ttl(rec(ttl=0), 100), 100)
        self.assertEqual(lockview.effective_ttl(rec(ttl="x"), 100), 100)
        self.assertEqual(lockview.effective_ttl(None, 100), 100)

    def test_names(self):
        good = ["memory", "memory-sync", "a.b_c-1", "GPU0", "x" * lockview.NAME_MAX]
        bad = ["", "../x", "..", ".", ".hidden", "a/b", "a..b", "/etc/passwd", "-rf", "a b", "a\x00",
               "é", "x" * (lockview.NAME_MAX + 1), None]
        for n in good:
            with self.subTest(good=n):
                self.assertIsNone(lockview.name_problem(n))
        for n in bad:
            with self.subTest(bad=n):
                self.assertIsNotNone(lockview.name_problem(n))


if __name__ == "__main__":
    unittest.main()
