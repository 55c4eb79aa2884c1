"""Retention's pure rules, table-driven with fixed times (rules/retention.py): which ended
tasks go, which lease events go, when records of deletions may go, and which changelog
entries a pull no longer needs."""

import unittest

from meshkit.rules import retention

NOW = 1_700_000_000.0
DAY = 86400.0


def ended(n, ago, state="succeeded", open_dependents=0, newest_history=False):
    return {"n": n, "state": state, "ended_at": NOW - ago, "open_dependents": open_dependents,
            "newest_history": newest_history}


class Prunable(unittest.TestCase):
    CASES = [
        # (name, candidates, retain, expected)
        ("ended long ago: goes", [ended(1, 31 * DAY)], 30 * DAY, [1]),
        ("failed and cancelled go too", [ended(1, 40 * DAY, "failed"), ended(2, 40 * DAY, "cancelled")], 30 * DAY,
         [1, 2]),
        ("ended recently: kept", [ended(1, 29 * DAY)], 30 * DAY, []),
        ("exactly the retention: kept (more than it must pass)", [ended(1, 30 * DAY)], 30 * DAY, []),
        ("not ended: kept however old", [ended(1, 90 * DAY, s) for s in ("waiting", "queued", "leased", "running")],
         30 * DAY, []),
        ("a task not ended yet depends on it: kept", [ended(1, 40 * DAY, open_dependents=1)], 30 * DAY, []),
        ("holds the newest history row: kept", [ended(1, 40 * DAY, newest_history=True)], 30 * DAY, []),
        ("0 = keep every task", [ended(1, 400 * DAY)], 0, []),
        ("small retention", [ended(1, 1.5), ended(2, 0.5)], 1, [1]),
        ("oldest end first, kept ones left out",
         [ended(3, 32 * DAY), ended(1, 35 * DAY), ended(2, 33 * DAY, open_dependents=2), ended(4, 1 * DAY)],
         30 * DAY, [1, 3]),
    ]

    def test_table(self):
        for name, candidates, retain, want in self.CASES:
            with self.subTest(name):
                self.assertEqual(retention.prunable(candidates, NOW, retain), want)


class ExpiredEvents(unittest.TestCase):
    def test_table(self):
        ev = [{"seq": 1, "at": NOW - 40 * DAY}, {"seq": 2, "at": NOW - 31 * DAY}, {"seq": 3, "at": NOW - 2 * DAY},
              {"seq": 4, "at": NOW - 35 * DAY}]
        for name, events, retain, want in [
            ("the leading run of old ones", ev, 30 * DAY, [1, 2]),       # 4 waits behind 3 (clock stepped back)
            ("none old", ev[2:3], 30 * DAY, []),
            ("0 = keep", ev, 0, []),
            ("nothing", [], 30 * DAY, []),
        ]:
            with self.subTest(name):
                self.assertEqual(retention.expired_events(events, NOW, retain), want)


class DeletionsExpiry(unittest.TestCase):
    def test_table(self):
        for name, mark, now, retain, head, want in [
            ("first call takes a mark", None, NOW, DAY, 50, (None, (NOW, 50))),
            ("mark younger than the retention: nothing yet", (NOW - 10, 40), NOW, DAY, 50, (None, (NOW - 10, 40))),
            ("mark as old as the retention: up to its head", (NOW - DAY, 40), NOW, DAY, 50, (40, (NOW - DAY, 40))),
            ("0 = keep them", (NOW - 100 * DAY, 40), NOW, 0, 50, (None, (NOW - 100 * DAY, 40))),
        ]:
            with self.subTest(name):
                self.assertEqual(retention.deletions_expiry(mark, now, retain, head), want)


class ChangelogDrops(unittest.TestCase):
    CASES = [
        # (name, entries [(seq, table, rowid, deleted)], later, gone, head, expected)
        ("older entries of a row changed again go, its newest stays",
         [(1, "tasks", 1, False), (2, "history", 1, False), (3, "tasks", 1, False), (4, "tasks", 1, False)],
         set(), set(), 4, [1, 3]),
        ("an entry with a later one after the window goes",
         [(1, "nodes", 1, False), (2, "nodes", 2, False)], {("nodes", 1)}, set(), 9, [1]),
        ("a row's entries before its deletion go; the deletion stays",
         [(1, "deps", 7, False), (2, "deps", 7, True)], set(), set(), 2, [1]),
        ("the entries of a row that is gone go (its deletion is after the window)",
         [(1, "tasks", 3, False), (2, "history", 9, False), (3, "tasks", 4, False)], set(), {("tasks", 3)}, 9, [1]),
        ("a deletion is never dropped here, even with a later entry for its rowid",
         [(1, "deps", 7, True), (2, "deps", 7, False)], set(), set(), 2, []),
        ("the newest entry (head) stays, even of a row that is gone",
         [(5, "nodes", 1, False)], {("nodes", 1)}, {("nodes", 1)}, 5, []),
        ("rows of different tables with the same rowid are different rows",
         [(1, "tasks", 1, False), (2, "history", 1, False)], set(), set(), 2, []),
    ]

    def test_table(self):
        for name, entries, later, gone, head, want in self.CASES:
            with self.subTest(name):
                self.assertEqual(retention.changelog_drops(entries, later, gone, head), want)


if __name__ == "__main__":
    unittest.main()
