"""Sync decisions, table-driven with plain values: no I/O, no sleeps."""

import copy
import json
import pickle
import unittest

from meshkit.core.errors import BadRequest
from meshkit.rules.syncplan import (MEMORY_INCLUDES, Changes, Item, JobSpec, Location,  # noqa: F401 (eval)
                                    empty_source_reason, filter_args, guard, job_problem, missing_source,
                                    parse_itemized, parse_location, reported_files, summarize,
                                    transferred_files, unescape)
from meshkit.rules.syncrotate import (incomplete_plan, invalid_plan, new_name, parse_name,
                                      rotation_plan, stamp)
from meshkit.rules.syncstatus import empty_status, next_status
from meshkit.rules.syncvalidate import check_file, needs_content

T0 = 1_700_000_000.0      # 2023-11-14T22:13:20Z


class Locations(unittest.TestCase):
    def test_table(self):
        cases = [
            ("/srv/agents", "", "/srv/agents", "/srv/agents/"),
            ("/srv/agents/", "", "/srv/agents/", "/srv/agents/"),
            ("rel/dir", "", "rel/dir", "rel/dir/"),
            ("./a:b", "", "./a:b", "./a:b/"),
            ("pi:agents", "pi", "agents", "pi:agents/"),
            ("meshkit@pi.lan:/srv/agents", "meshkit@pi.lan", "/srv/agents", "meshkit@pi.lan:/srv/agents/"),
            ("host:", "host", "", "host:"),
        ]
        for text, host, path, contents in cases:
            with self.subTest(text):
                loc = parse_location(text)
                self.assertEqual((loc.host, loc.path, loc.contents()), (host, path, contents))
                self.assertEqual(loc.remote, bool(host))

    def test_refused(self):
        for text in ("", "rsync://host/mod", "host::mod", "@host:path", ":path"):
            with self.subTest(text):
                if text == ":path":     # no host before the colon: a local name
                    self.assertFalse(parse_location(text).remote)
                    continue
                with self.assertRaises(BadRequest):
                    parse_location(text)

    def test_job_names(self):
        for name, ok in [("memory", True), ("backup-2", True), ("a.b_c", True), ("", False),
                         ("-x", False), ("a/b", False), ("a..b", False), ("x" * 65, False),
                         ("memory\n", False)]:
            with self.subTest(name):
                self.assertEqual(job_problem(name) is None, ok)


class Filters(unittest.TestCase):
    def test_table(self):
        cases = [
            ((), (), True, [f"--include={p}" for p in MEMORY_INCLUDES] + ["--exclude=*"], True),
            ((), ("*.tmp",), True, ["--exclude=*.tmp"] + [f"--include={p}" for p in MEMORY_INCLUDES] + ["--exclude=*"], True),
            ((), (), False, [], False),
            ((), ("cache/",), False, ["--exclude=cache/"], False),
            (("*.json",), (), True, ["--include=*/", "--include=*.json", "--exclude=*"], True),
            (("*.json",), ("x.json",), False, ["--exclude=x.json", "--include=*/", "--include=*.json", "--exclude=*"], True),
        ]
        for include, exclude, memory, args, prune in cases:
            with self.subTest(include=include, exclude=exclude, memory=memory):
                self.assertEqual(filter_args(include, exclude, memory), (args, prune))


DRY_RUN = b"""created directory /x
*deleting  |0|a2/memory/y.json
*deleting  |0|a2/memory/
*deleting  |0|a2/
.d..t......|4096|./
.f...p.....|3|a1/MEMORY.md
>f+++++++++|6|a1/memory/new\\#012line.json
>f.s.......|14|a1/memory/x.json
.d..t......|4096|a1/memory/
cd+++++++++|4096|a3/
cd+++++++++|4096|a3/memory/
>f+++++++++|3|a3/memory/n.json
cL+++++++++|7|a3/link
>f+++++++++|2|odd|name.json
"""


