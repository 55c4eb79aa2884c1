"""Locks with real processes: kill -9, hung holders, pid reuse, hammering, the unlink race.

Holders are separate Python processes using FileLock; the reaper and the lister run
as `python -m meshkit locks ...`. Every wait is bounded in time and count.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from meshkit.adapters.locks import FileLock, read_record, write_record
from meshkit.core.errors import LockHeld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from meshkit.adapters.locks import FileLock
path, ttl, ignore_term = sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
lock = FileLock(path, ttl=ttl, purpose="test holder")
lock.acquire(wait=5)
print("locked", flush=True)
time.sleep(30)
"""

HAMMER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from meshkit.adapters.locks import FileLock
path, marks, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
wait = None if sys.argv[5] == "block" else 10       # blocking flock, or polling tries
me = str(os.getpid())
fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
end = time.monotonic() + seconds
turns = 0
while time.monotonic() < end and turns < 100000:
    with FileLock(path, ttl=60, purpose="hammer").acquired(wait=wait):
        os.write(fd, f"enter {me}\n".encode())
        os.sched_yield()
        os.write(fd, f"leave {me}\n".encode())
    turns += 1
    time.sleep(0.001)       # some work outside the lock, so every process gets turns
print(turns)
"""


def env(home: str) -> dict:
    e = dict(os.environ, PYTHONPATH=ROOT, MESHKIT_HOME=home)
    e.pop("MESHKIT_CONFIG", None)
    return e


def read_line(proc, timeout: float = 10) -> str:
    """One line from proc.stdout, or fail after timeout seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from pid {proc.pid} within {timeout}s")
    return proc.stdout.readline().decode().strip()


