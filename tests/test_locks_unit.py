"""FileLock and the reaper inside one process: records, waiting on a fake clock, safety rules.
No sleeps: waits run on FakeClock, which advances instantly."""

import io
import json
import os
import tempfile
import unittest

from meshkit.adapters import lockreap
from meshkit.adapters.locks import (FileLock, boot_id, describe_holder, hostname, kernel_says_held,
                                    lock_path, parse_record, process_start_time, read_record,
                                    write_record)
from meshkit.adapters.log import Logger
from meshkit.core.clock import FakeClock
from meshkit.core.errors import BadRequest, LockHeld, MeshkitError


class LockTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        self.path = os.path.join(self.dir, "res.lock")
        self.clock = FakeClock()

    def lock(self, **kw):
        kw.setdefault("clock", self.clock)
        lock = FileLock(self.path, **kw)
        self.addCleanup(lock.release)
        return lock

    def write_fake(self, path, record):
        with open(path, "wb") as f:
            f.write(json.dumps(record).encode())


class FileLockBasics(LockTestCase):
    def test_record_names_the_holder(self):
        lock = self.lock(ttl=60, purpose="sync memory").acquire(wait=0)
        rec = lock.holder()
        self.assertEqual(rec["pid"], os.getpid())
        self.assertEqual(rec["host"], hostname())
        self.assertEqual(rec["start_time"], process_start_time(os.getpid()))
        self.assertEqual(rec["boot_id"], boot_id())
        self.assertEqual((rec["ttl"], rec["purpose"], rec["acquired_at"]), (60, "sync memory", self.clock.time()))
        self.assertTrue(kernel_says_held(self.path))

    def test_start_time_is_field_22_of_proc_stat(self):
        if not os.path.exists("/proc/self/stat"):
            self.skipTest("no /proc")
        with open(f"/proc/{os.getpid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        self.assertEqual(process_start_time(os.getpid()), int(fields[19]))
        self.assertIsNone(process_start_time(2 ** 30))

    def test_second_holder_is_refused_and_told_who_holds(self):
        self.lock(purpose="backup").acquire(wait=0)
        self.clock.advance(42)
        with self.assertRaises(LockHeld) as cm:
            self.lock().acquire(wait=0)
        msg = cm.exception.message
        for part in (hostname(), f"pid {os.getpid()}", '"backup"', "held 42s"):
            self.assertIn(part, msg)
        self.assertEqual(cm.exception.details["holder"]["purpose"], "backup")

    def test_wait_gives_up_after_the_wait_on_the_clock(self):
        self.lock().acquire(wait=0)
        with self.assertRaises(LockHeld):
            self.lock().acquire(wait=3)
        self.assertAlmostEqual(sum(self.clock.slept), 3, places=6)
        self.assertLess(len(self.clock.slept), 100)

    def test_release_clears_record_and_keeps_the_file(self):
        lock = self.lock().acquire(wait=0)
        ino = os.stat(self.path).st_ino
        lock.release()
        self.assertIsNone(lock.holder())
        self.assertEqual(os.stat(self.path).st_ino, ino)
        self.assertFalse(kernel_says_held(self.path))
        lock.release()      # twice is harmless
        self.lock().acquire(wait=0)

    def test_context_managers(self):
        with self.lock(purpose="a").acquired(wait=0) as held:
            self.assertEqual(held.holder()["purpose"], "a")
            self.assertRaises(LockHeld, self.lock().acquire, 0)
        with self.lock(purpose="b") as held:
            self.assertEqual(held.holder()["purpose"], "b")
        with self.assertRaises(ZeroDivisionError):
            with self.lock().acquired():
                1 / 0
        self.assertFalse(kernel_says_held(self.path))

    def test_update_keeps_acquired_at(self):
        lock = self.lock().acquire(wait=0)
        self.clock.advance(5)
        lock.update(child={"pid": 1})
        rec = lock.holder()
        self.assertEqual((rec["child"], rec["acquired_at"]), ({"pid": 1}, self.clock.time() - 5))

    def test_acquire_twice_on_one_object_is_an_error(self):
        lock = self.lock().acquire(wait=0)
        self.assertRaises(MeshkitError, lock.acquire, 0)

    def test_missing_directory_is_a_clear_error(self):
        lock = FileLock(os.path.join(self.dir, "nope", "x.lock"), clock=self.clock)
        with self.assertRaises(MeshkitError) as cm:
            lock.acquire(wait=0)
        self.assertIn("does not exist", cm.exception.message)

    def test_lock_path_refuses_escapes(self):
        for name in ("../x", "a/b", "..", ".x", ""):
            with self.subTest(name):
                self.assertRaises(BadRequest, lock_path, self.dir, name)
        sub = os.path.join(self.dir, "new")
        self.assertEqual(lock_path(sub, "a", create_dir=True), os.path.join(sub, "a.lock"))
        self.assertTrue(os.path.isdir(sub))

    def test_records(self):
        self.assertIsNone(parse_record(b""))
        self.assertIsNone(parse_record(b"  \n"))
        self.assertIn("unreadable", parse_record(b"{not json"))
        self.assertIn("unreadable", parse_record(b"[1]"))
        self.assertIsNone(read_record(os.path.join(self.dir, "none.lock")))
        self.assertIn("unknown holder", describe_holder(None, 0))
        self.assertIn("pid 7", describe_holder({"host": "h", "pid": 7}, 0))
        for held, ttl, past in ((10, 60, False), (61, 60, True), (61, None, False), (61, 0, False)):
            with self.subTest(held=held, ttl=ttl):
                text = describe_holder({"host": "h", "pid": 7, "acquired_at": 100, "ttl": ttl}, 100 + held)
                self.assertIn(f"held {held}s", text)
                self.assertEqual("past its TTL of 60s: `meshkit locks reap --kill` ends it" in text, past)

    def test_record_rewrite_is_in_place(self):
        with open(self.path, "w+b") as f:
            write_record(f.fileno(), {"purpose": "x" * 500})
            write_record(f.fileno(), {"purpose": "y"})
        self.assertEqual(read_record(self.path), {"purpose": "y"})


class ReapInProcess(LockTestCase):
    def reap(self, **kw):
        stream = io.StringIO()
        kw.setdefault("clock", self.clock)
        entries = lockreap.reap(self.dir, kw.pop("ttl", 7200), logger=Logger("locks", stream=stream, clock=self.clock), **kw)
        logs = [json.loads(line) for line in stream.getvalue().splitlines()]
        return {e["lock"]: e for e in entries}, logs

    def fake(self, name="res", **kw):
        rec = {"version": 1, "host": hostname(), "pid": os.getpid(), "start_time": process_start_time(os.getpid()),
               "boot_id": boot_id(), "acquired_at": self.clock.time() - 10, "ttl": 60, "purpose": "fake"}
        rec.update(kw)
        path = os.path.join(self.dir, name + ".lock")
        self.write_fake(path, rec)
        return path

    def test_live_holder_is_never_reaped(self):
        self.lock(ttl=60, purpose="live").acquire(wait=0)
        before = open(self.path, "rb").read()
        entries, logs = self.reap(kill=True)
        self.assertEqual((entries["res"]["state"], entries["res"]["action"]), ("held", "none"))
        self.assertEqual(open(self.path, "rb").read(), before)
        self.assertEqual(logs, [])

    def test_stale_record_of_a_reused_pid_is_cleared_and_logged(self):
        # our own pid is alive, but the recorded start time is another process's
        start = process_start_time(os.getpid())
        if start is None:
            self.skipTest("no /proc start times")
        self.fake(start_time=start - 1)
        ino = os.stat(self.path).st_ino
        entries, logs = self.reap()
        e = entries["res"]
        self.assertEqual((e["state"], e["pid_status"], e["action"], e["done"]), ("stale-record", "reused", "clear", True))
        self.assertIsNone(read_record(self.path))
        self.assertEqual(os.stat(self.path).st_ino, ino)
        self.assertEqual([(l["event"], l["lock"]) for l in logs], [("lock_clear", "res")])
        self.assertIn("start time differs", logs[0]["reason"])

    def test_dry_run_changes_nothing(self):
        self.fake(pid=2 ** 22 + 12345)
        before = open(self.path, "rb").read()
        entries, logs = self.reap(dry_run=True)
        self.assertEqual((entries["res"]["action"], entries["res"]["done"]), ("clear", False))
        self.assertIn("would clear", entries["res"]["result"])
        self.assertEqual(open(self.path, "rb").read(), before)
        self.assertTrue(logs[0]["dry_run"])

    def test_other_hosts_and_boots_are_never_touched(self):
        self.fake("remote", host="elsewhere", pid=1)
        self.fake("oldboot", boot_id="an-earlier-boot", pid=2 ** 22 + 1)
        before = {n: open(os.path.join(self.dir, n + ".lock"), "rb").read() for n in ("remote", "oldboot")}
        entries, logs = self.reap(kill=True, ttl=0, override_ttl=True)
        for n in ("remote", "oldboot"):
            self.assertEqual((entries[n]["state"], entries[n]["action"]), ("stale-record", "none"))
            self.assertEqual(open(os.path.join(self.dir, n + ".lock"), "rb").read(), before[n])
        self.assertEqual(logs, [])

    def test_hung_holder_is_reported_with_an_alert(self):
        events = []
        self.lock(ttl=30, purpose="stuck").acquire(wait=0)
        self.clock.advance(31)
        entries, logs = self.reap(alert=lambda ev: events.append(ev) or "sent")
        e = entries["res"]
        self.assertEqual((e["state"], e["action"], e["result"]), ("hung", "alert", "sent"))
        self.assertEqual(events[0]["event"], "lock_hung")
        self.assertEqual(events[0]["holder"]["purpose"], "stuck")
        self.assertEqual(logs[0]["event"], "lock_alert")
        self.assertIn("past its TTL of 30s", logs[0]["reason"])

    def test_reaper_never_signals_itself(self):
        self.lock(ttl=1).acquire(wait=0)
        self.clock.advance(5)
        entries, _ = self.reap(kill=True)
        self.assertEqual(entries["res"]["action"], "kill")
        self.assertIn("no process to signal", entries["res"]["result"])
        self.assertTrue(kernel_says_held(self.path))

    def test_clear_refuses_when_the_lock_is_taken(self):
        self.lock().acquire(wait=0)
        done, why = lockreap.clear_stale(self.path, hostname(), boot_id())
        self.assertFalse(done)
        self.assertIn("taken", why)
        self.assertIsNotNone(read_record(self.path))

    def test_only_lock_files_are_looked_at(self):
        for name in ("a.lock", ".hidden.lock", "notes.txt"):
            open(os.path.join(self.dir, name), "w").close()
        os.mkdir(os.path.join(self.dir, "d.lock"))
        os.symlink("/etc/passwd", os.path.join(self.dir, "link.lock"))
        self.assertEqual([os.path.basename(p) for p in lockreap.lock_files(self.dir)], ["a.lock"])
        self.assertEqual(lockreap.lock_files(os.path.join(self.dir, "missing")), [])

    def test_command_alert_gets_the_event_on_stdin(self):
        out = os.path.join(self.dir, "alert.json")
        result = lockreap.command_alert(["sh", "-c", f"cat > '{out}'"])({"event": "lock_hung", "lock": "x"})
        self.assertEqual(result, "alert command exited 0")
        with open(out) as f:
            self.assertEqual(json.load(f)["lock"], "x")
        self.assertIn("failed", lockreap.command_alert(["/nonexistent/alert"])({}))


if __name__ == "__main__":
    unittest.main()