class Itemized(unittest.TestCase):
    def test_parse(self):
        items = parse_itemized(DRY_RUN)
        self.assertEqual(len(items), 13)
        self.assertEqual(items[0], Item("*deleting", 0, "a2/memory/y.json"))
        self.assertEqual(items[1], Item("*deleting/", 0, "a2/memory"))
        self.assertEqual(items[3].path, "")
        self.assertEqual(items[5].path, "a1/memory/new\nline.json")
        self.assertEqual(items[-1].path, "odd|name.json")
        self.assertEqual([i.kind for i in items[3:6]], ["d", "f", "f"])
        self.assertTrue(items[5].created and not items[6].created)

    def test_unescape(self):
        for raw, text in [(b"plain", "plain"), (b"a\\#012b", "a\nb"), (b"a\\#134#101", "a\\#101"),
                          (b"caf\\#303\\#251", "caf\u00e9")]:
            with self.subTest(raw):
                self.assertEqual(unescape(raw), text)

    def test_summarize(self):
        ch = summarize(parse_itemized(DRY_RUN))
        self.assertEqual((ch.new_files, ch.changed_files, ch.deleted_files, ch.deleted_dirs),
                         (4, 2, 1, 2))
        self.assertEqual(ch.fetch, ["a1/MEMORY.md", "a1/memory/new\nline.json", "a1/memory/x.json",
                                    "a3", "a3/memory", "a3/memory/n.json", "a3/link", "odd|name.json"])
        self.assertEqual(ch.deleted, ["a2/memory/y.json", "a2/memory", "a2"])
        self.assertEqual(ch.bytes, 3 + 6 + 14 + 3 + 2)
        self.assertTrue(ch.any)
        self.assertIn("a2", ch.skip_set())

    def test_directory_times_alone_are_no_change(self):
        ch = summarize(parse_itemized(b".d..t......|4096|./\n.d..t......|4096|a/\n"))
        self.assertFalse(ch.any)
        self.assertFalse(summarize([]).any)

    def test_transferred(self):
        out = b">f+++++++++|3|a\ncf...p.....|3|b\n.f...p.....|3|c\nhf+++++++++|3|d\ncd+++++++++|0|e/\n"
        self.assertEqual(transferred_files(parse_itemized(out)), ["a", "b"])

    def test_reported_files_is_transferred_files_of_lines(self):
        for out in (DRY_RUN, b">f+++++++++|3|a\ncf...p.....|3|b\n.f...p.....|3|c\nhf+++++++++|3|d\n"
                             b">f+++++++++|0|caf\\#303\\#251.md\n>f.st......|12|x|y.json\nnot itemized\n\n"):
            with self.subTest(out=out[:20]):
                self.assertEqual(reported_files(out.split(b"\n")), transferred_files(parse_itemized(out)))
        self.assertEqual(reported_files([b">f+++++++++|0|caf\\#303\\#251.md"]), ["caf\u00e9.md"])
        self.assertEqual(reported_files([]), [])

    def test_missing_source(self):
        cases = [(23, 'rsync: [sender] change_dir "/x" failed: No such file or directory (2)', True),
                 (23, 'rsync: [sender] change_dir "/x" failed: Not a directory (20)', True),
                 (23, 'rsync: [sender] send_files failed to open "/x/a": Permission denied (13)', False),
                 (12, 'change_dir', False), (0, "", False)]
        for code, err, expected in cases:
            with self.subTest(err):
                self.assertEqual(missing_source(code, err), expected)


