"""Worker decisions with a fake clock and a fake supervisor link: no processes, no sleeps."""

import io
import shutil
import tempfile
import unittest

from meshkit.adapters.log import Logger
from meshkit.adapters.outbox import Outbox
from meshkit.adapters.runner import Finished
from meshkit.core.clock import FakeClock
from meshkit.core.errors import ApiError, ClientError, ConfigError
from meshkit.roles.worker import results
from meshkit.roles.worker.link import BreakerOpen, Link
from meshkit.roles.worker.settings import Settings, effective_timeout, settings_from
from meshkit.roles.worker.jobs import Job
from meshkit.roles.worker.worker import Worker
from meshkit.rules.breaker import Breaker
from meshkit.rules.config import Kind, parse_config


def api(status, code="x"):
    return ApiError(status, code, f"{code} (HTTP {status})")


class FakeLink:
    """Answers from a script: {path prefix: [answer or exception, ...]} (the last one repeats)."""

    url = "http://sup"

    def __init__(self, script=None):
        self.script = script or {}
        self.calls = []
        self.probes = []
        self.healthy = True

    def retry_in(self):
        return 7.0

    def call(self, method, path, body=None, timeout=None, probe=False):
        self.calls.append((path, body))
        self.probes.append(probe)
        for prefix, answers in self.script.items():
            if path.startswith(prefix):
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if callable(answer):
                    answer = answer()
                if isinstance(answer, Exception):
                    raise answer
                return answer
        raise AssertionError(f"unexpected call {path}")

    def paths(self):
        return [p for p, _ in self.calls]


class FakeRun:
    def __init__(self):
        self.cancelled = []

    def cancel(self, ended_by="cancel"):
        self.cancelled.append(ended_by)


def settings(**kw):
    base = dict(name="w1", supervisors=("http://sup",), capabilities=("gpu",), slots=3, work_dir="",
                kinds={"echo": Kind("echo", ("cat",), None, {}), "ab": Kind("ab", ("true",), 5.0, {})},
                heartbeat_interval=60, poll_wait=25, poll_interval=5, retry_base=1, retry_cap=60)
    base.update(kw)
    return Settings(**base)


class WorkerCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mk-wunit-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = FakeClock()
        self.logs = io.StringIO()
        self.spawned = []

    def worker(self, script=None, **kw):
        self.link = FakeLink(script)
        self.outbox = Outbox(tempfile.mkdtemp(dir=self.dir))
        self.addCleanup(self.outbox.close)
        s = settings(work_dir=self.dir, **kw)
        w = Worker(s, self.link, self.outbox, self.clock, Logger("worker", "w1", stream=self.logs, clock=self.clock),
                   rand=lambda: 0.5, spawn=lambda target, *a: self.spawned.append((target, a)), proc="/nonexistent")
        w.startup()
        return w

    def task(self, tid="t1", kind="echo", fence=1, **kw):
        return dict({"id": tid, "kind": kind, "payload": {}, "attempt": 1, "fence": fence, "timeout": 30,
                     "expects": None, "trace_id": "tr", "lease_deadline": 0}, **kw)


