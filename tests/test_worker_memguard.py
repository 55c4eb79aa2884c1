"""The worker's memory guard on a real process: over the hard limit it drains and exits 70."""

import subprocess
import sys
import unittest

from tests.helpers import ROOT, Fleet, env


class WorkerMemoryGuard(unittest.TestCase):
    def test_hard_limit_exits_70_after_registering(self):
        fleet = Fleet()
        try:
            url = fleet.start_supervisor()
            config = fleet.other_config("worker", limits__rss_hard_mb=1, worker__heartbeat_interval=0.5,
                                        worker__poll_wait=1)
            r = subprocess.run([sys.executable, "-m", "meshkit", "worker", "--config", config, "--supervisor", url,
                                "--name", "fat", "--work-dir", fleet.dir + "/work-fat"],
                               cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 70, r.stderr[-2000:])
            self.assertIn("memory_limit_exceeded", r.stderr)
            self.assertIn("fat", [n["name"] for n in fleet.client().call("GET", "/v1/status")["nodes"]])
        finally:
            fleet.close()


if __name__ == "__main__":
    unittest.main()
