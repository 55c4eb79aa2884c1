"""The worker role: heartbeats, long-poll claims, one thread per running task, the outbox.

Threads: the control loop (step(): heartbeat, outbox, cleanup, drain/abort), the claim
loop (claim_step(): one long-poll claim for the free slots), and one thread per task
(execute(), in jobs.py: start call, subprocess, result into the outbox). Shared state is
guarded by one condition; every step returns the delay to its next iteration.
"""

import os
import random
import signal
import threading

from meshkit import __version__
from meshkit.adapters import runner, sysinfo
from meshkit.adapters.wakeup import PipeEvent
from meshkit.core.errors import ApiError, MeshkitError
from meshkit.rules import auth, backoff
from meshkit.roles.worker.link import BreakerOpen
from meshkit.roles.worker import refusals
from meshkit.roles.worker.holds import Holds
from meshkit.roles.worker.jobs import Job, JobRunner
from meshkit.roles.worker.results import Sender
from meshkit.roles.worker.settings import Settings

ABORT_WAIT = 5.0             # after an abort, seconds beyond the grace to wait for tasks to end
MAX_RUNNING_LISTED = 1000    # wire.MAX_LIST
AUTH_LOG_EVERY = 30.0        # at most one auth_refused error line per this many seconds
HB_LOG_EVERY = 60.0          # at most one heartbeat_failed line per this many seconds (an outage's first at once)


