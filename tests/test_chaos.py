"""The chaos run, short: 100 tasks, 3 kill -9s (supervisor and workers), then the proof
(scripts/chaos.py checks the database and the outboxes; see its docstring)."""

import os
import re
import subprocess
import sys
import unittest

from tests.helpers import ROOT, env


class ChaosShort(unittest.TestCase):
    def test_100_tasks_3_kills_nothing_lost_or_duplicated(self):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "chaos.py"), "--tasks", "100",
                              "--kills", "3", "--seed", "7"], cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=120)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        self.assertEqual(out.returncode, 0, f"{line}\n{out.stderr[-3000:]}")
        m = re.search(r"kills (\d+) .*lost (\d+), duplicated (\d+), violations (\d+), wrong (\d+)", line)
        self.assertIsNotNone(m, line)
        self.assertEqual(tuple(int(x) for x in m.groups()), (3, 0, 0, 0, 0), line)
        wall = float(re.search(r"wall ([\d.]+) s", line).group(1))
        self.assertLess(wall, 60, line)
        print(f"\n  {line}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
