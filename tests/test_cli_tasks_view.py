"""What an operator sees of tasks: the real CLI against a real supervisor (a signed worker
client claims, starts and ends tasks), and the --wait explainer on a fake clock.

- `tasks` shows the newest N (the newest at the bottom), says on stderr when there are more,
  `--all` pages through every task with before=, `--json` is a list in the printed order;
- `task ID` shows the spec (payload cut, requires, timeout, attempts, key, expects, after) and
  where it is (node, fence, lease deadline);
- `dispatch --wait` and `graph --wait` say once why a task nothing runs is still queued, and wait on;
- `explain` says where a leased, running or ended task is in words that fit, with the cancel's reason;
- every command a human is shown (--help, init's output) says `python3 -m meshkit`, and the options
  operators asked about have their help.
"""

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

from meshkit.cli.cmd_tasks import STILL_EVERY, STILL_FIRST, StillWaiting
from meshkit.cli.main import build_parser
from meshkit.core.clock import FakeClock
from meshkit.core.errors import ClientError
from tests.helpers import ROOT, Fleet, env, meshkit, register
from tests.test_brain_integration import post_result, wait_for

HINT = "(the latest {n} {what}tasks of more; --limit N or --all)"


def ids_of(stdout: str) -> list:
    return [line.split()[0] for line in stdout.splitlines()[1:]]


