"""End to end: a supervisor and two workers (real processes) run 50 tasks of mixed kinds;
a worker killed with kill -9 mid-task loses its task to the other worker."""

import signal
import unittest

from tests.test_ha import free_port
from tests.test_worker_harness import (WorkerProc, close_fleet, dispatch, get_task, path_of, wait_for, wait_state,
                                       worker_fleet)

OK_PATH = ["queued", "leased", "running", "succeeded"]
FAIL_PATH = ["queued", "leased", "running", "failed"]
RETRIED_FAIL_PATH = ["queued", "leased", "running", "queued", "leased", "running", "failed"]
CANCEL_PATH = ["queued", "leased", "running", "running", "cancelled"]   # the cancel request is a note row


class FiftyTasks(unittest.TestCase):
    def setUp(self):
        self.fleet = worker_fleet()
        self.addCleanup(close_fleet, self.fleet)
        self.fleet.start_supervisor()
        self.admin = self.fleet.client("admin")
        self.a = WorkerProc(self.fleet, "node-a", slots=3).start()
        self.b = WorkerProc(self.fleet, "node-b", slots=3).start()

    def test_fifty_tasks_of_mixed_kinds_end_right(self):
        expect = {}       # id -> (state, path, check)

        def add(kind, payload, state, path, check=None, **fields):
            expect[dispatch(self.admin, kind, payload, **fields)] = (state, path, check)

        # 4 to cancel while running: started first so they hold slots on both workers
        cancels = [dispatch(self.admin, "slow", {"sleep": 30}) for _ in range(4)]
        for tid in cancels:
            wait_state(self.admin, tid, "running")
        out = self.fleet.cli("cancel", cancels[0])                   # one through the CLI
        self.assertEqual(out.returncode, 0, out.stderr)
        for tid in cancels[1:]:
            self.admin.call("POST", f"/v1/tasks/{tid}/cancel", {})
        for tid in cancels:
            expect[tid] = ("cancelled", CANCEL_PATH, lambda t: t["result"]["ended_by"] == "cancel")

        for i in range(12):     # result.json attached
            add("ok", {"i": i}, "succeeded", OK_PATH, lambda t, i=i: t["result"]["result"] == {"echo": {"i": i}})
        for i in range(8):      # no result.json: stdout tail only
            add("plain", {"i": i}, "succeeded", OK_PATH,
                lambda t: t["result"]["result"] is None and t["result"]["stdout_tail"] == "plain output\n")
        for i in range(4):      # exit 3, one attempt
            add("fail", {}, "failed", FAIL_PATH,
                lambda t: t["error"] == "exit code 3" and t["result"]["stderr_tail"] == "failing\n", max_attempts=1)
        for i in range(4):      # exit 3, retried once
            add("fail", {}, "failed", RETRIED_FAIL_PATH, lambda t: t["attempts"] == 2, max_attempts=2)
        for i in range(6):      # timed out
            add("slow", {"sleep": 30}, "failed", FAIL_PATH,
                lambda t: t["result"]["ended_by"] == "timeout" and t["error"] == "timed out after 0.5 s",
                timeout=0.5, max_attempts=1)
        for i in range(4):      # the artifact is there with its keys
            add("art", {"art": {"a": 1, "b": 2}}, "succeeded", OK_PATH, expects={"path": "out.json", "keys": ["a", "b"]})
        for i in range(4):      # no artifact
            add("art", {"art": None}, "failed", FAIL_PATH, lambda t: t["error"] == "artifact missing",
                expects={"path": "out.json", "keys": ["a"]}, max_attempts=1)
        for i in range(4):      # artifact without a required key
            add("art", {"art": {"a": 1}}, "failed", FAIL_PATH, lambda t: t["error"] == "artifact invalid: missing keys b",
                expects={"path": "out.json", "keys": ["a", "b"]}, max_attempts=1)
        # dispatched through the CLI (expects given as PATH:KEYS)
        out = self.fleet.cli("dispatch", "art", "--payload", '{"art": {"x": 1}}', "--expects", "out.json:x",
                             "--max-attempts", "1")
        self.assertEqual(out.returncode, 0, out.stderr)
        expect[out.stdout.strip()] = ("succeeded", OK_PATH, None)
        self.assertEqual(len(expect), 51)

        def all_ended():
            tasks = {tid: get_task(self.admin, tid) for tid in expect}
            return tasks if all(t["state"] in ("succeeded", "failed", "cancelled") for t in tasks.values()) else None

        tasks = wait_for(all_ended, 45, "every task to end", every=0.3)
        for tid, (state, path, check) in expect.items():
            t = tasks[tid]
            with self.subTest(task=tid, kind=t["kind"]):
                self.assertEqual(t["state"], state, t["history"])
                self.assertEqual(path_of(t), path)
                if check:
                    self.assertTrue(check(t), t)
        nodes = {t["result"]["node"] for t in tasks.values()}
        self.assertEqual(nodes, {"node-a", "node-b"})          # both workers took work
        for w in (self.a, self.b):
            wait_for(lambda: w.outbox() == [], 5, f"{w.name} outbox to empty")

    def test_a_worker_killed_mid_task_loses_it_to_the_other(self):
        tid = dispatch(self.admin, "slow", {"sleep": 1.0}, max_attempts=3)
        first = wait_state(self.admin, tid, "running")["node"]
        victim, other = (self.a, self.b) if first == "node-a" else (self.b, self.a)
        victim.signal(signal.SIGKILL)
        victim.wait()
        task = wait_state(self.admin, tid, ("succeeded", "failed"), 20)
        self.assertEqual(task["state"], "succeeded")
        self.assertEqual(task["attempts"], 2, task["history"])
        self.assertEqual(path_of(task).count("succeeded"), 1)
        self.assertEqual(path_of(task), ["queued", "leased", "running", "queued", "leased", "running", "succeeded"])
        self.assertIn("stale", task["history"][3]["reason"])
        self.assertEqual(task["result"]["node"], other.name)


