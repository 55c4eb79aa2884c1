"""auth.viewer_token_file as an operator meets it: a real `python -m meshkit supervisor` that
refuses to start (exit 2, one line naming the config file, the key, the token file, what was
expected and what was found) when the token file is missing, not a file, readable or writable by
others, or holds a token under 16 characters; and one that starts with a good file (group-read
0640, as `init` writes it), with the key left at its default and no file, or with the key empty
(then no bearer token opens /metrics: a viewer key's signing secret never does)."""

import os
import subprocess
import sys
import unittest

from tests.helpers import ROOT, Fleet, env, meshkit
from tests.test_supervisor_api import raw_request

KEY = "auth.viewer_token_file"
GOOD = "v" * 16                                    # the shortest token accepted


def write_token(path: str, text: str, mode: int = 0o640) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


class ViewerTokenFile(unittest.TestCase):
    def fleet(self, **overrides) -> Fleet:
        fleet = Fleet(**overrides)
        self.addCleanup(fleet.close)
        return fleet

    def refused(self, fleet: Fleet, *texts) -> str:
        """Start a supervisor that must not start: exit 2 and one stderr line holding texts."""
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--config", fleet.config,
                                 "--listen", "127.0.0.1:0"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            self.fail(f"the supervisor started: {out[:200]!r}")
        self.assertEqual(proc.returncode, 2, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(out, "")                    # no URL printed: it never served
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith(f"meshkit: {fleet.config}: {KEY}: expected "), lines[0])
        for text in texts:
            self.assertIn(text, lines[0])
        self.assertFalse(os.path.exists(os.path.join(fleet.dir, "data", "supervisor.url")))
        return lines[0]

    def test_a_missing_token_file_set_in_the_config_is_refused(self):
        fleet = self.fleet(auth__viewer_token_file="prometheus.token")
        path = os.path.join(fleet.dir, "prometheus.token")
        self.refused(fleet, f"found no file {path}", "meshkit init", '"" = no viewer token')

    def test_a_token_file_others_can_read_or_write_is_refused(self):
        fleet = self.fleet(auth__viewer_token_file="viewer.token")
        path = os.path.join(fleet.dir, "viewer.token")
        for mode in (0o644, 0o642, 0o660, 0o604):
            with self.subTest(mode=oct(mode)):
                write_token(path, GOOD * 3, mode)
                self.refused(fleet, "mode 0640 or stricter", f"found {path} with mode {mode:04o}",
                             f"run chmod 640 {path}")

    def test_a_short_or_empty_token_is_refused_without_showing_it(self):
        fleet = self.fleet(auth__viewer_token_file="viewer.token")
        path = os.path.join(fleet.dir, "viewer.token")
        for text, found in (("abc12\n", f"found 5 characters in {path}"),
                            (GOOD[:15] + "\n", f"found 15 characters in {path}"),
                            ("\n", f"found an empty file {path}")):
            with self.subTest(text=text):
                write_token(path, text)
                line = self.refused(fleet, "a viewer bearer token of at least 16 characters", found)
                if text.strip():
                    self.assertNotIn(text.strip(), line.replace(path, ""))

    def test_a_directory_is_not_a_token_file(self):
        fleet = self.fleet(auth__viewer_token_file="tokens")
        os.mkdir(os.path.join(fleet.dir, "tokens"), 0o750)
        self.refused(fleet, f"found {os.path.join(fleet.dir, 'tokens')}, not a file")

    def test_a_bad_file_at_the_default_path_is_refused_too(self):
        # the key left at its default (as `init` and quickstart write it: commented out): a file
        # that is there is used, so it is checked the same way
        fleet = self.fleet()
        path = os.path.join(fleet.dir, "viewer.token")
        write_token(path, GOOD, 0o644)
        self.refused(fleet, f"found {path} with mode 0644", f"run chmod 640 {path}")

    def test_good_files_start_and_the_token_opens_metrics(self):
        for overrides, name in (({KEY.replace(".", "__"): "viewer.token"}, "viewer.token"),
                                ({}, "viewer.token")):                  # the default path
            with self.subTest(overrides=overrides):
                fleet = self.fleet(**overrides)
                write_token(os.path.join(fleet.dir, name), GOOD + "\n", 0o640)   # group may read
                url = fleet.start_supervisor()
                status, _ = raw_request(url, "GET", "/metrics", headers={"Authorization": f"Bearer {GOOD}"})
                self.assertEqual(status, 200)
                self.assertEqual(fleet.stop(), 0)

    def test_no_file_at_the_default_path_or_an_empty_key_means_no_token_file(self):
        for overrides in ({}, {KEY.replace(".", "__"): ""}):
            with self.subTest(overrides=overrides):
                fleet = self.fleet(**overrides)
                url = fleet.start_supervisor()
                viewer = [s for role, s, *_ in fleet.keys.values() if role == "viewer"][0]
                self.assertEqual(raw_request(url, "GET", "/metrics",         # a signing secret is no bearer token
                                             headers={"Authorization": f"Bearer {viewer}"})[0], 401)
                self.assertEqual(raw_request(url, "GET", "/metrics",
                                             headers={"Authorization": f"Bearer {GOOD}"})[0], 401)
                self.assertEqual(fleet.stop(), 0)
                with open(os.path.join(fleet.dir, "supervisor-0.log")) as f:
                    started = [line for line in f if '"supervisor_started"' in line][0]
                self.assertIn('"viewer_token_file":""', started)      # the log says: none

    def test_init_output_passes_with_the_key_set_or_left_commented(self):
        fleet = self.fleet()
        d = os.path.join(fleet.dir, "etc")
        self.assertEqual(meshkit("init", "--dir", d).returncode, 0)
        config = os.path.join(d, "meshkit.toml")
        with open(config) as f:
            text = f.read()
        self.assertIn('# viewer_token_file = "viewer.token"', text)
        for uncomment in (False, True):
            with self.subTest(uncomment=uncomment):
                if uncomment:
                    with open(config, "w") as f:
                        f.write(text.replace('# viewer_token_file = "viewer.token"', 'viewer_token_file = "viewer.token"'))
                with open(os.path.join(d, "viewer.token")) as f:
                    token = f.read().strip()
                url = fleet.start_supervisor(config=config)
                status, _ = raw_request(url, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
                self.assertEqual(status, 200)
                self.assertEqual(fleet.stop(), 0)


if __name__ == "__main__":
    unittest.main()
