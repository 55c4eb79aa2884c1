"""`meshkit sync backup|list|restore|status` with real rsync and real processes."""

import json
import os
import shutil
import time
from datetime import datetime, timezone

from meshkit.rules.syncrotate import rotation_plan
from tests.test_sync_helpers import SyncCase, tree, write


def stamp(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class Backups(SyncCase):
    def backup(self, *extra, code=0):
        return self.sync(*extra, kind="backup", code=code)

    def fake_old(self, seconds_ago: float) -> str:
        """A complete snapshot that looks as if it was made seconds_ago (a copy of current)."""
        name = stamp(seconds_ago)
        snaps = os.path.join(self.dest, "snapshots")
        shutil.copytree(os.path.join(self.dest, "current"), os.path.join(snaps, name), symlinks=True)
        shutil.copy(os.path.join(snaps, self.current() + ".json"), os.path.join(snaps, name + ".json"))
        return name

    def test_every_run_is_a_snapshot_sharing_unchanged_files(self):
        self.make_agents(2, 2)
        everything = tree(self.src)
        self.backup("--keep-hourly", "5")
        first = self.current()
        self.assertEqual(tree(os.path.join(self.dest, "current")), everything)   # backups copy everything
        self.backup("--keep-hourly", "5", "--keep-daily", "0")
        second = self.current()
        self.assertNotEqual(first, second)
        self.assertEqual(self.snapshots(), [second])     # same hour: the newest is kept
        self.assertEqual(self.status("backup")["last_result"], "ok")

    def test_rotation_keeps_hourly_and_daily_and_waits_for_success(self):
        self.make_agents(1, 2)
        self.backup()
        day, hour = 86400, 3600
        into_hour = time.time() % hour      # a and b: two in the same hour, 2 hours back
        ago = {"a": 2 * hour + into_hour - 1800, "b": 2 * hour + into_hour - 900,
               "5h": 5 * hour, "3d": 3 * day, "9d": 9 * day}
        olds = {k: self.fake_old(v) for k, v in ago.items()}
        # a failing run must not rotate anything
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), "{broken")
        self.backup("--keep-hourly", "2", "--keep-daily", "2", code=1)
        self.assertEqual(len(self.snapshots()), 6)
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), "{}")
        before = self.snapshots()
        self.backup("--keep-hourly", "3", "--keep-daily", "2")
        kept = set(self.snapshots())
        # what the (table-tested) rule says, wherever in the hour and day the test runs
        plan = rotation_plan(before + [self.current()], self.current(), 1, 3, 2)
        self.assertEqual(kept, set(plan.keep))
        self.assertIn(self.current(), kept)
        self.assertIn(olds["a"], kept)          # the newest of its hour ...
        self.assertNotIn(olds["b"], kept)       # ... not an older one in the same hour
        self.assertNotIn(olds["9d"], kept)      # beyond the last 2 days that have snapshots
        self.assertGreaterEqual(len(kept), 3)
        self.assertEqual(len(self.invalid()), 1)
        for name in kept:
            self.assertTrue(os.path.isfile(os.path.join(self.dest, "snapshots", name + ".json")))

    def test_no_validate(self):
        self.make_agents(1, 1)
        write(os.path.join(self.src, "agent0", "memory", "bad.json"), "{")
        self.backup(code=1)
        self.backup("--no-validate")
        self.assertIn("agent0/memory/bad.json", tree(os.path.join(self.dest, "current")))


class ListRestoreStatus(SyncCase):
    def setUp(self):
        super().setUp()
        self.good = self.make_agents(2, 2)
        self.sync()
        self.first = self.current()
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), "{bad")
        self.sync(code=1)
        [self.bad] = self.invalid()

    def test_list(self):
        proc = self.meshkit("sync", "list", self.dest)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertTrue(lines[0].startswith("SNAPSHOT"))
        self.assertIn("current", lines[1])
        self.assertIn("invalid", lines[2])
        self.assertIn("1 problem(s)", lines[2])
        rows = json.loads(self.meshkit("sync", "list", self.dest, "--json").stdout)
        self.assertEqual([(r["name"], r["state"]) for r in rows], [(self.first, "current"), (self.bad, "invalid")])
        self.assertEqual(rows[0]["files"], len(self.good))
        self.assertEqual(rows[0]["bytes"], sum(map(len, self.good.values())))
        self.assertGreaterEqual(rows[0]["age"], 0)
        self.assertEqual(self.meshkit("sync", "list", os.path.join(self.tmp, "nothing")).returncode, 1)

    def test_restore(self):
        target = os.path.join(self.tmp, "restored")
        proc = self.meshkit("sync", "restore", self.dest, "current", target, "--dry-run")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(os.path.exists(target))
        proc = self.meshkit("sync", "restore", self.dest, self.first, target)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(tree(target), self.good)
        # extra files survive unless --delete
        write(os.path.join(target, "extra.txt"), "x")
        self.meshkit("sync", "restore", self.dest, "current", target)
        self.assertIn("extra.txt", tree(target))
        self.meshkit("sync", "restore", self.dest, "current", target, "--delete")
        self.assertEqual(tree(target), self.good)
        # invalid needs --force; unknown names and targets inside DEST are refused
        other = os.path.join(self.tmp, "evidence")
        self.assertEqual(self.meshkit("sync", "restore", self.dest, self.bad, other).returncode, 2)
        self.assertEqual(self.meshkit("sync", "restore", self.dest, self.bad, other, "--force").returncode, 0)
        self.assertEqual(tree(other)["agent0/memory/note0.json"], b"{bad")
        self.assertEqual(self.meshkit("sync", "restore", self.dest, "20000101T000000Z", other).returncode, 2)
        inside = os.path.join(self.dest, "snapshots", "x")
        self.assertEqual(self.meshkit("sync", "restore", self.dest, "current", inside).returncode, 2)
        self.assert_current(self.good, self.first)

    def test_status_command(self):
        proc = self.meshkit("sync", "status")
        self.assertEqual(proc.returncode, 1)        # the last run failed
        self.assertIn("memory", proc.stdout)
        self.assertIn("invalid", proc.stdout)
        recs = json.loads(self.meshkit("sync", "status", "memory", "--json").stdout)
        self.assertEqual(recs[0]["consecutive_failures"], 1)
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), "{}")
        self.sync()
        self.assertEqual(self.meshkit("sync", "status").returncode, 0)
        self.assertEqual(self.meshkit("sync", "status", "nope").returncode, 1)
