"""Log lines an operator follows a task by, and how loud they are.

- Every worker line about one task carries its task id and trace id (README: `grep TRACE_ID`
  shows one task's journey): the cancel (task_stopping), every delivery answer
  (result_delivered, result_retry, result_refused, result_dropped), the full-disk paths
  (outbox_write_failed, result_sent_directly, result_lost), task_not_started,
  task_not_prepared, task_error. The outbox entry keeps the trace id; it is never sent (the
  wire's result has no such field), and an entry from before it is still delivered.
- heartbeat_failed during an outage: the first at once, then at most one per HB_LOG_EVERY
  (60 s) carrying the failures since the last line; the heartbeat that works again logs
  `registered` with the failures of the whole outage. breaker_open says both how long claims
  wait (claims_retry_in) and how often the heartbeat probes (probe_every).
- Through real processes: a task cancelled while it runs on a real worker: each supervisor and
  worker line about it carries its trace id; a task failing for good is a warning with its
  error and attempt, the attempt before it one task_retry line (info) saying when it is
  claimable again.

Units with the fake link and clock of test_worker_units; the rest with real processes."""

import json
import os
import unittest

from tests.test_supervisor_logs import log_lines
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, wait_for, wait_state, worker_fleet
from tests.test_worker_units import FakeClient, FakeRun, WorkerCase, api, settings

from meshkit.adapters.log import Logger
from meshkit.core import wire
from meshkit.core.errors import ClientError
from meshkit.roles.worker import results
from meshkit.roles.worker.jobs import Job
from meshkit.roles.worker.link import Link
from meshkit.roles.worker.worker import HB_LOG_EVERY, Worker
from meshkit.rules.breaker import Breaker

# What a worker logs about one task (each path below produces it at least once).
WORKER_TASK_EVENTS = {"task_claimed", "task_stopping", "task_finished", "result_delivered", "result_retry",
                      "result_refused", "result_dropped", "result_sent_directly", "result_lost",
                      "outbox_write_failed", "task_not_started", "task_not_prepared", "task_error"}


class LogCase(WorkerCase):
    def lines(self) -> list:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]

    def traced(self, tid, **kw):
        return self.task(tid, trace_id=f"trace-{tid}", **kw)

    def entry(self, w, tid, fence=1, at=1.0):
        """A result of task `tid` in the outbox, as the worker stores one."""
        body = results.refusal(self.traced(tid, fence=fence), "w1", "error", "boom", at)
        name = w.outbox.put(body)
        w.unacked[name] = (tid, fence)
        return name


