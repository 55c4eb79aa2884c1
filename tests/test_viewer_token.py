"""init's viewer token file: a bearer token for /metrics (Prometheus) and the page."""

import os
import stat
import subprocess
import sys
import tempfile
import unittest

from tests.helpers import ROOT, env, meshkit, read_line
from tests.test_supervisor_api import raw_request


class ViewerToken(unittest.TestCase):
    def test_init_writes_it_and_metrics_accept_it(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(meshkit("init", "--dir", d).returncode, 0)
            path = os.path.join(d, "viewer.token")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
            token = open(path).read().strip()
            proc = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--config",
                                     os.path.join(d, "meshkit.toml"), "--listen", "127.0.0.1:0"], cwd=ROOT, env=env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:
                url = read_line(proc, 15)
                status, text = raw_request(url, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
                self.assertEqual(status, 200)
                for family in (b"meshkit_replication_lag_changes", b"meshkit_fleet_leases_held",
                               b"meshkit_sync_consecutive_failures"):
                    self.assertIn(family, text)
                self.assertEqual(raw_request(url, "GET", "/metrics",
                                             headers={"Authorization": "Bearer " + "x" * 40})[0], 401)
                status, body = raw_request(url, "GET", "/v1/overview", headers={"Authorization": f"Bearer {token}"})
                self.assertEqual(status, 200)
                self.assertIn("sync", body["status"])
                self.assertIn("leases", body["status"])
            finally:
                proc.terminate()
                proc.wait(15)
                proc.stdout.close()


if __name__ == "__main__":
    unittest.main()
