"""Logs: JSON lines on stderr and, with logging.dir, in daily files YYYY-MM-DD.jsonl."""

import io
import json
import os
import tempfile
import unittest

from tests.helpers import Fleet

from meshkit.adapters.log import Logger, day_file
from meshkit.core.clock import FakeClock

DAY1 = 1_763_942_400.0          # 2025-11-24 00:00:00 UTC


class DailyFiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = os.path.join(self.tmp.name, "logs")

    def read(self, name, where=None):
        with open(os.path.join(where or self.dir, name)) as f:
            return [json.loads(line) for line in f]

    def test_lines_go_to_stderr_and_to_the_day_file(self):
        clock, stream = FakeClock(DAY1 + 3600), io.StringIO()
        log = Logger("supervisor", node="n1", stream=stream, clock=clock, log_dir=self.dir)
        log.info("task_dispatched", task="t1", trace_id="abc")
        log.debug("not written")
        clock.advance(86400 - 3600 - 0.5)          # 23:59:59.5
        log.warning("late", task="t2")
        clock.advance(1)                          # the next day
        log.error("early", task="t3", trace_id=None)
        log.close()
        self.assertEqual(sorted(os.listdir(self.dir)), ["2025-11-24.jsonl", "2025-11-25.jsonl"])
        day1, day2 = self.read("2025-11-24.jsonl"), self.read("2025-11-25.jsonl")
        self.assertEqual([r["event"] for r in day1], ["task_dispatched", "late"])
        self.assertEqual(day1[0], {"time": DAY1 + 3600, "level": "info", "role": "supervisor", "node": "n1",
                                   "event": "task_dispatched", "task": "t1", "trace_id": "abc"})
        self.assertEqual(day2, [{"time": DAY1 + 86400 + 0.5, "level": "error", "role": "supervisor", "node": "n1",
                                 "event": "early", "task": "t3"}])
        self.assertEqual([json.loads(x)["event"] for x in stream.getvalue().splitlines()],
                         ["task_dispatched", "late", "early"])

    def test_held_lines_are_written_together_when_the_outermost_hold_ends(self):
        clock = FakeClock(DAY1 + 86400 - 1)       # 23:59:59: the held lines straddle midnight
        writes = []

        class Stream(io.StringIO):
            def write(self, text):
                writes.append(text)
                return super().write(text)
        log = Logger("supervisor", stream=Stream(), clock=clock, log_dir=self.dir)
        with log.hold():
            log.info("a")
            with log.hold():
                clock.advance(2)
                log.info("b")
            self.assertEqual(writes, [], "nothing leaves while a hold is on")
            log.info("c")
        log.info("d")
        self.assertEqual([[json.loads(x)["event"] for x in w.splitlines()] for w in writes], [["a", "b", "c"], ["d"]])
        self.assertEqual([r["event"] for r in self.read("2025-11-24.jsonl")], ["a"])
        self.assertEqual([r["event"] for r in self.read("2025-11-25.jsonl")], ["b", "c", "d"])

    def test_off_by_default_and_appends_across_restarts(self):
        clock = FakeClock(DAY1)
        Logger("w", stream=io.StringIO(), clock=clock).info("x")
        self.assertFalse(os.path.exists(self.dir))
        for i in range(2):
            log = Logger("w", stream=io.StringIO(), clock=clock, log_dir=self.dir)
            log.info("start", n=i)
            log.close()
        self.assertEqual([r["n"] for r in self.read("2025-11-24.jsonl")], [0, 1])
        self.assertEqual(day_file("/l", DAY1 - 1), "/l/2025-11-23.jsonl")

    def test_an_unwritable_dir_does_not_stop_logging(self):
        blocker = os.path.join(self.tmp.name, "file")
        open(blocker, "w").close()
        stream = io.StringIO()
        log = Logger("w", stream=stream, clock=FakeClock(DAY1), log_dir=os.path.join(blocker, "logs"))
        log.info("still here")
        log.info("and here")
        self.assertEqual(log.file_errors, 2)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.assertEqual([r["event"] for r in lines], ["still here", "log_file_unwritable", "and here"])
        said = lines[1]       # once per outage, on stderr: the day file is what fails
        self.assertEqual((said["level"], said["path"]), ("error", os.path.join(blocker, "logs", "2025-11-24.jsonl")))
        self.assertIn("ReadWritePaths", said["hint"])
        os.unlink(blocker)    # writable again: said once, the file gets the lines from then on
        log.info("back")
        log.close()
        self.assertEqual([json.loads(line)["event"] for line in stream.getvalue().splitlines()][3:],
                         ["back", "log_file_ok"])
        self.assertEqual([r["event"] for r in self.read("2025-11-24.jsonl", os.path.join(blocker, "logs"))], ["back"])


class SupervisorLogDir(unittest.TestCase):
    def test_a_real_supervisor_writes_its_day_file(self):
        fleet = Fleet(logging__dir="logs")
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        fleet.client("admin").call("POST", "/v1/tasks", {"kind": "echo", "trace_id": "trace-ops-1"})
        self.assertEqual(fleet.stop(), 0)
        logs = os.path.join(fleet.dir, "logs")
        files = os.listdir(logs)
        self.assertEqual(len(files), 1)
        self.assertRegex(files[0], r"^\d{4}-\d\d-\d\d\.jsonl$")
        with open(os.path.join(logs, files[0])) as f:
            records = [json.loads(line) for line in f]
        events = [r["event"] for r in records]
        self.assertEqual((events[0], events[-1]), ("supervisor_started", "supervisor_stopped"))
        for r in records:
            self.assertLessEqual({"time", "level", "role", "node", "event"}, set(r))
            self.assertEqual(r["role"], "supervisor")
        dispatched = next(r for r in records if r["event"] == "task_dispatched")
        self.assertEqual((dispatched["task"], dispatched["trace_id"]), ("t1", "trace-ops-1"))


if __name__ == "__main__":
    unittest.main()