class Heartbeats(WorkerCase):
    def test_body_reports_the_node_running_tasks_and_unacked_results(self):
        w = self.worker()
        w.jobs["t1"] = Job(self.task("t1", fence=4))
        w.outbox.put({"task": "t2", "fence": 9, "finished_at": 1})
        w.unacked["t2.9.json"] = ("t2", 9)
        b = w.heartbeat_body()
        self.assertEqual(b["node"], "w1")
        self.assertEqual(b["capabilities"], ["gpu"])
        self.assertEqual(b["kinds"], ["ab", "echo"])
        self.assertEqual((b["slots"], b["free_slots"]), (3, 1))
        self.assertEqual(b["running"], [{"task": "t1", "fence": 4}, {"task": "t2", "fence": 9}])
        self.assertIn("version", b)
        for k in ("load", "mem_available", "disk_free"):      # None figures are left out, never sent as null
            self.assertTrue(k not in b or b[k] is not None, k)

    def test_cancel_and_fenced_reach_running_tasks(self):
        w = self.worker({"/v1/heartbeat": [{"ok": True, "epoch": 1, "cancel": ["t1", "t9"], "fenced": ["t2"]}]})
        for tid in ("t1", "t2", "t3"):
            w.jobs[tid] = Job(self.task(tid), run=FakeRun())
        w.heartbeat()
        self.assertEqual([(t, j.stop, j.run.cancelled) for t, j in sorted(w.jobs.items())],
                         [("t1", "cancel", ["cancel"]), ("t2", "fenced", ["cancel"]), ("t3", None, [])])
        self.assertTrue(w.registered.is_set())

    def test_period_idle_busy_and_on_failure(self):
        w = self.worker({"/v1/heartbeat": [{"ok": True, "epoch": 1}]})
        w.heartbeat()
        self.assertEqual(w.next_heartbeat - self.clock.monotonic(), 60)
        w.jobs["t1"] = Job(self.task())
        w.heartbeat()
        self.assertEqual(w.next_heartbeat - self.clock.monotonic(), 5)   # cancels arrive within a poll round
        del w.jobs["t1"]
        w.heartbeat()                       # idle again: the next one in 60 s...
        self.clock.advance(10)
        w.launch(self.task("t2"))           # ...until a task starts: a cancel must not wait 50 s more
        self.assertEqual(w.next_heartbeat - self.clock.monotonic(), 5)
        cases = [(ClientError("down"), 0.5), (api(503, "unavailable"), 1.0), (BreakerOpen(42.0), 42.0)]
        for err, expected in cases:
            with self.subTest(err=err.message):
                w.link.script = {"/v1/heartbeat": [err]}
                w.heartbeat()
                self.assertAlmostEqual(w.next_heartbeat - self.clock.monotonic(), expected)


class Claims(WorkerCase):
    def test_claims_ask_for_free_slots_only(self):
        w = self.worker({"/v1/claim": [{"tasks": [self.task("t5")], "epoch": 1}]})
        w.registered.set()
        w.jobs["t1"] = Job(self.task("t1"))
        w.unacked["t2.1.json"] = ("t2", 1)
        self.assertEqual(w.claim_step(), 0.0)
        self.assertEqual(self.link.calls, [("/v1/claim", {"node": "w1", "max": 1, "wait": 25})])
        self.assertEqual(sorted(w.jobs), ["t1", "t5"])
        self.assertEqual(len(self.spawned), 1)
        self.link.calls.clear()
        self.assertEqual(w.claim_step(), 5)       # no free slot: no request at all
        self.assertEqual(self.link.calls, [])

    def test_claim_outcomes(self):
        cases = [
            ("not registered yet", None, False, 0.5, []),
            ("long-poll ran out empty", lambda: (self.clock.advance(25), {"tasks": [], "epoch": 1})[1], True, 0.0,
             ["/v1/claim"]),
            ("network failure backs off", ClientError("down"), True, 0.5, ["/v1/claim"]),
            ("breaker open waits", BreakerOpen(30.0), True, 30.0, ["/v1/claim"]),
            ("unknown node re-registers", api(409, "unknown_node"), True, 0.0, ["/v1/claim"]),
        ]
        for name, answer, registered, delay, paths in cases:
            with self.subTest(name):
                w = self.worker({"/v1/claim": [answer]})
                if registered:
                    w.registered.set()
                got = w.claim_step()
                self.assertEqual(got, delay)
                self.assertEqual(self.link.paths(), paths)
                if name.startswith("unknown"):
                    self.assertFalse(w.registered.is_set())
                    self.assertEqual(w.next_heartbeat, 0.0)

    def test_an_early_empty_answer_does_not_spin_and_an_unhealthy_link_does_not_long_poll(self):
        w = self.worker({"/v1/claim": [{"tasks": [], "epoch": 1}]})
        w.registered.set()
        self.assertEqual(w.claim_step(), 5)      # answered at once with nothing
        self.link.healthy = False
        w.claim_step()
        self.assertEqual(self.link.calls[-1][1]["wait"], 0)

    def test_stopping_ends_claiming(self):
        w = self.worker()
        w.stop()
        self.assertIsNone(w.claim_step())


