"""`meshkit quickstart --exit` as a newcomer runs it: real supervisor and workers."""

import tempfile
import unittest

from tests.helpers import meshkit


class Quickstart(unittest.TestCase):
    def test_demo_graph_runs_and_the_fleet_stops(self):
        with tempfile.TemporaryDirectory() as d:
            r = meshkit("quickstart", "--dir", d, "--exit", timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
            out = r.stdout
            for text in ("waiting -> queued    dependencies done", "retry 2 of 3", "failed (timeout)",
                         "$ meshkit status", "tasks: succeeded 5  failed 1", "quick-a", "quick-b",
                         "$ meshkit explain", "ended failed at ", "timed out after 2 s (priority 0, class P2)",
                         "quickstart fleet stopped"):
                self.assertIn(text, out)
            self.assertNotIn("keeps running", out)        # --exit: it says the fleet stops, not how to use it


if __name__ == "__main__":
    unittest.main()
