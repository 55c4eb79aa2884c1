"""Symlinks in a synced tree: one that points outside the source (absolute, or up out of
it by '..') is never copied (rsync --safe-links), a run names it in a warning, and one
that reaches a new copy some other way fails validation; links inside the tree are kept.
Real rsync, real symlinks, files on disk checked in DEST/current."""

import json
import os
import shutil
import tempfile
import unittest

from meshkit.roles.sync.check import FirstCopy, validate
from meshkit.rules.syncplan import skipped_links_warning, unsafe_links
from meshkit.rules.syncvalidate import link_problem
from tests.test_sync_helpers import SyncCase, write

SECRET = b"secret of the sync host\n"


class Rules(unittest.TestCase):
    def test_link_problem_is_rsyncs_rule(self):
        inside = {"a/x": ["y", "./y", "../b/y", "sub/y"], "a/b/x": ["../../c", "../y"], "x": ["y"]}
        outside = {"a/x": ["/etc/shadow", "", "../..", "../../y", "y/../..", "sub/../y"], "x": ["..", "../x"]}
        for path, targets in inside.items():
            for t in targets:
                self.assertIsNone(link_problem(path, t), (path, t))
        for path, targets in outside.items():
            for t in targets:
                self.assertIn("outside the copy" if t.startswith("/") or not t else "..",
                              link_problem(path, t) or "", (path, t))

    def test_rsyncs_word_for_a_skipped_link(self):
        out = (b'cd+++++++++|4096|a/\nignoring unsafe symlink "a/M\\#012.md" -> "/etc/shadow"\n'
               b'ignoring unsafe symlink "a/up" -> "../../k"\n>f+++++++++|1|a/x.json\n')
        links = unsafe_links(out.split(b"\n"))
        self.assertEqual(links, [("a/M\n.md", "/etc/shadow"), ("a/up", "../../k")])
        self.assertIsNone(skipped_links_warning([]))
        text = skipped_links_warning(links * 2 + [("b", "/x"), ("c", "/y")])
        self.assertIn("skipped 4 symlinks that point outside the source", text)
        self.assertIn("a/up -> ../../k", text)
        self.assertIn("(and 1 more)", text)

    def test_a_first_copy_and_a_check_list_find_an_escaping_link(self):
        root = tempfile.mkdtemp(prefix="meshkit-links-")
        self.addCleanup(shutil.rmtree, root, True)
        write(os.path.join(root, "a", "ok.json"), "{}")
        os.symlink("ok.json", os.path.join(root, "a", "in.json"))
        os.symlink("/etc/passwd", os.path.join(root, "a", "out.json"))
        fc = FirstCopy(root, {})
        fc.feed(None)
        files, _, _, problems = fc.finish()
        self.assertEqual(files, 3)
        self.assertEqual([p["path"] for p in problems], ["a/out.json"])
        self.assertIn("'/etc/passwd', outside the copy", problems[0]["problem"])
        got = validate(root, None, {}, [("a/in.json", None), ("a/out.json", None), ("a/ok.json", None)])
        self.assertEqual([p["path"] for p in got], ["a/out.json"])


