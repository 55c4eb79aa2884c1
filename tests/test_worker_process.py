"""A real worker process against a real supervisor: slots, cancel, outbox after kill -9,
supervisor down (circuit breaker), graceful and hard stops."""

import json
import os
import signal
import time
import unittest

from tests.test_worker_harness import (WorkerProc, close_fleet, dispatch, get_task, path_of, wait_for, wait_state,
                                       worker_fleet)


class WorkerProcess(unittest.TestCase):
    def setUp(self):
        self.fleet = worker_fleet()
        self.addCleanup(close_fleet, self.fleet)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")

    def test_slots_run_n_at_once_never_more(self):
        w = WorkerProc(self.fleet, "slots", slots=3).start()
        log = os.path.join(self.fleet.dir, "starts.jsonl")
        ids = [dispatch(self.admin, "slow", {"sleep": 0.6, "log": log}) for _ in range(7)]
        for tid in ids:
            self.assertEqual(wait_state(self.admin, tid, ("succeeded", "failed"), 20)["state"], "succeeded")
        events = []
        with open(log) as f:
            for line in f:
                rec = json.loads(line)
                events.append((rec.get("start") or rec["end"], 1 if "start" in rec else -1))
        level, peak = 0, 0
        for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
            level += delta
            peak = max(peak, level)
        self.assertEqual(peak, 3)
        claims = [c for c in w.events("task_claimed")]
        self.assertEqual(len(claims), 7)

    def test_cancel_reaches_a_running_task_within_a_poll_round(self):
        w = WorkerProc(self.fleet, "cancel").start()
        tid = dispatch(self.admin, "slow", {"sleep": 30})
        wait_state(self.admin, tid, "running")
        t0 = time.monotonic()
        out = self.fleet.cli("cancel", tid)
        self.assertEqual(out.returncode, 0, out.stderr)
        task = wait_state(self.admin, tid, "cancelled", 10)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(task["result"]["ended_by"], "cancel")
        self.assertEqual(path_of(task), ["queued", "leased", "running", "running", "cancelled"])
        finished = w.wait_event("task_finished")[0]
        self.assertEqual((finished["task"], finished["ended_by"]), (tid, "cancel"))

    def test_outbox_survives_kill_9_between_end_and_ack(self):
        w = WorkerProc(self.fleet, "k9").start()
        tid = dispatch(self.admin, "slow", {"sleep": 0.5})
        wait_state(self.admin, tid, "running")
        self.fleet.supervisor.send_signal(signal.SIGSTOP)       # the result cannot be acknowledged
        try:
            wait_for(w.outbox, 10, "the result in the outbox")
            w.proc.send_signal(signal.SIGKILL)
            w.wait()
        finally:
            self.fleet.supervisor.send_signal(signal.SIGCONT)
        self.assertEqual(len(w.outbox()), 1)
        w.start()                                               # same work dir: same outbox
        task = wait_state(self.admin, tid, ("succeeded", "failed"), 15)
        wait_for(lambda: w.outbox() == [], 10, "the outbox to empty")
        self.assertEqual(task["state"], "succeeded")
        self.assertEqual(task["result"]["result"], {"slept": 0.5})
        self.assertEqual(path_of(task).count("succeeded"), 1)
        self.assertEqual(task["attempts"], 1)
        delivered = w.wait_event("result_delivered")
        self.assertEqual([d["task"] for d in delivered], [tid])   # sent once after the restart (maybe a duplicate)

    def test_supervisor_down_breaker_stops_hammering_then_everything_is_delivered(self):
        w = WorkerProc(self.fleet, "brk", slots=3).start()
        ids = [dispatch(self.admin, "slow", {"sleep": 1.0}) for _ in range(3)]
        for tid in ids:
            wait_state(self.admin, tid, "running")
        port = self.fleet.url.rsplit(":", 1)[1]
        down_at = time.monotonic()
        self.fleet.stop(sig=signal.SIGKILL)                    # down, while the tasks run
        wait_for(lambda: len(w.outbox()) == 3, 10, "3 results in the outbox")
        w.wait_event("breaker_open", timeout=10)
        time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
        failures = sum(w.count(e) for e in ("heartbeat_failed", "claim_failed", "result_retry", "task_not_started"))
        down_for = time.monotonic() - down_at
        # closed: 3 failures open it; then one heartbeat probe per poll_interval (0.5 s) and at
        # most one other call per cooldown (1 s) -- not one per retry_base (0.1 s)
        self.assertLessEqual(failures, 3 + down_for / 0.5 + down_for / 1.0 + 3, w.tail(30))
        self.fleet.start_supervisor(listen=f"127.0.0.1:{port}")
        for tid in ids:
            task = wait_state(self.admin, tid, ("succeeded", "failed"), 15)
            self.assertEqual(task["state"], "succeeded", task["history"])
            self.assertEqual(path_of(task).count("succeeded"), 1)
        wait_for(lambda: w.outbox() == [], 10, "the outbox to empty")
        w.wait_event("breaker_closed")

    def test_sigterm_drains_running_tasks_then_exits_0(self):
        w = WorkerProc(self.fleet, "drain").start()
        tid = dispatch(self.admin, "slow", {"sleep": 1.0})
        wait_state(self.admin, tid, "running")
        w.signal(signal.SIGTERM)
        later = dispatch(self.admin, "ok", {})
        self.assertEqual(w.wait(15), 0)
        self.assertEqual(get_task(self.admin, tid)["state"], "succeeded")
        self.assertEqual(get_task(self.admin, later)["state"], "queued")     # no claim while draining
        self.assertEqual(w.outbox(), [])
        self.assertEqual(w.count("worker_stopped"), 1)

    def test_a_second_signal_stops_running_tasks_at_once(self):
        w = WorkerProc(self.fleet, "hard").start()
        tid = dispatch(self.admin, "slow", {"sleep": 30}, max_attempts=1)
        wait_state(self.admin, tid, "running")
        t0 = time.monotonic()
        w.signal(signal.SIGTERM)
        w.wait_event("worker_draining")
        w.signal(signal.SIGINT)
        self.assertEqual(w.wait(10), 128 + signal.SIGINT)
        self.assertLess(time.monotonic() - t0, 5)
        task = wait_state(self.admin, tid, "failed")
        self.assertEqual(task["result"]["ended_by"], "shutdown")
        self.assertEqual(task["result"]["error"], "the worker is shutting down")

    def test_two_signals_at_once_never_hang_the_worker(self):
        # Two signals back to back: the second aborts, the worker exits (the handler only records
        # them; one that took a lock hung when a signal landed inside threading.Event.set()).
        for i in range(3):
            w = WorkerProc(self.fleet, f"burst{i}").start()
            w.signal(signal.SIGTERM)
            w.signal(signal.SIGINT)
            # both pending at once: the kernel may deliver SIGINT first; the second one aborts
            self.assertIn(w.wait(10), (128 + signal.SIGINT, 128 + signal.SIGTERM))
            self.assertEqual(w.count("worker_aborting"), 1)


if __name__ == "__main__":
    unittest.main()
