"""The watchdog's state file: a watchdog that cannot write it refuses to start (naming the
key), and one that loses the ability while running keeps its view in memory."""

import os
import tempfile
import unittest

from meshkit.adapters.log import Logger
from meshkit.core.clock import FakeClock
from meshkit.rules.config import parse_config, render_default_toml
from meshkit.roles.watchdog.watchdog import Watchdog
from tests.helpers import meshkit


def config(d: str, **values) -> str:
    path = os.path.join(d, "meshkit.toml")
    with open(path, "w") as f:
        f.write(render_default_toml(dict({"watchdog.primary": "http://127.0.0.1:1",
                                          "watchdog.standby": "http://127.0.0.1:2"}, **values)))
    return path


class StateFile(unittest.TestCase):
    def test_unwritable_state_file_refuses_to_start(self):
        with tempfile.TemporaryDirectory() as d:
            path = config(d, **{"watchdog.state_file": "/dev/null/watchdog.json"})
            meshkit("init", "--dir", d, "--force")          # keys; the toml is rewritten: write ours again
            path = config(d, **{"watchdog.state_file": "/dev/null/watchdog.json"})
            r = meshkit("watchdog", "--config", path, timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("watchdog.state_file", r.stderr)
            self.assertIn("/dev/null is not a directory", r.stderr)
            self.assertNotIn("Traceback", r.stderr)

    def test_same_url_twice_is_a_config_error(self):
        with tempfile.TemporaryDirectory() as d:
            meshkit("init", "--dir", d, "--force")
            path = config(d, **{"watchdog.standby": "http://127.0.0.1:1"})
            r = meshkit("watchdog", "status", "--config", path, timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("watchdog.standby: expected the other supervisor's URL", r.stderr)
            r = meshkit("watchdog", "status", "--config", config(d, **{"watchdog.primary": ""}), timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)

    def test_status_exits_1_when_the_active_supervisor_does_not_answer(self):
        with tempfile.TemporaryDirectory() as d:
            meshkit("init", "--dir", d, "--force")
            r = meshkit("watchdog", "status", "--config", config(d), timeout=30)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("primary  http://127.0.0.1:1: no answer", r.stdout)

    def test_a_state_file_that_stops_being_writable_keeps_the_view_in_memory(self):
        with tempfile.TemporaryDirectory() as d:
            path = config(d)
            cfg = parse_config(open(path).read(), path, d)
            wd = Watchdog(cfg, ("admin-1", "x" * 32), FakeClock(), Logger("watchdog", stream=open(os.devnull, "w")))
            wd.save(dict(wd.state(), failures=1))
            self.assertEqual(wd.state()["failures"], 1)
            blocker = os.path.join(d, "gone")
            open(blocker, "w").close()                                      # its directory is a file now
            wd.state_path = os.path.join(blocker, "watchdog.json")
            wd.save(dict(wd.state(), failures=2))                           # no exception
            self.assertEqual(wd.state()["failures"], 2)                     # counted on, not reset
            wd.save(dict(wd.state(), failures=3))
            self.assertEqual(wd.state()["failures"], 3)
            os.unlink(blocker)
            os.mkdir(blocker)
            wd.save(dict(wd.state(), failures=0))
            self.assertEqual(wd.state()["failures"], 0)
            self.assertTrue(os.path.exists(wd.state_path))


if __name__ == "__main__":
    unittest.main()