class Execution(WorkerCase):
    def test_a_kind_not_allowed_fails_at_once_without_starting(self):
        w = self.worker()
        job = w.jobs["t1"] = Job(self.task("t1", kind="rm-rf", fence=3))
        w.execute(job)
        self.assertEqual(self.link.calls, [])
        [(name, body)] = self.outbox.pending()
        self.assertEqual((body["outcome"], body["ended_by"], body["error"], body["fence"]),
                         ("failed", "error", "kind not allowed: rm-rf", 3))
        self.assertEqual(w.jobs, {})
        self.assertIn(name, w.unacked)

    def test_a_refused_start_runs_nothing_and_reports_nothing(self):
        for err in (api(409, "stale_fence"), api(404, "not_found")):
            with self.subTest(code=err.code):
                w = self.worker({"/v1/tasks/t1/start": [err]})
                job = w.jobs["t1"] = Job(self.task("t1"))
                w.execute(job)
                self.assertEqual(self.link.paths(), ["/v1/tasks/t1/start"])
                self.assertEqual((self.outbox.pending(), w.jobs), ([], {}))

    def test_start_is_retried_then_given_up(self):
        w = self.worker({"/v1/tasks/t1/start": [ClientError("down")]})
        job = w.jobs["t1"] = Job(self.task("t1"))
        w.execute(job)
        self.assertGreater(len(self.link.calls), 3)
        self.assertEqual((self.outbox.pending(), w.jobs), ([], {}))
        self.assertLessEqual(sum(self.clock.slept), 30)

    def test_a_full_disk_is_retried_then_the_slot_is_freed(self):
        # the supervisor is not answering either: the direct send (test_worker_diskfull) fails too
        w = self.worker({"/v1/results": [ClientError("down")]})
        calls = []

        def put(body):
            calls.append(body["task"])
            if len(calls) < 3:
                raise OSError(28, "No space left on device")
            return "t1.1.json"

        w.outbox = type("FullDisk", (), {"put": staticmethod(put)})()
        job = w.jobs["t1"] = Job(self.task("t1", kind="nope"))
        w.execute(job)
        self.assertEqual((calls, w.unacked, w.jobs), (["t1"] * 3, {"t1.1.json": ("t1", 1)}, {}))
        calls.clear()
        w.outbox = type("DeadDisk", (), {"put": staticmethod(lambda body: (_ for _ in ()).throw(OSError(5, "EIO")))})()
        job = w.jobs["t2"] = Job(self.task("t2", kind="nope"))
        w.execute(job)
        self.assertEqual(w.jobs, {})                 # given up after STORE_RETRY_FOR: the slot is free again
        self.assertIn("result_lost", self.logs.getvalue())

    def test_a_fenced_result_is_dropped(self):
        w = self.worker()
        job = w.jobs["t1"] = Job(self.task("t1"), stop="fenced")
        w._finish(job, results.refusal(job.task, "w1", "cancel", "cancelled", 0))
        self.assertEqual(self.outbox.pending(), [])


def fin(ended_by="exit", code=0, sig=None, out="o", err="e", error=None):
    return Finished(ended_by, code, sig, out, err, 10.0, 12.0, error)


