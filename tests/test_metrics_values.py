"""/metrics values: rendered exactly (no 6-digit rounding), series that read 0 instead of
vanishing (node states, modes, quarantined kinds), a claim latency without the long-poll's
idle wait, and a 405 counted under the route its path names."""

import shutil
import subprocess
import threading
import time
import unittest
import urllib.request

from meshkit.core import metrics as m
from tests.helpers import Fleet, register

PROMTOOL = shutil.which("promtool")
NAN, INF = float("nan"), float("inf")


def scrape(fleet) -> str:
    req = urllib.request.Request(fleet.url + "/metrics", headers={"Authorization": f"Bearer {fleet.viewer_token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def samples(text: str) -> dict:
    """{series: value text} of a scrape."""
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def wait_for(fleet, want, timeout=10.0) -> dict:
    """The first scrape's samples for which want(samples) is true (the last one at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        got = samples(scrape(fleet))
        if want(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


class Rendering(unittest.TestCase):
    def test_values_are_exact(self):
        cases = [  # (value set on a gauge, the text rendered)
            ("zero", 0, "0"),
            ("whole float", 2.0, "2"),
            ("negative whole", -3, "-3"),
            ("a unix timestamp", 1795600000.0, "1795600000"),
            ("a unix timestamp with a fraction", 1795600000.123456, "1795600000.123456"),
            ("the shortest round trip", 0.1 + 0.2, "0.30000000000000004"),
            ("a small fraction", 0.0123, "0.0123"),
            ("tiny", 1e-07, "1e-07"),
            ("huge", 1e20, "1e+20"),
            ("past 2**53 as a float", 2.0 ** 60, "1.152921504606847e+18"),
            ("+Inf", INF, "+Inf"),
            ("-Inf", -INF, "-Inf"),
            ("NaN", NAN, "NaN"),
        ]
        for what, value, text in cases:
            with self.subTest(what):
                g = m.Gauge("g", "help")
                g.set(value)
                self.assertEqual(g.render()[-1], f"g {text}")
                self.assertEqual(m.number(value), text)
                if text not in ("NaN",):
                    self.assertEqual(float(text.replace("Inf", "inf")), float(value), "does not read back")

    def test_counters_past_a_million_keep_every_increment(self):
        cases = [  # (increments, rendered)
            ([1] * 3, "3"),
            ([1_234_566, 1], "1234567"),
            ([1_000_000, 1], "1000001"),
            ([1e6, 1], "1000001"),                    # a float step stays exact while whole
            ([2 ** 53, 1], str(2 ** 53 + 1)),          # ints: exact past a float's precision
            ([0.5, 0.25], "0.75"),
            ([1795600000, 0.5], "1795600000.5"),
        ]
        for steps, text in cases:
            with self.subTest(steps=steps):
                c = m.Counter("x_total", "help", ("route",))
                for step in steps:
                    c.inc("a", by=step)
                self.assertEqual(c.render()[-1], f'x_total{{route="a"}} {text}')

    def test_a_timestamp_gauge_reads_back_to_the_second(self):
        g = m.Gauge("meshkit_sync_last_success_timestamp_seconds", "help", ("job",))
        now = 1795612345.678
        g.replace({("memory",): now})
        line = g.render()[-1]
        self.assertEqual(line, 'meshkit_sync_last_success_timestamp_seconds{job="memory"} 1795612345.678')
        self.assertEqual(float(line.rsplit(" ", 1)[1]), now)

    def test_histogram_buckets_sum_and_count(self):
        h = m.Histogram("d_seconds", "help", ("route",), buckets=(0.1, 1, 2.5, 1234567.0))
        for v in (0.05, 3, 2_000_000):
            h.observe(v, "claim")
        h.observe(0.5, "tasks")
        self.assertEqual(h.render(), [
            "# HELP d_seconds help", "# TYPE d_seconds histogram",
            'd_seconds_bucket{route="claim",le="0.1"} 1',
            'd_seconds_bucket{route="claim",le="1"} 1',
            'd_seconds_bucket{route="claim",le="2.5"} 1',
            'd_seconds_bucket{route="claim",le="1234567"} 2',
            'd_seconds_bucket{route="claim",le="+Inf"} 3',
            'd_seconds_sum{route="claim"} 2000003.05',
            'd_seconds_count{route="claim"} 3',
            'd_seconds_bucket{route="tasks",le="0.1"} 0',
            'd_seconds_bucket{route="tasks",le="1"} 1',
            'd_seconds_bucket{route="tasks",le="2.5"} 1',
            'd_seconds_bucket{route="tasks",le="1234567"} 1',
            'd_seconds_bucket{route="tasks",le="+Inf"} 1',
            'd_seconds_sum{route="tasks"} 0.5',
            'd_seconds_count{route="tasks"} 1',
        ])

    def test_default_buckets_keep_their_labels(self):
        h = m.Histogram("d_seconds", "help")
        h.observe(40)
        les = [line.split('le="')[1].split('"')[0] for line in h.render() if "_bucket" in line]
        self.assertEqual(les, ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
                               "5", "10", "30", "+Inf"])
        self.assertIn("d_seconds_sum 40", h.render())

    @unittest.skipUnless(PROMTOOL, "promtool is not installed (Debian package prometheus)")
    def test_promtool_accepts_every_kind_of_value(self):
        reg = m.Registry()
        g = reg.add(m.Gauge("v", "values", ("case",)))
        for i, value in enumerate((0, 2.0, 1795600000.123456, 1e-07, 1e20, INF, -INF, NAN, -3)):
            g.set(value, str(i))
        reg.add(m.Counter("c_total", "a counter")).inc(by=1_234_567)
        reg.add(m.Histogram("h_seconds", "a histogram", buckets=(0.1, 1234567.0))).observe(2_000_000)
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=reg.render(), capture_output=True, text=True,
                           timeout=60)
        self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""), reg.render())


class Live(unittest.TestCase):
    """A supervisor of its own for each class: Fleet(**OVERRIDES), an admin and a worker client,
    and the worker registered as NODE (KINDS, SLOTS) unless NODE is None."""
    OVERRIDES, NODE, KINDS, SLOTS = {}, None, ("echo",), 1

    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(**cls.OVERRIDES)
        cls.fleet.make_viewer_token()
        cls.fleet.start_supervisor()
        cls.admin, cls.worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        if cls.NODE:
            register(cls.worker, cls.NODE, kinds=cls.KINDS, slots=cls.SLOTS)

    @classmethod
    def tearDownClass(cls):
        cls.admin.close()
        cls.worker.close()
        cls.fleet.close()


class NodesModesAndRoutes(Live):
    """Node states and modes read 0 rather than vanish; a 405 is counted under its path's route."""
    OVERRIDES = {"supervisor__stale_after": 2, "supervisor__cycle": 0.1}

    def test_every_node_state_and_mode_is_shown_0_or_1(self):
        got = samples(scrape(self.fleet))         # no node yet
        self.assertEqual((got.get('meshkit_nodes{state="alive"}'), got.get('meshkit_nodes{state="stale"}')),
                         ("0", "0"))
        for mode, value in (("normal", "1"), ("degraded", "0"), ("emergency", "0"), ("maintenance", "0")):
            self.assertEqual(got.get(f'meshkit_mode{{mode="{mode}"}}'), value, mode)
        register(self.worker, "w-stale")
        got = samples(scrape(self.fleet))
        self.assertEqual((got.get('meshkit_nodes{state="alive"}'), got.get('meshkit_nodes{state="stale"}')),
                         ("1", "0"))
        got = wait_for(self.fleet, lambda s: s.get('meshkit_nodes{state="stale"}') == "1")   # no heartbeat: stale
        self.assertEqual((got.get('meshkit_nodes{state="alive"}'), got.get('meshkit_nodes{state="stale"}')),
                         ("0", "1"))
        self.admin.call("POST", "/v1/mode", {"mode": "maintenance", "reason": "test"})
        try:
            got = wait_for(self.fleet, lambda s: s.get('meshkit_mode{mode="maintenance"}') == "1")
            for mode, value in (("normal", "0"), ("degraded", "0"), ("emergency", "0"), ("maintenance", "1")):
                self.assertEqual(got.get(f'meshkit_mode{{mode="{mode}"}}'), value, mode)
        finally:
            self.admin.call("POST", "/v1/mode", {"mode": "normal"})
        got = wait_for(self.fleet, lambda s: s.get('meshkit_mode{mode="normal"}') == "1")
        self.assertEqual(got.get('meshkit_mode{mode="maintenance"}'), "0")

    def test_a_wrong_method_is_counted_under_the_paths_route(self):
        for method, path in (("DELETE", "/metrics"), ("PUT", "/v1/tasks/t1"), ("DELETE", "/v1/status")):
            self.assertEqual(self.admin.request(method, path)[0], 405, path)
        self.assertEqual(self.admin.request("GET", "/v1/nope")[0], 404)
        got = samples(scrape(self.fleet))
        self.assertEqual(got.get('meshkit_http_requests_total{route="metrics",status="405"}'), "1")
        self.assertEqual(got.get('meshkit_http_requests_total{route="task",status="405"}'), "1")
        self.assertEqual(got.get('meshkit_http_requests_total{route="status",status="405"}'), "1")
        self.assertEqual(got.get('meshkit_http_errors_total{route="metrics"}'), "1")
        self.assertIn('meshkit_http_request_duration_seconds_count{route="metrics"}', got)
        self.assertEqual(got.get('meshkit_http_requests_total{route="unmatched",status="404"}'), "1")
        self.assertNotIn('meshkit_http_requests_total{route="unmatched",status="405"}', got)


class ClaimLatency(Live):
    """meshkit_claim_latency_seconds: the time to lease work, without the long-poll's idle wait."""
    OVERRIDES, NODE, SLOTS = {"supervisor__cycle": 0.1}, "w1", 4

    def test_a_long_poll_wait_is_not_claim_latency(self):
        started = time.monotonic()
        self.assertEqual(self.worker.call("POST", "/v1/claim", {"node": "w1", "wait": 2})["tasks"], [])
        self.assertGreaterEqual(time.monotonic() - started, 1.9)
        got = {}

        def claim():              # waits, and gets the task dispatched a second into its wait
            got["tasks"] = self.fleet.client("worker").call("POST", "/v1/claim", {"node": "w1", "wait": 10})["tasks"]

        waiter = threading.Thread(target=claim)
        waiter.start()
        time.sleep(1.0)
        self.admin.call("POST", "/v1/tasks", {"kind": "echo"})
        waiter.join(15)
        self.assertEqual(len(got.get("tasks", [])), 1, got)
        self.admin.call("POST", "/v1/tasks", {"kind": "echo"})
        self.assertEqual(len(self.worker.call("POST", "/v1/claim", {"node": "w1", "wait": 5})["tasks"]), 1)  # at once
        text = scrape(self.fleet)
        got = samples(text)
        self.assertEqual(got.get("meshkit_claim_latency_seconds_count"), "2")
        self.assertLess(float(got["meshkit_claim_latency_seconds_sum"]), 0.5, "the long-poll wait was counted")
        self.assertEqual(got.get('meshkit_claim_latency_seconds_bucket{le="0.5"}'), "2")
        # The route's duration keeps the whole time held, as its HELP says.
        self.assertGreater(float(got['meshkit_http_request_duration_seconds_sum{route="claim"}']), 2.9)
        help_line = next(line for line in text.splitlines()
                         if line.startswith("# HELP meshkit_http_request_duration_seconds "))
        self.assertIn("long-poll", help_line)


class QuarantineGauge(Live):
    """meshkit_kind_quarantined{kind} (0 or 1 per kind that failed) and meshkit_kinds_quarantined."""
    OVERRIDES, NODE, KINDS = {"tasks__quarantine_after": 1}, "w1", ("bad", "good")

    def test_a_quarantined_kind_is_shown_until_resumed(self):
        got = samples(scrape(self.fleet))
        self.assertEqual(got.get("meshkit_kinds_quarantined"), "0")
        self.assertFalse([k for k in got if k.startswith("meshkit_kind_quarantined{")])
        self.admin.call("POST", "/v1/tasks", {"kind": "bad", "max_attempts": 1})
        task = self.worker.call("POST", "/v1/claim", {"node": "w1"})["tasks"][0]
        self.worker.call("POST", "/v1/results", {"task": task["id"], "fence": task["fence"], "node": "w1",
                                                 "outcome": "failed", "error": "exit code 2", "exit_code": 2})
        got = samples(scrape(self.fleet))
        self.assertEqual(got.get('meshkit_kind_quarantined{kind="bad"}'), "1")
        self.assertEqual(got.get("meshkit_kinds_quarantined"), "1")
        self.admin.call("POST", "/v1/kinds/bad/resume")
        got = samples(scrape(self.fleet))
        self.assertEqual(got.get('meshkit_kind_quarantined{kind="bad"}'), "0")     # still there: reads 0
        self.assertEqual(got.get("meshkit_kinds_quarantined"), "0")


if __name__ == "__main__":
    unittest.main()
