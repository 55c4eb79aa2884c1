"""A maintenance cycle that keeps failing (the database locked by another process for
minutes) logs cycle_failed at most once a minute, carrying how many it left out, and
cycle_ok once it works again; the mode still sees every failure (fake clock, no sleeps)."""

import io
import json
import unittest

from meshkit.adapters.log import Logger
from meshkit.core.errors import StoreError
from meshkit.roles.supervisor.brain import Brain
from tests.test_rowcache import RowCacheCase


class CycleFailedLog(RowCacheCase):
    def test_one_line_a_minute_then_ok(self):
        stream = io.StringIO()
        self.tasks.log = Logger("supervisor", stream=stream)
        self.brain = Brain(self.tasks, self.dir.name)
        broken = [True]
        real_reap = self.brain.reap

        def reap():
            if broken[0]:
                raise StoreError("database is locked", retry_after=1)
            return real_reap()
        self.brain.reap = reap
        # (seconds since the start, database broken?, the line expected from that cycle)
        steps = [(0, True, ("cycle_failed", 1, 0)), (2, True, None), (30, True, None), (59, True, None),
                 (60, True, ("cycle_failed", 5, 3)), (62, True, None), (64, False, ("cycle_ok", 6)),
                 (66, True, ("cycle_failed", 1, 0))]
        start = self.clock.monotonic()
        for at, is_broken, expected in steps:
            with self.subTest(at=at):
                self.clock.advance(start + at - self.clock.monotonic())
                broken[0] = is_broken
                before = len(stream.getvalue().splitlines())
                self.brain.cycle()
                lines = [json.loads(x) for x in stream.getvalue().splitlines()[before:]]
                got = [(r["event"], r["in_a_row"], r["not_logged"]) if r["event"] == "cycle_failed"
                       else (r["event"], r["after_failed"]) for r in lines if r["event"] in ("cycle_failed", "cycle_ok")]
                self.assertEqual(got, [expected] if expected else [])
        self.assertEqual(self.brain.db_errors, 1)

    def test_a_standby_cycle_that_fails_or_crashes_is_logged_and_counted(self):
        stream = io.StringIO()
        self.tasks.log = Logger("supervisor", stream=stream)
        self.brain = Brain(self.tasks, self.dir.name)
        for error, event in ((StoreError("database is locked", retry_after=1), "cycle_failed"),
                             (AttributeError("a bug"), "cycle_crashed")):
            with self.subTest(event=event):
                def compact():
                    raise error
                self.brain.retention.compact = compact
                self.brain.standby_cycle()          # does not raise: the supervisor's loop goes on
                self.clock.advance(61)
                self.assertEqual(json.loads(stream.getvalue().splitlines()[-1])["event"], event)
        self.assertEqual(self.brain.db_errors, 2)


if __name__ == "__main__":
    unittest.main()
