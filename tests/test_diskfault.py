"""Disk and database faults on a real supervisor.

  - its data dir on a 2 MiB tmpfs (root only) filling up mid-run: the mode goes degraded past
    85 % and emergency past 95 %; when full, dispatches get a clear 503 (store_error, "disk is
    full"), every acknowledged dispatch stays, PRAGMA integrity_check is ok, and once the big file
    is removed dispatches work again and the mode comes back to normal;
  - a database locked by another process (BEGIN IMMEDIATE): the dispatch waits at most
    store.WRITE_WAIT (0.2 s, SQLite's busy handler) then gets a clear 503 naming the lock, stores
    nothing; after release it works, and the retried dispatch (same key) is stored once
    (test_store_busy: /health and reads stay prompt meanwhile, and the log has the refusals).
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

from tests.helpers import Fleet, read_line
from tests.test_worker_harness import wait_for


def can_mount_tmpfs() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount -t tmpfs)"
    d = tempfile.mkdtemp(prefix="meshkit-probe-")
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True, text=True)
        if out.returncode != 0:
            return f"cannot mount a tmpfs here: {out.stderr.strip()}"
        subprocess.run(["umount", d], capture_output=True)
        return None
    finally:
        os.rmdir(d)


WHY_NOT = can_mount_tmpfs()


def fill(path: str, size: int) -> int:
    """Append up to `size` bytes to path (stops at ENOSPC); the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "ab") as f:
        try:
            while written < size:
                n = f.write(chunk[:min(65536, size - written)])
                f.flush()
                written += n
        except OSError:
            pass
    return written


def supervisor_on_tmpfs(test: unittest.TestCase, cycle: float) -> tuple:
    """(fleet, data dir): a supervisor started on a data dir that is a 2 MiB tmpfs (root;
    unmounted and stopped at the test's end)."""
    fleet = Fleet(supervisor__cycle=cycle)
    test.addCleanup(fleet.close)
    data = os.path.join(fleet.dir, "data")
    os.makedirs(data)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", data], capture_output=True, text=True)
    test.assertEqual(out.returncode, 0, out.stderr)
    test.addCleanup(subprocess.run, ["umount", "-l", data], capture_output=True)
    test.addCleanup(lambda: fleet.supervisor.poll() is None and fleet.stop())
    fleet.start_supervisor()
    return fleet, data


HOLD = r'''
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
'''


def hold_write_lock(test: unittest.TestCase, db_path: str) -> subprocess.Popen:
    """Another process holding the database's write lock (BEGIN IMMEDIATE) until release()."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, db_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    test.addCleanup(lambda: holder.poll() is None and holder.kill())
    test.assertEqual(read_line(holder, 10), "locked")
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.write(b"release\n")
    holder.stdin.flush()
    holder.wait(10)


def locked_supervisor(test: unittest.TestCase) -> tuple:
    """(fleet, admin client, id of a task stored before, database path, holder): a supervisor
    whose database's write lock another process holds (hold_write_lock) until release()."""
    fleet = Fleet(supervisor__cycle=0.5)
    test.addCleanup(fleet.close)
    fleet.start_supervisor()
    admin = fleet.client("admin")
    first = admin.call("POST", "/v1/tasks", {"kind": "l", "key": "before"})["task"]["id"]
    db_path = os.path.join(fleet.dir, "data", "meshkit.db")
    return fleet, admin, first, db_path, hold_write_lock(test, db_path)


def stored_once(test: unittest.TestCase, admin, key: str) -> str:
    """After the lock's release: a dispatch refused meanwhile, retried with its key, is stored;
    sent again, it is the same task. Its id."""
    again = admin.call("POST", "/v1/tasks", {"kind": "l", "key": key})
    test.assertTrue(again["created"])
    dup = admin.call("POST", "/v1/tasks", {"kind": "l", "key": key})
    test.assertEqual((dup["created"], dup["task"]["id"]), (False, again["task"]["id"]))
    return again["task"]["id"]


class DiskFull(unittest.TestCase):
    @unittest.skipIf(WHY_NOT, WHY_NOT or "")
    def test_small_tmpfs_filling_up_then_freed(self):
        fleet, data = supervisor_on_tmpfs(self, 0.2)
        admin = fleet.client("admin")
        big = os.path.join(data, "big.fill")
        acked = [admin.call("POST", "/v1/tasks", {"kind": "d", "key": f"k{i}"})["task"]["id"] for i in range(5)]

        def mode():
            return admin.call("GET", "/v1/status")["mode"]

        def fill_to(share):
            u = shutil.disk_usage(data)
            fill(big, max(0, int(share * u.total) - (u.total - u.free)))

        fill_to(0.90)
        wait_for(lambda: mode() == "degraded", 10, "mode degraded past 85 %")
        fill_to(0.97)
        wait_for(lambda: mode() == "emergency", 10, "mode emergency past 95 %")
        fill(big, 1 << 30)             # now full
        refusal, stored_while_full = None, 0
        for i in range(60):            # dispatches that need new database pages
            status, answer = admin.request("POST", "/v1/tasks", {"kind": "d", "key": f"full{i}",
                                                                 "payload": "x" * 60000})
            if status == 503:
                refusal = answer
                break
            self.assertEqual(status, 201, answer)
            acked.append(answer["task"]["id"])
            stored_while_full += 1
        self.assertIsNotNone(refusal, "never refused while the disk was full")
        self.assertEqual(refusal["error"]["code"], "store_error")
        self.assertIn("disk is full", refusal["error"]["message"])
        refused_key = f"full{i}"
        self.assertEqual(admin.call("GET", "/health")["ok"], True)     # still serving
        os.remove(big)
        wait_for(lambda: mode() == "normal", 10, "mode back to normal")
        again = admin.call("POST", "/v1/tasks", {"kind": "d", "key": refused_key, "payload": "x" * 60000})
        self.assertTrue(again["created"])         # the refused one was not half-stored
        acked.append(again["task"]["id"])
        for tid in acked:
            self.assertEqual(admin.call("GET", f"/v1/tasks/{tid}")["task"]["id"], tid)
        db = sqlite3.connect(os.path.join(data, "meshkit.db"), timeout=10)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], len(acked))
        finally:
            db.close()
        print(f"\n  disk full: 2 MiB tmpfs; degraded > 85 %, emergency > 95 %; full: 503 store_error "
              f"\"{refusal['error']['message'][:60]}...\" after {stored_while_full} more; freed: normal again, "
              f"{len(acked)} acknowledged tasks all there, integrity ok", file=sys.stderr)


class LockedDatabase(unittest.TestCase):
    def test_locked_database_clear_503_at_once_then_works(self):
        fleet, admin, first, db_path, holder = locked_supervisor(self)
        t0 = time.monotonic()
        status, answer = admin.request("POST", "/v1/tasks", {"kind": "l", "key": "during"}, timeout=30)
        waited = time.monotonic() - t0
        self.assertEqual(status, 503, answer)
        self.assertEqual(answer["error"]["code"], "store_error")
        self.assertIn("busy", answer["error"]["message"])
        self.assertLess(waited, 2.0)        # SQLite's busy handler retried for WRITE_WAIT, not 5 s
        self.assertEqual(admin.call("GET", f"/v1/tasks/{first}")["task"]["id"], first)   # reads still work
        release(holder)
        stored_once(self, admin, "during")
        db = sqlite3.connect(db_path, timeout=10)
        try:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], 2)
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        finally:
            db.close()
        print(f"\n  locked database: dispatch refused after {waited:.2f} s: 503 store_error "
              f"\"{answer['error']['message'][:50]}...\"; after release stored once", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