class Sync(SyncCase):
    def setUp(self):
        super().setUp()
        self.keys = os.path.join(self.tmp, "keys")
        write(self.keys, SECRET)
        self.good = self.make_agents(2, 2)

    def plant(self, rel: str, target: str, root: str | None = None) -> None:
        path = os.path.join(root or self.src, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)

    def assert_nothing_reaches_the_secret(self, root: str) -> None:
        """No path under root, links followed, reads the secret or the host's files."""
        for dirpath, dirs, files in os.walk(root, followlinks=True):
            for name in files + dirs:
                p = os.path.join(dirpath, name)
                real = os.path.realpath(p)
                self.assertTrue(real.startswith(os.path.realpath(self.dest) + "/"), f"{p} -> {real}")
                if os.path.isfile(p):
                    with open(p, "rb") as f:
                        self.assertNotIn(SECRET, f.read(), p)

    def test_escaping_links_are_skipped_and_named_inside_ones_kept(self):
        self.plant("agent1/MEMORY.md", self.keys)                        # absolute
        self.plant("agent1/memory/notes.json", "/etc/shadow")            # absolute, the host's
        self.plant("agent1/memory/up.json", "../../../keys")             # up out of the source
        self.plant("agent1/memory/shared.md", "../../agent0/MEMORY.md")  # inside: kept
        proc = self.sync()
        line = self.run_line(proc)
        self.assertEqual(line["result"], "warning")
        self.assertIn("skipped 3 symlinks that point outside the source", line["warnings"][0])
        self.assertIn("agent1/memory/notes.json -> /etc/shadow", proc.stdout)
        cur = os.path.join(self.dest, "current")
        for rel in ("agent1/MEMORY.md", "agent1/memory/notes.json", "agent1/memory/up.json"):
            self.assertFalse(os.path.lexists(os.path.join(cur, rel)), rel)
        shared = os.path.join(cur, "agent1", "memory", "shared.md")
        self.assertEqual(os.readlink(shared), "../../agent0/MEMORY.md")
        with open(shared) as f:
            self.assertEqual(f.read(), "# agent 0\n")         # read from the copy, not the source
        self.assertEqual(self.status()["consecutive_failures"], 0)
        self.assert_nothing_reaches_the_secret(self.dest)

        # a file that becomes an escaping link: the copy keeps its last content, and says why
        first = self.current()
        self.plant("agent0/memory/note0.json", self.keys)
        proc = self.sync()
        self.assertIn("nothing changed; current stays at", proc.stdout)
        self.assertIn("agent0/memory/note0.json -> " + self.keys, proc.stdout)
        with open(os.path.join(cur, "agent0", "memory", "note0.json")) as f:
            self.assertEqual(json.load(f), {"agent": 0, "note": 0})
        self.assertEqual(self.current(), first)
        self.assert_nothing_reaches_the_secret(self.dest)

    def test_a_link_carried_over_from_an_older_copy_fails_validation(self):
        """A snapshot made before meshkit passed --safe-links may hold an escaping link; rsync
        keeps it while the source offers the same link. The next copy fails and says why."""
        self.sync()
        first = self.current()
        old = os.path.join(self.dest, "snapshots", first)
        self.plant("agent1/memory/notes.json", "/etc/shadow")
        self.plant("agent1/memory/notes.json", "/etc/shadow", old)
        write(os.path.join(self.src, "agent0", "memory", "note1.json"), '{"changed": 1}')
        for extra in ((), ("--check-all",)):           # linked from current, or all checked
            with self.subTest(extra=extra):
                proc = self.sync(*extra, code=1)
                self.assertIn("validation failed: agent1/memory/notes.json: is a symlink to '/etc/shadow', "
                              "outside the copy", proc.stderr)
                self.assertEqual(self.current(), first)
                aside = self.invalid()[-1]
                report = json.load(open(os.path.join(self.dest, "invalid", aside + ".report.json")))
                self.assertEqual([p["path"] for p in report["problems"]], ["agent1/memory/notes.json"])
        os.unlink(os.path.join(self.src, "agent1", "memory", "notes.json"))       # the fix: at the source
        self.sync()
        self.assertNotEqual(self.current(), first)
        self.assertFalse(os.path.lexists(os.path.join(self.dest, "current", "agent1", "memory", "notes.json")))

    def test_an_rsync_that_copies_them_anyway_fails_validation(self):
        """Validation does not rely on rsync: a link that escapes never becomes current."""
        fake = os.path.join(self.tmp, "rsync-unsafe")
        write(fake, '#!/bin/sh\nfor a; do shift; [ "$a" = --safe-links ] || set -- "$@" "$a"; done\n'
                    'exec rsync "$@"\n')
        os.chmod(fake, 0o755)
        self.set_config(f'[sync]\nrsync = "{fake}"\n')
        self.plant("agent1/memory/up.json", "../../../keys")
        proc = self.sync(code=1)
        self.assertIn("agent1/memory/up.json: is a symlink to '../../../keys', which climbs out of the copy",
                      proc.stderr)
        self.assertIsNone(self.current())
        backup = os.path.join(self.tmp, "backup")              # a backup's whole copy too
        p = self.meshkit("sync", "backup", "--source", self.src, "--dest", backup)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("agent1/memory/up.json: is a symlink", p.stderr)
        self.assertFalse(os.path.lexists(os.path.join(backup, "current")))

    def test_backup_and_restore_skip_them(self):
        self.plant("agent1/MEMORY.md", self.keys)
        proc = self.sync(kind="backup")
        self.assertIn("agent1/MEMORY.md -> " + self.keys, proc.stdout)
        snap = os.path.join(self.dest, "current")
        self.assertFalse(os.path.lexists(os.path.join(snap, "agent1", "MEMORY.md")))
        self.assertTrue(os.path.isfile(os.path.join(snap, "agent1", "scratch.txt")))    # everything else
        # a snapshot holding an escaping link (made before --safe-links): restore leaves it out
        self.plant("agent1/MEMORY.md", self.keys, os.path.realpath(snap))
        target = os.path.join(self.tmp, "restored")
        p = self.meshkit("sync", "restore", self.dest, "current", target)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("warning: skipped 1 symlink that points outside the snapshot", p.stderr)
        self.assertFalse(os.path.lexists(os.path.join(target, "agent1", "MEMORY.md")))
        self.assertTrue(os.path.isfile(os.path.join(target, "agent0", "MEMORY.md")))


if __name__ == "__main__":
    unittest.main()