if __name__ == "__main__":
    unittest.main()


class WorkerFirst(unittest.TestCase):
    def test_a_worker_started_before_its_supervisor_registers_within_poll_interval(self):
        """systemd may start the worker first: its breaker opens (300 s cooldown) on the refused
        connections, yet it registers within a poll_interval of the supervisor coming up."""
        fleet = worker_fleet(worker__breaker_cooldown=300, worker__poll_interval=1, worker__retry_cap=30)
        self.addCleanup(close_fleet, fleet)
        port = free_port()
        w = WorkerProc(fleet, "early", url=f"http://127.0.0.1:{port}").start(wait_registered=False)
        w.wait_event("breaker_open", timeout=20)
        fleet.start_supervisor(listen=f"127.0.0.1:{port}")
        w.wait_event("registered", timeout=5)
        tid = dispatch(fleet.client("admin"), "ok")
        self.assertEqual(wait_state(fleet.client("admin"), tid, ("succeeded", "failed"))["state"], "succeeded")


class CancelWhileIdleHeartbeat(unittest.TestCase):
    def test_a_running_task_is_cancelled_within_poll_interval_not_the_idle_heartbeat(self):
        """The worker was idle (next heartbeat 60 s away) when it claimed the task: the cancel
        still reaches it with the next heartbeat, due within poll_interval of the start."""
        fleet = worker_fleet(worker__heartbeat_interval=60, worker__poll_interval=1, supervisor__stale_after=120)
        self.addCleanup(close_fleet, fleet)
        fleet.start_supervisor()
        admin = fleet.client("admin")
        WorkerProc(fleet, "idle").start()
        tid = dispatch(admin, "slow", {"sleep": 60})
        wait_state(admin, tid, "running")
        admin.call("POST", f"/v1/tasks/{tid}/cancel", {})
        self.assertEqual(wait_state(admin, tid, ("cancelled", "succeeded", "failed"), timeout=10)["state"], "cancelled")


class SupervisorBack(unittest.TestCase):
    def test_the_fleet_is_back_within_poll_interval_of_a_restarted_supervisor(self):
        """Down long enough for the worker's breaker to open (300 s cooldown): the heartbeat
        probes every poll_interval, so work flows again within seconds of the restart."""
        fleet = worker_fleet(worker__breaker_cooldown=300, worker__poll_interval=1, worker__heartbeat_interval=60,
                             supervisor__stale_after=120)
        self.addCleanup(close_fleet, fleet)
        port = free_port()
        fleet.start_supervisor(listen=f"127.0.0.1:{port}")
        w = WorkerProc(fleet, "w", url=f"http://127.0.0.1:{port}").start()
        fleet.supervisor.kill()
        fleet.supervisor.wait(10)
        w.wait_event("breaker_open", timeout=20)
        fleet.start_supervisor(listen=f"127.0.0.1:{port}")
        admin = fleet.client("admin")
        tid = dispatch(admin, "ok")
        self.assertEqual(wait_state(admin, tid, ("succeeded", "failed"), timeout=10)["state"], "succeeded")