class NewestTasks(unittest.TestCase):
    """1005 tasks (a graph of 1000, one of 5); t1003 cancelled."""

    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet()
        cls.fleet.start_supervisor()
        admin = cls.fleet.client("admin")
        try:
            for count in (1000, 5):
                admin.call("POST", "/v1/graph", {"tasks": [{"name": f"n{i}", "kind": "echo"} for i in range(count)]})
            admin.call("POST", "/v1/tasks/t1003/cancel", {"reason": "not needed"})
        finally:
            admin.close()

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def run_cli(self, *args):
        r = self.fleet.cli("tasks", *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def test_the_newest_at_the_bottom_and_a_hint_when_there_are_more(self):
        cases = [
            # args -> ids shown (in order), stderr
            ((), [f"t{n}" for n in range(906, 1006)], HINT.format(n=100, what="") + "\n"),
            (("--limit", "3"), ["t1003", "t1004", "t1005"], HINT.format(n=3, what="") + "\n"),
            (("--limit", "1000"), [f"t{n}" for n in range(6, 1006)], HINT.format(n=1000, what="") + "\n"),
            (("--all",), [f"t{n}" for n in range(1, 1006)], ""),
            (("--state", "queued", "--limit", "2"), ["t1004", "t1005"], HINT.format(n=2, what="queued ") + "\n"),
            (("--state", "cancelled"), ["t1003"], ""),
        ]
        for args, want, err in cases:
            with self.subTest(args=args):
                r = self.run_cli(*args)
                self.assertEqual(ids_of(r.stdout), want)
                self.assertEqual(r.stderr, err)
                listed = self.run_cli(*args, "--json")
                self.assertEqual([t["id"] for t in json.loads(listed.stdout)], want)
                self.assertEqual(listed.stderr, err)

    def test_bad_limits_are_usage_errors(self):
        for args in (("--limit", "0"), ("--limit", "1001"), ("--all", "--limit", "5")):
            with self.subTest(args=args):
                r = self.fleet.cli("tasks", *args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertNotIn("Traceback", r.stderr)


class TaskView(unittest.TestCase):
    def setUp(self):
        self.fleet = Fleet()
        self.addCleanup(self.fleet.close)
        self.fleet.start_supervisor()

    def dispatch(self, *args):
        r = self.fleet.cli("dispatch", *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def show(self, tid):
        r = self.fleet.cli("task", tid)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_spec_and_where_it_is(self):
        first = self.dispatch("echo", "--payload", '{"n": 1}')
        second = self.dispatch("echo", "--payload", '{"text": "hi"}', "--requires", "gpu", "--requires", "cuda",
                               "--priority", "7", "--timeout", "60", "--max-attempts", "3", "--key", "nightly-1",
                               "--expects", "out/r.json:title,body", "--after", first)
        out = self.show(second)
        for line in (f"{second}  echo  waiting  attempt 0/3  priority 7", 'payload   {"text": "hi"}',
                     "requires  cuda, gpu", "timeout   60 s per attempt, at most 3 attempts", "key       nightly-1",
                     "expects   out/r.json with keys title, body", f"after     {first}"):
            self.assertIn(line + "\n", out)
        self.assertRegex(out, r"\ncreated   \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n")
        self.assertNotIn("\nnode ", out)
        worker = self.fleet.client("worker")
        self.addCleanup(worker.close)
        register(worker, "w1", kinds=("echo",))
        t = worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 1})["tasks"][0]
        self.assertEqual(t["id"], first)
        out = self.show(first)
        self.assertIn(f"node      w1  fence {t['fence']}\n", out)
        self.assertRegex(out, r"\nlease     until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n")
        self.assertIn("requires  -\n", out)

    def test_a_long_payload_is_cut_saying_how_long(self):
        payload = json.dumps({"text": "x" * 5000})
        tid = self.dispatch("echo", "--payload", payload)
        line = next(line for line in self.show(tid).splitlines() if line.startswith("payload "))
        self.assertTrue(line.startswith('payload   {"text": "xxx'), line)
        self.assertTrue(line.endswith(f"... ({len(payload)} characters; --json shows it whole)"), line)
        self.assertLess(len(line), 400)


class FakeExplain:
    """A client whose explain answers the reason it is set to (or fails: ClientError)."""

    def __init__(self):
        self.reason, self.asked = "no worker runs kind `bad`", 0

    def call(self, method, path):
        self.asked += 1
        if self.reason is None:
            raise ClientError("cannot connect")
        return {"reason": self.reason}


class StillWaitingOnAFakeClock(unittest.TestCase):
    def test_said_once_after_a_pause_again_only_when_the_reason_changed(self):
        steps = [
            # seconds advanced, state, explain's reason (None: it fails) -> stderr lines
            (0, "queued", "r1", []),
            (STILL_FIRST - 1, "queued", "r1", []),
            (1, "queued", "r1", ["t9 x still queued: r1"]),
            (1, "queued", "r1", []),
            (STILL_EVERY, "queued", "r1", []),                 # asked again: the same reason
            (STILL_EVERY, "queued", "r2", ["t9 x still queued: r2"]),
            (STILL_EVERY, "queued", None, []),                 # an explain that fails is skipped
            (1, "leased", "r2", []),                            # leased: not waiting
            (1, "queued", "r2", []),                            # back in the queue: the pause again
            (STILL_FIRST, "queued", "r2", ["t9 x still queued: r2"]),
            (STILL_EVERY, "waiting", "r3", ["t9 x still waiting: r3"]),
        ]
        clock, client = FakeClock(), FakeExplain()
        still = StillWaiting(client, clock)
        for i, (advance, state, reason, want) in enumerate(steps):
            clock.advance(advance)
            client.reason = reason
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                still.check({"id": "t9", "state": state}, " x")
            self.assertEqual(err.getvalue().splitlines(), want, f"step {i}")
        self.assertEqual(client.asked, 6)


class WaitSaysWhy(unittest.TestCase):
    def test_dispatch_and_graph_wait_say_why_nothing_runs_and_wait_on(self):
        fleet = Fleet()
        self.addCleanup(fleet.close)
        fleet.start_supervisor()
        admin = fleet.client("admin")
        self.addCleanup(admin.close)
        path = os.path.join(fleet.dir, "g.json")
        with open(path, "w") as f:
            json.dump({"tasks": [{"name": "only", "kind": "nobody2"}]}, f)
        started = time.monotonic()
        procs = {}
        for name, args in (("dispatch", ["dispatch", "nobody", "--wait"]), ("graph", ["graph", path, "--wait"])):
            err = open(os.path.join(fleet.dir, f"{name}.err"), "w+")
            self.addCleanup(err.close)
            proc = subprocess.Popen([sys.executable, "-m", "meshkit", *args, "--config", fleet.config,
                                     "--supervisor", fleet.url], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                    stderr=err, text=True)
            self.addCleanup(lambda p=proc: p.poll() is None and p.kill())
            procs[name] = (proc, err)

        def said():
            texts = {}
            for name, (proc, err) in procs.items():
                with open(err.name) as f:     # its own offset: the child writes through `err`'s
                    texts[name] = f.read()
            return texts if all("still queued" in t for t in texts.values()) else None
        texts = wait_for(said, 20)
        self.assertTrue(texts, "no `still queued` line within 20 s")
        self.assertGreaterEqual(time.monotonic() - started, STILL_FIRST - 0.5)
        self.assertRegex(texts["dispatch"], r"(?m)^t\d+ still queued: no worker runs kind `nobody`$")
        self.assertRegex(texts["graph"], r"(?m)^t\d+ only still queued: no worker runs kind `nobody2`$")
        for name, (proc, err) in procs.items():       # still waiting: the operator ends it
            self.assertIsNone(proc.poll(), name)
        for tid in ("t1", "t2"):
            admin.call("POST", f"/v1/tasks/{tid}/cancel", {"reason": "nobody runs it"})
        for name, (proc, err) in procs.items():
            proc.communicate(timeout=20)
            self.assertEqual(proc.returncode, 1, name)
            err.seek(0)
            self.assertEqual(err.read().count("still queued"), 1, name)


class ExplainWords(unittest.TestCase):
    def test_leased_running_and_ended_tasks(self):
        fleet = Fleet(supervisor__cycle=0.2, supervisor__priorities_file="prio.toml")
        self.addCleanup(fleet.close)
        with open(os.path.join(fleet.dir, "prio.toml"), "w") as f:
            f.write("aging = 0.01\n")            # +100 a second waited: aging shows at once
        fleet.start_supervisor()
        admin, worker = fleet.client("admin"), fleet.client("worker")
        self.addCleanup(admin.close)
        self.addCleanup(worker.close)
        register(worker, "w1", kinds=("echo",))
        ids = [admin.call("POST", "/v1/tasks", {"kind": "echo"})["task"]["id"] for _ in range(3)]
        time.sleep(0.3)

        def explain(tid):
            r = fleet.cli("explain", tid)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("not dispatched", r.stdout)
            return r.stdout

        claimed = []
        for tid in ids:
            t = worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 1})["tasks"]
            if not t:          # a slot each: end the last one first
                post_result(worker, "w1", claimed[-1], "succeeded")
                t = worker.call("POST", "/v1/claim", {"node": "w1", "max": 1, "wait": 1})["tasks"]
            claimed.append(t[0])
        leased = explain(claimed[2]["id"])
        self.assertRegex(leased, rf"^{claimed[2]['id']}: leased to `w1` at \d\d:\d\d:\d\d, not started yet "
                                 r"\(priority 0, class P2\)\n")
        self.assertIn("if `w1` has not started it by then", leased)
        worker.call("POST", f"/v1/tasks/{claimed[2]['id']}/start", {"node": "w1", "fence": claimed[2]["fence"]})
        running = explain(claimed[2]["id"])
        self.assertRegex(running, rf"^{claimed[2]['id']}: running on `w1` since \d\d:\d\d:\d\d "
                                  r"\(priority 0, class P2\)\n")
        r = fleet.cli("cancel", claimed[2]["id"], "--reason", "wrong input")
        self.assertEqual(r.returncode, 0, r.stderr)
        post_result(worker, "w1", claimed[2], "failed", ended_by="cancel", error="cancelled")
        wait_for(lambda: admin.call("GET", f"/v1/tasks/{claimed[2]['id']}")["task"]["state"] == "cancelled")
        cancelled = explain(claimed[2]["id"])
        self.assertRegex(cancelled, rf"^{claimed[2]['id']}: ended cancelled at \d\d:\d\d:\d\d: cancelled while "
                                    r"running: wrong input \(priority 0, class P2\)\n")
        self.assertNotIn("  - ended", cancelled)          # its history follows, not the same words again
        done = explain(claimed[0]["id"])
        self.assertRegex(done, rf"^{claimed[0]['id']}: ended succeeded at \d\d:\d\d:\d\d \(priority 0, class P2\)\n")
        queued = admin.call("POST", "/v1/tasks", {"kind": "nobody"})["task"]["id"]
        time.sleep(0.2)
        out = fleet.cli("explain", queued).stdout
        self.assertTrue(re.match(rf"{queued}: queued, not dispatched \(priority 0, class P2; aged to \d+\.\d\d "
                                 r"for queue order; mode normal\)\n", out), out)


