"""How a running task ended from outside is recorded.

A task ended because its own worker shut down (a second SIGTERM/Ctrl-C, or drain_timeout
passed: ended_by "shutdown", error "the worker is shutting down"; a worker from before that
marker sent ended_by "signal" with that exact text, still accepted) is not its kind's fault:
it may use up an attempt (retried like any failure), but it neither counts toward the kind's
quarantine nor resets it.

A running task cancelled with a reason (`meshkit cancel ID --reason TEXT`) keeps the reason
in its history: in the cancel request's row and in the row that ends the task."""

import signal
import unittest

from tests.helpers import register
from tests.test_worker_harness import WorkerProc, close_fleet, dispatch, get_task, wait_state, worker_fleet

from meshkit.core import wire
from meshkit.core.errors import ApiError
from meshkit.roles.supervisor import openapi
from meshkit.roles.worker import results
from meshkit.rules import fsm
from meshkit.rules.policy import NO_KIND_POLICY, WORKER_SHUTDOWN, KindPolicy, kind_verdict, stopped_by_worker


class KindVerdict(unittest.TestCase):
    def test_table(self):
        codes = KindPolicy(transient_exit_codes=(75,))
        cases = [
            # outcome, ended_by, exit_code, output, error, policy, verdict
            ("succeeded", "exit", 0, "", None, NO_KIND_POLICY, "reset"),
            ("failed", "exit", 3, "", "exit code 3", NO_KIND_POLICY, "count"),
            ("failed", "shutdown", None, "", WORKER_SHUTDOWN, NO_KIND_POLICY, None),   # its worker stopped
            ("failed", "shutdown", None, "", None, NO_KIND_POLICY, None),              # the marker alone says it
            ("failed", "shutdown", None, "", "exit code 3", NO_KIND_POLICY, None),
            ("failed", "signal", None, "", WORKER_SHUTDOWN, NO_KIND_POLICY, None),     # an older worker's form
            ("failed", "signal", None, "", "killed by signal 9", NO_KIND_POLICY, "count"),  # OOM, segfault...
            ("failed", "exit", 3, "", WORKER_SHUTDOWN, NO_KIND_POLICY, "count"),       # only with ended_by signal
            ("failed", "error", None, "", WORKER_SHUTDOWN, NO_KIND_POLICY, "count"),
            ("failed", "signal", None, "", "the worker is shutting down!", NO_KIND_POLICY, "count"),  # exact text
            ("failed", "timeout", None, "", "timed out after 5 s", NO_KIND_POLICY, None),   # transient
            ("failed", "exit", 75, "", "exit code 75", codes, None),
            ("failed", "exit", 1, "HTTP 429", "exit code 1", NO_KIND_POLICY, None),
            ("failed", "error", None, "", "kind not allowed: x", NO_KIND_POLICY, "count"),
        ]
        for outcome, ended_by, code, output, error, policy, want in cases:
            with self.subTest(outcome=outcome, ended_by=ended_by, error=error):
                self.assertEqual(kind_verdict(outcome, ended_by, code, output, error, policy), want)

    def test_stopped_by_worker(self):
        for ended_by, error in (("shutdown", WORKER_SHUTDOWN), ("shutdown", None), ("shutdown", ""),
                                ("signal", "the worker is shutting down")):
            self.assertTrue(stopped_by_worker(ended_by, error), (ended_by, error))
        for ended_by, error in (("signal", None), ("signal", "killed by signal 15"), ("cancel", WORKER_SHUTDOWN),
                                ("exit", WORKER_SHUTDOWN), ("Shutdown", None), ("error", "shutdown")):
            self.assertFalse(stopped_by_worker(ended_by, error), (ended_by, error))

    def test_the_marker_is_on_the_wire(self):
        self.assertIn("shutdown", wire.ENDED_BY)
        self.assertEqual(wire.SHUTDOWN, "shutdown")
        enum = openapi.components()["schemas"]["RESULT"]["properties"]["ended_by"]["enum"]
        self.assertEqual(enum, list(wire.ENDED_BY))

    def test_after_result_retries_it_like_any_failure(self):
        # (outcome, ended_by, attempts, max_attempts, cancel requested) -> next state
        cases = [
            ("failed", "shutdown", 1, 3, False, "queued"),
            ("failed", "shutdown", 3, 3, False, "failed"),
            ("failed", "shutdown", 1, 3, True, "cancelled"),
            ("failed", "signal", 1, 3, False, "queued"),          # as before
            ("failed", "signal", 3, 3, False, "failed"),
        ]
        for outcome, ended_by, attempts, most, cancel, want in cases:
            with self.subTest(ended_by=ended_by, attempts=attempts, cancel=cancel):
                to, reason = fsm.after_result(outcome, ended_by, attempts, most, cancel)
                self.assertEqual(to, want, reason)

    def test_an_older_supervisor_gets_the_older_form(self):
        # A supervisor from before "shutdown" refuses it (400 on field ended_by): the worker
        # resends the same result as ended_by "signal" + WORKER_SHUTDOWN, which it accepts.
        body = {"task": "t1", "fence": 2, "node": "w1", "outcome": "failed", "ended_by": "shutdown",
                "error": WORKER_SHUTDOWN, "stdout_tail": "", "stderr_tail": ""}
        old = ApiError(400, "bad_request", "result: field 'ended_by' must be one of exit, timeout, cancel, "
                       "signal, error (HTTP 400)", field="ended_by")
        self.assertEqual(results.classify(old, body), "rewrite")
        again = results.rewritten(body, old)
        self.assertEqual((again["ended_by"], again["error"], again["outcome"]), ("signal", WORKER_SHUTDOWN, "failed"))
        self.assertTrue(stopped_by_worker(again["ended_by"], again["error"]))
        other = ApiError(400, "bad_request", "result: field 'error' must be a string or null", field="error")
        self.assertEqual(results.rewritten(body, other)["ended_by"], "error")     # any other refusal: as before


