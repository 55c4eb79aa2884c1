"""Config values the rest of meshkit cannot use are refused at load, naming file, key,
expected and found: task defaults beyond what the supervisor accepts on a dispatch,
intervals of 0 that make a loop spin, timeouts and TTLs of 0 that end everything at once,
URLs that are not http://HOST:PORT."""

import math
import os
import unittest

from meshkit.core.errors import ConfigError
from meshkit.rules.config import parse_config, render_default_toml
from tests.helpers import Fleet, meshkit


ZERO_MEANS_NOTHING = ("supervisor.stale_after", "supervisor.lease_ttl", "supervisor.request_timeout",
                      "supervisor.start_timeout", "supervisor.sync_timeout", "locks.ttl")


SUPERVISOR = ["supervisor", "--listen", "127.0.0.1:0"]


def parse(key: str, value):
    return parse_config(render_default_toml({key: value}), "/etc/meshkit/meshkit.toml")


class Bounds(unittest.TestCase):
    def assertRefused(self, key: str, value, expected: str):
        with self.assertRaises(ConfigError) as cm:
            parse(key, value)
        msg = cm.exception.message
        self.assertTrue(msg.startswith(f"/etc/meshkit/meshkit.toml: {key}: expected {expected}"), msg)
        self.assertIn("found", msg)

    def test_task_defaults_within_what_a_dispatch_may_carry(self):
        for value in (0, -1, 604800.5, 10 ** 9, math.inf):
            with self.subTest(value=value):
                self.assertRefused("tasks.timeout", value, "a number of seconds > 0 and at most 604800")
        for value in (0, 101):
            with self.subTest(value=value):
                self.assertRefused("tasks.max_attempts", value, "a whole number from 1 to 100")
        self.assertEqual(parse("tasks.timeout", 604800).get("tasks.timeout"), 604800)
        self.assertEqual(parse("tasks.max_attempts", 100).get("tasks.max_attempts"), 100)

    def test_loop_intervals_must_be_above_zero(self):
        for key in ("supervisor.cycle", "worker.heartbeat_interval", "worker.poll_interval", "auth.max_skew",
                    "watchdog.interval"):
            for value in (0, -1, math.inf):
                with self.subTest(key=key, value=value):
                    self.assertRefused(key, value, "a number of seconds > 0")
            self.assertEqual(parse(key, 0.5).get(key), 0.5)

    def test_zero_stays_allowed_where_it_means_off(self):
        for key in ("supervisor.primary_lease", "tasks.backoff_base", "sync.io_timeout", "worker.poll_wait",
                    "supervisor.retain_ended"):
            with self.subTest(key):
                self.assertEqual(parse(key, 0).get(key), 0)
        self.assertRefused("supervisor.stale_after", math.inf, "a number of seconds > 0")
        for value in (-1, math.inf, "30d"):         # 0 keeps every task; a second or more is a retention
            self.assertRefused("supervisor.retain_ended", value, "a number of seconds >= 0")
        self.assertEqual(parse("supervisor.retain_ended", 1).get("supervisor.retain_ended"), 1)

    def test_durations_that_mean_nothing_at_zero_must_be_above_zero(self):
        # 0 would make every node stale at once, every lease expire at once, every connection time out
        # at once, every leased task requeued before it can start, every sync-mode write give up on the
        # standby at once, every held lock "hung" (and `locks reap --kill` end it).
        for key in ZERO_MEANS_NOTHING:
            for value in (0, 0.0, -1, math.inf, math.nan):
                with self.subTest(key=key, value=value):
                    self.assertRefused(key, value, "a number of seconds > 0")
            self.assertEqual(parse(key, 0.5).get(key), 0.5)

    def test_url_keys(self):
        for key in ("supervisor.peer", "watchdog.primary", "watchdog.standby"):
            with self.subTest(key):
                self.assertEqual(parse(key, "").get(key), "")          # not set: allowed, as before
                self.assertEqual(parse(key, "http://10.0.0.2:8765/").get(key), "http://10.0.0.2:8765/")
                self.assertEqual(parse(key, "http://[::1]:8765").get(key), "http://[::1]:8765")
                for bad in ("10.0.0.2:8765", "http://10.0.0.2", "http://10.0.0.2:0", "http://10.0.0.2:65536",
                            "http://10.0.0.2:abc", "http://[::1", "https://10.0.0.2:8765", "http://h:1/api",
                            "http://a b:1", 8765):
                    with self.subTest(key=key, bad=bad):
                        self.assertRefused(key, bad, '"" or "http://HOST:PORT" with a port from 1 to 65535')
        ok = ["http://10.0.0.1:8765", "http://10.0.0.2:8765"]
        self.assertEqual(parse("worker.supervisor", ok).get("worker.supervisor"), ok)
        for bad in ("", "http://10.0.0.1:99999", ["http://10.0.0.1:8765", "http://10.0.0.2"]):
            with self.subTest(bad=bad):
                self.assertRefused("worker.supervisor", bad, '"http://HOST:PORT" with a port from 1 to 65535')


class Processes(unittest.TestCase):
    def assertRefusedAtStart(self, argv: list, key: str, value, line: str):
        """`meshkit ARGV --config C` with key = value in C: exit 2, nothing on stdout, one line
        on stderr (`meshkit: C: LINE`), no data dir made."""
        fleet = Fleet(**{key.replace(".", "__"): value})
        try:
            r = meshkit(*argv, "--config", fleet.config, timeout=30)
            self.assertEqual((r.returncode, r.stdout), (2, ""), r.stderr)
            self.assertEqual(r.stderr.strip().splitlines(), [f"meshkit: {fleet.config}: {line}"])
            self.assertFalse(os.path.exists(os.path.join(fleet.dir, "data")))
        finally:
            fleet.close()

    def test_supervisor_refuses_a_task_timeout_it_could_never_dispatch(self):
        self.assertRefusedAtStart(SUPERVISOR, "tasks.timeout", 30 * 86400,
                                  "tasks.timeout: expected a number of seconds > 0 and at most 604800 (7 days), "
                                  "found 2592000 (a number)")

    def test_zero_durations_are_refused_by_the_commands_that_read_them(self):
        for key in ZERO_MEANS_NOTHING:
            with self.subTest(key):
                self.assertRefusedAtStart(["locks", "list"] if key.startswith("locks.") else SUPERVISOR, key, 0,
                                          f"{key}: expected a number of seconds > 0, found 0 (a number)")

    def test_the_largest_defaults_allowed_are_dispatchable(self):
        fleet = Fleet(tasks__timeout=604800, tasks__max_attempts=100)
        try:
            fleet.start_supervisor()
            task = fleet.client().call("POST", "/v1/tasks", {"kind": "job"})["task"]
            self.assertEqual((task["timeout"], task["max_attempts"]), (604800, 100))
        finally:
            fleet.close()


if __name__ == "__main__":
    unittest.main()