def wait_until(pred, timeout: float = 5, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        if pred():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    return pred()


def overlaps(lines: list) -> list:
    """Problems in a log of 'enter PID' / 'leave PID' marks: anything but strict pairs."""
    problems, inside = [], None
    for i, line in enumerate(lines):
        what, pid = line.split()
        if what == "enter":
            if inside is not None:
                problems.append(f"line {i}: {pid} entered while {inside} was inside")
            inside = pid
        else:
            if inside != pid:
                problems.append(f"line {i}: {pid} left but {inside} was inside")
            inside = None
    if inside is not None:
        problems.append(f"{inside} never left")
    return problems


class ProcTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        self.locks = os.path.join(self.dir, "locks")
        os.mkdir(self.locks)
        self.env = env(self.dir)

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, **kw)
        self.addCleanup(self._stop, p)
        return p

    def _stop(self, p):
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdout, p.stderr):
            if f:
                f.close()

    def holder(self, name="res", ttl=3600, ignore_term=False):
        path = os.path.join(self.locks, name + ".lock")
        p = self.spawn([sys.executable, "-c", HOLDER, ROOT, path, str(ttl), "1" if ignore_term else "0"])
        self.assertEqual(read_line(p), "locked")
        return p, path

    def meshkit(self, *args, timeout=20):
        return subprocess.run([sys.executable, "-m", "meshkit", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def locks_json(self, *args):
        r = self.meshkit("locks", *args, "--dir", self.locks, "--json")
        self.assertIn(r.returncode, (0, 1), r.stderr)
        return {e["lock"]: e for e in json.loads(r.stdout)["locks"]}, r


class KilledHolder(ProcTestCase):
    def test_kill_9_frees_the_lock_at_once_and_the_reaper_cleans_the_record(self):
        p, path = self.holder()
        ino = os.stat(path).st_ino
        self.assertRaises(LockHeld, FileLock(path).acquire, 0)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        listed, _ = self.locks_json("list")
        self.assertEqual((listed["res"]["state"], listed["res"]["pid_status"]), ("stale-record", "dead"))
        reaped, r = self.locks_json("reap")
        self.assertEqual((reaped["res"]["action"], reaped["res"]["done"]), ("clear", True))
        self.assertEqual(r.returncode, 0)
        log = [json.loads(line) for line in r.stderr.splitlines()]
        self.assertEqual([(l["event"], l["lock"]) for l in log], [("lock_clear", "res")])
        self.assertIn(f"pid {p.pid}", log[0]["reason"])
        self.assertIsNone(read_record(path))
        self.assertEqual(os.stat(path).st_ino, ino)      # truncated, never unlinked
        listed, _ = self.locks_json("list")
        self.assertEqual(listed["res"]["state"], "free")
        FileLock(path).acquire(wait=0).release()

    def test_lock_is_free_the_moment_the_holder_dies(self):
        p, path = self.holder()
        p.kill()
        p.wait(10)
        lock = FileLock(path).acquire(wait=0)       # no wait, no reaper needed
        lock.release()


class LiveAndHung(ProcTestCase):
    def test_live_holder_is_never_reaped(self):
        p, path = self.holder(ttl=3600)
        before = open(path, "rb").read()
        reaped, r = self.locks_json("reap", "--kill")
        self.assertEqual((reaped["res"]["state"], reaped["res"]["action"]), ("held", "none"))
        self.assertEqual(r.returncode, 0)
        self.assertIsNone(p.poll())
        self.assertEqual(open(path, "rb").read(), before)

    def test_hung_holder_is_reported_and_killed_only_with_kill(self):
        p, path = self.holder(ttl=3600, ignore_term=True)
        alert_out = os.path.join(self.dir, "alert.json")
        cfg = os.path.join(self.dir, "meshkit.toml")
        with open(cfg, "w") as f:
            f.write(f'[locks]\nalert = ["sh", "-c", "cat > {alert_out}"]\n')
        reaped, r = self.locks_json("reap", "--ttl", "0", "--config", cfg)
        e = reaped["res"]
        self.assertEqual((e["state"], e["action"]), ("hung", "alert"))
        self.assertEqual(r.returncode, 1)
        self.assertIsNone(p.poll(), "reported, not killed")
        with open(alert_out) as f:
            self.assertEqual(json.load(f)["holder"]["pid"], p.pid)
        self.assertEqual(json.loads(r.stderr.splitlines()[0])["event"], "lock_alert")

        reaped, r = self.locks_json("reap", "--ttl", "0", "--kill", "--grace", "0.3")
        e = reaped["res"]
        self.assertEqual((e["action"], e["done"]), ("kill", True), e)
        self.assertIn(f"SIGTERM pid {p.pid}", e["result"])
        self.assertIn(f"SIGKILL pid {p.pid}", e["result"])        # it ignored SIGTERM
        self.assertIn("record cleared", e["result"])
        self.assertEqual(r.returncode, 0)
        self.assertEqual(p.wait(10), -signal.SIGKILL)
        self.assertIsNone(read_record(path))

    def test_holder_that_obeys_sigterm_gets_no_sigkill(self):
        p, path = self.holder(ttl=3600)
        reaped, _ = self.locks_json("reap", "--ttl", "0", "--kill", "--grace", "5")
        self.assertNotIn("SIGKILL", reaped["res"]["result"])
        self.assertEqual(p.wait(10), -signal.SIGTERM)


class PidReuse(ProcTestCase):
    def test_live_pid_with_another_start_time_counts_as_dead(self):
        path = os.path.join(self.locks, "res.lock")
        lock = FileLock(path, purpose="me").acquire(wait=0)
        rec = dict(lock.record)
        lock.release()
        if rec["start_time"] is None:
            self.skipTest("no /proc start times")
        rec["start_time"] -= 1                  # our live pid, but "another process"
        with open(path, "w") as f:
            json.dump(rec, f)
        listed, _ = self.locks_json("list")
        self.assertEqual((listed["res"]["state"], listed["res"]["pid_status"]), ("stale-record", "reused"))
        reaped, _ = self.locks_json("reap", "--kill")
        self.assertEqual((reaped["res"]["action"], reaped["res"]["done"]), ("clear", True))
        self.assertIsNone(read_record(path))

    def test_reused_pid_of_a_hung_lock_is_never_killed(self):
        # The kernel lock is held (by this test), and the record names a live
        # bystander process with a wrong start time: a reused pid. --kill must spare it.
        bystander = self.spawn([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"])
        self.assertEqual(read_line(bystander), "up")
        path = os.path.join(self.locks, "res.lock")
        lock = FileLock(path, ttl=1).acquire(wait=0)
        self.addCleanup(lock.release)
        rec = dict(lock.record, pid=bystander.pid, acquired_at=lock.record["acquired_at"] - 100)
        if rec["start_time"] is None:
            self.skipTest("no /proc start times")
        rec["start_time"] = 1       # the bystander started long after tick 1
        write_record(lock.fileno(), rec)
        reaped, _ = self.locks_json("reap", "--kill", "--grace", "0.2")
        e = reaped["res"]
        self.assertEqual((e["state"], e["pid_status"], e["action"]), ("hung", "reused", "alert"), e)
        self.assertIsNone(bystander.poll(), "a reused pid was signalled")


class Exclusion(ProcTestCase):
    def test_hammering_processes_never_overlap(self):
        path = os.path.join(self.locks, "hammer.lock")
        marks = os.path.join(self.dir, "marks")
        procs = [self.spawn([sys.executable, "-c", HAMMER, ROOT, path, marks, "1.5", how])
                 for how in ("block", "poll", "block", "poll")]
        turns = [int(read_line(p, timeout=15)) for p in procs]
        for p in procs:
            self.assertEqual(p.wait(10), 0)
        with open(marks) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 2 * sum(turns))
        self.assertTrue(all(t > 0 for t in turns) and sum(turns) > 100, turns)
        self.assertEqual(overlaps(lines), [])

    def test_the_overlap_check_catches_overlap(self):
        self.assertEqual(overlaps(["enter 1", "leave 1", "enter 2", "leave 2"]), [])
        self.assertTrue(overlaps(["enter 1", "enter 2", "leave 1", "leave 2"]))
        self.assertEqual(len(overlaps(["enter 1"])), 1)

    def test_the_unlink_race_cannot_happen(self):
        # The race of lock libraries that unlink: B waits on the old inode, the file is
        # unlinked, A dies, B "gets" the orphaned inode while C locks a new file at the
        # same path. Here B notices the path no longer names its inode and relocks.
        p, path = self.holder()
        b = FileLock(path, purpose="B")
        got = threading.Event()

        def take():
            b.acquire(wait=None)
            got.set()
        t = threading.Thread(target=take, daemon=True)
        t.start()
        self.addCleanup(b.release)
        self.assertTrue(wait_until(lambda: self._has_open(path)), "B never opened the lock file")
        os.unlink(path)             # an outside actor; meshkit itself never does this
        p.kill()
        p.wait(10)
        self.assertTrue(got.wait(10), "B did not get the lock")
        t.join(10)
        self.assertEqual(os.fstat(b.fileno()).st_ino, os.stat(path).st_ino)
        with self.assertRaises(LockHeld):
            FileLock(path, purpose="C").acquire(wait=0)
        self.assertEqual(read_record(path)["purpose"], "B")

    def _has_open(self, path):
        if not os.path.isdir("/proc/self/fd"):
            return True     # no /proc: best effort
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == path:
                    return True
            except OSError:
                pass
        return False


if __name__ == "__main__":
    unittest.main()