class ResultsTable(unittest.TestCase):
    def test_build_result(self):
        task = {"id": "t1", "fence": 2}
        cases = [
            ("exit 0", fin(), None, None, None, ("succeeded", None)),
            ("exit 3", fin(code=3), None, None, None, ("failed", "exit code 3")),
            ("timeout", fin("timeout", None, 9), None, None, None, ("failed", "timed out after 2.5 s")),
            ("cancel", fin("cancel", None, 15), None, None, None, ("failed", "cancelled")),
            ("own signal", fin("signal", None, 11), None, None, False, ("failed", "killed by signal 11")),
            # the worker stopped it for its own shutdown: said by ended_by "shutdown" (wire.SHUTDOWN)
            ("worker stop", fin("signal", None, 15), None, None, True, ("failed", "the worker is shutting down")),
            ("worker stop, exited first", fin(), None, None, True, ("succeeded", None)),
            ("worker stop, timed out first", fin("timeout", None, 9), None, None, True,
             ("failed", "timed out after 2.5 s")),
            ("spawn error", fin("error", None, error="cannot start x: No such file"), None, None, None,
             ("failed", "cannot start x: No such file")),
            ("bad result.json", fin(), "result.json invalid: not JSON", None, None, ("failed", "result.json invalid: not JSON")),
            ("artifact", fin(), None, "artifact missing", None, ("failed", "artifact missing")),
            ("exit code wins over artifact", fin(code=1), None, "artifact missing", None, ("failed", "exit code 1")),
        ]
        for name, f, rerr, aerr, stop, expected in cases:
            with self.subTest(name):
                b = results.build_result(task, "w1", f, 2.5, {"r": 1}, rerr, aerr, bool(stop))
                self.assertEqual((b["outcome"], b["error"]), expected)
                ended_by = "shutdown" if stop and f.ended_by == "signal" else f.ended_by
                self.assertEqual((b["task"], b["fence"], b["node"], b["ended_by"]), ("t1", 2, "w1", ended_by))
                self.assertEqual((b["started_at"], b["finished_at"], b["result"]), (10.0, 12.0, {"r": 1}))

    def test_tails_fit_the_wire(self):
        b = results.build_result({"id": "t1", "fence": 1}, "w1", fin(out="x" * 70000), None, None, None, None)
        self.assertEqual(len(b["stdout_tail"]), results.MAX_TAIL_CHARS)

    def test_classify(self):
        body, refused = {"error": None}, {"error": results.REFUSED + ": too big"}
        cases = [
            (None, body, "ack"), (api(409, "stale_fence"), body, "drop"), (api(409, "invalid_transition"), body, "drop"),
            (api(404, "not_found"), body, "drop"), (api(409, "not_active"), body, "retry"),
            (api(500, "store_error"), body, "retry"), (api(503, "unavailable"), body, "retry"),
            (api(401, "unauthorized"), body, "retry"), (ClientError("refused"), body, "retry"),
            (api(400, "bad_request"), body, "rewrite"), (api(413, "too_large"), body, "rewrite"),
            (api(400, "bad_request"), refused, "drop"),
        ]
        for err, b, expected in cases:
            with self.subTest(err=getattr(err, "code", None), refused=b is refused):
                self.assertEqual(results.classify(err, b), expected)


class Sending(WorkerCase):
    def put(self, w, tid, fence=1, at=1.0):
        name = self.outbox.put({"task": tid, "fence": fence, "node": "w1", "outcome": "succeeded",
                                "stdout_tail": "x" * 5000, "stderr_tail": "", "finished_at": at, "error": None})
        w.unacked[name] = (tid, fence)
        return name

    def test_answers_decide_what_stays(self):
        w = self.worker({"/v1/results": [{"ok": True, "state": "succeeded", "duplicate": False},
                                         api(409, "stale_fence"), api(401, "unauthorized"), {"ok": True}]})
        for i in range(1, 5):
            self.put(w, f"t{i}", at=i)
        delay = w.sender.step()
        self.assertEqual([n for n, _ in self.outbox.pending()], ["t3.1.json"])   # 401: kept for a retry
        self.assertEqual(sorted(w.unacked), ["t3.1.json"])
        self.assertEqual(delay, 0.5)     # full jitter of the first retry: 1 s * 0.5
        self.assertEqual(w.sender.step(), 0.5)      # not due yet: nothing sent
        self.assertEqual(len(self.link.calls), 4)
        self.clock.advance(1)
        w.sender.step()
        self.assertEqual(self.outbox.pending(), [])

    def test_a_network_failure_ends_the_round_and_backs_off(self):
        w = self.worker({"/v1/results": [ClientError("down")]})
        for i in range(1, 4):
            self.put(w, f"t{i}", at=i)
        w.sender.step()
        self.assertEqual(len(self.link.calls), 1)
        self.assertEqual(len(self.outbox.pending()), 3)
        delays = []
        for _ in range(6):
            self.clock.advance(1000)
            w.sender.step()
            delays.append(w.sender.tries["t1.1.json"][1] - self.clock.monotonic())
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0])   # 0.5 x ceiling: doubling up to the cap

    def test_an_open_breaker_sends_nothing_and_waits(self):
        w = self.worker({"/v1/results": [BreakerOpen(99.0)]})
        self.put(w, "t1")
        self.link.healthy = False
        self.assertEqual(w.sender.step(), 7.0)        # the link's retry_in
        self.assertEqual(len(self.outbox.pending()), 1)

    def test_a_refused_body_is_rewritten_once_as_a_failure(self):
        w = self.worker({"/v1/results": [api(413, "too_large"), {"ok": True, "state": "failed"}]})
        self.put(w, "t1")
        w.sender.step()
        [(_, body)] = self.outbox.pending()
        self.assertEqual((body["outcome"], body["ended_by"]), ("failed", "error"))
        self.assertTrue(body["error"].startswith(results.REFUSED))
        self.assertEqual(len(body["stdout_tail"]), 1000)
        w.sender.step()
        self.assertEqual(self.outbox.pending(), [])


