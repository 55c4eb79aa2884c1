"""Whichever call opens the worker's circuit breaker, its heartbeat probes within poll_interval.

The audit's repro: the supervisor's disk was full, three 503s on the worker's result sends opened
its breaker (retry_in 300); the supervisor was fine 3 s later, but the worker sent nothing until
its regular idle heartbeat ~35 s later. Here with a fake clock, the real Link and breaker, and a
scripted supervisor: no processes, no sleeps.
"""

import io
import shutil
import tempfile
import unittest

from meshkit.adapters.log import Logger
from meshkit.adapters.outbox import Outbox
from meshkit.core.clock import FakeClock
from meshkit.core.errors import ApiError
from meshkit.roles.worker.jobs import Job
from meshkit.roles.worker.link import Link
from meshkit.roles.worker.worker import Worker
from meshkit.rules.breaker import Breaker
from tests.test_worker_units import settings

POLL = 5


class Supervisor:
    """A signed client's stand-in: answers every call, or 503 (its disk is full) while down; with
    recover_after, it is fine again that many seconds after its third 503 (space freed)."""

    url = "http://sup"

    def __init__(self, clock):
        self.clock, self.down, self.calls, self.headers = clock, False, [], {}
        self.recover_after, self.refusals, self.recovered_at = None, 0, None

    def call(self, method, path, body=None, timeout=None):
        now = self.clock.monotonic()
        self.calls.append((now, path))
        if self.recovered_at is not None and now >= self.recovered_at:
            self.down = False
        if self.down:
            self.refusals += 1
            if self.refusals == 3 and self.recover_after is not None:
                self.recovered_at = now + self.recover_after
            raise ApiError(503, "store_error", "the supervisor's disk is full; nothing was stored")
        if path == "/v1/results":
            return {"ok": True, "state": "succeeded", "duplicate": False}
        return {"ok": True, "epoch": 1}

    def times(self, path, after=0.0):
        return [t for t, p in self.calls if p == path and t > after]


class RecordingClock(FakeClock):
    """Notes at each sleep whether the control loop's wake is set (a task thread's retries sleep)."""

    def __init__(self):
        super().__init__()
        self.wake, self.woken = None, []

    def sleep(self, seconds):
        self.woken.append(self.wake.is_set())
        super().sleep(seconds)


class BreakerWake(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mk-wake-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = RecordingClock()
        self.sup = Supervisor(self.clock)
        self.link = Link([self.sup], Breaker(3, 300), self.clock)
        outbox = Outbox(tempfile.mkdtemp(dir=self.dir))
        self.addCleanup(outbox.close)
        # min_free_mb 0: the disk guard's own check (every poll_interval) would wake the loop anyway
        s = settings(work_dir=self.dir, poll_interval=POLL, heartbeat_interval=60, min_free_mb=0, slots=1)
        self.w = Worker(s, self.link, outbox, self.clock, Logger("worker", "w1", stream=io.StringIO(), clock=self.clock),
                        rand=lambda: 0.5, spawn=lambda target, *a: None, proc="/nonexistent")
        self.clock.wake = self.w.wake
        self.w.startup()

    def loop(self, until: float) -> None:
        """Worker.run's control loop on the fake clock, up to monotonic time `until`."""
        for _ in range(10000):
            if self.clock.monotonic() >= until:
                return
            delay = self.w.step()
            self.clock.wait(self.w.wake, min(delay, until - self.clock.monotonic()))
            self.w.wake.clear()
        self.fail("the control loop spins")

    def result(self, tid="t1"):
        name = self.w.outbox.put({"task": tid, "fence": 1, "node": "w1", "outcome": "succeeded", "ended_by": "exit",
                                  "error": None, "finished_at": 1.0})
        self.w.unacked[name] = (tid, 1)
        self.w.wake.set()                  # as JobRunner._finish does

    def test_result_sends_that_open_the_breaker_bring_the_probe_within_poll_interval(self):
        t0 = self.clock.monotonic()
        self.loop(t0 + 25)                 # registered at t0: the next idle heartbeat is due at t0 + 60
        self.assertEqual(len(self.sup.times("/v1/heartbeat")), 1)
        self.sup.down, self.sup.recover_after = True, 3.0      # space freed 3 s after the third 503
        self.result()
        self.loop(t0 + 100)                # the result's resends (backoff 0.5, 1 s) open the breaker
        sends = self.sup.times("/v1/results")
        opened = sends[2]                  # the third 503 opened it
        self.assertEqual(self.sup.recovered_at, opened + 3)
        probes = self.sup.times("/v1/heartbeat", after=t0)
        self.assertTrue(probes, "no heartbeat after the breaker opened")
        self.assertLessEqual(probes[0] - opened, POLL)     # was: the idle heartbeat at t0 + 60, ~34 s later
        self.assertLessEqual(sends[3] - self.sup.recovered_at, POLL)    # back at work within poll_interval
        self.assertEqual((self.w.outbox.pending(), self.w.unacked), ([], {}))
        self.assertTrue(self.link.healthy)

    def test_one_step_whose_sends_open_the_breaker_returns_at_most_poll_interval(self):
        self.w.step()                      # registered; the next heartbeat in 60 s
        self.clock.advance(20)
        self.sup.down = True
        self.result()
        for _ in range(3):
            delay = self.w.step()
            self.clock.advance(min(delay, 10))
        self.assertFalse(self.link.healthy)
        # that last step's send opened it: the probe is within poll_interval, not in ~37 s
        self.assertLessEqual(self.w.next_heartbeat - self.sup.calls[-1][0], POLL)

    def test_a_task_threads_start_call_that_opens_the_breaker_wakes_the_control_loop(self):
        self.w.step()
        self.w.wake.clear()
        self.sup.down = True
        job = self.w.jobs["t1"] = Job({"id": "t1", "kind": "echo", "payload": {}, "attempt": 1, "fence": 1,
                                       "timeout": 30, "expects": None, "trace_id": "tr"})
        self.w.execute(job)                # on this thread: start calls retried (fake sleeps), then given up
        self.assertEqual(len(self.sup.times("/v1/tasks/t1/start")), 3)
        self.assertFalse(self.link.healthy)
        # asleep after each failed start: the wake is set from the one that opened the breaker on,
        # so the control loop brings the heartbeat (the probe) forward at once
        self.assertEqual(self.clock.woken[:2], [False, False])
        self.assertTrue(self.clock.woken[2], self.clock.woken)


if __name__ == "__main__":
    unittest.main()
