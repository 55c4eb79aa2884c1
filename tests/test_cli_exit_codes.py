"""Exit codes and one-line errors of client commands and the supervisor's start, with real
processes: a temporary refusal (503: database busy) is 3, not 1; a supervisor that finds its
database write-locked by another process exits 75 naming the file; a clean stop removes
supervisor.url (a kill -9 leaves it) and a client that can't connect says where the URL came
from; a supervisor URL without a port is refused (2)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import unittest

from meshkit.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, exit_code_for
from meshkit.core.errors import ApiError, StoreError
from tests import test_cli_errors
from tests.helpers import ROOT, Fleet, env, meshkit


class OneLine(unittest.TestCase):
    assertOneLine = test_cli_errors.ErrorCase.assertOneLine     # exit code, one "meshkit: " line, no traceback


def hold_write_lock(db_path: str) -> sqlite3.Connection:
    """Another process's write lock on the supervisor's database, as `sqlite3 meshkit.db` with
    BEGIN IMMEDIATE would hold it (this test process is that other process)."""
    db = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    db.execute("BEGIN IMMEDIATE")
    return db


class BusyDatabase(OneLine):
    def setUp(self):
        self.fleet = Fleet()
        self.addCleanup(self.fleet.close)
        self.db_path = os.path.join(self.fleet.dir, "data", "meshkit.db")

    def test_a_dispatch_refused_with_503_exits_3(self):
        self.fleet.start_supervisor()
        lock = hold_write_lock(self.db_path)
        try:
            r = self.fleet.cli("dispatch", "echo", "--payload", "{}")
        finally:
            lock.rollback()
            lock.close()
        self.assertOneLine(r, 3, "database is busy", "HTTP 503")
        self.assertEqual(self.fleet.cli("dispatch", "echo").returncode, 0)     # and later it works

    def test_a_supervisor_started_on_a_locked_database_exits_75_naming_it(self):
        self.fleet.start_supervisor()                  # makes the database
        self.assertEqual(self.fleet.stop(), 0)
        lock = hold_write_lock(self.db_path)
        try:
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "meshkit", "supervisor", "--config", self.fleet.config,
                                "--listen", "127.0.0.1:0"], cwd=ROOT, env=env(), capture_output=True, text=True,
                               timeout=30)
            waited = time.monotonic() - t0
        finally:
            lock.rollback()
            lock.close()
        self.assertEqual(r.stdout, "")
        self.assertOneLine(r, 75, f"{self.db_path}: another process holds a write lock on this database",
                           "the supervisor did not start", "systemd restarts it")
        self.assertNotIn("retry", r.stderr)
        self.assertLess(waited, 10)
        self.fleet.start_supervisor()                  # once the lock is gone it starts
        self.assertEqual(self.fleet.cli("dispatch", "echo").returncode, 0)


class ExitCodeFor(unittest.TestCase):
    def test_every_try_later_answer_is_3_and_a_local_store_error_is_not(self):
        for status, code in ((503, "store_error"), (503, "unavailable"), (429, "too_many_requests"),
                             (502, "http_error"), (504, "http_error")):
            with self.subTest(status=status, code=code):
                self.assertEqual(exit_code_for(ApiError(status, code, "x")), EXIT_UNREACHABLE)
        for status, code in ((500, "internal"), (404, "not_found"), (409, "conflict")):
            with self.subTest(status=status, code=code):
                self.assertEqual(exit_code_for(ApiError(status, code, "x")), EXIT_FAILED)
        # not an answer from a supervisor: the command's own store failed (e.g. disk full at start)
        self.assertEqual(exit_code_for(StoreError("disk full")), EXIT_FAILED)


class UrlFile(OneLine):
    def setUp(self):
        self.fleet = Fleet(supervisor__listen="127.0.0.1:0")
        self.addCleanup(self.fleet.close)
        self.url_file = os.path.join(self.fleet.dir, "data", "supervisor.url")

    def status(self, *args, **extra_env):
        return meshkit("status", "--config", self.fleet.config, *args, **extra_env)

    def test_a_clean_stop_removes_the_url_file_and_the_client_says_none_runs(self):
        url = self.fleet.start_supervisor()
        with open(self.url_file) as f:
            self.assertEqual(f.read().strip(), url)
        self.assertEqual(self.status().returncode, 0)        # found through the file
        self.assertEqual(self.fleet.stop(), 0)
        self.assertFalse(os.path.exists(self.url_file))
        self.assertOneLine(self.status(), 3, f"there is none in {self.url_file}", "is the supervisor running?",
                           "supervisor.listen '127.0.0.1:0'")

    def test_a_url_file_that_is_not_ours_is_left_alone(self):
        self.fleet.start_supervisor()
        with open(self.url_file, "w") as f:
            f.write("http://127.0.0.1:1\n")                 # rewritten by someone else meanwhile
        self.assertEqual(self.fleet.stop(), 0)
        with open(self.url_file) as f:
            self.assertEqual(f.read(), "http://127.0.0.1:1\n")

    def test_after_kill_9_the_client_says_where_the_dead_url_came_from(self):
        url = self.fleet.start_supervisor()
        self.fleet.stop(sig=signal.SIGKILL)
        self.assertTrue(os.path.exists(self.url_file))       # nothing could remove it
        self.assertOneLine(self.status(), 3, f"{url}: Connection refused",
                           f"(the URL is from {self.url_file}; is the supervisor running?)")
        self.assertOneLine(self.status("--supervisor", url), 3,
                           f"{url}: Connection refused (the URL is from --supervisor; is the supervisor running?)")
        self.assertOneLine(self.status(MESHKIT_SUPERVISOR=url), 3,
                           "(the URL is from $MESHKIT_SUPERVISOR; is the supervisor running?)")

    def test_a_url_without_a_port_is_refused_naming_where_it_came_from(self):
        expected = "expected \"http://HOST:PORT\" with a port from 1 to 65535"
        for url in ("http://127.0.0.1", "http://127.0.0.1/"):
            with self.subTest(url=url):
                self.assertOneLine(self.status("--supervisor", url), 2,
                                   f"bad supervisor URL {url.rstrip('/')!r} (no port): {expected} (from --supervisor)")
                self.assertOneLine(self.status(MESHKIT_SUPERVISOR=url), 2, "(no port)", "(from $MESHKIT_SUPERVISOR)")
        os.makedirs(os.path.dirname(self.url_file), exist_ok=True)
        with open(self.url_file, "w") as f:
            f.write("http://localhost\n")
        self.assertOneLine(self.status(), 2, "'http://localhost' (no port)", f"(from {self.url_file})")
        # the same as the worker's --supervisor, which always refused it
        r = meshkit("worker", "--config", self.fleet.config, "--supervisor", "http://127.0.0.1", timeout=30)
        self.assertOneLine(r, 2, "--supervisor", "http://127.0.0.1")


if __name__ == "__main__":
    unittest.main()
