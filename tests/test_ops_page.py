"""The status page: GET / (self-contained HTML, viewer token only), GET /v1/overview, and
what a person sees in headless Chromium once the page's scripts ran."""

import json
import re
import shutil
import subprocess
import tempfile
import unittest
import urllib.error
import urllib.request

from meshkit.rules.policy import quarantine_last_error, quarantine_reason
from tests.helpers import Fleet

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=3000"]


def secret_of(fleet, role):
    """The viewer token (what a person pastes), else the signing secret of a key with `role`."""
    return fleet.viewer_token if role == "viewer" else next(s for _, (r, s, *_) in fleet.keys.items() if r == role)


def get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        return resp.status, resp.headers, resp.read()


class StatusPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        fleet = cls.fleet = Fleet(supervisor__cycle=0.2)
        fleet.make_viewer_token()
        fleet.start_supervisor()
        admin, worker = fleet.client("admin"), fleet.client("worker")
        worker.call("POST", "/v1/heartbeat", {"node": "pi-kitchen", "kinds": ["echo"], "slots": 2,
                                              "load": [0.42, 0.3, 0.2], "mem_available": 300 * 1024 * 1024})
        worker.call("POST", "/v1/heartbeat", {"node": "mac-studio", "kinds": ["echo"], "slots": 4, "capabilities": ["gpu"]})
        admin.call("POST", "/v1/tasks", {"kind": "echo", "max_attempts": 1})
        t = worker.call("POST", "/v1/claim", {"node": "mac-studio", "wait": 0})["tasks"][0]
        worker.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": "mac-studio",
                                            "outcome": "failed", "error": "exit 3: <b>boom</b>"})
        for i in range(5):
            admin.call("POST", "/v1/tasks", {"kind": "echo", "payload": {"i": i}})
        t = worker.call("POST", "/v1/claim", {"node": "pi-kitchen", "wait": 0})["tasks"][0]
        worker.call("POST", f"/v1/tasks/{t['id']}/start", {"node": "pi-kitchen", "fence": t["fence"]})
        admin.close()
        worker.close()

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def test_the_page_is_self_contained_and_holds_no_data(self):
        status, headers, body = get(self.fleet.url + "/")
        html = body.decode()
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/html"))
        self.assertIn("default-src 'none'", headers["Content-Security-Policy"])
        self.assertEqual(re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html), [])
        self.assertNotIn("@import", html)
        self.assertNotIn("pi-kitchen", html)
        for _, (_, secret, *_) in self.fleet.keys.items():
            self.assertNotIn(secret, html)
        self.assertNotIn(self.fleet.viewer_token, html)
        # without JavaScript (curl, w3m) it says what it needs and where else to look
        noscript = re.search(r"<noscript>(.*?)</noscript>", html, re.S).group(1)
        self.assertIn("/v1/overview", noscript)
        self.assertIn("python3 -m meshkit status", noscript)

    def test_overview_needs_the_viewer_token(self):
        url = self.fleet.url + "/v1/overview"
        for token in (None, secret_of(self.fleet, "admin"), secret_of(self.fleet, "worker"), "nope"):
            with self.subTest(token=bool(token)), self.assertRaises(urllib.error.HTTPError) as e:
                get(url, token)
            self.assertEqual(e.exception.code, 401)
        status, _, body = get(url, secret_of(self.fleet, "viewer"))
        data = json.loads(body)
        self.assertEqual({n["name"] for n in data["status"]["nodes"]}, {"pi-kitchen", "mac-studio"})
        self.assertEqual([(t["id"], t["state"], t["node"]) for t in data["running"]], [("t2", "running", "pi-kitchen")])
        self.assertEqual([(t["id"], t["error"]) for t in data["failures"]], [("t1", "exit 3: <b>boom</b>")])

    def chromium(self, fragment=""):
        with tempfile.TemporaryDirectory(prefix="mk-chromium-") as profile:
            p = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                self.fleet.url + "/" + fragment], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        return p.stdout

    @unittest.skipUnless(CHROMIUM, "chromium is not installed (Debian package chromium)")
    def test_a_person_with_the_viewer_token_sees_the_fleet(self):
        dom = self.chromium("#token=" + secret_of(self.fleet, "viewer"))
        for node in ("pi-kitchen", "mac-studio"):
            self.assertRegex(dom, rf'<tr data-node="{node}"><td>{node}</td><td><span class="badge ok">alive</span>')
        counts = dict(re.findall(r'id="count-([a-z]+)">(\d+)<', dom))
        self.assertEqual(counts, {"waiting": "0", "queued": "4", "leased": "0", "running": "1", "succeeded": "0",
                                  "failed": "1", "cancelled": "0"})
        self.assertIn("<td>0.42</td>", dom)                       # pi-kitchen's load
        self.assertIn("<td>t2</td><td>echo</td><td>running</td><td>pi-kitchen</td>", dom)
        self.assertIn("exit 3: &lt;b&gt;boom&lt;/b&gt;", dom)      # a failure reason, as text, never HTML
        self.assertNotIn("<b>boom</b>", dom)
        self.assertIn("mode normal", dom)
        self.assertIn('<section id="quarantine" class="hidden">', dom)     # no kind is quarantined
        self.assertNotIn(secret_of(self.fleet, "viewer"), dom)    # the token left the address bar

    @unittest.skipUnless(CHROMIUM, "chromium is not installed (Debian package chromium)")
    def test_without_a_token_only_the_login_form(self):
        dom = self.chromium()
        self.assertIn('<div id="login" class="">', dom)
        self.assertIn('<main id="app" class="hidden">', dom)
        self.assertNotIn("pi-kitchen", dom)
        refused = self.chromium("#token=" + secret_of(self.fleet, "admin"))
        self.assertIn("That token was refused", refused)
        self.assertNotIn("pi-kitchen", refused)


