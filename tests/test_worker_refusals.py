"""A worker the supervisor refuses, and a worker with nothing to run.

- Its key refused for good (403: the key's role may not claim, e.g. a viewer key; 401: an
  unknown key id, a wrong secret): it stops with one line on stderr naming the key, what the
  supervisor said and what to do, and exits 3; results in its outbox stay there, and the next
  start with a good key delivers them.
- A 401 that may pass (its clock far off the supervisor's, a replayed nonce): it keeps
  retrying, with an `auth_refused` error line at most every AUTH_LOG_EVERY s.
- No allowlisted kind at all: it refuses to start, one line naming worker.kinds and the
  config file, exit 2.
"""

import json
import os
import signal
import subprocess
import sys
import time
import unittest

from tests.helpers import ROOT, env, register
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, wait_for, wait_state, worker_fleet
from tests.test_worker_units import FakeRun, WorkerCase

from meshkit.adapters.atomic import create_exclusive
from meshkit.adapters.outbox import Outbox
from meshkit.core.errors import ApiError, ClientError, ConfigError, MeshkitError
from meshkit.roles.worker import refusals
from meshkit.roles.worker.jobs import Job
from meshkit.roles.worker.settings import settings_from
from meshkit.roles.worker.worker import AUTH_LOG_EVERY
from meshkit.rules import auth
from meshkit.rules.config import parse_config

FORBIDDEN = ApiError(403, "forbidden", "this needs worker credentials; the key used is viewer (HTTP 403)")
UNKNOWN_KEY = ApiError(401, "unauthorized", "unknown key id (HTTP 401)")
SKEW = ApiError(401, "unauthorized", "timestamp is more than 300 s off the server's clock (HTTP 401)")


def as_answer(e: MeshkitError) -> ApiError:
    """A supervisor's error as the worker's client receives it (adapters/client.py)."""
    err = e.to_json()["error"]
    extra = {k: v for k, v in err.items() if k not in ("code", "message")}
    return ApiError(e.status, err["code"], f"{err['message']} (HTTP {e.status})", **extra)


class Reasons(unittest.TestCase):
    def test_table(self):
        cases = [
            # error, reason, for good
            (FORBIDDEN, "role", True),
            (ApiError(403, "http_error", "HTTP 403 from http://proxy/v1/claim"), "unknown", False),
            (UNKNOWN_KEY, "unknown_key", True),
            (ApiError(401, "unauthorized", "bad signature (HTTP 401)"), "bad_signature", True),
            (SKEW, "stale_timestamp", False),
            (ApiError(401, "unauthorized", "nonce already used (replay) (HTTP 401)"), "replayed_nonce", False),
            (ApiError(401, "unauthorized", "timestamp older than the replay window the server keeps (its clock "
                      "went back); sign with the current time (HTTP 401)"), "outside_replay_window", False),
            (ApiError(401, "unauthorized", "something new (HTTP 401)"), "unknown", False),
            (ApiError(401, "http_error", "HTTP 401 from a proxy"), "unknown", False),
            # a `reason` detail, where the supervisor sends one, is read before the text
            (ApiError(401, "unauthorized", "anything", reason="unknown_key"), "unknown_key", True),
            (ApiError(401, "unauthorized", "unknown key id", reason="stale_timestamp"), "stale_timestamp", False),
            (ApiError(401, "unauthorized", "unknown key id", reason="made-up"), "unknown_key", True),
            # not a refusal of the key
            (ApiError(409, "stale_fence", "stale"), None, False), (ApiError(404, "not_found", "gone"), None, False),
            (ApiError(500, "internal", "bug"), None, False), (ApiError(429, "too_many", "slow down"), None, False),
            (ClientError("connection refused"), None, False), (ConfigError("f", "k", "x", "y"), None, False),
        ]
        for err, reason, good in cases:
            with self.subTest(err=err.message):
                self.assertEqual(refusals.reason_of(err), reason)
                self.assertEqual(refusals.for_good(reason), good)

    def test_the_supervisors_own_refusals(self):
        """The texts refusals.TEXTS reads are auth.verify's: a rewording there fails here."""
        keys = {"w1": ("worker", "s" * 32), "v1": ("viewer", "v" * 32)}
        now = 1_700_000_000

        def refusal(headers, at=now, nonces=None):
            try:
                auth.verify(headers, "POST", "/v1/claim", b"{}", keys, nonces or auth.NonceCache(300), at, 300)
            except MeshkitError as e:
                reason = refusals.reason_of(as_answer(e))
                # An answer without `reason` (a supervisor from before it): the message's words alone.
                older = as_answer(e)
                older.details.pop("reason", None)
                self.assertEqual(refusals.reason_of(older), reason)
                return reason
            self.fail("accepted")

        good = auth.signed_headers("w1", "s" * 32, "POST", "/v1/claim", b"{}", now, "n" * 32)
        self.assertEqual(refusal(dict(good, **{auth.H_KEY: "zz"})), "unknown_key")
        self.assertEqual(refusal(auth.signed_headers("w1", "x" * 32, "POST", "/v1/claim", b"{}", now, "n" * 32)),
                         "bad_signature")
        self.assertEqual(refusal(good, at=now + 1000), "stale_timestamp")
        nonces = auth.NonceCache(300)
        auth.verify(good, "POST", "/v1/claim", b"{}", keys, nonces, now, 300)
        self.assertEqual(refusal(good, nonces=nonces), "replayed_nonce")
        nonces = auth.NonceCache(10)          # a window shorter than the skew allowed: its bucket is forgotten
        auth.verify(good, "POST", "/v1/claim", b"{}", keys, nonces, now, 300)
        late = auth.signed_headers("w1", "s" * 32, "POST", "/v1/claim", b"{}", now, "m" * 32)
        self.assertEqual(refusal(late, at=now + 20, nonces=nonces), "outside_replay_window")
        with self.assertRaises(MeshkitError) as cm:
            auth.require_role("viewer", "worker")
        self.assertEqual(refusals.reason_of(as_answer(cm.exception)), "role")

    def test_the_line(self):
        line = refusals.refused_line("viewer-1", "http://10.0.0.5:8765", FORBIDDEN.message, "role",
                                     "auth.key_id in /etc/meshkit/meshkit.toml, keys file /etc/meshkit/keys")
        for text in ("http://10.0.0.5:8765", "'viewer-1'", "the key used is viewer (HTTP 403)", "role worker",
                     "auth.key_id in /etc/meshkit/meshkit.toml", "outbox"):
            self.assertIn(text, line)
        self.assertNotIn("\n", line)


