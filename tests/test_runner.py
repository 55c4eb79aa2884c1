"""The subprocess runner with real processes: env, tails, result.json, timeouts, escapes."""

import json
import os
import secrets
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import unittest

from meshkit.adapters import runner
from meshkit.adapters.runner import Attempt, Run, Tail

PY = sys.executable
HAVE_PROC = os.path.isdir("/proc/self")


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids, seconds=3.0) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.02)
    return all(gone(p) for p in pids)


def wait_file(path, seconds=5.0):
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return text
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


class RunnerCase(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="mk-runner-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.n = 0

    def attempt(self, code: str, payload=None, timeout=None, env=None, argv=None):
        self.n += 1
        d = runner.prepare_dir(self.root, runner.dir_name(f"t{self.n}", 1, 7), payload if payload is not None else {"n": self.n})
        a = Attempt(f"t{self.n}", 1, "trace-1", tuple(argv or (PY, "-c", textwrap.dedent(code))), d,
                    "test." + secrets.token_hex(16), timeout, env)
        self.addCleanup(runner.signal_marked, a.marker, 9)
        return a

    def run_attempt(self, a, grace=0.5, tail=4096, cancel_after=None):
        r = Run(a, grace, tail)
        if cancel_after is not None:
            threading.Timer(cancel_after, r.cancel).start()
        t0 = time.monotonic()
        fin = r.run()
        return fin, time.monotonic() - t0


class Basics(RunnerCase):
    def test_payload_env_exit_and_result(self):
        a = self.attempt("""
            import json, os, sys
            payload = json.load(sys.stdin)
            env = {k: os.environ.get(k) for k in ("MESHKIT_TASK_ID", "MESHKIT_TASK_DIR", "MESHKIT_ATTEMPT",
                                                  "MESHKIT_TRACE_ID", "MESHKIT_RUN_MARKER", "EXTRA")}
            same = json.load(open("task.json")) == payload
            json.dump({"payload": payload, "env": env, "same": same, "cwd": os.getcwd()}, open("result.json", "w"))
            print("out line"); print("err line", file=sys.stderr)
            """, payload={"x": [1, 2]}, env={"EXTRA": "yes"})
        fin, _ = self.run_attempt(a)
        self.assertEqual((fin.ended_by, fin.exit_code, fin.signal, fin.error), ("exit", 0, None, None))
        self.assertEqual((fin.stdout_tail, fin.stderr_tail), ("out line\n", "err line\n"))
        self.assertLessEqual(fin.started_at, fin.finished_at)
        result, err = runner.read_result(a.task_dir, 1 << 20)
        self.assertIsNone(err)
        self.assertEqual(result["payload"], {"x": [1, 2]})
        self.assertTrue(result["same"])
        self.assertEqual(os.path.realpath(result["cwd"]), os.path.realpath(a.task_dir))
        self.assertEqual(result["env"], {"MESHKIT_TASK_ID": a.task_id, "MESHKIT_TASK_DIR": a.task_dir,
                                         "MESHKIT_ATTEMPT": "1", "MESHKIT_TRACE_ID": "trace-1",
                                         "MESHKIT_RUN_MARKER": a.marker, "EXTRA": "yes"})

    def test_exit_code_signal_and_spawn_error(self):
        cases = [
            ("exit 3", "import sys; sys.exit(3)", None, ("exit", 3, None)),
            ("killed by a signal", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", None, ("signal", None, 9)),
            ("no such program", None, ("/nonexistent/program",), ("error", None, None)),
        ]
        for name, code, argv, expected in cases:
            with self.subTest(name):
                fin, _ = self.run_attempt(self.attempt(code or "", argv=argv))
                self.assertEqual((fin.ended_by, fin.exit_code, fin.signal), expected)
                if fin.ended_by == "error":
                    self.assertIn("cannot start /nonexistent/program", fin.error)

    def test_tails_are_bounded(self):
        a = self.attempt("""
            import sys
            for i in range(2000):
                sys.stdout.write(f"out {i:05d} " + "x" * 500 + "\\n")
                sys.stderr.write(f"err {i:05d} " + "y" * 500 + "\\n")
            """)
        fin, _ = self.run_attempt(a, tail=1000)
        self.assertEqual(fin.ended_by, "exit")
        for tail, last in ((fin.stdout_tail, "out 01999"), (fin.stderr_tail, "err 01999")):
            self.assertLessEqual(len(tail.encode()), 1000)
            self.assertGreater(len(tail), 900)
            self.assertIn(last, tail)
            self.assertTrue(tail.endswith("\n"))

    def test_tail_never_starts_inside_a_utf8_sequence(self):
        t = Tail(4)
        t.add("aé€".encode())   # 1 + 2 + 3 bytes: keeping 4 cuts into é
        self.assertEqual(t.text(), "€")
        t = Tail(100)
        t.add("é".encode())
        self.assertEqual(t.text(), "é")


@unittest.skipUnless(HAVE_PROC, "needs /proc")
class Ending(RunnerCase):
    STUBBORN = """
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setsid()                      # escape the process group and session
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(w, b"x")
            while True:
                time.sleep(1)
        os.read(r, 1)
        with open("pids.tmp", "w") as f:
            f.write(f"{os.getpid()} {pid}\\n")
        os.rename("pids.tmp", "pids")
        while True:
            time.sleep(1)
        """

    def test_timeout_kills_a_stubborn_child_and_an_escaped_grandchild(self):
        a = self.attempt(self.STUBBORN, timeout=0.8)
        fin, took = self.run_attempt(a, grace=0.5)
        pids = [int(x) for x in wait_file(os.path.join(a.task_dir, "pids")).split()]
        self.assertEqual(fin.ended_by, "timeout")
        self.assertEqual(fin.signal, 9)
        self.assertIsNone(fin.exit_code)
        self.assertTrue(wait_gone(pids), f"survivors: {[p for p in pids if not gone(p)]}")
        self.assertGreaterEqual(took, 1.2)
        self.assertLess(took, 4.0)

    def test_cancel_from_another_thread(self):
        a = self.attempt(self.STUBBORN)
        fin, took = self.run_attempt(a, grace=0.3, cancel_after=0.8)
        pids = [int(x) for x in wait_file(os.path.join(a.task_dir, "pids")).split()]
        self.assertEqual(fin.ended_by, "cancel")
        self.assertTrue(wait_gone(pids))
        self.assertLess(took, 4.0)

    def test_a_child_that_obeys_sigterm_ends_before_the_grace(self):
        a = self.attempt("""
            import signal, sys, time
            signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(0)))
            print("ready", flush=True)
            time.sleep(30)
            """, timeout=1.5)
        fin, took = self.run_attempt(a, grace=10)
        self.assertEqual((fin.ended_by, fin.exit_code), ("timeout", 0), fin)
        self.assertIn("bye", fin.stdout_tail)
        self.assertLess(took, 4.0)

    def test_leftovers_of_a_finished_attempt_are_ended(self):
        a = self.attempt("""
            import subprocess, sys
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
            open("pid", "w").write(f"{p.pid}\\n")
            print("done")
            """)
        fin, took = self.run_attempt(a, grace=5)
        pid = int(wait_file(os.path.join(a.task_dir, "pid")))
        self.assertEqual((fin.ended_by, fin.exit_code), ("exit", 0))
        self.assertIn("done", fin.stdout_tail)
        self.assertTrue(wait_gone([pid]))
        self.assertLess(took, 4.0)

    def test_cancel_before_start_still_ends_cleanly(self):
        a = self.attempt("import time; time.sleep(30)")
        r = Run(a, 0.2, 100)
        r.cancel()
        fin = r.run()
        self.assertEqual(fin.ended_by, "cancel")
        r.cancel()   # after the end: harmless


class Artifacts(unittest.TestCase):
    def setUp(self):
        self.d = tempfile.mkdtemp(prefix="mk-art-")
        self.addCleanup(shutil.rmtree, self.d, True)

    def put(self, name, text):
        path = os.path.join(self.d, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def test_expects(self):
        outside = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        outside.write('{"a": 1}')
        outside.close()
        self.addCleanup(os.unlink, outside.name)
        os.symlink(outside.name, os.path.join(self.d, "link.json"))
        self.put("good.json", '{"a": 1, "b": null}')
        self.put("sub/deep.json", '{"a": 1}')
        self.put("bad.json", '{"a": ')
        self.put("list.json", '[1, 2]')
        cases = [
            (None, None),
            ({"path": "good.json", "keys": ["a", "b"]}, None),
            ({"path": "good.json", "keys": []}, None),
            ({"path": "sub/deep.json", "keys": ["a"]}, None),
            ({"path": "list.json", "keys": []}, None),
            ({"path": "nope.json", "keys": []}, "artifact missing"),
            ({"path": "sub", "keys": []}, "artifact missing"),
            ({"path": "bad.json", "keys": []}, "artifact invalid: not JSON"),
            ({"path": "good.json", "keys": ["a", "c", "d"]}, "artifact invalid: missing keys c, d"),
            ({"path": "list.json", "keys": ["a"]}, "artifact invalid: not a JSON object"),
            ({"path": "../x.json", "keys": []}, "artifact invalid: '../x.json' is not a path inside"),
            ({"path": outside.name, "keys": []}, "artifact invalid:"),
            ({"path": "link.json", "keys": []}, "artifact invalid:"),
            ({"path": "", "keys": []}, "artifact invalid:"),
        ]
        for expects, expected in cases:
            with self.subTest(expects=expects):
                got = runner.check_expects(self.d, expects)
                if expected is None:
                    self.assertIsNone(got)
                else:
                    self.assertTrue(got and got.startswith(expected), got)

    def test_read_result(self):
        self.assertEqual(runner.read_result(self.d, 100), (None, None))
        cases = [('{"ok": true}', ({"ok": True}, None)), ("[1,", (None, "result.json invalid: not JSON")),
                 ('"' + "x" * 200 + '"', (None, "result.json invalid: larger than 100 bytes"))]
        for text, (value, err) in cases:
            with self.subTest(text=text[:10]):
                self.put("result.json", text)
                got_value, got_err = runner.read_result(self.d, 100)
                self.assertEqual(got_value, value)
                self.assertTrue(got_err == err or got_err.startswith(err), got_err)

    def test_prepare_dir_is_fresh_and_clean_old_dirs_by_age(self):
        d = runner.prepare_dir(self.d, "t.1.1", {"p": 1})
        self.put("t.1.1/junk", "x")
        d2 = runner.prepare_dir(self.d, "t.1.1", {"p": 2})
        self.assertEqual(d, d2)
        self.assertEqual(sorted(os.listdir(d)), ["task.json"])
        self.assertEqual(json.load(open(os.path.join(d, "task.json"))), {"p": 2})
        now = time.time()
        for name, age in (("old", 5000), ("older", 9000), ("new", 10), ("old_but_running", 9000)):
            os.makedirs(os.path.join(self.d, "tasks", name))
            os.utime(os.path.join(self.d, "tasks", name), (now - age, now - age))
        removed = runner.clean_old_dirs(os.path.join(self.d, "tasks"), 3600, now, keep={"old_but_running"})
        self.assertEqual(sorted(removed), ["old", "older"])
        self.assertEqual(sorted(os.listdir(os.path.join(self.d, "tasks"))), ["new", "old_but_running"])
        self.assertEqual(runner.clean_old_dirs(os.path.join(self.d, "missing"), 1, now), [])

    def test_dir_names_are_safe(self):
        self.assertEqual(runner.dir_name("abc-1", 2, 9), "abc-1.2.9")
        self.assertEqual(runner.dir_name("../../etc", 1, 1), "______etc.1.1")


if __name__ == "__main__":
    unittest.main()
