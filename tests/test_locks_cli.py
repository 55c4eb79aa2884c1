"""`meshkit locks run|list|reap` as real processes: exit codes, holder messages, signals, orphans."""

import json
import os
import signal
import subprocess
import sys
import time
import unittest

from meshkit.adapters.locks import FileLock, hostname, kernel_says_held, read_record
from meshkit.core.errors import LockHeld
from tests.test_locks_procs import ROOT, ProcTestCase, read_line, wait_until

SLEEPER = "import time; print('ready', flush=True); time.sleep(30)"


class LocksRun(ProcTestCase):
    def run_holder(self, name="job", purpose="long job"):
        p = subprocess.Popen([sys.executable, "-m", "meshkit", "locks", "run", "--dir", self.locks,
                              "--name", name, "--purpose", purpose, "--",
                              sys.executable, "-c", SLEEPER],
                             cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self._stop_tree, p)
        self.assertEqual(read_line(p), "ready")
        return p, os.path.join(self.locks, name + ".lock")

    def _stop_tree(self, p):
        rec = read_record(os.path.join(self.locks, "job.lock")) or {}
        child = (rec.get("child") or {}).get("pid") if isinstance(rec, dict) else None
        if child:
            try:
                os.killpg(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._stop(p)

    def test_wait_0_exits_75_and_names_the_holder(self):
        p, path = self.run_holder()
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job", "--wait", "0", "--", "true")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)      # one line, no traceback
        for part in (hostname(), f"pid {p.pid}", '"long job"', "held "):
            self.assertIn(part, r.stderr)
        # a live holder running its command is just a holder: not "free, but ... was killed"
        self.assertIn(f"{path} is held by", r.stderr)
        self.assertNotIn("was killed", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_wait_s_waits_then_gives_up(self):
        self.run_holder()
        t0 = time.monotonic()
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job", "--wait", "0.5", "--", "true")
        self.assertEqual(r.returncode, 75)
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)

    def test_exit_code_is_the_commands_and_the_lock_is_released(self):
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job", "--",
                         sys.executable, "-c",
                         "import json, os, sys; rec = json.load(open(os.environ['MESHKIT_LOCK']));"
                         "print(rec['child']['pid'] == os.getpid(), rec['pid'] == os.getppid()); sys.exit(7)")
        self.assertEqual(r.returncode, 7, r.stderr)
        self.assertEqual(r.stdout.split(), ["True", "True"])
        path = os.path.join(self.locks, "job.lock")
        self.assertIsNone(read_record(path))
        FileLock(path).acquire(wait=0).release()

    def test_command_holds_no_lock_descriptor(self):
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("no /proc")
        script = ("import os; print([os.readlink('/proc/self/fd/' + f) for f in os.listdir('/proc/self/fd')"
                  " if os.path.exists('/proc/self/fd/' + f)])")
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job", "--", sys.executable, "-c", script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("job.lock", r.stdout)

    def test_sigterm_is_forwarded_and_the_lock_released(self):
        p, path = self.run_holder()
        child = read_record(path)["child"]["pid"]
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(10), 128 + signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), 5))
        self.assertIsNone(read_record(path))
        FileLock(path).acquire(wait=0).release()

    def test_killed_holder_leaves_an_orphan_that_reap_reports_then_kills(self):
        p, path = self.run_holder()
        before = read_record(path)
        child = before["child"]["pid"]
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        self.assertFalse(kernel_says_held(path))           # the kernel freed it at once
        self.assertEqual(read_record(path), before)         # the record stays for the reaper
        # ... but the command still works under it: nobody else gets the lock meanwhile
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job", "--wait", "0.3", "--", "true")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn(f"(pid {child}) still runs", r.stderr)
        self.assertIn("locks reap --kill", r.stderr)
        self.assertRaises(LockHeld, FileLock(path).acquire, 0)
        self.assertEqual(read_record(path), before)         # not overwritten by the refused ones
        reaped, r = self.locks_json("reap")
        e = reaped["job"]
        self.assertEqual((e["state"], e["orphan"], e["action"]), ("stale-record", True, "alert"), e)
        self.assertIn(f"command pid {child} still runs", e["reason"])
        self.assertEqual(r.returncode, 1)
        self.assertFalse(_zombie(child), "reported, not killed")
        self.assertEqual(read_record(path), before)
        reaped, r = self.locks_json("reap", "--kill", "--grace", "2")
        e = reaped["job"]
        self.assertEqual((e["action"], e["done"]), ("kill", True), e)
        self.assertIn(f"SIGTERM group {child}", e["result"])
        self.assertNotIn(f"pid {p.pid}", e["result"])      # the dead holder's pid is not signalled
        self.assertIsNone(read_record(path))
        self.assertEqual(r.returncode, 0)
        FileLock(path).acquire(wait=0).release()

    def test_bad_names_are_refused(self):
        for name in ("../escape", "a/b", "..", ".hidden"):
            with self.subTest(name):
                r = self.meshkit("locks", "run", "--dir", self.locks, "--name", name, "--", "true")
                self.assertEqual(r.returncode, 2)
                self.assertIn("lock name", r.stderr)
                self.assertEqual(len(r.stderr.splitlines()), 1)
        self.assertEqual(os.listdir(self.locks), [])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "escape.lock")))

    def test_missing_command_is_a_usage_error(self):
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job")
        self.assertEqual(r.returncode, 2)
        r = self.meshkit("locks", "run", "--dir", self.locks, "--name", "job", "--", "/nonexistent/cmd")
        self.assertEqual(r.returncode, 127)
        self.assertIn("cannot run", r.stderr)


class LocksListAndHelp(ProcTestCase):
    def test_list_shows_states(self):
        r = self.meshkit("locks", "list", "--dir", self.locks)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, f"no locks in {self.locks}"))
        p, path = self.holder("busy")
        FileLock(os.path.join(self.locks, "idle.lock")).acquire(wait=0).release()
        r = self.meshkit("locks", "list", "--dir", self.locks)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        self.assertIn("held", lines["busy"])
        self.assertIn(f"{hostname()}:{p.pid}", lines["busy"])
        self.assertIn("test holder", lines["busy"])
        self.assertIn("free", lines["idle"])

    def test_every_subcommand_help_has_an_example(self):
        for sub in ("list", "reap", "run"):
            with self.subTest(sub):
                r = self.meshkit("locks", sub, "--help")
                self.assertEqual(r.returncode, 0)
                self.assertIn("example", r.stdout)
                self.assertIn(f"meshkit locks {sub}", r.stdout)

    def test_reap_dry_run_human_output(self):
        with open(os.path.join(self.locks, "old.lock"), "w") as f:
            json.dump({"host": hostname(), "pid": 2 ** 22 + 7, "acquired_at": 0}, f)
        r = self.meshkit("locks", "reap", "--dir", self.locks, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("old: clear", r.stdout)
        self.assertIn("would clear", r.stdout)
        self.assertIsNotNone(read_record(os.path.join(self.locks, "old.lock")))


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


if __name__ == "__main__":
    unittest.main()
