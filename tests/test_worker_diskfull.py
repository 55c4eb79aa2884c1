"""A worker whose work dir is full: nothing is lost, nothing is marked running that never ran, and it
holds back claims until there is space again.

  - the task directory is made before the supervisor hears "started": if it cannot be, the attempt
    ends at once with a failure that says why (ended_by "error", never started), which the
    supervisor retries without counting it toward the kind's quarantine;
  - a result the outbox cannot hold is sent directly (the supervisor acknowledges it: nothing to
    keep); only if that fails too, for STORE_RETRY_FOR, is it logged result_lost;
  - below worker.min_free_mb of free space (0: no threshold), or right after a write failed for
    lack of space (whatever the threshold), the worker claims nothing and says so in its heartbeat (hold {"reason": "disk_full"}), at once when
    it starts and ends; the memory guard's hold and this one never clear each other.

The rules table-driven, the worker with a fake clock, link and disk; then a real supervisor and
worker with the work dir on a small tmpfs (root), filled by bytes and then by inodes.
"""

import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
from unittest import mock

from meshkit.adapters import runner
from meshkit.adapters.log import Logger
from meshkit.adapters.outbox import Outbox
from meshkit.core.errors import ClientError, ConfigError
from meshkit.roles.worker import jobs
from meshkit.roles.worker.jobs import Job
from meshkit.roles.worker.settings import settings_from
from meshkit.roles.worker.worker import Worker
from meshkit.rules import fsm, holds
from meshkit.rules.config import parse_config, render_default_toml
from meshkit.rules.policy import KindPolicy, kind_verdict
from tests.helpers import Fleet
from tests.test_diskfault import WHY_NOT, fill
from tests.test_worker_harness import FAST, WorkerProc, close_fleet, dispatch, get_task, wait_for, wait_state
from tests.test_worker_units import FakeLink, WorkerCase, api, settings

MB = holds.MB
ENOSPC = OSError(errno.ENOSPC, "No space left on device")
MEM = {"reason": "memory_guard", "rss_bytes": 900 * MB, "soft_bytes": 800 * MB}
DISK = {"reason": "disk_full"}


