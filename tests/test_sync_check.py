"""Checking a first copy while rsync writes it (meshkit.roles.sync.check), and
rsync's output streamed to a callback (meshkit.adapters.rsync)."""

import os
import shutil
import tempfile
import time
import unittest

from meshkit.adapters.rsync import Rsync
from meshkit.roles.sync.check import FirstCopy, validate


def line(path: str, size: int = 1) -> bytes:
    return f">f+++++++++|{size}|{path}".encode()


class FirstCopyChecks(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="meshkit-check-")
        self.addCleanup(shutil.rmtree, self.root, True)

    def put(self, rel: str, data: str) -> None:
        """Like rsync: written under a temporary name, then renamed into place."""
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp~", "w") as f:
            f.write(data)
        os.rename(path + ".tmp~", path)

    def test_reads_each_file_once_it_is_in_place(self):
        fc = FirstCopy(self.root, {})
        fc.feed([line("a/1.json"), line("a/2.json"), line("a/notes.txt")])
        self.assertEqual(fc.done, {})                   # nothing there yet: wait
        self.put("a/1.json", '{"ok": 1}')
        fc.feed(None)
        self.assertEqual(list(fc.done), ["a/1.json"])
        self.put("a/2.json", '{"bad"')
        self.put("a/notes.txt", "not read: only its size matters")
        fc.feed(None)
        self.assertEqual(sorted(fc.done), ["a/1.json", "a/2.json"])
        files, size, checked, problems = fc.finish()
        self.assertEqual((files, checked), (3, 3))
        self.assertEqual(size, sum(os.path.getsize(os.path.join(self.root, "a", n))
                                   for n in ("1.json", "2.json", "notes.txt")))
        self.assertEqual([p["path"] for p in problems], ["a/2.json"])
        self.assertIn("not valid JSON", problems[0]["problem"])

    def test_a_file_rsync_went_past_does_not_stall_the_rest(self):
        fc = FirstCopy(self.root, {})
        fc.feed([line("gone.json"), line("b.json"), line("c.json")])
        self.put("b.json", "{}")
        self.put("c.json", "{}")
        fc.feed(None)
        self.assertEqual(sorted(fc.done), ["b.json", "c.json"])

    def test_finish_checks_what_was_not_read_or_was_replaced(self):
        fc = FirstCopy(self.root, {"*.json": ["id"]})
        self.put("x.json", '{"id": 1}')
        self.put("y.json", '{"id": 2}')
        fc.feed([line("x.json"), line("y.json")])
        self.assertEqual(len(fc.done), 2)
        self.put("y.json", '{"no_id": 2}')          # a new inode after it was read
        self.put("z.json", "{")                     # never reported
        self.put("e.md", "")
        os.symlink("x.json", os.path.join(self.root, "link.json"))
        files, _, checked, problems = fc.finish()
        self.assertEqual((files, checked), (5, 4))  # the symlink is counted, not read
        self.assertEqual([p["path"] for p in problems], ["e.md", "y.json", "z.json"])
        self.assertIn('lacks required key "id"', problems[1]["problem"])

    def test_validate_after_copy(self):
        self.put("a.json", "{}")
        self.put("b.jsonl", '{"t": 1}\n{"t"\n')
        os.mkdir(os.path.join(self.root, "dir.json"))
        problems = validate(self.root, None, {}, [("a.json", None), ("b.jsonl", None), ("dir.json", None),
                                                  ("missing.json", None)])
        self.assertEqual([(p["path"], p["problem"][:6]) for p in problems], [("b.jsonl", "line 2")])


class StreamedOutput(unittest.TestCase):
    def test_lines_arrive_whole_with_stderr_and_exit_code(self):
        got = []
        run = Rsync("sh").run(["sh", "-c", "printf 'ab'; sleep 0.1; printf 'c\\nd\\n'; echo oops >&2; printf e; exit 3"],
                              on_lines=lambda lines: got.extend(lines or []))
        self.assertEqual([ln for ln in got if ln], [b"abc", b"d", b"e"])
        self.assertEqual((run.code, run.stderr.strip(), run.stdout), (3, "oops", b""))

    def test_idle_calls_while_the_program_is_quiet(self):
        calls = []
        Rsync("sh").run(["sh", "-c", "sleep 0.2"], on_lines=calls.append)
        self.assertGreater(calls.count(None), 3)

    def test_an_error_in_the_callback_stops_the_program(self):
        def boom(lines):
            if lines:
                raise KeyboardInterrupt
        start = time.monotonic()
        with self.assertRaises(KeyboardInterrupt):
            Rsync("sh").run(["sh", "-c", "echo a; exec sleep 30"], on_lines=boom)
        self.assertLess(time.monotonic() - start, 10)


if __name__ == "__main__":
    unittest.main()
