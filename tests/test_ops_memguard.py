"""Memory guard: the pure decision, reading this process's RSS, and real supervisors
forced under tiny limits (shed and keep serving; exit 70 cleanly and restart fine)."""

import json
import os
import tempfile
import time
import unittest

from tests.helpers import Fleet

from meshkit.adapters import procself
from meshkit.rules import memguard
from meshkit.rules.config import parse_config

MB = memguard.MB


def events(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


class Decide(unittest.TestCase):
    def test_table(self):
        cases = [
            # rss, soft, hard -> decision
            (None, 1, 1, "ok"),                   # unknown RSS: never act on a guess
            (100 * MB, 0, 0, "ok"),               # limits off
            (100 * MB, 200 * MB, 300 * MB, "ok"),
            (200 * MB, 200 * MB, 300 * MB, "shed"),
            (250 * MB, 200 * MB, 0, "shed"),
            (300 * MB, 200 * MB, 300 * MB, "exit"),
            (300 * MB, 0, 300 * MB, "exit"),
            (900 * MB, 0, 0, "ok"),
        ]
        for rss, soft, hard, want in cases:
            with self.subTest(rss=rss, soft=soft, hard=hard):
                self.assertEqual(memguard.decide(rss, soft, hard), want)

    def test_limits_from_megabytes_and_config_keys(self):
        self.assertEqual(memguard.limits(2, 3), (2 * MB, 3 * MB))
        cfg = parse_config("[limits]\nrss_soft_mb = 300\nrss_hard_mb = 400\n")
        self.assertEqual((cfg.get("limits.rss_soft_mb"), cfg.get("limits.rss_hard_mb")), (300, 400))
        self.assertEqual(parse_config("").get("limits.rss_hard_mb"), 0)
        with self.assertRaises(Exception):
            parse_config('[limits]\nrss_hard_mb = "1G"\n')


class ProcSelf(unittest.TestCase):
    def test_parse_vmrss(self):
        text = "Name:\tpython3\nVmPeak:\t  30000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n"
        self.assertEqual(procself.parse_vmrss(text), 12345 * 1024)
        self.assertIsNone(procself.parse_vmrss("Name:\tkthreadd\n"))

    def test_reads_this_process(self):
        rss = procself.rss_bytes()
        self.assertIsInstance(rss, int)
        self.assertGreater(rss, 1 * MB)
        self.assertLess(rss, 64 * 1024 * MB)

    def test_fallback_without_proc(self):
        with tempfile.TemporaryDirectory() as d:
            rss = procself.rss_bytes(os.path.join(d, "no-such-status"))
        self.assertGreater(rss, 1 * MB)          # getrusage's peak RSS


class RealSupervisor(unittest.TestCase):
    def wait_for_event(self, log, name, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in events(log) if e["event"] == name]
            if found:
                return found
            time.sleep(0.05)
        return []

    def test_hard_limit_exits_70_cleanly_and_restarts(self):
        fleet = Fleet(limits__rss_hard_mb=1, supervisor__cycle=0.2)
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        start = time.monotonic()
        self.assertEqual(fleet.supervisor.wait(15), memguard.EXIT_CODE)
        self.assertLess(time.monotonic() - start, 10)
        log = events(os.path.join(fleet.dir, "supervisor-0.log"))
        names = [e["event"] for e in log]
        self.assertIn("memory_limit_exceeded", names)
        self.assertEqual(names[-1], "supervisor_stopped")     # the clean shutdown ran
        hit = next(e for e in log if e["event"] == "memory_limit_exceeded")
        self.assertEqual((hit["hard_mb"], hit["exit_code"]), (1, 70))
        self.assertGreater(hit["rss_mb"], 1)
        # systemd would start it again; with the limit raised it serves from the same data.
        fleet.write_config(supervisor__cycle=0.2)
        fleet.start_supervisor()
        viewer = fleet.client("viewer")
        self.assertEqual(viewer.call("GET", "/v1/status")["role"], "primary")
        viewer.close()
        self.assertEqual(fleet.stop(), 0)

    def test_soft_limit_sheds_and_keeps_serving(self):
        fleet = Fleet(limits__rss_soft_mb=1, supervisor__cycle=0.1)
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        log = os.path.join(fleet.dir, "supervisor-0.log")
        shed = self.wait_for_event(log, "memory_shed")
        self.assertTrue(shed, "no memory_shed event")
        self.assertEqual(shed[0]["level"], "warning")
        self.assertEqual(shed[0]["soft_mb"], 1)
        client = fleet.client("admin")
        self.assertTrue(client.call("POST", "/v1/tasks", {"kind": "echo"})["created"])
        client.close()
        time.sleep(0.3)                                       # a few more cycles
        self.assertIsNone(fleet.supervisor.poll())
        self.assertEqual(len([e for e in events(log) if e["event"] == "memory_shed"]), 1, "logged once, not per cycle")
        self.assertEqual(fleet.stop(), 0)


if __name__ == "__main__":
    unittest.main()