class WorkerLinesCarryTheTraceId(LogCase):
    def test_every_worker_line_about_a_task_carries_its_trace_id(self):
        w = self.worker({"/v1/heartbeat": [{"ok": True, "epoch": 1, "cancel": ["t1"]}]})
        w.launch(self.traced("t1"))                           # task_claimed
        w.jobs["t1"].run = FakeRun()
        w.heartbeat()                                         # task_stopping (the cancel)
        w._finish(Job(self.traced("t2"), stop="fenced"), None)             # result_dropped (fenced)
        w.jobs["t13"] = job = Job(self.traced("t13"))
        w._finish(job, results.refusal(job.task, "w1", "error", "x", 0))  # task_finished
        deliveries = [("t3", {"ok": True, "state": "failed"}), ("t4", api(409, "stale_fence")),
                      ("t5", api(413, "too_large")), ("t6", api(503, "unavailable"))]
        for tid, answer in deliveries:        # result_delivered, result_dropped, result_refused, result_retry
            self.entry(w, tid)
            w.link.script = {"/v1/results": [answer]}
            w.sender.step(force=True)
            w.outbox.remove(f"{tid}.1.json")
        w.outbox = type("FullDisk", (), {"put": staticmethod(lambda body: (_ for _ in ()).throw(
            OSError(28, "No space left on device")))})()
        w.link.script = {"/v1/results": [{"ok": True}]}
        w._store(results.refusal(self.traced("t7"), "w1", "error", "x", 0))   # result_sent_directly
        w.link.script = {"/v1/results": [ClientError("down")]}
        w._store(results.refusal(self.traced("t8"), "w1", "error", "x", 0))   # outbox_write_failed, result_lost
        w.link.script = {"/v1/tasks/t9/start": [api(409, "stale_fence")], "/v1/tasks/t10/start": [ClientError("down")]}
        for tid in ("t9", "t10"):                                             # task_not_started: refused, given up
            self.assertFalse(w._start_call(Job(self.traced(tid))))
        w.outbox = self.outbox
        tasks_dir, w.tasks_dir = w.tasks_dir, os.path.join(self.dir, "a-file")
        open(w.tasks_dir, "w").close()
        w.jobs["t11"] = job = Job(self.traced("t11"))
        w.execute(job)                                                        # task_not_prepared
        w.tasks_dir = tasks_dir
        w._attempt = lambda job: 1 / 0
        w.jobs["t12"] = job = Job(self.traced("t12"))
        w.execute(job)                                                        # task_error

        about = [r for r in self.lines() if "task" in r]
        self.assertEqual(WORKER_TASK_EVENTS - {r["event"] for r in about}, set())
        for r in about:
            with self.subTest(event=r["event"], task=r["task"]):
                self.assertEqual(r.get("trace_id"), f"trace-{r['task']}", r)
        for path, body in w.link.calls:
            if path == "/v1/results":            # the trace id stays in the outbox: the wire has no such field
                self.assertNotIn("trace_id", body)
                wire.validate(body, wire.RESULT, "result")
        # an outbox entry from before the trace id (a worker upgraded with results pending) is delivered
        w.link.script = {"/v1/results": [{"ok": True, "state": "succeeded"}]}
        name = w.outbox.put({"task": "t20", "fence": 2, "node": "w1", "outcome": "succeeded", "finished_at": 1.0})
        w.unacked = {name: ("t20", 2)}
        w.sender.step(force=True)
        self.assertEqual((w.outbox.pending(), w.unacked), ([], {}))
        [line] = [r for r in self.lines() if r["event"] == "result_delivered" and r["task"] == "t20"]
        self.assertEqual((line["fence"], line.get("trace_id")), (2, None))


class HeartbeatOutage(LogCase):
    def test_heartbeat_failed_is_rate_limited_and_the_recovery_says_how_many_failed(self):
        ok, down = {"ok": True, "epoch": 1}, ClientError("connection refused")
        # (seconds since the previous heartbeat, its answer, the line it logs: (event, failures) or None)
        table = [(0, ok, ("registered", None))]
        table += [(0, down, ("heartbeat_failed", 1))]                      # the first failure: at once
        table += [(5, down, None)] * 11                                    # t=5..55: counted, not logged
        table += [(5, down, ("heartbeat_failed", 12))]                     # t=60: 11 left out + this one
        table += [(5, down, None)] * 11 + [(5, down, ("heartbeat_failed", 12))]   # t=120
        table += [(5, down, None), (5, ok, ("registered", 26))]          # back: the whole outage's count
        table += [(5, down, ("heartbeat_failed", 1))]                      # the next outage: at once again
        table += [(HB_LOG_EVERY - 1, down, None), (1, down, ("heartbeat_failed", 2))]
        w = self.worker()
        for i, (advance, answer, want) in enumerate(table):
            self.clock.advance(advance)
            w.link.script = {"/v1/heartbeat": [answer]}
            before = len(self.lines())
            w.heartbeat()
            got = [(r["event"], r.get("failures")) for r in self.lines()[before:]
                   if r["event"] in ("heartbeat_failed", "registered")]
            self.assertEqual(got, [want] if want else [], f"step {i}")
        self.assertEqual({r["level"] for r in self.lines() if r["event"] == "heartbeat_failed"}, {"warning"})

    def test_breaker_open_says_how_long_claims_wait_and_how_often_the_heartbeat_probes(self):
        link = Link([FakeClient("http://a", [ClientError("down")])], Breaker(3, 300), self.clock,
                    Logger("worker", "w1", stream=self.logs, clock=self.clock))
        Worker(settings(work_dir=self.dir, poll_interval=5, heartbeat_interval=60), link, None, self.clock,
               Logger("worker", "w1", stream=self.logs, clock=self.clock))
        for _ in range(3):
            with self.assertRaises(ClientError):
                link.call("POST", "/v1/claim")
        [line] = [r for r in self.lines() if r["event"] == "breaker_open"]
        self.assertEqual((line["claims_retry_in"], line["probe_every"]), (300, 5))
        self.assertNotIn("retry_in", line)