def helps(parser, path=("meshkit",)):
    """{command path: its --help text}, every (sub)command of `parser`."""
    out = {" ".join(path): parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(helps(sub, path + (name,)))
    return out


class Hints(unittest.TestCase):
    def test_every_help_says_python3(self):
        texts = helps(build_parser("*"))
        self.assertGreater(len(texts), 20)
        for path, text in texts.items():
            with self.subTest(path):
                self.assertNotIn("python -m meshkit", text)
        for path in ("meshkit", "meshkit dispatch", "meshkit tasks", "meshkit init", "meshkit supervisor"):
            self.assertIn("python3 -m meshkit ", texts[path], path)

    def test_options_operators_asked_about_have_help(self):
        texts = helps(build_parser("*"))
        flat = {path: " ".join(text.split()) for path, text in texts.items()}
        for path, words in [
            ("meshkit dispatch", ["<data_dir>/supervisor.url", "--requires CAP a capability the worker needs (repeat",
                                  "--priority N higher is taken first", "--timeout S seconds an attempt may run",
                                  "--max-attempts N attempts before it fails for good", "--trace-id ID an id",
                                  "--after ID run only after this task succeeded (repeat"]),
            ("meshkit cancel", ["--reason TEXT why, kept in the task's history", "<data_dir>/supervisor.url"]),
            ("meshkit tasks", ["--limit N the newest N", "--all every task"]),
            ("meshkit init", ["viewer.token"]),
        ]:
            for w in words:
                self.assertIn(w, flat[path], path)

    def test_init_says_python3(self):
        with tempfile.TemporaryDirectory() as d:
            r = meshkit("init", "--dir", d)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"start the supervisor: python3 -m meshkit supervisor --config {d}/meshkit.toml", r.stdout)


if __name__ == "__main__":
    unittest.main()