class Refused(WorkerCase):
    """The worker's side with a fake supervisor and a fake clock."""

    def events(self, name):
        return [r for r in map(json.loads, self.logs.getvalue().splitlines()) if r["event"] == name]

    def test_refused_for_good_at_the_first_heartbeat_stops_and_keeps_the_outbox(self):
        for err in (FORBIDDEN, UNKNOWN_KEY):
            with self.subTest(err=err.message):
                self.logs.truncate(0)
                self.logs.seek(0)
                w = self.worker({"/v1/heartbeat": [err], "/v1/results": [err]})
                w.key_id = "k-1"
                kept = w.outbox.put({"task": "t7", "fence": 3, "node": "w1", "outcome": "succeeded", "finished_at": 1})
                w.unacked[kept] = ("t7", 3)
                self.assertIsNotNone(w.step())               # heartbeat refused (and the send tried)
                self.assertEqual(w.refusal, ("http://sup", err.message, refusals.reason_of(err)))
                self.assertIsNone(w.step())                  # it stops: nothing runs
                self.assertTrue(w.draining)
                self.assertEqual([n for n, _ in w.outbox.pending()], [kept])     # kept for the next start
                self.assertLessEqual(w.link.paths().count("/v1/results"), 1)      # no last flush round
                [line] = self.events("key_refused")
                self.assertEqual((line["level"], line["key"], line["supervisor"]), ("error", "k-1", "http://sup"))

    def test_a_refusal_seen_by_the_claim_loop_or_a_send_stops_the_worker(self):
        w = self.worker({"/v1/claim": [FORBIDDEN]})
        w.registered.set()
        self.assertIsNone(w.claim_step())                    # claiming is over at once
        self.assertIsNotNone(w.refusal)
        w = self.worker({"/v1/results": [UNKNOWN_KEY]})
        w.next_heartbeat = w.next_cleanup = float("inf")
        for tid in ("t1", "t2", "t3"):
            w.unacked[w.outbox.put({"task": tid, "fence": 1, "node": "w1", "outcome": "succeeded"})] = (tid, 1)
        w.sender.step(force=True)
        self.assertEqual(w.link.paths(), ["/v1/results"])    # the round stops at the first refusal
        w.sender.step()
        sent = [body["task"] for _, body in w.link.calls]
        self.assertEqual(len(sent), 2)                       # one not tried yet, not the refused one again:
        self.assertEqual(len(set(sent)), 2)                  # it waits its backoff
        self.assertEqual(len(w.outbox.pending()), 3)
        self.assertIsNotNone(w.refusal)

    def test_running_tasks_drain_then_it_stops(self):
        w = self.worker({"/v1/heartbeat": [FORBIDDEN], "/v1/results": [FORBIDDEN]}, drain_timeout=60)
        job = w.jobs["t1"] = Job(self.task(), run=FakeRun())
        w.refused(FORBIDDEN)
        self.assertIsNotNone(w.step())
        self.assertTrue(w.draining)
        self.assertEqual(job.run.cancelled, [])              # a drain, as on SIGTERM
        w._finish(job, {"task": "t1", "fence": 1, "node": "w1", "outcome": "succeeded", "ended_by": "exit",
                        "error": None, "started_at": 1, "finished_at": 2})
        self.assertIsNone(w.step())
        self.assertEqual(len(w.outbox.pending()), 1)         # its result is kept

    def test_a_refusal_that_may_pass_is_retried_and_logged_rate_limited(self):
        w = self.worker({"/v1/heartbeat": [SKEW]})
        for _ in range(20):
            self.assertIsNotNone(w.step())
            self.clock.advance(1.0)
        self.assertIsNone(w.refusal)
        self.assertFalse(w.draining)
        self.assertGreaterEqual(w.link.paths().count("/v1/heartbeat"), 4)     # retried
        lines = self.events("auth_refused")
        self.assertEqual(len(lines), 1)                      # 20 s: one line
        self.assertEqual((lines[0]["level"], lines[0]["reason"]), ("error", "stale_timestamp"))
        self.assertIn("clock", lines[0]["hint"])
        self.clock.advance(AUTH_LOG_EVERY)
        w.next_heartbeat = 0.0
        w.step()
        lines = self.events("auth_refused")
        self.assertEqual(len(lines), 2)
        self.assertGreater(lines[1]["refusals"], 1)          # how many since the last line


