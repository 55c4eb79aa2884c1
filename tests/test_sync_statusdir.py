"""A sync run whose status file (`<sync.status_dir>/<job>.json`) cannot be written says so
and exits non-zero, with real rsync and real `python -m meshkit sync` processes: found
before rsync starts, it refuses (exit 2, nothing copied); lost while the run worked, it
keeps the good copy and exits 6. Monitoring that reads the status file would otherwise
show a stale last success while runs go unrecorded.

The tests run as root, so the status dir is made unwritable in ways root can't bypass:
a path under a regular file, a regular file in its place, a directory in /proc."""

import json
import os
import subprocess
import sys
import unittest

from tests.test_diskfault import WHY_NOT, fill
from tests.test_sync_helpers import SyncCase, write


def meshkit_lines(proc) -> list:
    """The human lines meshkit wrote on stderr (not the JSON log lines)."""
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("meshkit: ")]


class StatusDirUnwritable(SyncCase):
    def setUp(self):
        super().setUp()
        self.afile = os.path.join(self.tmp, "afile")
        write(self.afile, "a regular file, not a directory\n")
        self.alerts = os.path.join(self.tmp, "alerts.jsonl")

    def configure(self, status_dir: str, rsync: str = "rsync") -> None:
        hook = f"import sys; open({self.alerts!r}, 'a').write(sys.stdin.read() + chr(10))"
        self.set_config(f'[sync]\nstatus_dir = {json.dumps(status_dir)}\nrsync = {json.dumps(rsync)}\n'
                        f'alert = [{json.dumps(sys.executable)}, "-c", {json.dumps(hook)}]\n')

    def alert_events(self) -> list:
        if not os.path.exists(self.alerts):
            return []
        with open(self.alerts) as f:
            return [json.loads(ln) for ln in f if ln.strip()]

    def test_unwritable_status_dir_refuses_before_rsync(self):
        """Nothing is copied that could not be recorded: exit 2, one line naming the key,
        the status file and the OS error; DEST keeps its last good copy; the alert runs."""
        good = self.make_agents(2, 2)
        self.sync()
        first = self.current()
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"changed": 1}')
        cases = [(os.path.join(self.afile, "sub"), "Not a directory"),
                 (self.afile, "File exists (%s): a file, not a directory" % self.afile),
                 ("/proc/1/meshkit-sync-status", "No such file or directory")]
        for n, (status_dir, oserr) in enumerate(cases, 1):
            with self.subTest(status_dir=status_dir):
                self.configure(status_dir)
                proc = self.sync(code=2)
                self.assertNotIn("Traceback", proc.stderr)
                [line] = meshkit_lines(proc)
                self.assertIn("sync.status_dir", line)
                self.assertIn(os.path.join(status_dir, "memory.json"), line)
                self.assertIn(oserr, line)
                self.assertIn(self.config, line)
                self.assertIn("nothing was copied", line)
                # DEST is untouched: the same current, holding the first copy; no new snapshot
                self.assert_current(good, first)
                self.assertEqual((self.snapshots(), self.snapshots(".incomplete")), ([first], []))
                self.assertFalse(os.path.exists(os.path.join(self.tmp, "afile", "sub")))
                events = self.alert_events()
                self.assertEqual(len(events), n)
                self.assertEqual((events[-1]["event"], events[-1]["job"]), ("sync_failed", "memory"))
                self.assertIn(os.path.join(status_dir, "memory.json"), events[-1]["error"])
        # `sync status` does not say "no jobs have run" about a status dir it cannot read
        for status_dir in (self.afile, os.path.join(self.afile, "sub")):
            self.configure(status_dir)
            proc = self.meshkit("sync", "status")
            self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
            self.assertIn("sync.status_dir", proc.stderr)
        # a writable status dir again: the run goes ahead and records itself
        status_dir = os.path.join(self.tmp, "status")
        self.configure(status_dir)
        proc = self.sync()
        self.assertEqual(meshkit_lines(proc), [])
        self.assert_current(self.expected())
        with open(os.path.join(status_dir, "memory.json")) as f:
            self.assertEqual(json.load(f)["last_result"], "ok")

    def test_status_lost_during_the_run_keeps_the_copy_and_exits_6(self):
        """The status dir was fine at the start and is gone when the outcome is written (here
        rsync's wrapper puts a file in its place; in life a full disk): the new copy stays
        current, one line says the outcome is unrecorded, and the exit code is 6."""
        expected = self.make_agents(2, 3)
        status_dir = os.path.join(self.tmp, "status")
        os.makedirs(status_dir)
        wrapper = os.path.join(self.tmp, "rsync-then-break-status")
        write(wrapper, f'#!/bin/sh\nrsync "$@"; rc=$?\nrm -rf "{status_dir}"; echo x > "{status_dir}"\n'
                       'exit $rc\n')
        os.chmod(wrapper, 0o755)
        self.configure(status_dir, wrapper)
        proc = self.sync(code=6)
        self.assertNotIn("Traceback", proc.stderr)
        [line] = meshkit_lines(proc)
        for words in ("sync.status_dir", os.path.join(status_dir, "memory.json"), "File exists", "(ok)"):
            self.assertIn(words, line)
        self.assertEqual(self.run_line(proc)["result"], "ok")
        self.assert_current(expected)
        self.assertTrue(os.path.isfile(status_dir))
        # the next run finds it before rsync starts: refused, the copy still current
        name = self.current()
        write(os.path.join(self.src, "agent1", "memory", "note1.json"), '{"changed": 2}')
        self.sync(code=2)
        self.assert_current(expected, name)

    def test_a_failed_run_keeps_its_own_code_and_says_it_is_unrecorded(self):
        """rsync fails (exit 5) and the status is lost too: the failure's code wins, and
        both are on stderr; current is the previous good copy."""
        expected = self.make_agents(1, 2)
        status_dir = os.path.join(self.tmp, "status")
        self.configure(status_dir)
        self.sync()
        first = self.current()
        wrapper = os.path.join(self.tmp, "rsync-fails")
        write(wrapper, f'#!/bin/sh\nrm -rf "{status_dir}"; echo x > "{status_dir}"\n'
                       'echo "rsync: connection unexpectedly closed" >&2; exit 12\n')
        os.chmod(wrapper, 0o755)
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"changed": 3}')
        self.configure(status_dir, wrapper)
        proc = self.sync(code=5)
        lines = meshkit_lines(proc)
        self.assertTrue(any("connection unexpectedly closed" in ln for ln in lines), proc.stderr)
        self.assertTrue(any("sync.status_dir" in ln and "failed" in ln for ln in lines), proc.stderr)
        self.assert_current(expected, first)

    @unittest.skipIf(WHY_NOT, WHY_NOT or "")
    def test_a_full_disk_under_the_status_dir_refuses_before_rsync(self):
        """An empty probe file fits on a full disk; the status file does not: the probe writes."""
        good = self.make_agents(1, 1)
        self.sync()
        first = self.current()
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"changed": 1}')
        status_dir = os.path.join(self.tmp, "full")
        os.mkdir(status_dir)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", status_dir], check=True)
        self.addCleanup(subprocess.run, ["umount", status_dir], capture_output=True)
        fill(os.path.join(status_dir, "filler"), 1 << 20)
        self.configure(status_dir)
        proc = self.sync(code=2)
        [line] = meshkit_lines(proc)
        self.assertIn("No space left on device", line)
        self.assertIn("nothing was copied", line)
        self.assert_current(good, first)
        self.assertEqual(self.snapshots(), [first])
        self.assertEqual(sorted(os.listdir(status_dir)), ["filler"])      # the probe is gone

    def test_backup_refuses_too(self):
        self.make_agents(1, 1)
        self.configure(os.path.join(self.afile, "sub"))
        proc = self.sync("--keep-daily", "1", kind="backup", code=2)
        [line] = meshkit_lines(proc)
        self.assertIn("sync backup not run", line)
        self.assertIn(os.path.join(self.afile, "sub", "backup.json"), line)
        self.assertFalse(os.path.exists(self.dest))
