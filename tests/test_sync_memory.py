"""`meshkit sync memory` with real rsync and real processes: every way a copy can go
wrong leaves `current` on a complete, valid copy and deletes nothing valid."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from meshkit.adapters.locks import FileLock
from tests.test_sync_helpers import ROOT, STATUS_KEYS, SyncCase, tree, write


class FirstSyncAndChanges(SyncCase):
    def test_copy_unchanged_and_incremental(self):
        expected = self.make_agents()
        proc = self.sync()
        first = self.current()
        self.assert_current(expected)
        self.assertIn("current -> snapshots/", proc.stdout)
        line = self.run_line(proc)
        self.assertEqual((line["result"], line["files"], line["changed"]), ("ok", len(expected), len(expected)))
        for key in ("bytes", "duration", "snapshot", "job"):
            self.assertIn(key, line)
        st = self.status()
        self.assertLessEqual(STATUS_KEYS, set(st))
        self.assertEqual((st["job"], st["last_result"], st["consecutive_failures"]), ("memory", "ok", 0))
        self.assertIsNone(st["last_failure"])

        # nothing changed: no new snapshot
        proc = self.sync()
        self.assertEqual(self.run_line(proc)["result"], "unchanged")
        self.assertEqual(self.snapshots(), [first])

        # one file changed, one added, one removed, a new agent
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"agent": 0, "note": "new"}')
        write(os.path.join(self.src, "agent1", "memory", "extra.json"), '{"x": 1}')
        os.unlink(os.path.join(self.src, "agent2", "memory", "note2.json"))
        write(os.path.join(self.src, "agent9", "memory", "a.json"), "{}")
        write(os.path.join(self.src, "agent9", "MEMORY.md"), "nine")
        proc = self.sync()
        line = self.run_line(proc)
        self.assertEqual((line["changed"], line["deleted"]), (4, 1))
        second = self.current()
        self.assertNotEqual(second, first)
        self.assert_current(self.expected())
        meta = json.load(open(os.path.join(self.dest, "snapshots", second + ".json")))
        self.assertEqual((meta["files"], meta["bytes"]), (len(self.expected()), sum(map(len, self.expected().values()))))
        # unchanged files share their inode with the previous snapshot; changed ones do not
        old, new = (os.path.join(self.dest, "snapshots", n) for n in (first, second))
        same = os.path.join("agent1", "memory", "note1.json")
        self.assertEqual(os.stat(os.path.join(old, same)).st_ino, os.stat(os.path.join(new, same)).st_ino)
        changed = os.path.join("agent0", "memory", "note0.json")
        self.assertNotEqual(os.stat(os.path.join(old, changed)).st_ino, os.stat(os.path.join(new, changed)).st_ino)
        self.assertEqual(json.load(open(os.path.join(old, changed)))["note"], 0)     # old copy untouched

    def test_permission_change_does_not_leak_into_old_snapshot(self):
        self.make_agents(1, 1)
        self.sync()
        first = self.current()
        path = os.path.join("agent0", "memory", "note0.json")
        os.chmod(os.path.join(self.src, path), 0o600)
        self.sync()
        self.assertEqual(os.stat(os.path.join(self.dest, "snapshots", first, path)).st_mode & 0o777, 0o644)
        self.assertEqual(os.stat(os.path.join(self.dest, "current", path)).st_mode & 0o777, 0o600)

    def test_keep_rotates_old_snapshots_after_success(self):
        self.make_agents(1, 1)
        names = []
        for i in range(4):
            write(os.path.join(self.src, "agent0", "memory", "n.json"), json.dumps({"i": i}))
            self.sync("--keep", "2")
            names.append(self.current())
        self.assertEqual(self.snapshots(), names[2:])

    def test_odd_file_names(self):
        names = ["a b.json", "new\nline.json", "caf\u00e9.md", "-dash.json", "back\\#101.json", "t\tab.jsonl"]
        for n in names:
            write(os.path.join(self.src, "agent0", "memory", n), "{}" if "json" in n else "text")
        self.sync()
        self.assert_current(self.expected())
        for n in names:
            write(os.path.join(self.src, "agent0", "memory", n), '{"v": 2}' if "json" in n else "text 2")
        proc = self.sync()
        self.assertEqual(self.run_line(proc)["changed"], len(names))
        self.assert_current(self.expected())
        write(os.path.join(self.src, "agent0", "memory", "new\nline.json"), "{")
        proc = self.sync(code=1)
        self.assertIn("agent0/memory/new\nline.json: is not valid JSON", proc.stderr)

    def test_first_copy_is_checked_whole(self):
        """A first run checks every file (while rsync copies them): each kind of bad file
        among 600 good ones is reported, and no current is made."""
        self.make_agents(3, 200)
        self.set_config('[sync.memory.require]\n"*/memory/state.json" = ["agent"]\n')
        bad = {"agent0/memory/note7.json": "not valid JSON", "agent1/memory/log.jsonl": "line 2 is not valid JSON",
               "agent2/MEMORY.md": "is empty", "agent2/memory/new\nline.json": "not valid JSON",
               "agent1/memory/state.json": 'lacks required key "agent"', "agent0/memory/caf\u00e9.md": "not UTF-8"}
        data = {"agent0/memory/note7.json": '{"agent": 0', "agent1/memory/log.jsonl": '{"t": 1}\n{"t": \n',
                "agent2/MEMORY.md": " \n", "agent2/memory/new\nline.json": "",
                "agent1/memory/state.json": '{"updated": 1}', "agent0/memory/caf\u00e9.md": b"caf\xe9\n"}
        for path, text in data.items():
            write(os.path.join(self.src, path), text)
        proc = self.sync(code=1)
        self.assertIsNone(self.current())
        [aside] = self.invalid()
        with open(os.path.join(self.dest, "invalid", aside + ".report.json")) as f:
            report = json.load(f)
        got = {p["path"]: p["problem"] for p in report["problems"]}
        self.assertEqual(sorted(got), sorted(bad))
        for path, words in bad.items():
            self.assertIn(words, got[path])
        self.assertEqual(report["checked"], report["files"])
        self.assertEqual(report["files"], len(self.expected()))
        self.assertIn("validation failed", proc.stderr)
        # Still bad at the next runs: with no current each invalid copy is whole, so only
        # the newest is kept (with a current they are links, and sync.keep_invalid are kept)
        for _ in range(2):
            self.sync(code=1)
        [newest] = self.invalid()
        self.assertGreater(newest, aside)
        for path in data:
            os.unlink(os.path.join(self.src, path))
        self.sync()
        self.assert_current(self.expected())

    def test_dest_inside_source_is_refused(self):
        self.make_agents(1, 1)
        proc = self.meshkit("sync", "backup", "--source", self.src, "--dest", os.path.join(self.src, "bk"))
        self.assertEqual(proc.returncode, 2)
        self.assertIn("inside --source", proc.stderr)

    def test_include_and_exclude(self):
        self.make_agents(2, 1)
        self.sync("--include", "*.md", "--exclude", "agent1/")
        self.assertEqual(sorted(tree(os.path.join(self.dest, "current"))), ["agent0/MEMORY.md"])


class ValidationFailures(SyncCase):
    def setUp(self):
        super().setUp()
        self.alerts = os.path.join(self.tmp, "alerts.jsonl")
        hook = f"import sys; open({self.alerts!r}, 'a').write(sys.stdin.read() + chr(10))"
        self.set_config(f'[sync]\nalert = [{json.dumps(sys.executable)}, "-c", {json.dumps(hook)}]\n'
                        '[sync.memory.require]\n"*/memory/state.json" = ["agent", "updated"]\n')
        self.good = self.make_agents()
        self.sync()
        self.first = self.current()

    def events(self) -> list:
        if not os.path.exists(self.alerts):
            return []
        return [json.loads(ln)["event"] for ln in open(self.alerts) if ln.strip()]

    def assert_refused_copy(self, proc, *problems):
        self.assertIn("validation failed", proc.stderr)
        self.assert_current(self.good, self.first)
        [aside] = self.invalid()
        report = json.load(open(os.path.join(self.dest, "invalid", aside + ".report.json")))
        got = {}
        for p in report["problems"]:
            got[p["path"]] = got.get(p["path"], "") + p["problem"] + "; "
        for path, words in problems:
            self.assertIn(path, got)
            self.assertIn(words, got[path])
        return report

    def test_corrupt_json_then_recovery_with_alerts(self):
        write(os.path.join(self.src, "agent1", "memory", "note1.json"), '{"agent": 1, "note"')
        proc = self.sync(code=1)
        self.assert_refused_copy(proc, ("agent1/memory/note1.json", "not valid JSON"))
        st = self.status()
        self.assertEqual((st["last_result"], st["consecutive_failures"]), ("invalid", 1))
        self.assertIn("agent1/memory/note1.json", st["last_error"])
        self.sync(code=1)
        self.assertEqual(self.status()["consecutive_failures"], 2)
        write(os.path.join(self.src, "agent1", "memory", "note1.json"), '{"agent": 1, "note": 1}')
        self.sync()
        self.assertNotEqual(self.current(), self.first)
        self.assertEqual(self.status()["consecutive_failures"], 0)
        self.assertEqual(self.events(), ["sync_failed", "sync_failed", "sync_recovered"])
        self.assertEqual(len(self.invalid()), 2)        # evidence kept

    def test_failing_alert_command_is_logged_not_fatal(self):
        self.set_config('[sync]\nalert = ["/bin/sh", "-c", "echo mail is down >&2; exit 3"]\n')
        write(os.path.join(self.src, "agent1", "memory", "note1.json"), "{")
        proc = self.sync(code=1)
        self.assertIn('"event":"sync_alert_failed"', proc.stderr)
        self.assertIn("alert command exited 3: mail is down", proc.stderr)

    def test_truncated_files(self):
        log = os.path.join(self.src, "agent0", "memory", "log.jsonl")
        with open(log, "r+b") as f:
            f.truncate(12)
        note = os.path.join(self.src, "agent2", "memory", "note0.json")
        with open(note, "r+b") as f:
            f.truncate(5)
        proc = self.sync(code=1)
        report = self.assert_refused_copy(proc, ("agent0/memory/log.jsonl", "line 2 is not valid JSON"),
                                          ("agent2/memory/note0.json", "not valid JSON"))
        self.assertEqual(report["problem_count"], 2)

    def test_shrunk_to_zero_empty_md_and_required_keys(self):
        write(os.path.join(self.src, "agent0", "MEMORY.md"), "")
        with open(os.path.join(self.src, "agent1", "memory", "log.jsonl"), "w"):
            pass
        write(os.path.join(self.src, "agent2", "memory", "state.json"), '{"agent": 2}')
        write(os.path.join(self.src, "agent2", "MEMORY.md"), b"\xff\xfe bad")
        proc = self.sync(code=1)
        self.assert_refused_copy(proc, ("agent0/MEMORY.md", "shrank to zero"),
                                 ("agent1/memory/log.jsonl", "shrank to zero"),
                                 ("agent2/memory/state.json", 'lacks required key "updated"'),
                                 ("agent2/MEMORY.md", "not UTF-8"))

    def test_check_all_finds_old_problems(self):
        self.set_config('[sync.memory.require]\n"*/memory/note0.json" = ["missing"]\n')
        self.sync()     # nothing changed: nothing checked
        write(os.path.join(self.src, "agent0", "memory", "x.json"), "{}")
        self.sync("--check-all", code=1)


class GuardRefusals(SyncCase):
    def setUp(self):
        super().setUp()
        self.good = self.make_agents(4, 3)
        self.sync()
        self.first = self.current()

    def assert_nothing_changed(self):
        self.assert_current(self.good, self.first)
        self.assertEqual(self.snapshots(), [self.first])
        self.assertEqual(self.snapshots(".incomplete"), [])
        self.assertEqual(self.invalid(), [])

    def test_empty_source(self):
        for name in os.listdir(self.src):
            subprocess.run(["rm", "-rf", os.path.join(self.src, name)], check=True)
        proc = self.sync(code=4)
        self.assertIn("source is empty", proc.stderr)
        self.assertEqual(self.status()["last_result"], "refused")
        self.assert_nothing_changed()

    def test_missing_source(self):
        os.rename(self.src, self.src + ".unmounted")
        proc = self.sync(code=4)
        self.assertIn("does not exist", proc.stderr)
        self.assertIn("not mounted", proc.stderr)
        self.assertIn(f"current still points to {self.first}", proc.stderr)
        st = self.status()
        self.assertEqual((st["last_result"], st["snapshot"], st["files"]), ("refused", self.first, len(self.good)))
        self.assert_nothing_changed()

    def test_mass_deletion(self):
        for a in range(3):
            subprocess.run(["rm", "-rf", os.path.join(self.src, f"agent{a}", "memory")], check=True)
        proc = self.sync(code=4)
        self.assertIn("would remove 12 of 20 files (60%)", proc.stderr)
        self.assert_nothing_changed()
        self.sync("--max-delete-share", "1")
        self.assert_current(self.expected())

    def test_first_sync_of_empty_source(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(os.path.join(empty, "agentX"))
        dest = os.path.join(self.tmp, "other")
        proc = self.meshkit("sync", "memory", "--source", empty, "--dest", dest, "--job", "other")
        self.assertEqual(proc.returncode, 4, proc.stderr)
        self.assertIn("source is empty", proc.stderr)
        self.assertFalse(os.path.lexists(os.path.join(dest, "current")))
        self.assertEqual(os.listdir(os.path.join(dest, "snapshots")), [])


class KilledAndLocked(SyncCase):
    def test_kill_9_halfway(self):
        good = self.make_agents(2, 2)
        self.sync()
        first = self.current()
        write(os.path.join(self.src, "agent0", "memory", "big.bin"), os.urandom(3 * 1024 * 1024))
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"changed": true}')
        env = dict(os.environ, MESHKIT_HOME=self.home, PYTHONPATH=ROOT)
        proc = subprocess.Popen([sys.executable, "-m", "meshkit", "sync", "memory", "--source", self.src,
                                 "--dest", self.dest, "--bwlimit", "2000"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        work = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            inc = self.snapshots(".incomplete")
            if inc:
                work = os.path.join(self.dest, "snapshots", inc[0], "agent0", "memory")
                if os.path.isdir(work) and any(n.startswith(".big.bin.") for n in os.listdir(work)):
                    break       # rsync is writing the big file
            time.sleep(0.02)
        self.assertIsNone(proc.poll(), "the sync finished before it could be killed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)
        self.assert_current(good, first)
        [inc] = self.snapshots(".incomplete")
        self.assertFalse(os.path.exists(os.path.join(self.dest, "snapshots", inc, "agent0", "memory", "big.bin")))
        listing = self.meshkit("sync", "list", self.dest)
        self.assertIn("incomplete", listing.stdout)
        # the next run resumes it and completes
        self.sync()
        self.assert_current(self.expected())
        self.assertEqual(self.snapshots(".incomplete"), [])
        self.assertEqual(len(self.snapshots()), 2)

    def test_resume_left_over_incomplete(self):
        """What a killed run leaves (a partial copy, an rsync temp file, links to current)
        is resumed by the next run; a permission change never reaches current's inode."""
        self.make_agents(2, 2)
        self.sync()
        first = self.current()
        cur = os.path.join(self.dest, "snapshots", first)
        left = os.path.join(self.dest, "snapshots", "20000101T000000Z.incomplete")
        shutil.copytree(cur, left, copy_function=os.link)
        write(os.path.join(left, "agent0", "memory", ".note0.json.Xy12Ab"), "partial")
        write(os.path.join(left, "agent0", "memory", "gone.json"), "{}")
        os.chmod(os.path.join(self.src, "agent1", "MEMORY.md"), 0o600)
        write(os.path.join(self.src, "agent1", "memory", "note1.json"), '{"new": 1}')
        self.sync()
        self.assert_current(self.expected())
        self.assertEqual(self.snapshots(".incomplete"), [])
        self.assertEqual(os.stat(os.path.join(cur, "agent1", "MEMORY.md")).st_mode & 0o777, 0o644)
        self.assertEqual(os.stat(os.path.join(self.dest, "current", "agent1", "MEMORY.md")).st_mode & 0o777, 0o600)

    def test_resume_first_copy(self):
        self.make_agents(2, 2)
        left = os.path.join(self.dest, "snapshots", "20000101T000000Z.incomplete")
        write(os.path.join(left, "agent0", "memory", "note0.json"), '{"agent": 0, "note": 0}')
        write(os.path.join(left, "agent0", "memory", ".note1.json.Xy12Ab"), "partial")
        self.sync()
        self.assert_current(self.expected())
        self.assertEqual(self.snapshots(".incomplete"), [])

    def test_lock_held(self):
        self.make_agents(1, 1)
        lock = FileLock(os.path.join(self.home, "locks", "sync-memory.lock"), purpose="test holder")
        os.makedirs(os.path.dirname(lock.path))
        with lock.acquired(wait=0):
            proc = self.sync(code=75)
        self.assertIn(f"pid {os.getpid()}", proc.stderr)
        self.assertIn("test holder", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.home, "sync", "memory.json")))
        self.sync()

    def test_dest_lock_excludes_a_run_with_another_config(self):
        """Cron's run and an operator's (another config, another locks.dir) share DEST:
        the second one exits 75 naming the first and writes nothing there."""
        good = self.make_agents(1, 1)
        self.sync()
        first = self.current()
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"changed": 1}')
        lock = FileLock(os.path.join(self.dest, ".meshkit-sync.lock"), purpose="a run with another config")
        with lock.acquired(wait=0):
            proc = self.sync(code=75)
            self.assertIn("a run with another config", proc.stderr)
            self.assertEqual((self.snapshots(), self.snapshots(".incomplete")), ([first], []))
            self.assert_current(good, first)
        self.sync()
        self.assert_current(self.expected())

    def test_lock_dir_that_cannot_be_made(self):
        self.make_agents(1, 1)
        self.sync()
        first = self.current()
        self.set_config('[locks]\ndir = "/dev/null/locks"\n')
        proc = self.sync(code=5)
        self.assertIn("/dev/null/locks", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        st = self.status()
        self.assertEqual((st["last_result"], st["snapshot"]), ("failed", first))
        self.assertEqual(self.current(), first)

    def test_missing_current_adopts_the_newest_complete_snapshot(self):
        """A run stopped between naming a validated snapshot and pointing current at it
        (a full disk) leaves no current: the next run starts from that snapshot, not from
        nothing (unchanged files are links to it, not a whole new copy)."""
        self.make_agents(2, 2)
        self.sync()
        first = self.current()
        os.unlink(os.path.join(self.dest, "current"))
        write(os.path.join(self.src, "agent0", "memory", "note0.json"), '{"changed": 1}')
        self.sync()
        second = self.current()
        self.assertNotEqual(second, first)
        self.assert_current(self.expected())
        same = os.path.join("agent1", "memory", "note1.json")
        old, new = (os.path.join(self.dest, "snapshots", n, same) for n in (first, second))
        self.assertEqual(os.stat(old).st_ino, os.stat(new).st_ino)

    def test_rsync_missing_and_vanished_warning(self):
        self.make_agents(1, 1)
        self.set_config('[sync]\nrsync = "/nonexistent/rsync"\n')
        proc = self.sync(code=5)
        self.assertIn("package `rsync`", proc.stderr)
        self.assertEqual(self.status()["last_result"], "failed")
        self.assertEqual(self.status()["snapshot"], self.current())
        fake = os.path.join(self.tmp, "rsync24")
        write(fake, '#!/bin/sh\nrsync "$@"; rc=$?; [ $rc -eq 0 ] && exit 24; exit $rc\n')
        os.chmod(fake, 0o755)
        self.set_config(f'[sync]\nrsync = "{fake}"\n')
        proc = self.sync()
        self.assertIn("vanished", proc.stdout)
        self.assertEqual(self.run_line(proc)["result"], "warning")
        self.assertEqual(self.status()["consecutive_failures"], 0)

    def test_usage_errors(self):
        self.make_agents(1, 1)
        for args in (["sync", "memory", "--dest", self.dest],
                     ["sync", "memory", "--source", self.src, "--dest", self.dest, "--job", "a/b"],
                     ["sync", "memory", "--source", "rsync://h/m", "--dest", self.dest],
                     ["sync", "memory", "--source", self.src, "--dest", self.dest, "--max-delete-share", "2"]):
            with self.subTest(args=args):
                self.assertEqual(self.meshkit(*args).returncode, 2)
        self.sync()
        proc = self.sync("--job", "other", code=2)
        self.assertIn("holds the snapshots of job 'memory'", proc.stderr)
        missing = os.path.join(self.tmp, "no-such-key")
        proc = self.meshkit("sync", "memory", "--source", "someone@127.0.0.1:/srv", "--dest", self.dest,
                            "--ssh-key", missing)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn(f"the ssh key {missing} (--ssh-key) does not exist", proc.stderr)