class NoKinds(unittest.TestCase):
    def test_settings_refuse_an_empty_allowlist(self):
        for text in ('[worker]\nslots = 2\n', '[worker]\nslots = 2\n[worker.kinds]\n'):
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as cm:
                    settings_from(parse_config(text, "/etc/m/meshkit.toml"), "box")
                self.assertEqual(cm.exception.details["key"], "worker.kinds")
                self.assertIn("/etc/m/meshkit.toml", cm.exception.message)
        s = settings_from(parse_config('[worker.kinds.echo]\nargv = ["cat"]\n', "f.toml"), "box")
        self.assertEqual(list(s.kinds), ["echo"])


def worker_config(fleet, name: str, keys_text: str | None = None, **overrides) -> str:
    """A config next to the fleet's with the test kinds; keys_text: its own keys file."""
    if keys_text is not None:
        create_exclusive(os.path.join(fleet.dir, f"{name}-keys"), keys_text.encode(), 0o600)
        overrides["auth__keys_file"] = f"{name}-keys"
    path = fleet.other_config(name, **overrides)
    script = os.path.join(fleet.dir, "task.py")
    with open(path, "a") as f:
        f.write(f'\n[worker.kinds.ok]\nargv = {json.dumps([sys.executable, script, "ok"])}\n')
    return path


def stderr_lines(w: WorkerProc) -> list:
    with open(w.log_path) as f:
        return [line.rstrip("\n") for line in f if line.startswith("meshkit: ")]


