"""Bad usage and bad config as a user meets them: real `python -m meshkit` processes,
one line on stderr (never a traceback), exit 2."""

import os
import signal
import socket
import subprocess
import sys
import unittest

from meshkit import __version__
from meshkit.rules.config import render_default_toml
from tests.helpers import ROOT, Fleet, env, meshkit

BAD_URLS = ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://[::1", "notaurl", "http://127.0.0.1:0"]


class ErrorCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet()
        cls.dir = cls.fleet.dir
        cls.file = os.path.join(cls.dir, "a-file")
        with open(cls.file, "w") as f:
            f.write("not a directory\n")

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def config(self, name: str, values: dict) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(render_default_toml(values))
        return path

    def assertOneLine(self, r, code: int, *texts):
        self.assertEqual(r.returncode, code, r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith("meshkit: "), r.stderr)
        for text in texts:
            self.assertIn(text, lines[0])


class Listen(ErrorCase):
    def test_port_in_use_names_listen_and_address(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            r = meshkit("supervisor", "--config", self.fleet.config, "--listen", f"127.0.0.1:{port}", timeout=30)
            self.assertOneLine(r, 75, "--listen", f"127.0.0.1:{port}", "in use")    # may clear: systemd retries
            cfg = self.config("in-use.toml", {"supervisor.listen": f"127.0.0.1:{port}"})
            r = meshkit("supervisor", "--config", cfg, timeout=30)
            self.assertOneLine(r, 75, cfg, "supervisor.listen", f"127.0.0.1:{port}", "in use")

    def test_a_bad_listen_value_names_where_it_came_from(self):
        for value in ("8765", "127.0.0.1:99999", ":8765", ""):
            with self.subTest(value):
                r = meshkit("supervisor", "--config", self.fleet.config, "--listen", value, timeout=30)
                self.assertOneLine(r, 2, f"--listen: expected \"HOST:PORT\" with a port from 0 to 65535, found {value!r}")
                self.assertNotIn("supervisor.listen", r.stderr)
        cfg = self.config("bare-port.toml", {"supervisor.listen": "8765"})
        r = meshkit("supervisor", "--config", cfg, timeout=30)
        self.assertOneLine(r, 2, f"{cfg}: supervisor.listen: expected \"HOST:PORT\"", "found \"8765\"")

    def test_unbindable_addresses(self):
        for value in ["10.255.255.1:0", "300.1.1.1:80", "[::1]:0", "127.0.0.1:0:0", "host with space:80"]:
            with self.subTest(value):
                r = meshkit("supervisor", "--config", self.fleet.config, "--listen", value, timeout=30)
                self.assertOneLine(r, 2, "--listen", value)


class Urls(ErrorCase):
    def test_client_commands_refuse_a_bad_supervisor_url(self):
        for url in BAD_URLS:
            with self.subTest(url):
                r = meshkit("status", "--config", self.fleet.config, "--supervisor", url)
                self.assertOneLine(r, 2, "supervisor URL", url)
        r = meshkit("tasks", "--config", self.fleet.config, MESHKIT_SUPERVISOR="garbage")
        self.assertOneLine(r, 2, "garbage")

    def test_a_bad_supervisor_url_names_its_source(self):
        data = os.path.join(self.dir, "src-data")
        cfg = self.config("src.toml", {"supervisor.data_dir": data, "supervisor.listen": "127.0.0.1:0"})
        url_file = os.path.join(data, "supervisor.url")
        expected = "expected \"http://HOST:PORT\" with a port from 1 to 65535"
        for cmd in ("status", "kinds", "tasks"):
            with self.subTest(cmd):
                r = meshkit(cmd, "--config", cfg, "--supervisor", "garbage")
                self.assertOneLine(r, 2, f"bad supervisor URL 'garbage': {expected} (from --supervisor)")
                r = meshkit(cmd, "--config", cfg, MESHKIT_SUPERVISOR="http://h:99999")
                self.assertOneLine(r, 2, f"bad supervisor URL 'http://h:99999': {expected} (from $MESHKIT_SUPERVISOR)")
        # no --supervisor, no $MESHKIT_SUPERVISOR, no supervisor.url, and supervisor.listen is port 0:
        # no supervisor runs on this data dir (one that stopped cleanly removed its URL): exit 3, not a bad URL
        r = meshkit("status", "--config", cfg)
        self.assertOneLine(r, 3, f"{cfg}: supervisor.listen '127.0.0.1:0' means any free port",
                           f"there is none in {url_file}", "is the supervisor running?")
        os.makedirs(data, exist_ok=True)
        with open(url_file, "w") as f:
            f.write("http://127.0.0.1:abc\n")
        r = meshkit("status", "--config", cfg)
        self.assertOneLine(r, 2, f"bad supervisor URL 'http://127.0.0.1:abc': {expected} (from {url_file})")

    def test_an_ipv6_listen_address_makes_a_url(self):
        cfg = self.config("v6.toml", {"supervisor.data_dir": "v6-data", "supervisor.listen": "::1:1"})
        r = meshkit("status", "--config", cfg)
        self.assertOneLine(r, 3, "http://[::1]:1: ")          # asked there (nobody listens), not refused as a URL

    def test_worker_refuses_a_bad_supervisor_url(self):
        for url in BAD_URLS[:3]:
            with self.subTest(url):
                r = meshkit("worker", "--config", self.fleet.config, "--supervisor", "http://127.0.0.1:1",
                            "--supervisor", url, timeout=30)
                self.assertOneLine(r, 2, "--supervisor", url)

    def test_url_keys_are_checked_at_load(self):
        cases = [("worker.supervisor", "http://127.0.0.1:99999"), ("worker.supervisor", ["http://a:1", "b:2"]),
                 ("supervisor.peer", "10.0.0.2:8765"), ("watchdog.primary", "http://[::1"),
                 ("watchdog.standby", "http://h:abc")]
        for key, value in cases:
            with self.subTest(key=key, value=value):
                cfg = self.config("bad-url.toml", {key: value})
                for argv in (["status", "--supervisor", "http://127.0.0.1:1"], ["watchdog", "status"]):
                    r = meshkit(*argv, "--config", cfg)
                    self.assertOneLine(r, 2, cfg, key, "http://HOST:PORT")


class Dirs(ErrorCase):
    def test_init_dir_that_cannot_be_made(self):
        for d in (self.file, os.path.join(self.file, "sub")):
            with self.subTest(d):
                r = meshkit("init", "--dir", d)
                self.assertOneLine(r, 2, "--dir", d)

    @unittest.skipIf(os.geteuid() == 0, "root may write anywhere")
    def test_init_dir_without_permission(self):
        ro = os.path.join(self.dir, "read-only")
        os.makedirs(ro, exist_ok=True)
        os.chmod(ro, 0o555)
        try:
            r = meshkit("init", "--dir", os.path.join(ro, "conf"))
            self.assertOneLine(r, 2, "--dir", "ermission denied")
        finally:
            os.chmod(ro, 0o755)

    @unittest.skipUnless(os.path.isdir("/proc/self"), "needs Linux /proc (a directory nobody can write, even root)")
    def test_init_dir_that_cannot_be_written(self):
        r = meshkit("init", "--dir", "/proc/self")
        self.assertOneLine(r, 2, "--dir", "/proc/self")

    def test_supervisor_data_dir_that_is_a_file(self):
        for d in (self.file, os.path.join(self.file, "sub")):
            with self.subTest(d):
                cfg = self.config("bad-data.toml", {"supervisor.data_dir": d})
                r = meshkit("supervisor", "--config", cfg, "--listen", "127.0.0.1:0", timeout=30)
                self.assertOneLine(r, 2, cfg, "supervisor.data_dir", d)

    def test_worker_work_dir_that_is_a_file(self):
        for d in (self.file, os.path.join(self.file, "sub")):
            with self.subTest(d):
                r = meshkit("worker", "--config", self.fleet.config, "--work-dir", d, timeout=30)
                self.assertOneLine(r, 2, "--work-dir", d)
        cfg = self.config("bad-work.toml", {"worker.work_dir": self.file})
        r = meshkit("worker", "--config", cfg, timeout=30)
        self.assertOneLine(r, 2, cfg, "worker.work_dir", self.file)


class Keys(ErrorCase):
    def test_duplicate_key_id_is_refused(self):
        keys = os.path.join(self.dir, "dup-keys")
        with open(os.path.join(self.dir, "keys")) as f:
            text = f.read()
        lines = text.splitlines()
        worker = next(n for n, line in enumerate(lines, 1) if line.startswith("worker-1 "))
        with open(keys, "w") as f:
            f.write(text + "worker-1 admin " + "x" * 40 + "\n")
        os.chmod(keys, 0o600)
        cfg = self.config("dup.toml", {"auth.keys_file": "dup-keys"})
        r = meshkit("status", "--config", cfg, "--supervisor", "http://127.0.0.1:1")
        self.assertOneLine(r, 2, keys, f"line {len(lines) + 1}", "'worker-1'", f"line {worker}")


class Watch(ErrorCase):
    def test_negative_watch_is_refused(self):
        r = meshkit("status", "--config", self.fleet.config, "--supervisor", "http://127.0.0.1:1",
                    "--watch", "-1", timeout=10)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertNotIn("Traceback", r.stderr)


# Run an entry module as `python -m` does, with SIGINT sent to the process the moment one named
# module starts to load: a Ctrl-C during start-up, made deterministic.
INTERRUPT_AT_IMPORT = """
import os, runpy, signal, sys
entry, at, args = sys.argv[1], sys.argv[2], sys.argv[3:]
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == at:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = [entry, *args]
runpy.run_module(entry, run_name="__main__", alter_sys=True)
"""


class Interrupted(unittest.TestCase):
    def run_interrupted(self, entry, at, *args, ignore=False):
        return subprocess.run([sys.executable, "-c", INTERRUPT_AT_IMPORT, entry, at, *args], cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=30,
                              preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None)

    def test_ctrl_c_while_loading_exits_130_quietly(self):
        cases = [("meshkit", "meshkit.cli.main", "status", "--help"),          # meshkit/__main__.py's import
                 ("meshkit", "tomllib", "status", "--help"),
                 ("meshkit", "meshkit.roles.supervisor.service", "supervisor", "--help"),   # the command's module
                 ("meshkit.cli.cmd_worker", "meshkit.roles.worker", "--help")]   # the lean worker process
        for entry, at, *args in cases:
            with self.subTest(at):
                r = self.run_interrupted(entry, at, *args)
                self.assertEqual((r.returncode, r.stderr), (130, ""))

    def test_an_ignored_sigint_stays_ignored(self):
        r = self.run_interrupted("meshkit", "meshkit.cli.main", "--version", ignore=True)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, f"meshkit {__version__}"), r.stderr)


if __name__ == "__main__":
    unittest.main()