class PlainValues(unittest.TestCase):
    """The sync path's value classes (core/record.py, not @dataclass): equality,
    repr, frozen fields, copy and pickle."""

    def test_values(self):
        spec = JobSpec("memory", "memory", "/src", "/dest", include=("a",), require={"*.json": ["k"]})
        item = Item(">f+++++++++", 3, "a/b.json")
        for value in (spec, item, parse_location("pi:agents"), Changes(new_files=1, fetch=["x"])):
            with self.subTest(value=value):
                self.assertEqual(copy.copy(value), value)
                self.assertEqual(copy.deepcopy(value), value)
                self.assertEqual(pickle.loads(pickle.dumps(value)), value)
                self.assertEqual(eval(repr(value)), value)
        self.assertNotEqual(item, Item(">f+++++++++", 4, "a/b.json"))
        self.assertNotEqual(item, (">f+++++++++", 3, "a/b.json"))
        self.assertEqual(len({item, Item(">f+++++++++", 3, "a/b.json")}), 1)
        with self.assertRaises(AttributeError):
            item.size = 4
        with self.assertRaises(TypeError):
            hash(Changes())
        self.assertEqual(JobSpec("j", "backup", "s", "d").require, {})
        self.assertIsNot(Changes().fetch, Changes().fetch)


class Guard(unittest.TestCase):
    def test_table(self):
        cases = [
            # current files, new, changed, deleted, share, refused because
            (100, 0, 0, 0, 0.5, None),
            (100, 5, 10, 50, 0.5, None),            # exactly the share is allowed
            (100, 0, 0, 51, 0.5, "would remove 51 of 100"),
            (100, 0, 0, 100, 0.5, "source is empty"),
            (100, 0, 0, 100, 1.0, "source is empty"),  # an empty source is refused at any share
            (100, 60, 0, 100, 1.0, None),
            (10, 0, 0, 9, 0.95, None),
            (0, 0, 0, 0, 0.5, "source is empty"),
            (4, 0, 0, 1, 0.2, "would remove 1 of 4 files (25%)"),
        ]
        for current, new, changed, deleted, share, why in cases:
            with self.subTest(current=current, deleted=deleted, share=share):
                got = guard(current, Changes(new_files=new, changed_files=changed, deleted_files=deleted), share)
                if why is None:
                    self.assertIsNone(got)
                else:
                    self.assertIn(why, got)

    def test_first_sync_empty(self):
        self.assertIn("empty", empty_source_reason(0))
        self.assertIsNone(empty_source_reason(1))