class FakeClient:
    def __init__(self, url, answers):
        self.url, self.answers, self.calls = url, answers, 0
        self.headers = {}

    def call(self, method, path, body=None, timeout=None):
        self.calls += 1
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return a


class LinkTest(unittest.TestCase):
    def test_failover_sticks_to_the_one_that_answers(self):
        a = FakeClient("http://a", [ClientError("down")])
        b = FakeClient("http://b", [{"epoch": 2}])
        link = Link([a, b], Breaker(3, 300), FakeClock())
        self.assertEqual(link.call("POST", "/x"), {"epoch": 2})
        self.assertEqual((link.url, a.calls, b.calls), ("http://b", 1, 1))
        link.call("POST", "/x")
        self.assertEqual((a.calls, b.calls), (1, 2))

    def test_a_standby_is_skipped(self):
        a = FakeClient("http://a", [api(409, "not_active")])
        b = FakeClient("http://b", [{"epoch": 5}])
        link = Link([a, b], Breaker(3, 300), FakeClock())
        link.epoch = 3
        self.assertEqual(link.call("POST", "/x"), {"epoch": 5})
        self.assertEqual(link.url, "http://b")

    def test_an_older_epoch_counts_when_the_request_told_it_ours(self):
        """The supervisor got our highest epoch (the header) and still answered: it judged that
        claim (tests/test_epoch_claims.py), so the answer is used. A client that sends no
        header still passes such an answer over."""
        for headers, want in ((True, "http://a"), (False, "http://b")):
            with self.subTest(headers=headers):
                a = FakeClient("http://a", [{"epoch": 1}])
                b = FakeClient("http://b", [{"epoch": 5}])
                if not headers:
                    del a.headers
                link = Link([a, b], Breaker(3, 300), FakeClock())
                link.epoch = 3
                link.call("POST", "/x")
                self.assertEqual(link.url, want)

    def test_an_error_answer_is_an_answer(self):
        a = FakeClient("http://a", [api(400, "bad_request")])
        b = FakeClient("http://b", [{"epoch": 1}])
        link = Link([a, b], Breaker(3, 300), FakeClock())
        with self.assertRaises(ApiError):
            link.call("POST", "/x")
        self.assertEqual((b.calls, link.breaker.failures), (0, 0))

    def tripped(self, clock):
        """A link to one supervisor that is down, after the 3 failures that open its breaker."""
        a = FakeClient("http://a", [ClientError("down")])
        link = Link([a], Breaker(3, 300), clock)
        for _ in range(3):
            with self.assertRaises(ClientError):
                link.call("POST", "/x")
        return a, link

    def test_breaker_stops_hammering_then_one_probe(self):
        clock = FakeClock()
        a, link = self.tripped(clock)
        for _ in range(5):
            with self.assertRaises(BreakerOpen):
                link.call("POST", "/x")
        self.assertEqual(a.calls, 3)
        self.assertFalse(link.healthy)
        self.assertEqual(link.retry_in(), 300)
        clock.advance(300)
        a.answers = [{"epoch": 1}]
        self.assertEqual(link.call("POST", "/x"), {"epoch": 1})
        self.assertTrue(link.healthy)
        self.assertEqual(a.calls, 4)


    def test_a_probe_goes_through_an_open_breaker(self):
        clock = FakeClock()
        a, link = self.tripped(clock)
        clock.advance(5)
        with self.assertRaises(ClientError):
            link.call("POST", "/x", probe=True)         # sent (the 4th call), failed: open again
        self.assertEqual((a.calls, link.retry_in()), (4, 300))
        a.answers = [{"epoch": 1}]
        self.assertEqual(link.call("POST", "/x", probe=True), {"epoch": 1})
        self.assertTrue(link.healthy)