class RealProcesses(unittest.TestCase):
    def setUp(self):
        self.fleet = worker_fleet()
        self.addCleanup(close_fleet, self.fleet)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")
        self.addCleanup(self.admin.close)
        self.worker = WorkerProc(self.fleet, "w1").start()

    def supervisor_lines(self, tid) -> list:
        return [r for r in log_lines(self.fleet) if r.get("task") == tid]

    def test_a_task_cancelled_while_running_carries_its_trace_id_on_every_line(self):
        trace = "journey-0c4f.17"
        tid = dispatch(self.admin, "slow", {"sleep": 30}, trace_id=trace)
        wait_state(self.admin, tid, "running")
        self.admin.call("POST", f"/v1/tasks/{tid}/cancel", {"reason": "operator test"})
        self.assertEqual(wait_state(self.admin, tid, ("cancelled", "failed", "succeeded"))["state"], "cancelled")
        wait_for(lambda: [r for r in self.worker.events("result_delivered") if r["task"] == tid], 10,
                 "the cancelled attempt's result delivered")
        worker = [r for r in self.worker.events() if r.get("task") == tid]
        supervisor = wait_for(lambda: (lambda got: got if any(r["event"] == "task_result" for r in got) else None)(
            self.supervisor_lines(tid)), 5, "the supervisor's task_result line")
        self.assertLessEqual({"task_claimed", "task_started", "task_stopping", "task_finished", "result_delivered"},
                             {r["event"] for r in worker}, worker)
        self.assertLessEqual({"task_dispatched", "task_leased", "task_cancel_requested", "task_result"},
                             {r["event"] for r in supervisor}, supervisor)
        for r in worker + supervisor:
            with self.subTest(role=r["role"], event=r["event"]):
                self.assertEqual(r.get("trace_id"), trace, r)

    def test_a_task_failing_for_good_is_a_warning_with_its_error_and_its_retry_one_info_line(self):
        tid = dispatch(self.admin, "fail", max_attempts=2, trace_id="fails-twice")
        self.assertEqual(wait_state(self.admin, tid, ("failed", "succeeded"))["state"], "failed")
        lines = wait_for(lambda: (lambda got: got if any(r["event"] == "task_result" for r in got) else None)(
            self.supervisor_lines(tid)), 5, "the supervisor's task_result line")
        results_lines = [r for r in lines if r["event"] in ("task_result", "task_retry")]
        self.assertEqual([(r["event"], r["level"], r["attempt"], r.get("state")) for r in results_lines],
                         [("task_retry", "info", 1, None), ("task_result", "warning", 2, "failed")], lines)
        retry, end = results_lines
        self.assertEqual((retry["error"], retry["max_attempts"], retry["ended_by"]), ("exit code 3", 2, "exit"))
        self.assertAlmostEqual(retry["not_before"] - retry["backoff"], retry["time"], delta=1.0)
        self.assertEqual((end["error"], end["trace_id"]), ("exit code 3", "fails-twice"))
        warned = [r["event"] for r in lines if r["level"] in ("warning", "error")]
        self.assertEqual(warned, ["task_result"])             # filtering on warning+ shows the cause


if __name__ == "__main__":
    unittest.main()