class Validation(unittest.TestCase):
    REQ = {"*/memory/state.json": ["agent", "updated"], "*/log.jsonl": ["t"]}

    def test_table(self):
        cases = [
            ("a/memory/x.json", b'{"a": 1}', None, []),
            ("a/memory/x.json", b'{"a": 1', None, ["is not valid JSON"]),
            ("a/memory/x.json", b'{"a": "x\ny"}', None, ["Invalid control character at line 1 column 9"]),
            ("a/memory/x.json", b'', 10, ["shrank to zero", "is not valid JSON"]),
            ("a/memory/x.JSON", b'[1, 2]', None, []),
            ("a/memory/x.json", b'\xff\xfe{', None, ["is not valid JSON"]),
            ("a/memory/l.jsonl", b'{"a":1}\n{"b":2}\n', None, []),
            ("a/memory/l.jsonl", b'{"a":1}\n\n{"b":2}', None, []),
            ("a/memory/l.jsonl", b'{"a":1}\n{"b":', None, ["line 2 is not valid JSON"]),
            ("a/memory/l.jsonl", b'', None, []),
            ("a/memory/l.jsonl", b'', 5, ["shrank to zero"]),
            ("a/MEMORY.md", b"# notes\n", None, []),
            ("a/MEMORY.md", b"", None, ["is empty"]),
            ("a/MEMORY.md", b"  \n", None, ["is empty"]),
            ("a/MEMORY.md", b"caf\xe9\n", None, ["is not UTF-8 (bad byte at offset 3)"]),
            ("a/memory/state.json", b'{"agent": "a", "updated": 1}', None, []),
            ("a/memory/state.json", b'{"agent": "a"}', None, ['lacks required key "updated"']),
            ("a/memory/state.json", b'{}', None, ['lacks required keys "agent", "updated"']),
            ("a/memory/state.json", b'[1]', None, ["is not a JSON object"]),
            ("a/log.jsonl", b'{"t": 1}\n{"u": 2}\n', None, ['line 2 lacks required key "t"']),
        ]
        for path, data, old, expected in cases:
            with self.subTest(path=path, data=data):
                got = check_file(path, data, len(data), old, self.REQ)
                self.assertEqual(len(got), len(expected), got)
                for want, have in zip(expected, got):
                    self.assertIn(want, have)

    def test_json_verdict_is_json_loads_verdict(self):
        # check_file skips json.loads' encoding detection for bytes that cannot be
        # UTF-16/32 or start with a BOM; its verdict must stay json.loads' own
        samples = [b'{"a": 1}', b' [1]\n', b'', b'  ', b'1', b'1\x00', b'nul\x00l', b'{"a": 1} x',
                   b'\xef\xbb\xbf{"a": 1}', '{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-16-le"),
                   '[2]'.encode("utf-32-be"), b'"\xed\xa0\x80"', b'"\xff"', b'"caf\xc3\xa9"']
        for data in samples:
            with self.subTest(data=data):
                try:
                    json.loads(data)
                    want = []
                except ValueError as e:
                    want = [e]
                got = check_file("a/x.json", data, len(data), None, {})
                self.assertEqual(len(got), len(want), got)
        self.assertEqual(check_file("a/.json", b"not json", 8, None, {}), [])    # a hidden file, not .json

    def test_nesting_deeper_than_the_stack_is_a_problem_not_a_crash(self):
        deep = b"[" * 100000 + b"]" * 100000
        for path, data, req in (("a/x.json", deep, {}), ("a/x.jsonl", deep + b"\n", {}),
                                ("a/state.json", deep, {"a/state.json": ["k"]})):
            with self.subTest(path=path):
                got = check_file(path, data, len(data), None, req)
                self.assertEqual(len(got), 1, got)
                self.assertIn("nested too deeply", got[0])

    def test_needs_content(self):
        for path, needed in [("a/x.json", True), ("a/x.jsonl", True), ("a/X.MD", True),
                             ("a/x.txt", False), ("a/memory/state.json", True), ("a/bin", False)]:
            with self.subTest(path):
                self.assertEqual(needs_content(path, self.REQ), needed)
        self.assertTrue(needs_content("a/memory/state.yaml", {"*/state.yaml": ["k"]}))

    def test_unchecked_file_only_size(self):
        self.assertEqual(check_file("a/blob.bin", None, 0, None, {}), [])
        self.assertIn("shrank", check_file("a/blob.bin", None, 0, 100, {})[0])
        self.assertEqual(check_file("a/blob.bin", None, 0, 0, {}), [])