class Rules(unittest.TestCase):
    def test_disk_short(self):
        cases = [
            # free, min_free_mb, failed_at, now -> short (poll_interval 5: a failed write holds 30 s)
            (100 * MB, 64, None, 0, False),
            (64 * MB, 64, None, 0, False),
            (64 * MB - 1, 64, None, 0, True),
            (0, 64, None, 0, True),
            (0, 0, None, 0, False),              # 0: no threshold
            (0, 0, 10.0, 11.0, True),            # ...but a write that failed for lack of space still holds
            (0, 0, 10.0, 40.0, False),
            (None, 64, None, 0, False),          # the figure is unknown: not short by it
            (100 * MB, 64, 10.0, 11.0, True),    # a write failed for lack of space (inodes, quota) just now
            (100 * MB, 64, 10.0, 39.9, True),
            (100 * MB, 64, 10.0, 40.0, False),   # 6 poll intervals later: claims again
            (None, 64, 10.0, 20.0, True),
        ]
        for free, min_mb, failed_at, now, want in cases:
            with self.subTest(free=free, min_mb=min_mb, failed_at=failed_at, now=now):
                self.assertEqual(holds.disk_short(free, min_mb, failed_at, now, 5), want)
        self.assertEqual((holds.disk_hold(True), holds.disk_hold(False)), (DISK, None))

    def test_combine(self):
        cases = [
            ({}, None),
            ({"memory_guard": None, "disk_full": None}, None),
            ({"memory_guard": MEM}, MEM),
            ({"disk_full": DISK}, DISK),
            ({"memory_guard": MEM, "disk_full": DISK}, MEM),     # one guard at a time on the wire: memory first
            ({"memory_guard": None, "disk_full": DISK}, DISK),   # the memory guard ending leaves the disk's
            ({"zz": {"reason": "zz"}, "aa": {"reason": "aa"}}, {"reason": "aa"}),
            ({"zz": {"reason": "zz"}, "disk_full": DISK}, DISK),
        ]
        for given, want in cases:
            with self.subTest(given=given):
                self.assertEqual(holds.combine(given), want)

    def test_no_space(self):
        cases = [(ENOSPC, True), (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
                 (OSError(errno.EACCES, "Permission denied"), False), (OSError("x"), False), (ValueError(), False)]
        for err, want in cases:
            with self.subTest(err=err):
                self.assertEqual(holds.no_space(err), want)

    def test_the_supervisor_retries_the_failure_and_does_not_count_it(self):
        """With the supervisor's own rules: the attempt goes back to the queue, and the kind's count
        of failures in a row (quarantine) is left alone: the words match a default transient pattern."""
        error = jobs.cannot_prepare("wf2", "/d/work", ENOSPC)
        self.assertEqual(error, "worker wf2: cannot prepare the task directory: No space left on device (/d/work); "
                                "the worker is temporarily unavailable")
        self.assertIsNone(kind_verdict("failed", "error", None, "", error, KindPolicy()))
        self.assertEqual(kind_verdict("failed", "error", None, "", "cannot start x", KindPolicy()), "count")
        self.assertEqual(fsm.after_result("failed", "error", 1, 5, False)[0], "queued")

    def test_config_key(self):
        text = render_default_toml()
        self.assertIn("# claim no new tasks while the work dir's file system has less free space (MB) than this; "
                      "0 = no threshold\nmin_free_mb = 64\n", text)
        kinds = '\n[worker.kinds.echo]\nargv = ["cat"]\n'
        self.assertEqual(settings_from(parse_config(text), "h").min_free_mb, 64)
        self.assertEqual(settings_from(parse_config("[worker]\nmin_free_mb = 0\n" + kinds), "h").min_free_mb, 0)
        for bad in ("-1", "1.5", '"64"'):
            with self.subTest(bad=bad):
                with self.assertRaises(ConfigError) as cm:
                    parse_config(f"[worker]\nmin_free_mb = {bad}\n")
                self.assertEqual(cm.exception.details["key"], "worker.min_free_mb")


class DiskCase(WorkerCase):
    def worker(self, script=None, free=1 << 40, **kw):
        """A worker whose work dir has `free` bytes free (self.free[0]: change it later)."""
        self.free = [free]
        self.link = FakeLink(script)
        self.outbox = Outbox(tempfile.mkdtemp(dir=self.dir))
        self.addCleanup(self.outbox.close)
        w = Worker(settings(work_dir=self.dir, **dict({"min_free_mb": 64}, **kw)), self.link, self.outbox, self.clock,
                   Logger("worker", "w1", stream=self.logs, clock=self.clock), rand=lambda: 0.5,
                   spawn=lambda target, *a: self.spawned.append((target, a)), proc="/nonexistent",
                   disk_free=lambda path: self.free[0])
        w.startup()
        return w

    def events(self, name):
        return [r for r in map(json.loads, self.logs.getvalue().splitlines()) if r.get("event") == name]

    def heartbeats(self):
        return [body for path, body in self.link.calls if path == "/v1/heartbeat"]


OK = {"ok": True, "epoch": 1}


class PrepareFirst(DiskCase):
    def test_a_task_dir_that_cannot_be_made_ends_the_attempt_before_any_start_call(self):
        w = self.worker({"/v1/results": [{"ok": True, "state": "queued"}]})
        job = w.jobs["t1"] = Job(self.task("t1", fence=3))
        with mock.patch.object(runner, "prepare_dir", side_effect=ENOSPC):
            w.execute(job)
        self.assertEqual(self.link.paths().count("/v1/tasks/t1/start"), 0)     # never told "started"
        [(_, body)] = self.outbox.pending()
        self.assertEqual((body["outcome"], body["ended_by"], body["fence"], body["exit_code"]),
                         ("failed", "error", 3, None))
        self.assertEqual(body["error"], jobs.cannot_prepare("w1", self.dir, ENOSPC))
        self.assertEqual(w.jobs, {})
        self.assertEqual(self.events("task_not_prepared")[0]["error"], "No space left on device")
        self.assertEqual(os.listdir(os.path.join(self.dir, "tasks")), [])       # nothing half-made left
        # out of space: claims are held back at once (the free-space figure looks fine: inodes, a quota)
        self.assertEqual(w.hold, DISK)
        self.assertEqual(w.next_heartbeat, 0.0)

    def test_a_start_refused_leaves_no_task_dir(self):
        w = self.worker({"/v1/tasks/t1/start": [api(409, "stale_fence")]})
        job = w.jobs["t1"] = Job(self.task("t1"))
        w.execute(job)
        self.assertEqual((os.listdir(os.path.join(self.dir, "tasks")), self.outbox.pending()), ([], []))

    def test_the_dir_is_made_before_the_start_call(self):
        seen = []
        w = self.worker({"/v1/tasks/t1/start": [lambda: (seen.append(os.listdir(os.path.join(self.dir, "tasks"))),
                                                         api(409, "stale_fence"))[1]]})
        w.execute(w.jobs.setdefault("t1", Job(self.task("t1", fence=4))))
        self.assertEqual(seen, [[runner.dir_name("t1", 1, 4)]])


class FullOutbox(DiskCase):
    def full(self, w):
        puts = []

        def put(body):
            puts.append(body["task"])
            raise ENOSPC
        w.outbox = type("FullDisk", (), {"put": staticmethod(put)})()
        return puts

    def test_a_result_the_outbox_cannot_hold_is_sent_directly(self):
        w = self.worker({"/v1/results": [{"ok": True, "state": "succeeded", "duplicate": False}]})
        puts = self.full(w)
        job = w.jobs["t1"] = Job(self.task("t1", kind="nope"))
        w.execute(job)
        self.assertEqual(puts, ["t1"])
        sent = [body for path, body in self.link.calls if path == "/v1/results"]
        self.assertEqual([(b["task"], b["error"]) for b in sent], [("t1", "kind not allowed: nope")])
        self.assertEqual((w.unacked, w.jobs), ({}, {}))          # acknowledged: nothing to keep
        self.assertEqual(self.events("result_lost"), [])
        self.assertEqual(self.events("result_delivered")[0]["direct"], True)
        self.assertEqual(self.events("result_sent_directly")[0]["error"], "cannot write the outbox: No space left on device")
        self.assertEqual(w.hold, DISK)                           # and claims wait for space

    def test_sent_directly_after_a_retry_or_lost_when_the_supervisor_never_answers(self):
        cases = [("answers the second time", [ClientError("down"), {"ok": True}], 2, False),
                 ("a final refusal settles it too", [api(409, "stale_fence")], 1, False),
                 ("never answers", [ClientError("down")], None, True)]
        for name, answers, sends, lost in cases:
            with self.subTest(name):
                self.logs.truncate(0)
                self.logs.seek(0)
                w = self.worker({"/v1/results": answers})
                self.full(w)
                w.execute(w.jobs.setdefault("t1", Job(self.task("t1", kind="nope"))))
                self.assertEqual(w.jobs, {})
                got = self.link.paths().count("/v1/results")
                if sends is not None:
                    self.assertEqual(got, sends)
                self.assertEqual(bool(self.events("result_lost")), lost)
                if lost:
                    self.assertIn("nor send it: down", self.events("result_lost")[0]["error"])
                    self.assertLessEqual(sum(self.clock.slept), jobs.STORE_RETRY_FOR)


class DiskGuard(DiskCase):
    def test_held_from_the_start_said_at_once_and_claims_resume_when_space_is_back(self):
        w = self.worker({"/v1/heartbeat": [OK], "/v1/claim": [{"tasks": []}]}, free=10 * MB, heartbeat_interval=300)
        self.assertEqual(w.hold, DISK)                   # before the first heartbeat and claim
        w.step()
        self.assertEqual(self.heartbeats()[0]["hold"], DISK)
        self.assertEqual(w.claim_step(), 5)
        self.assertNotIn("/v1/claim", self.link.paths())
        self.assertEqual(self.events("disk_full")[0]["free"], 10 * MB)
        self.clock.advance(4)
        self.assertLessEqual(w.step(), 1)                # the next check is within poll_interval
        self.free[0] = 100 * MB                          # space freed
        self.clock.advance(1)
        w.slot_freed.clear()
        w.step()                                         # checked: the hold ends...
        self.assertIsNone(w.hold)
        self.assertEqual(len(self.events("disk_ok")), 1)
        self.assertEqual(w.next_heartbeat, 0.0)          # ...and is said at once, not in 300 s
        w.step()
        self.assertNotIn("hold", self.heartbeats()[-1])
        self.assertTrue(w.slot_freed.is_set())           # the claim loop stops waiting
        w.claim_step()
        self.assertIn("/v1/claim", self.link.paths())
        self.free[0] = 1 * MB                            # full again: held within poll_interval
        self.clock.advance(5)
        w.step()
        self.assertEqual(w.hold, DISK)
        self.assertEqual(len(self.events("disk_full")), 2)

    def test_a_failed_write_holds_for_six_poll_intervals(self):
        w = self.worker({"/v1/heartbeat": [OK]})
        self.assertIsNone(w.hold)
        w.disk_write_failed(ENOSPC)
        self.assertEqual(w.hold, DISK)
        self.clock.advance(29)
        w.step()                                         # checked: 29 s after, still held
        self.assertEqual(w.hold, DISK)
        self.clock.advance(5)
        w.step()                                         # the first check past 30 s: claims again
        self.assertIsNone(w.hold)
        w.disk_write_failed(OSError(errno.EACCES, "Permission denied"))      # not a full disk: no hold
        self.assertIsNone(w.hold)

    def test_no_threshold(self):
        w = self.worker({"/v1/heartbeat": [OK]}, free=0, min_free_mb=0)
        self.assertIsNone(w.hold)                        # the free-space figure is not looked at
        self.assertGreater(w.step(), 5)                  # and no check wakes the idle loop
        w.disk_write_failed(ENOSPC)                      # a write that failed for lack of space still holds
        self.assertEqual(w.hold, DISK)
        self.assertLessEqual(w.step(), 5)                # checked again until it ends
        self.clock.advance(30)
        w.step()
        self.assertIsNone(w.hold)
        self.assertGreater(w.step(), 5)

    def test_the_memory_and_disk_holds_never_clear_each_other(self):
        w = self.worker({"/v1/heartbeat": [OK]}, free=1 * MB)
        w.set_hold(MEM)                                  # the memory guard (memwire.WorkerGuard) on top
        w.step()
        self.assertEqual(self.heartbeats()[-1]["hold"], MEM)
        w.set_hold(None)                                 # the memory guard ends: the disk still holds
        self.assertEqual(w.hold, DISK)
        self.assertEqual(w.next_heartbeat, 0.0)          # the reason changed: said at once
        w.step()
        self.assertEqual(self.heartbeats()[-1]["hold"], DISK)
        self.assertEqual(w.claim_step(), 5)
        w.set_hold(MEM, "memory_guard")
        self.free[0] = 1 << 40
        self.clock.advance(5)
        w.step()                                         # the disk's ends: the memory guard still holds
        self.assertEqual(w.hold, MEM)
        self.assertEqual(self.heartbeats()[-1]["hold"], MEM)
        self.assertEqual(w.claim_step(), 5)
        w.set_hold(None, "memory_guard")
        self.assertIsNone(w.hold)


def status_hold(admin, name):
    nodes = [n for n in admin.call("GET", "/v1/status")["nodes"] if n["name"] == name]
    return nodes[0].get("hold") if nodes else None


def exhaust_inodes(directory: str) -> int:
    """Create empty files in directory until the file system has no inode left; how many."""
    os.makedirs(directory)
    n = 0
    while n < 100000:
        try:
            os.close(os.open(os.path.join(directory, str(n)), os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            return n
        n += 1
    raise AssertionError("the file system never ran out of inodes")


class RealWorkerOnAFullDisk(unittest.TestCase):
    """A real supervisor and worker (`meshkit worker`, worker.min_free_mb = 1) whose work dir is on a
    4 MiB tmpfs with 64 inodes: filled with bytes, then (space freed) with empty files."""

    @unittest.skipIf(WHY_NOT, WHY_NOT or "")
    def test_held_while_full_and_a_task_it_cannot_prepare_is_retried_not_lost(self):
        fleet = Fleet(**dict(FAST, tasks__quarantine_after=3))
        fleet.workers = []
        disk = os.path.join(fleet.dir, "disk")
        os.makedirs(disk)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs", disk],
                             capture_output=True, text=True)
        if out.returncode != 0:
            fleet.close()
            self.skipTest(f"cannot mount a tmpfs with nr_inodes here: {out.stderr.strip()}")
        self.addCleanup(close_fleet, fleet)          # last: it removes the dir the tmpfs was mounted on
        self.addCleanup(subprocess.run, ["umount", "-l", disk], capture_output=True)
        fleet.start_supervisor()
        admin = fleet.client("admin")
        self.addCleanup(admin.close)
        w = WorkerProc(fleet, "wf2", work_dir=os.path.join(disk, "work"))
        w.args[1] = fleet.other_config("wf2", worker__min_free_mb=1)
        w.start()
        self.assertIsNone(status_hold(admin, "wf2"))

        # 1. Full by bytes: the worker says so at once and claims nothing; space back: it runs the task.
        big = os.path.join(disk, "big.fill")
        fill(big, 8 * MB)
        self.assertLess(shutil.disk_usage(disk).free, MB)
        wait_for(lambda: status_hold(admin, "wf2") == DISK, 5, "wf2's heartbeat to say hold disk_full")
        t1 = dispatch(admin, "echo", {"n": 1})
        time.sleep(2)                                      # four claim rounds (poll_interval 0.5 s)
        task = get_task(admin, t1)
        self.assertEqual((task["state"], task["attempts"]), ("queued", 0), task)
        os.unlink(big)
        task = wait_state(admin, t1, "succeeded", timeout=10)
        self.assertEqual([h["to"] for h in task["history"]], ["queued", "leased", "running", "succeeded"])
        wait_for(lambda: status_hold(admin, "wf2") is None, 5, "wf2's hold to end")
        self.assertGreaterEqual((w.count("disk_full"), w.count("disk_ok")), (1, 1))

        # 2. Full by inodes (the free-space figure looks fine): the task dir cannot be made. The attempt
        # ends at once, never marked running, its history says why, its result goes straight to the
        # supervisor (the outbox cannot be written either), and claims are held back at once.
        files = exhaust_inodes(os.path.join(disk, "inodes"))
        self.assertGreater(files, 0)
        self.assertGreater(shutil.disk_usage(disk).free, MB)
        t2 = dispatch(admin, "echo", {"n": 2}, max_attempts=10)

        def why():
            return [h for h in get_task(admin, t2)["history"] if "cannot prepare the task directory" in h["reason"]]
        [first] = wait_for(why, 10, f"{t2} to fail on wf2 with the reason")[:1]
        self.assertEqual((first["from"], first["to"]), ("leased", "queued"), first)
        self.assertIn("attempt 1 failed (error); retry 2 of 10: worker wf2: cannot prepare the task directory: "
                      f"No space left on device ({os.path.join(disk, 'work')})", first["reason"])
        wait_for(lambda: status_hold(admin, "wf2") == DISK, 5, "wf2 to hold back claims after the failed write")
        self.assertNotIn("running", [h["to"] for h in get_task(admin, t2)["history"]])
        self.assertFalse([e for e in w.events("task_started") if e["task"] == t2])
        self.assertTrue([e for e in w.events("task_not_prepared") if e["task"] == t2])
        self.assertTrue([e for e in w.events("result_sent_directly") if e["task"] == t2])

        # 3. Space back: retried and done on the same worker; nothing lost, no lease left to expire.
        shutil.rmtree(os.path.join(disk, "inodes"))
        task = wait_state(admin, t2, "succeeded", timeout=15)
        hist = task["history"]
        self.assertEqual([h["to"] for h in hist][-3:], ["leased", "running", "succeeded"])
        self.assertEqual([h["to"] for h in hist].count("running"), 1)
        requeued = [h["reason"] for h in hist if h["to"] == "queued" and h["from"] is not None]
        self.assertTrue(requeued)
        for reason in requeued:                            # each failed attempt reported, none reaped
            self.assertIn("cannot prepare the task directory", reason)
        kinds = {k["kind"]: k for k in admin.call("GET", "/v1/kinds")["kinds"]}
        self.assertFalse(kinds.get("echo", {}).get("quarantined"), kinds)
        self.assertEqual(w.events("result_lost"), [])
        self.assertEqual(w.outbox(), [])
        w.signal(15)
        self.assertEqual(w.wait(), 0)
        print(f"\n  full work dir (4 MiB tmpfs, 64 inodes): held (disk_full) while full, {t1} run once space was "
              f"back; {t2}: {len(requeued)} attempt(s) failed before a start ('cannot prepare the task "
              f"directory'), sent without the outbox, retried, succeeded; nothing lost", end=" ")


if __name__ == "__main__":
    unittest.main()