class RefusedProcesses(unittest.TestCase):
    """Real processes: `python -m meshkit worker` against a real supervisor."""

    def setUp(self):
        self.fleet = worker_fleet(supervisor__stale_after=60)
        self.addCleanup(close_fleet, self.fleet)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")

    def refused(self, w: WorkerProc, *texts) -> str:
        t0 = time.monotonic()
        w.start(wait_registered=False)
        self.assertEqual(w.wait(20), 3, w.tail())
        self.assertLess(time.monotonic() - t0, 15)
        lines = stderr_lines(w)
        self.assertEqual(len(lines), 1, w.tail())
        for text in (self.fleet.url, *texts):
            self.assertIn(text, lines[0])
        self.assertNotIn("Traceback", w.tail(200))
        self.assertEqual(w.count("key_refused"), 1)
        self.assertEqual(w.count("registered"), 0)
        return lines[0]

    def test_a_viewer_key_stops_with_exit_3_and_its_outbox_is_kept(self):
        # a result waiting in w1's outbox: its task was claimed and started as w1 (with a worker key)
        worker = self.fleet.client("worker")
        register(worker, "w1", kinds=["ok"])
        tid = dispatch(self.admin, "ok", {})
        [task] = worker.call("POST", "/v1/claim", {"node": "w1", "wait": 5})["tasks"]
        worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "w1", "fence": task["fence"]})
        work = os.path.join(self.fleet.dir, "work-w1")
        box = Outbox(os.path.join(work, "outbox"))
        box.put({"task": tid, "fence": task["fence"], "node": "w1", "outcome": "succeeded", "ended_by": "exit",
                 "exit_code": 0, "result": {"kept": True}, "error": None, "stdout_tail": "", "stderr_tail": "",
                 "started_at": time.time(), "finished_at": time.time()})
        box.close()
        cfg = worker_config(self.fleet, "viewer", auth__key_id="viewer-1")
        w = WorkerProc(self.fleet, "w1", "--config", cfg)
        self.refused(w, "'viewer-1'", "the key used is viewer (HTTP 403)", "role worker", f"auth.key_id in {cfg}",
                     os.path.join(self.fleet.dir, "keys"))
        self.assertEqual(len(w.outbox()), 1)                 # kept
        self.assertEqual(wait_state(self.admin, tid, "running")["state"], "running")
        # the next start with a worker key delivers it
        again = WorkerProc(self.fleet, "w1").start()
        done = wait_state(self.admin, tid, ("succeeded", "failed"))
        self.assertEqual((done["state"], done["result"]["result"]), ("succeeded", {"kept": True}))
        wait_for(lambda: again.outbox() == [], 10, "the outbox to empty")

    def test_an_unknown_key_id_stops_with_exit_3(self):
        cfg = worker_config(self.fleet, "unknown", "worker-9 worker " + "a" * 64 + "\n")
        self.refused(WorkerProc(self.fleet, "w9", "--config", cfg), "'worker-9'", "unknown key id (HTTP 401)",
                     "add this key to the supervisor's keys file")

    def test_a_wrong_secret_stops_with_exit_3(self):
        cfg = worker_config(self.fleet, "wrong", "worker-1 worker " + "b" * 64 + "\n")
        self.refused(WorkerProc(self.fleet, "w8", "--config", cfg), "'worker-1'", "bad signature (HTTP 401)",
                     "secret differs")

    def test_a_clock_far_off_keeps_retrying_with_error_lines(self):
        # The worker's clock 1000 s ahead (auth.max_skew 300): every call is refused, for now.
        # heartbeat_failed is rate-limited too (worker.HB_LOG_EVERY, 60 s): off here, one line per refusal.
        log_path = os.path.join(self.fleet.dir, "worker-skewed.log")
        code = ("import sys, time; real = time.time; time.time = lambda: real() + 1000; "
                "from meshkit.roles.worker import worker; worker.HB_LOG_EVERY = 0; "
                "from meshkit.cli import cmd_worker; sys.exit(cmd_worker.main(sys.argv[1:]))")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-c", code, "--config", self.fleet.config, "--supervisor",
                                     self.fleet.url, "--name", "skewed", "--work-dir",
                                     os.path.join(self.fleet.dir, "work-skewed")],
                                    cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=log)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(5)))

        def events(name):
            with open(log_path) as f:
                return [r for r in (json.loads(line) for line in f if line.startswith("{")) if r["event"] == name]

        wait_for(lambda: len(events("heartbeat_failed")) >= 4, 20, "4 refused heartbeats")
        self.assertIsNone(proc.poll())                       # still running
        lines = events("auth_refused")
        self.assertEqual(len(lines), 1, lines)               # rate-limited: one per AUTH_LOG_EVERY (30 s)
        self.assertEqual((lines[0]["level"], lines[0]["reason"], lines[0]["key"]),
                         ("error", "stale_timestamp", "worker-1"))
        self.assertIn("off the server's clock", lines[0]["error"])
        self.assertEqual(events("key_refused"), [])
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(15), 0)


class NoKindsProcess(unittest.TestCase):
    def test_a_worker_with_no_kinds_refuses_to_start(self):
        fleet = worker_fleet()
        self.addCleanup(close_fleet, fleet)
        for name, extra in (("no-kinds", ""), ("empty-kinds", "\n[worker.kinds]\n")):
            with self.subTest(name):
                cfg = fleet.other_config(name, worker__supervisor="http://127.0.0.1:1")
                if extra:
                    with open(cfg, "a") as f:
                        f.write(extra)
                with open(cfg) as f:      # render_default_toml's own example kind, taken out
                    text = f.read().replace('[worker.kinds.echo]\n# copies the payload to stdout\nargv = ["cat"]\n', "")
                with open(cfg, "w") as f:
                    f.write(text)
                r = subprocess.run([sys.executable, "-m", "meshkit", "worker", "--config", cfg], cwd=ROOT, env=env(),
                                   capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 2, r.stderr)
                lines = r.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, r.stderr)
                for text in ("meshkit: ", cfg, "worker.kinds", "at least one allowlisted task kind", "found none"):
                    self.assertIn(text, lines[0])


if __name__ == "__main__":
    unittest.main()