class Rotation(unittest.TestCase):
    def names(self, *offsets):
        return [stamp(T0 + o) for o in offsets]

    def test_names(self):
        self.assertEqual(stamp(T0), "20231114T221320Z")
        self.assertEqual(parse_name("20231114T221320Z"), (T0, 1))
        self.assertEqual(parse_name("20231114T221320Z-3"), (T0, 3))
        for bad in ("x", "20231114T221320Z.incomplete", "20231399T000000Z", "20231114T221320"):
            self.assertIsNone(parse_name(bad), bad)
        self.assertEqual(new_name(T0, []), "20231114T221320Z")
        self.assertEqual(new_name(T0, ["20231114T221320Z"]), "20231114T221320Z-2")
        self.assertEqual(new_name(T0, ["20231114T221320Z", "20231114T221320Z-9"]), "20231114T221320Z-10")

    def test_keep_last(self):
        names = self.names(0, 300, 600, 900, 1200)
        plan = rotation_plan(names, names[-1], keep_last=3)
        self.assertEqual(plan.remove, names[:2])
        self.assertEqual(set(plan.keep), set(names[2:]))

    def test_current_is_never_removed(self):
        names = self.names(0, 300, 600)
        plan = rotation_plan(names, names[0], keep_last=1)
        self.assertEqual(plan.remove, [names[1]])
        self.assertEqual(plan.keep[names[0]], "current")

    def test_hourly_and_daily(self):
        hour, day = 3600, 86400
        # every 30 minutes for 3 days
        names = [stamp(T0 - 22 * hour + i * 1800) for i in range(144)]
        plan = rotation_plan(names, names[-1], keep_last=1, keep_hourly=24, keep_daily=3)
        kept = sorted(plan.keep)
        self.assertEqual(len(kept), 24 + 2)     # 24 hours, plus 2 more days' newest
        self.assertEqual(len(plan.remove) + len(kept), len(names))
        # newest of each hour: the :30 one
        self.assertTrue(all(n.endswith("Z") for n in kept))
        self.assertIn(names[-1], kept)
        self.assertNotIn(names[-2], kept)
        self.assertEqual(plan.remove, sorted(plan.remove))      # oldest first
        self.assertEqual(rotation_plan(names, names[-1], 1, 0, 0).remove, names[:-1])
        _ = day

    def test_unknown_names_untouched(self):
        plan = rotation_plan(["notes", stamp(T0)], stamp(T0), keep_last=1)
        self.assertEqual(plan.remove, [])

    def test_invalid_and_incomplete(self):
        names = self.names(0, 60, 120, 180)
        self.assertEqual(invalid_plan(names, 2), names[:2])
        self.assertEqual(invalid_plan(names, 0), names[:3])     # the newest stays
        self.assertEqual(invalid_plan([], 5), [])
        self.assertEqual(incomplete_plan(names), (names[-1], names[:3]))
        self.assertEqual(incomplete_plan([]), (None, []))


class Status(unittest.TestCase):
    def test_sequence(self):
        steps = [
            # result, error, consecutive failures after, alert event
            ("ok", None, 0, None),
            ("unchanged", None, 0, None),
            ("invalid", "bad json", 1, "sync_failed"),
            ("refused", "empty", 2, "sync_failed"),
            ("failed", "ssh", 3, "sync_failed"),
            ("warning", None, 0, "sync_recovered"),
            ("ok", None, 0, None),
        ]
        status = None
        for i, (result, error, failures, event) in enumerate(steps):
            with self.subTest(step=i, result=result):
                now = T0 + 300 * i
                status, alert = next_status(status, "memory", result, error, now, {"dest": "/d"})
                self.assertEqual(status["consecutive_failures"], failures)
                self.assertEqual(status["last_result"], result)
                self.assertEqual(status["last_run"], now)
                self.assertEqual(status["dest"], "/d")
                if result in ("ok", "unchanged", "warning"):
                    self.assertEqual(status["last_success"], now)
                    self.assertIsNone(status["last_error"])
                else:
                    self.assertEqual(status["last_failure"], now)
                    self.assertEqual(status["last_error"], error)
                self.assertEqual(alert and alert["event"], event)
                if alert:
                    self.assertEqual(alert["job"], "memory")
                    json.dumps(alert)
        self.assertEqual(status["last_failure"], T0 + 1200)

    def test_shape_and_bad_previous(self):
        st, alert = next_status({"consecutive_failures": "x", "junk": 1}, "j", "failed", "e", T0)
        self.assertEqual(st["consecutive_failures"], 1)
        self.assertNotIn("junk", st)
        self.assertEqual(set(empty_status("j")), {"job", "last_success", "last_failure", "consecutive_failures",
                                                   "last_result", "last_error", "last_run"})
        with self.assertRaises(ValueError):
            next_status(None, "j", "nope", None, T0)
        self.assertEqual(alert["consecutive_failures"], 1)
        self.assertIsNone(alert["last_success"])


if __name__ == "__main__":
    unittest.main()