class Probing(WorkerCase):
    def test_heartbeats_probe_and_retry_within_poll_interval_until_registered_or_the_breaker_closes(self):
        w = self.worker({"/v1/heartbeat": [ClientError("refused")]}, retry_cap=60)
        for _ in range(8):                  # the backoff alone would grow towards retry_cap (60 s)
            w.heartbeat()
            self.assertLessEqual(w.next_heartbeat - self.clock.monotonic(), 5)
        self.assertTrue(all(w.link.probes))
        w.link.script = {"/v1/heartbeat": [{"ok": True, "epoch": 1}]}
        w.heartbeat()
        self.assertTrue(w.registered.is_set())
        w.link.script = {"/v1/heartbeat": [ClientError("refused")]}
        for _ in range(8):
            w.heartbeat()                   # registered, breaker closed: the usual backoff, up to 60 s
        self.assertEqual(w.next_heartbeat - self.clock.monotonic(), 30)
        w.link.healthy = False
        w.heartbeat()                       # the breaker is open: look again within poll_interval
        self.assertEqual(w.next_heartbeat - self.clock.monotonic(), 5)
        self.assertTrue(all(w.link.probes))


class Stopping(WorkerCase):
    def test_drain_waits_for_running_tasks_then_flushes(self):
        w = self.worker({"/v1/heartbeat": [{"ok": True, "epoch": 1}], "/v1/results": [{"ok": True}]},
                        drain_timeout=60)
        job = w.jobs["t1"] = Job(self.task(), run=FakeRun())
        w.stop()
        self.assertIsNotNone(w.step())
        self.assertEqual(job.run.cancelled, [])
        self.clock.advance(61)
        self.assertEqual(w.step(), 0.05)                   # drain timeout: running tasks are stopped
        self.assertEqual(job.run.cancelled, ["signal"])
        w._finish(job, results.refusal(job.task, "w1", "signal", "the worker is shutting down", 0))
        self.assertIsNone(w.step())                        # nothing runs: flushed, may exit
        self.assertEqual(self.outbox.pending(), [])

    def test_abort_cancels_at_once(self):
        w = self.worker({"/v1/results": [ClientError("down")]})
        job = w.jobs["t1"] = Job(self.task(), run=FakeRun())
        w.abort(2)
        self.assertEqual(w.step(), 0.05)
        self.assertEqual(job.run.cancelled, ["signal"])
        self.clock.advance(100)
        self.assertIsNone(w.step())                        # past the grace: exit even if a task hangs


class SettingsTest(unittest.TestCase):
    def test_from_config(self):
        cfg = parse_config('[worker]\nsupervisor = ["http://a:1", "http://b:2"]\nslots = 2\n'
                           '[worker.kinds.echo]\nargv = ["cat"]\ntimeout = 5\n', "/etc/m/meshkit.toml")
        s = settings_from(cfg, "box.example.org")
        self.assertEqual((s.name, s.supervisors, s.slots, s.work_dir), ("box", ("http://a:1", "http://b:2"), 2, "/etc/m/work"))
        self.assertEqual((s.poll_wait, s.poll_interval, s.breaker_failures, s.breaker_cooldown), (25, 5, 3, 300))
        self.assertEqual(list(s.kinds), ["echo"])
        bad = [('[worker]\nname = "no spaces"\n', "worker.name"),
               ('[worker.kinds."a b"]\nargv = ["x"]\n', "worker.kinds.a b"),
               ('[worker]\ncapabilities = ["ok", "not ok"]\n', "worker.capabilities")]
        for text, key in bad:
            with self.subTest(key=key):
                with self.assertRaises(ConfigError) as cm:
                    settings_from(parse_config(text, "f.toml"), "h")
                self.assertEqual(cm.exception.details["key"], key)

    def test_effective_timeout(self):
        cases = [(30, None, 30.0), (30, 10, 10.0), (5, 10, 5.0), (None, 10, 10.0), (None, None, None), (0, None, None)]
        for task_t, kind_t, expected in cases:
            with self.subTest(task=task_t, kind=kind_t):
                self.assertEqual(effective_timeout(task_t, Kind("k", ("x",), kind_t, {})), expected)


if __name__ == "__main__":
    unittest.main()
