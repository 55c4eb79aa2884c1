"""The memory guard for roles whose loop is a step() method (the worker): after each step
(at most every 5 s) read our own RSS; over limits.rss_soft_mb collect garbage, log once and
claim no new work until back under, and say so in the heartbeat ("hold": memguard.hold, sent at
once when it starts or ends, so the supervisor's explain and status show it); over
limits.rss_hard_mb drain like on SIGTERM and exit with memguard.EXIT_CODE (70), so systemd
restarts a fresh process."""

import gc

from meshkit.adapters import procself
from meshkit.rules import memguard

CHECK_EVERY = 5.0


class WorkerGuard:
    def __init__(self, worker, soft_mb: int, hard_mb: int, clock, log):
        self.worker, self.clock, self.log = worker, clock, log
        self.soft, self.hard = memguard.limits(soft_mb, hard_mb)
        self.state = memguard.OK
        self.exited = False
        self.checked = False         # no claim before the first reading (right after the first heartbeat)
        self.next_check = 0.0

    def install(self) -> "WorkerGuard":
        if not (self.soft or self.hard):
            return self
        step, claim_step = self.worker.step, self.worker.claim_step

        def guarded_step():
            delay = step()
            if self.clock.monotonic() >= self.next_check:
                self.next_check = self.clock.monotonic() + CHECK_EVERY
                self.check()
            return delay

        def guarded_claim_step():
            if not self.checked and self.worker.registered.is_set():
                return 0.05
            if self.state != memguard.OK and not (self.worker.draining or self.worker.aborted is not None):
                return self.worker.s.poll_interval       # hold back new work while over the soft limit
            return claim_step()

        self.worker.step, self.worker.claim_step = guarded_step, guarded_claim_step
        return self

    def check(self) -> None:
        rss = procself.rss_bytes()
        decision = memguard.decide(rss, self.soft, self.hard)
        if decision == memguard.EXIT and not self.exited:
            self.exited = True
            self.log.error("memory_limit_exceeded", rss=rss, hard=self.hard, exit_code=memguard.EXIT_CODE)
            self.worker.stop()
        elif decision != self.state:
            if decision == memguard.SHED:
                gc.collect()
            self.log.warning("memory_shed" if decision == memguard.SHED else "memory_ok", rss=rss, soft=self.soft)
        self.state, self.checked = decision, True
        # its own hold: the disk guard's (roles/worker/holds.py) is kept apart, neither clears the other
        self.worker.set_hold(memguard.hold(decision, rss, self.soft), memguard.HOLD_REASON)

    def exit_code(self, code: int) -> int:
        return memguard.EXIT_CODE if self.exited and code == 0 else code