class ShutdownsDoNotQuarantine(unittest.TestCase):
    """Real processes: three workers in a row stopped hard while running a healthy kind."""

    def setUp(self):
        self.fleet = worker_fleet(tasks__quarantine_after=3)
        self.addCleanup(close_fleet, self.fleet)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")

    def kind(self, name) -> dict:
        found = [k for k in self.admin.call("GET", "/v1/kinds")["kinds"] if k["kind"] == name]
        return found[0] if found else {"kind": name, "failures_in_a_row": 0, "quarantined": False}

    def test_three_hard_stops_in_a_row_leave_the_kind_running(self):
        for i in range(3):
            w = WorkerProc(self.fleet, f"stop{i}").start()
            tid = dispatch(self.admin, "slow", {"sleep": 30}, max_attempts=1)
            wait_state(self.admin, tid, "running")
            w.signal(signal.SIGTERM)
            w.wait_event("worker_draining")
            w.signal(signal.SIGTERM)
            self.assertEqual(w.wait(15), 128 + signal.SIGTERM)
            task = wait_state(self.admin, tid, "failed")
            self.assertEqual((task["result"]["ended_by"], task["result"]["error"]), ("shutdown", WORKER_SHUTDOWN))
            kind = self.kind("slow")
            self.assertFalse(kind["quarantined"], kind)
            self.assertEqual(kind["failures_in_a_row"], 0, kind)
        # The kind still runs: a new task is claimed and succeeds.
        WorkerProc(self.fleet, "after").start()
        tid = dispatch(self.admin, "slow", {"sleep": 0.1})
        self.assertEqual(wait_state(self.admin, tid, ("succeeded", "failed"))["state"], "succeeded")

    def test_real_failures_still_quarantine(self):
        WorkerProc(self.fleet, "failing").start()
        for _ in range(3):
            tid = dispatch(self.admin, "fail", {}, max_attempts=1)
            wait_state(self.admin, tid, "failed")
        kind = self.kind("fail")
        self.assertTrue(kind["quarantined"], kind)
        self.assertIn("3 failures in a row, last: exit code 3", kind["reason"])


class RunningCancelReason(unittest.TestCase):
    """Real processes: `meshkit cancel ID --reason TEXT` of a running task."""

    def setUp(self):
        self.fleet = worker_fleet()
        self.addCleanup(close_fleet, self.fleet)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")

    def cancel_running(self, *reason) -> dict:
        tid = dispatch(self.admin, "slow", {"sleep": 30})
        wait_state(self.admin, tid, "running")
        done = self.fleet.cli("cancel", tid, *reason)
        self.assertEqual(done.returncode, 0, done.stderr)
        return wait_state(self.admin, tid, "cancelled")

    def test_the_reason_is_in_the_running_tasks_history(self):
        WorkerProc(self.fleet, "w1").start()
        task = self.cancel_running("--reason", "wrong input file")
        reasons = [h["reason"] for h in task["history"]]
        self.assertIn("cancel requested by admin-1: wrong input file", reasons)
        self.assertEqual(reasons[-1], "cancelled while running: wrong input file")
        # without a reason, as before
        task = self.cancel_running()
        reasons = [h["reason"] for h in task["history"]]
        self.assertIn("cancel requested by admin-1", reasons)
        self.assertEqual(reasons[-1], "cancelled while running: cancelled")

    def test_the_reason_is_kept_when_the_lease_is_lost(self):
        worker = self.fleet.client("worker")
        register(worker, "ghost", kinds=["slow"])
        tid = dispatch(self.admin, "slow", {})
        got = worker.call("POST", "/v1/claim", {"node": "ghost", "wait": 5})["tasks"]
        self.assertEqual([t["id"] for t in got], [tid])
        worker.call("POST", f"/v1/tasks/{tid}/start", {"node": "ghost", "fence": got[0]["fence"]})
        self.admin.call("POST", f"/v1/tasks/{tid}/cancel", {"reason": "not needed: superseded"})
        task = wait_state(self.admin, tid, "cancelled", timeout=15)      # the node goes stale (2 s)
        last = task["history"][-1]["reason"]
        self.assertTrue(last.startswith("node ghost stale"), last)
        self.assertTrue(last.endswith("; cancel was requested: not needed: superseded"), last)
        self.assertEqual(get_task(self.admin, tid)["state"], "cancelled")


if __name__ == "__main__":
    unittest.main()