class QuarantinedKinds(unittest.TestCase):
    """A quarantined kind on the page: since when, the failures in a row, the last error (as
    text), and the command that releases it."""
    ERROR = "exit code 3: <img src=x onerror=alert(1)>"

    @classmethod
    def setUpClass(cls):
        fleet = cls.fleet = Fleet(supervisor__cycle=0.2, tasks__quarantine_after=2)
        fleet.make_viewer_token()
        fleet.start_supervisor()
        admin, worker = fleet.client("admin"), fleet.client("worker")
        worker.call("POST", "/v1/heartbeat", {"node": "pi", "kinds": ["flaky", "echo"], "slots": 1})
        for error in ("exit code 1: first", cls.ERROR):
            admin.call("POST", "/v1/tasks", {"kind": "flaky", "max_attempts": 1})
            t = worker.call("POST", "/v1/claim", {"node": "pi", "wait": 0})["tasks"][0]
            worker.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": "pi",
                                                "outcome": "failed", "error": error})
        admin.close()
        worker.close()

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def test_the_overview_says_since_when_why_and_how_to_release(self):
        _, _, body = get(self.fleet.url + "/v1/overview", secret_of(self.fleet, "viewer"))
        data = json.loads(body)
        [q] = data["quarantined"]
        self.assertEqual((q["kind"], q["failures_in_a_row"], q["last_error"]), ("flaky", 2, self.ERROR))
        self.assertEqual(q["reason"], "2 failures in a row, last: " + self.ERROR)
        self.assertEqual(q["release"], "python3 -m meshkit kinds resume flaky")
        self.assertLessEqual(q["since"], data["server_time"])
        self.assertGreater(q["since"], data["server_time"] - 60)
        # the page reads those fields, and puts them in the DOM as text only
        _, _, page = get(self.fleet.url + "/")
        html = page.decode()
        for field in ("d.quarantined", "q.since", "q.failures_in_a_row", "q.last_error", "q.release"):
            self.assertIn(field, html)
        self.assertNotIn("innerHTML", html)

    def test_the_last_error_is_read_back_from_the_stored_reason(self):
        self.assertEqual(quarantine_last_error(quarantine_reason(3, "x, last: y")), "x, last: y")
        self.assertIsNone(quarantine_last_error(quarantine_reason(3, None)))
        self.assertIsNone(quarantine_last_error(None))

    @unittest.skipUnless(CHROMIUM, "chromium is not installed (Debian package chromium)")
    def test_a_person_sees_the_quarantined_kind(self):
        dom = StatusPage.chromium(self, "#token=" + secret_of(self.fleet, "viewer"))
        self.assertIn('<section id="quarantine" class="">', dom)
        row = re.search(r'<tr data-kind="flaky">(.*?)</tr>', dom).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        self.assertEqual(cells[0], "flaky")
        self.assertRegex(cells[1], r"\(\d+s ago\)$")
        self.assertEqual(cells[2], "2")
        self.assertEqual(cells[3], "exit code 3: &lt;img src=x onerror=alert(1)&gt;")     # text, never HTML
        self.assertEqual(cells[4], "<code>python3 -m meshkit kinds resume flaky</code>")
        self.assertNotIn("<img", dom)


if __name__ == "__main__":
    unittest.main()
