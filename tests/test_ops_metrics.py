"""/metrics on a live supervisor: scraped with the viewer bearer token as Prometheus does,
checked by `promtool check metrics`, with fixed route labels and the ops gauges."""

import shutil
import subprocess
import time
import unittest
import urllib.error
import urllib.request

from tests.helpers import Fleet, register

PROMTOOL = shutil.which("promtool")


def secret_of(fleet, role):
    """The viewer token (the bearer token Prometheus sends), else the signing secret of a key with `role`."""
    return fleet.viewer_token if role == "viewer" else next(s for _, (r, s, *_) in fleet.keys.items() if r == role)


def scrape(fleet, token):
    req = urllib.request.Request(fleet.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type"), resp.read().decode()


class LiveMetrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__cycle=0.1)
        cls.fleet.make_viewer_token()
        cls.fleet.start_supervisor()
        admin, worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        register(worker, "w1")
        for i in range(3):
            admin.call("POST", "/v1/tasks", {"kind": "echo", "payload": {"i": i}})
        leased = worker.call("POST", "/v1/claim", {"node": "w1", "wait": 0})["tasks"]
        assert leased, "nothing leased"
        fleet = cls.fleet
        status, _ = fleet.client("viewer").request("GET", "/v1/tasks/t999")       # a 404 with an id in the path
        assert status == 404
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:                     # the ops gauges come with the first cycles
            cls.text = scrape(fleet, secret_of(fleet, "viewer"))[2]
            if "meshkit_mode{" in cls.text and "meshkit_process_resident_memory_bytes " in cls.text:
                break
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    @unittest.skipUnless(PROMTOOL, "promtool is not installed (Debian package prometheus)")
    def test_promtool_accepts_a_live_scrape(self):
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=self.text, capture_output=True, text=True, timeout=60)
        self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""), self.text[:2000])

    def test_the_families_operators_need(self):
        for family in ("meshkit_http_requests_total", "meshkit_http_request_duration_seconds", "meshkit_tasks",
                       "meshkit_nodes", "meshkit_claim_latency_seconds", "meshkit_oldest_queued_seconds",
                       "meshkit_mode", "meshkit_epoch", "meshkit_process_resident_memory_bytes",
                       "meshkit_memory_guard", "meshkit_build_info", "meshkit_tasks_pruned_total"):
            self.assertIn(f"# TYPE {family} ", self.text)
        self.assertIn('meshkit_tasks{state="queued"} 2', self.text)
        self.assertIn('meshkit_tasks{state="leased"} 1', self.text)
        self.assertIn('meshkit_nodes{state="alive"} 1', self.text)
        self.assertIn('meshkit_mode{mode="normal"} 1', self.text)
        self.assertIn('meshkit_memory_guard{state="ok"} 1', self.text)
        self.assertIn("meshkit_claim_latency_seconds_count 1", self.text)
        self.assertIn("meshkit_tasks_pruned_total 0", self.text)        # nothing ended 30 days ago

    def test_route_labels_are_fixed_never_raw_paths(self):
        self.assertIn('meshkit_http_requests_total{route="task",status="404"} 1', self.text)
        self.assertNotIn("t999", self.text)

    def test_only_the_viewer_secret_is_a_bearer_token(self):
        status, ctype, _ = scrape(self.fleet, secret_of(self.fleet, "viewer"))
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        for role in ("admin", "worker"):
            with self.subTest(role), self.assertRaises(urllib.error.HTTPError) as e:
                scrape(self.fleet, secret_of(self.fleet, role))
            self.assertEqual(e.exception.code, 401)
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(self.fleet.url + "/metrics", timeout=10)
        self.assertEqual(e.exception.code, 401)


if __name__ == "__main__":
    unittest.main()