def spawn_thread(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


class Worker(JobRunner, Holds):
    def __init__(self, s: Settings, link, outbox, clock, log, rand=random.random, spawn=spawn_thread,
                 proc: str = runner.PROC, key_id: str = "", disk_free=sysinfo.disk_free):
        self.s, self.link, self.outbox, self.clock, self.log = s, link, outbox, clock, log
        self.key_id = key_id
        self.rand, self.spawn, self.proc, self.disk_free = rand, spawn, proc, disk_free
        self.tasks_dir = os.path.join(s.work_dir, "tasks")
        self.marker_prefix = runner.marker_prefix(s.work_dir)
        self.cond = threading.Condition()
        self.jobs: dict = {}          # task id -> Job
        self.unacked: dict = {}       # outbox entry name -> (task id, fence)
        self.wake = PipeEvent()                 # the control loop has something to do (a signal handler sets it)
        self.signals = []                       # signals received, applied by the control loop (take_signals)
        self.slot_freed = threading.Event()     # the claim loop may have room again
        self.registered = threading.Event()
        self.draining = False
        self.drain_deadline = None
        self.aborted = None           # the signal number of a hard stop
        self.abort_deadline = None
        self.stopped_jobs = False
        self.next_heartbeat = 0.0
        self.next_cleanup = 0.0
        self.hb_failures = 0          # heartbeats failed in a row
        self.hb_logged = None         # (time of the last heartbeat_failed line, failures left out since) or None
        self.claim_failures = 0
        self.refusal = None           # (url, message, reason) once the supervisor refuses our key for good
        self.auth_logged = None       # refusals that may pass (clock skew, replay): as hb_logged
        self.hold = None              # why we claim no new work now (holds.combine of `holds`), or None
        self.holds = {}               # guard -> its hold or None (set_hold: the memory and disk guards)
        self.next_disk_check = 0.0
        self.disk_failed_at = None    # when a write to the work dir last failed for lack of space
        self.hold_unknown_to = None   # the supervisor URL that refused the heartbeat's "hold" (from before it)
        self.hold_told = None         # the hold the last heartbeat the supervisor took said (it answers our
                                      # claims empty while it has one): claims resume once it has None
        self.sender = Sender(outbox, link, clock, rand, s.retry_base, s.retry_cap, log, self._delivered,
                             self.refused, s.name)
        link.on_open = self.wake.set    # any thread's call that opens the breaker: the heartbeat probes soon
        link.probe_every = min(s.heartbeat_interval, s.poll_interval)     # said by its breaker_open line

    # ---- shared state -------------------------------------------------------------------

    def free_slots(self) -> int:
        """Slots minus running tasks minus results the supervisor has not acknowledged (it
        still counts those tasks as this node's, so a claim for them would come back empty)."""
        with self.cond:
            return max(0, self.s.slots - len(self.jobs) - len(self.unacked))

    def _delivered(self, name: str) -> None:
        with self.cond:
            self.unacked.pop(name, None)
        self.slot_freed.set()

    def startup(self) -> None:
        """Before the first heartbeat: end orphans of an earlier run, load the outbox, clean up."""
        orphans = runner.signal_marked(self.marker_prefix, signal.SIGKILL, self.proc)
        if orphans:
            self.log.warning("orphans_killed", pids=orphans)
        for name, body in self.outbox.pending():
            self.unacked[name] = (body["task"], body["fence"])
        if self.unacked:
            self.log.info("outbox_loaded", results=len(self.unacked))
        os.makedirs(self.tasks_dir, exist_ok=True)
        self.check_disk()             # before the first claim: a full disk holds claims from the start

    # ---- heartbeats -----------------------------------------------------------------------

    def heartbeat_body(self) -> dict:
        with self.cond:
            running = [{"task": j.task["id"], "fence": j.task["fence"]} for j in self.jobs.values()]
            running += [{"task": t, "fence": f} for t, f in self.unacked.values()]
        body = {"node": self.s.name, "capabilities": list(self.s.capabilities), "kinds": sorted(self.s.kinds),
                "slots": self.s.slots, "free_slots": self.free_slots(), "running": running[:MAX_RUNNING_LISTED],
                "load": sysinfo.load_average(), "mem_available": sysinfo.memory_available(),
                "disk_free": sysinfo.disk_free(self.s.work_dir), "version": __version__,
                "hold": self.hold if self.hold_unknown_to != self.link.url else None}
        return {k: v for k, v in body.items() if v is not None}

    def heartbeat(self) -> None:
        now = self.clock.monotonic()
        # The heartbeat is the breaker's probe: while the breaker is open (claims and result
        # sends wait) or we are not registered yet (just started: the supervisor may be
        # starting too), it looks every poll_interval at most, so the fleet is back within
        # that of the supervisor, not after a whole cooldown (300 s).
        unregistered, was_open = not self.registered.is_set(), not self.link.healthy
        body = self.heartbeat_body()
        try:
            answer = self.link.call("POST", "/v1/heartbeat", body, probe=True)
        except BreakerOpen as e:
            self.next_heartbeat = now + max(e.retry_in, 0.05)
            return
        except MeshkitError as e:
            if self.refused(e):          # for good: said once (key_refused); the worker stops
                self.next_heartbeat = now + self.s.heartbeat_interval
                return
            if self._hold_refused(e):    # an older supervisor: again at once, without "hold"
                self.next_heartbeat = now
                return
            self.hb_failures += 1
            delay = backoff.full_jitter(self.hb_failures, self.s.retry_base, self.s.retry_cap, self.rand())
            probe_every = min(self.s.heartbeat_interval, self.s.poll_interval)
            if not self.link.healthy:        # the breaker is open: one probe per poll_interval, no faster
                delay = probe_every
            cap = probe_every if unregistered else self.s.heartbeat_interval
            self.next_heartbeat = now + min(cap, max(delay, 0.05))
            # at most one line per HB_LOG_EVERY (auth.refusal_verdict), with the failures since the last one
            line, left_out, self.hb_logged = auth.refusal_verdict(self.hb_logged, now, HB_LOG_EVERY)
            if line:
                self.log.warning("heartbeat_failed", error=e.message, retry_in=round(self.next_heartbeat - now, 2),
                                 failures=left_out + 1)
            return
        if self.hb_failures or not self.registered.is_set():     # failures: every one of the outage, logged or not
            self.log.info("registered", supervisor=self.link.url, epoch=answer.get("epoch"),
                          failures=self.hb_failures or None)
        self.hb_failures, self.hb_logged = 0, None
        self.registered.set()
        told, self.hold_told = self.hold_told, body.get("hold")
        if was_open or (told is not None and self.hold_told is None):
            self.slot_freed.set()     # the breaker closed, or the hold ended: the claim loop stops waiting
        self.next_heartbeat = now + self.heartbeat_period()
        with self.cond:
            for tid in answer.get("cancel") or []:
                self._stop_job(tid, "cancel")
            for tid in answer.get("fenced") or []:
                self._stop_job(tid, "fenced")   # only running ones: an unacked result is settled by its post

    def heartbeat_period(self) -> float:
        """Often while tasks run (cancels arrive with heartbeats), rarely when idle."""
        with self.cond:
            busy = bool(self.jobs)
        return min(self.s.heartbeat_interval, self.s.poll_interval) if busy else self.s.heartbeat_interval

    def _stop_job(self, tid: str, why: str) -> None:
        """Caller holds self.cond."""
        job = self.jobs.get(tid)
        if job is None or job.stop is not None:
            return
        job.stop = why
        self.log.info("task_stopping", task=tid, fence=job.task["fence"], reason=why, trace_id=job.task.get("trace_id"))
        if job.run is not None:
            job.run.cancel("signal" if why == "signal" else "cancel")

    # ---- claims ---------------------------------------------------------------------------

    def claim_step(self):
        """One claim; the delay before the next, or None when claiming is over."""
        if self.draining or self.aborted is not None:
            return None
        if not self.registered.is_set():
            self.wake.set()
            return 0.5
        if self.hold is not None or self.hold_told is not None:
            return self.s.poll_interval       # a guard holds back claims (holds.py), or the supervisor would
                                              # answer empty until it took the heartbeat that ends the hold
                                              # (that sets slot_freed)
        free = self.free_slots()
        if free <= 0:
            return self.s.poll_interval       # or until a slot is freed (slot_freed)
        wait = self.s.poll_wait if self.link.healthy else 0
        t0 = self.clock.monotonic()
        try:
            answer = self.link.call("POST", "/v1/claim", {"node": self.s.name, "max": free, "wait": wait},
                                    timeout=wait + 15)
        except BreakerOpen as e:
            return max(e.retry_in, 0.05)
        except MeshkitError as e:
            if self.refused(e):
                return None                   # the control loop stops the worker
            if isinstance(e, ApiError) and e.code == "unknown_node":
                self.registered.clear()       # the supervisor forgot us: heartbeat first
                self.next_heartbeat = 0.0
                self.wake.set()
                return 0.0
            self.claim_failures += 1
            if not self.link.healthy:
                self.wake.set()      # the breaker opened: the control loop brings the heartbeat forward
            delay = backoff.full_jitter(self.claim_failures, self.s.retry_base, self.s.retry_cap, self.rand())
            self.log.warning("claim_failed", error=e.message, retry_in=round(delay, 2))
            return max(delay, 0.05)
        self.claim_failures = 0
        tasks = answer.get("tasks") or []
        for task in tasks:
            self.launch(task)
        if tasks or self.clock.monotonic() - t0 >= wait / 2:
            return 0.0
        return self.s.poll_interval   # answered early with nothing: no free slot in its eyes; do not spin

    def launch(self, task: dict) -> None:
        with self.cond:
            if task["id"] in self.jobs:
                return
            job = self.jobs[task["id"]] = Job(task)
            if self.aborted is not None:
                job.stop = "signal"
        self.log.info("task_claimed", task=task["id"], kind=task.get("kind"), fence=task["fence"],
                      attempt=task.get("attempt"), trace_id=task.get("trace_id"))
        # Heartbeats go faster while tasks run (a cancel arrives with one): the next one comes
        # within poll_interval, not at the end of the idle period already scheduled.
        self.next_heartbeat = min(self.next_heartbeat, self.clock.monotonic() + self.heartbeat_period())
        self.wake.set()
        job.thread = self.spawn(self.execute, job)

    # ---- the control loop -------------------------------------------------------------------

    def step(self):
        """One control iteration: the delay to the next, or None when the worker may exit."""
        now = self.clock.monotonic()
        if self.refusal is not None and not self.draining:
            self.stop()                # our key is refused for good: drain and exit (the CLI says why)
        if self.aborted is not None or self.draining:
            return self._stopping_step(now)
        self._probe_soon(now)
        if now >= self.next_heartbeat:
            self.heartbeat()
        send = self.sender.step()
        self._probe_soon(now)          # these sends may have opened it just now
        if now >= self.next_disk_check:
            self.check_disk()
        if now >= self.next_cleanup:
            self.cleanup()
        return max(0.0, min(self.next_heartbeat - now, send, self.next_disk_check - now, self.next_cleanup - now))

    def _probe_soon(self, now: float) -> None:
        """While the breaker is open (whichever call opened it: a heartbeat, a claim, a result send,
        a task's start call), the heartbeat probes within poll_interval, not at the next idle one."""
        if not self.link.healthy:
            self.next_heartbeat = min(self.next_heartbeat, now + self.s.poll_interval)

    def _stopping_step(self, now: float):
        with self.cond:
            busy = bool(self.jobs)
        if self.aborted is not None:
            if not self.stopped_jobs:
                self.stop_all("signal")
            if busy and now < self.abort_deadline:
                return 0.05
        elif busy:
            if now < self.drain_deadline:
                if now >= self.next_heartbeat:
                    self.heartbeat()     # keep leases alive and hear cancels while draining
                send = self.sender.step()
                return max(0.0, min(0.2, send, self.next_heartbeat - now, self.drain_deadline - now))
            if not self.stopped_jobs:
                self.log.warning("drain_timeout", running=sorted(self.jobs))
                self.stop_all("signal")
            return 0.05
        if self.refusal is None:
            self.sender.step(force=True)     # one last delivery round; what is left stays for the next start
        self.log.info("worker_stopped", undelivered=len(self.unacked))
        return None

    def stop_all(self, why: str) -> None:
        with self.cond:
            self.stopped_jobs = True
            for tid in list(self.jobs):
                self._stop_job(tid, why)

    def cleanup(self) -> None:
        with self.cond:
            keep = {os.path.basename(j.run.a.task_dir) for j in self.jobs.values() if j.run is not None}
        removed = runner.clean_old_dirs(self.tasks_dir, self.s.keep_dirs, self.clock.time(), keep)
        if removed:
            self.log.info("task_dirs_removed", count=len(removed))
        self.next_cleanup = self.clock.monotonic() + max(1.0, min(3600.0, self.s.keep_dirs / 4))

    def refused(self, e) -> bool:
        """Any thread, after a failed call. True if the supervisor refuses our key for good (a
        403, a 401 for an unknown key or a bad signature: refusals.py): logged once, and the
        control loop stops the worker (the outbox is kept). A 401 that may pass (clock skew, a
        replay) is retried by the caller as before: an error line at most every AUTH_LOG_EVERY s."""
        reason = refusals.reason_of(e)
        if reason is None:
            return False
        url, now = self.link.url, self.clock.monotonic()
        with self.cond:
            if refusals.for_good(reason):
                first = self.refusal is None
                if first:
                    self.refusal = (url, e.message, reason)
            else:
                first, left_out, self.auth_logged = auth.refusal_verdict(self.auth_logged, now, AUTH_LOG_EVERY)
        if refusals.for_good(reason):
            if first:
                self.log.error("key_refused", key=self.key_id, supervisor=url, error=e.message, reason=reason,
                               hint=refusals.hint(reason))
                self.wake.set()
            return True
        if first:
            self.log.error("auth_refused", key=self.key_id, supervisor=url, error=e.message, reason=reason,
                           hint=refusals.hint(reason), refusals=left_out + 1)
        return False

    # ---- stopping ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful: stop claiming, let running tasks finish (drain_timeout), flush, exit."""
        if not self.draining:
            self.draining = True
            self.drain_deadline = self.clock.monotonic() + self.s.drain_timeout
            self.log.info("worker_draining", running=len(self.jobs), drain_timeout=self.s.drain_timeout)
        self.slot_freed.set()
        self.wake.set()

    def abort(self, signum: int = signal.SIGTERM) -> None:
        """Hard: cancel running tasks (SIGTERM, grace, SIGKILL), flush once, exit."""
        if self.aborted is None:
            self.aborted = signum
            self.abort_deadline = self.clock.monotonic() + self.s.grace + ABORT_WAIT
            self.log.warning("worker_aborting", running=len(self.jobs), signal=signum)
        self.slot_freed.set()
        self.wake.set()

    def take_signals(self) -> None:
        """Apply the signals the handler recorded (it only records them and sets `wake`: a
        handler must take no lock, see adapters/wakeup.py): the first drains, the next aborts."""
        while self.signals:
            signum = self.signals.pop(0)
            if self.draining or self.aborted is not None:
                self.abort(signum)
            else:
                self.stop()

    # ---- loops ----------------------------------------------------------------------------------

    def claim_loop(self) -> None:
        while True:
            try:
                delay = self.claim_step()
            except Exception as e:     # keep claiming whatever happens; report it
                self.log.error("claim_error", error=f"{e.__class__.__name__}: {e}")
                delay = self.s.poll_interval
            if delay is None:
                return
            if delay > 0:
                self.clock.wait(self.slot_freed, delay)
            self.slot_freed.clear()

    def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, 128 + signal after an abort."""
        self.startup()
        self.log.info("worker_started", supervisor=self.link.url, slots=self.s.slots, kinds=sorted(self.s.kinds),
                      capabilities=list(self.s.capabilities), work_dir=self.s.work_dir)
        self.spawn(self.claim_loop)
        while True:
            self.take_signals()
            try:
                delay = self.step()
            except Exception as e:     # a bug or an OS failure: report it, keep the worker alive
                self.log.error("step_error", error=f"{e.__class__.__name__}: {e}")
                delay = None if self.aborted is not None else self.s.poll_interval
            if delay is None:
                break
            self.clock.wait(self.wake, delay)
            self.wake.clear()
        self.outbox.close()
        return 0 if self.aborted is None else 128 + self.aborted
