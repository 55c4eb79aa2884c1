"""The client CLI as a user runs it: real processes, exit codes, one-line errors."""

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import unittest

from meshkit.cli.main import COMMAND_MODULES, COMMANDS as TABLE, command_module
from tests.helpers import ROOT, Fleet, env, meshkit, register

COMMANDS = ["init", "supervisor", "dispatch", "task", "tasks", "cancel", "status"]


def fake_worker(client, node, outcome, result=None, deadline_s=20):
    """Claim one task and post a result, like a worker would."""
    register(client, node, kinds=["job"])
    t = client.call("POST", "/v1/claim", {"node": node, "wait": deadline_s}, timeout=deadline_s + 5)["tasks"][0]
    client.call("POST", f"/v1/tasks/{t['id']}/start", {"node": node, "fence": t["fence"]})
    client.call("POST", "/v1/results", {"task": t["id"], "fence": t["fence"], "node": node, "outcome": outcome,
                                        "result": result, "error": None if outcome == "succeeded" else "exit code 3",
                                        "exit_code": 0 if outcome == "succeeded" else 3})


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet()
        cls.fleet.start_supervisor()

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def run_with_worker(self, outcome, *args, result=None):
        t = threading.Thread(target=fake_worker, args=(self.fleet.client("worker"), f"n-{outcome}", outcome, result))
        t.start()
        r = self.fleet.cli("dispatch", "job", *args, "--wait")
        t.join(30)
        return r

    def test_dispatch_wait_success_prints_result(self):
        r = self.run_with_worker("succeeded", "--payload", '{"a": 1}', result={"answer": 42})
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"^t\d+$")
        self.assertEqual(json.loads("\n".join(lines[1:])), {"answer": 42})
        self.assertIn("-> succeeded", r.stderr)

    def test_dispatch_wait_failure_exits_1(self):
        r = self.run_with_worker("failed", "--max-attempts", "1")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("failed", r.stderr.splitlines()[-1])

    def test_task_tasks_cancel_status(self):
        tid = self.fleet.cli("dispatch", "other", "--payload", '{"x": [1, 2]}', "--priority", "3").stdout.strip()
        task = json.loads(self.fleet.cli("task", tid, "--json").stdout)
        for key in ("id", "kind", "state", "attempts", "history", "result"):
            self.assertIn(key, task)
        self.assertEqual(set(task["history"][0]) >= {"from", "to", "at", "reason"}, True)
        listed = json.loads(self.fleet.cli("tasks", "--state", "queued", "--json").stdout)
        self.assertIn(tid, [t["id"] for t in listed])
        self.assertIn(tid, self.fleet.cli("tasks").stdout)
        self.assertEqual(self.fleet.cli("cancel", tid).returncode, 0)
        self.assertEqual(json.loads(self.fleet.cli("task", tid, "--json").stdout)["state"], "cancelled")
        again = self.fleet.cli("cancel", tid)
        self.assertEqual((again.returncode, "already ended" in again.stderr), (1, True))
        st = json.loads(self.fleet.cli("status", "--json").stdout)
        for key in ("role", "epoch", "nodes", "tasks"):
            self.assertIn(key, st)
        self.assertIsInstance(st["nodes"], list)
        human = self.fleet.cli("status").stdout
        self.assertTrue(all(len(line) <= 80 for line in human.splitlines()), human)

    def test_status_shows_this_machines_sync_jobs(self):
        os.makedirs(os.path.join(self.fleet.dir, "sync"), exist_ok=True)
        with open(os.path.join(self.fleet.dir, "sync", "memory.json"), "w") as f:
            json.dump({"job": "memory", "last_result": "failed", "last_success": None, "consecutive_failures": 4,
                       "last_failure": 1.0, "last_error": "validation", "last_run": 1.0}, f)
        st = json.loads(self.fleet.cli("status", "--json").stdout)
        self.assertEqual(st["sync"][0]["consecutive_failures"], 4)
        self.assertIn("sync memory: failed, last success never, 4 failures in a row", self.fleet.cli("status").stdout)

    def test_payload_from_file_and_idempotency_key(self):
        path = os.path.join(self.fleet.dir, "job.json")
        with open(path, "w") as f:
            json.dump({"from": "file"}, f)
        a = self.fleet.cli("dispatch", "other", "--payload", "@" + path, "--key", "k-1").stdout.strip()
        b = self.fleet.cli("dispatch", "other", "--payload", "@" + path, "--key", "k-1").stdout.strip()
        self.assertEqual(a, b)
        self.assertEqual(json.loads(self.fleet.cli("task", a, "--json").stdout)["payload"], {"from": "file"})

    def test_errors_are_one_line_with_exit_codes(self):
        cases = [
            (self.fleet.cli("task", "t999999"), 1, "no task t999999"),
            (self.fleet.cli("dispatch", "x", "--payload", "{bad"), 2, "--payload is not valid JSON"),
            (self.fleet.cli("dispatch", "x", "--payload", "@/nonexistent.json"), 2, "cannot read"),
            (self.fleet.cli("dispatch", "bad kind!"), 2, "kind"),                          # refused: 400
            (self.fleet.cli("cancel", "t999999"), 1, "t999999"),
            (meshkit("status", "--config", self.fleet.config, "--supervisor", "http://127.0.0.1:1"), 3, "127.0.0.1:1"),
            (meshkit("status", "--config", "/nonexistent/m.toml"), 2, "/nonexistent/m.toml"),
            (meshkit("dispatch"), 2, "kind"),
        ]
        for r, code, text in cases:
            with self.subTest(text):
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(text, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
                self.assertTrue(r.stderr.strip().splitlines()[-1].startswith("meshkit: "), r.stderr)
                if r.stderr.count("usage:") == 0:  # argparse's own errors show the usage above the line
                    self.assertEqual(r.stderr.strip().count("\n"), 0, r.stderr)

    def test_unknown_option_shows_its_commands_usage(self):
        """An option a (sub)command does not know: exit 2, that command's usage line (not the
        top level's), then one `meshkit:` line naming the option."""
        cases = [(("init", "--dri", "x"), "usage: meshkit init ", "--dri x"),
                 (("supervisor", "--confg", "C"), "usage: meshkit supervisor ", "--confg C"),
                 (("locks", "run", "--name", "ok", "--wiat", "3", "--", "true"), "usage: meshkit locks run ", "--wiat"),
                 (("status", "--jsn"), "usage: meshkit status ", "--jsn"),
                 (("--bogus",), "usage: meshkit [-h]", "--bogus")]
        for argv, usage, unknown in cases:
            with self.subTest(argv=argv):
                r = meshkit(*argv)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertTrue(r.stderr.startswith(usage), r.stderr)
                self.assertEqual(r.stderr.strip().splitlines()[-1], f"meshkit: unrecognized arguments: {unknown}")
                self.assertNotIn("Traceback", r.stderr)

    def test_bad_config_names_key(self):
        bad = os.path.join(self.fleet.dir, "bad.toml")
        with open(bad, "w") as f:
            f.write('[supervisor]\nstale_after = "ten minutes"\n')
        r = meshkit("supervisor", "--config", bad)
        self.assertEqual(r.returncode, 2)
        self.assertIn(f"{bad}: supervisor.stale_after: expected a number of seconds > 0, found \"ten minutes\"", r.stderr)
        r = meshkit("status", MESHKIT_CONFIG=bad)
        self.assertEqual(r.returncode, 2)

    def test_every_help_has_an_example(self):
        for cmd in COMMANDS:
            with self.subTest(cmd):
                r = meshkit(cmd, "--help")
                self.assertEqual(r.returncode, 0)
                self.assertIn("example", r.stdout)


class CommandTable(unittest.TestCase):
    """main.py imports only the chosen command's module; its table must say what
    each module registers, so `meshkit --help` needs none of them."""

    def test_table_is_what_the_modules_register(self):
        files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "meshkit", "cli", "cmd_*.py"))}
        self.assertEqual(set(COMMAND_MODULES), files)
        for module in COMMAND_MODULES:
            with self.subTest(module):
                sub = argparse.ArgumentParser().add_subparsers()
                command_module(module).register(sub)
                helps = {a.dest: a.help for a in sub._choices_actions}
                self.assertEqual(helps, {name: summary for name, (mod, summary) in TABLE.items() if mod == module})

    def test_a_command_loads_only_its_own_module(self):
        code = ("import sys; from meshkit.cli.main import build_parser; build_parser(sys.argv[1]); "
                "print(' '.join(sorted(m for m in sys.modules if m.startswith('meshkit.') or m in "
                "('http.client', 'sqlite3', 'ssl'))))")
        # `locks` may load the HTTP client (fleet leases call the supervisor); `sync`, run from
        # cron every few minutes, loads neither it nor any supervisor or worker code.
        for command, expect, client in ((None, set(), False), ("sync", {"cmd_sync"}, False),
                                        ("locks", {"cmd_locks"}, True)):
            with self.subTest(command):
                out = subprocess.run([sys.executable, "-c", code, str(command)], cwd=ROOT, env=env(),
                                     capture_output=True, text=True, check=True).stdout.split()
                self.assertEqual({m.rsplit(".", 1)[1] for m in out if m.startswith("meshkit.cli.cmd_")}, expect)
                heavy = [m for m in out if m.startswith(("meshkit.roles.supervisor", "meshkit.roles.worker"))
                         or m == "sqlite3" or (not client and m in ("http.client", "ssl"))]
                self.assertEqual(heavy, [])

    def test_help_lists_every_command_and_each_command_has_help(self):
        r = meshkit("--help")
        self.assertEqual(r.returncode, 0)
        text = " ".join(r.stdout.split())
        for name, (_, summary) in TABLE.items():
            self.assertIn(f"{name} {summary}", text)
        for name in TABLE:
            with self.subTest(name):
                r = meshkit(name, "--help")
                self.assertEqual((r.returncode, r.stderr), (0, ""))
                self.assertIn(f"meshkit {name}", r.stdout)
        r = meshkit("no-such-command")
        self.assertEqual(r.returncode, 2)
        self.assertIn("invalid choice", r.stderr)
        r = subprocess.run([sys.executable, "-m", "meshkit.cli.cmd_worker", "--help"], cwd=ROOT, env=env(),
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertIn("meshkit worker", r.stdout)


if __name__ == "__main__":
    unittest.main()
