"""One task on a worker: its directory, the start call, the subprocess, the result into the
outbox. Mixed into Worker (worker.py), whose settings, link, outbox, clock, log, condition and
job table these use; each runs on the task's own thread (Worker.launch).

The task directory is made before the supervisor hears that the task started: if it cannot be
(the disk is full), the attempt ends at once, never started, with a failure that says why and
retries (cannot_prepare). A result the outbox cannot hold is sent directly (_store).
"""

import os
import shutil
from dataclasses import dataclass

from meshkit.adapters import runner
from meshkit.core.errors import ApiError, ClientError
from meshkit.rules import backoff
from meshkit.roles.worker.link import BreakerOpen
from meshkit.roles.worker.results import build_result, refusal
from meshkit.roles.worker.settings import effective_timeout

START_RETRY_FOR = 30.0       # seconds a task's start call is retried before the task is given up
STORE_RETRY_FOR = 60.0       # seconds a result's outbox write and direct send are retried before it is lost
# Said by an attempt whose directory could not be made: the worker's trouble, not the task's. The
# words "temporarily unavailable" are one of the supervisor's default transient patterns
# (policy.DEFAULT_TRANSIENT_PATTERNS): the failure retries without counting toward the kind's
# quarantine. The wire has no other way to say so (ended_by "error": never started).
NOT_PREPARED = "the worker is temporarily unavailable"


def cannot_prepare(node: str, work_dir: str, err: OSError) -> str:
    """The error text of an attempt whose task directory could not be made."""
    return f"worker {node}: cannot prepare the task directory: {err.strerror or err} ({work_dir}); {NOT_PREPARED}"


@dataclass
class Job:
    task: dict
    run: object = None            # runner.Run once the process is being started
    stop: str | None = None       # why it must stop: "cancel", "signal" (worker stopping), "fenced"
    thread: object = None


class JobRunner:
    """Worker's per-task half (needs self.s, link, outbox, sender, clock, log, rand, proc, cond, jobs,
    unacked, aborted, tasks_dir, marker_prefix, slot_freed, wake, refused, disk_write_failed)."""

    def execute(self, job: Job) -> None:
        try:
            body = self._attempt(job)
        except Exception as e:     # a bug or an OS failure must not leave a slot taken forever
            self.log.error("task_error", task=job.task["id"], fence=job.task["fence"],
                           trace_id=job.task.get("trace_id"), error=f"{e.__class__.__name__}: {e}")
            body = refusal(job.task, self.s.name, "error", f"worker error: {e.__class__.__name__}: {e}",
                           self.clock.time())
        self._finish(job, body)

    def _attempt(self, job: Job):
        task, node = job.task, self.s.name
        kind = self.s.kinds.get(task.get("kind"))
        if kind is None:
            return refusal(task, node, "error", f"kind not allowed: {task.get('kind')}", self.clock.time())
        name = runner.dir_name(task["id"], task.get("attempt", 0), task["fence"])
        task_dir = os.path.join(self.tasks_dir, name)
        try:       # before the start call: the supervisor must not record a start that cannot happen
            runner.prepare_dir(self.tasks_dir, name, task.get("payload"))
        except OSError as e:
            shutil.rmtree(task_dir, ignore_errors=True)      # nothing half-made stays
            self.log.error("task_not_prepared", task=task["id"], fence=task["fence"], trace_id=task.get("trace_id"),
                           error=e.strerror or str(e), dir=task_dir)
            self.disk_write_failed(e)        # out of space: claims are held back before the slot frees
            return refusal(task, node, "error", cannot_prepare(node, self.s.work_dir, e), self.clock.time())
        if not self._start_call(job):
            shutil.rmtree(task_dir, ignore_errors=True)
            return None
        timeout = effective_timeout(task.get("timeout"), kind)
        attempt = runner.Attempt(task["id"], task.get("attempt", 0), task.get("trace_id") or "", kind.argv,
                                 task_dir, runner.new_marker(self.marker_prefix), timeout, kind.env)
        run = runner.Run(attempt, self.s.grace, self.s.tail_bytes, self.clock, self.proc)
        with self.cond:
            job.run = run
            if job.stop is not None:
                run.cancel("signal" if job.stop == "signal" else "cancel")
        self.log.info("task_started", task=task["id"], kind=task["kind"], fence=task["fence"],
                      trace_id=task.get("trace_id"), dir=task_dir)
        fin = run.run()
        result, result_error = runner.read_result(task_dir, self.s.max_result_bytes)
        artifact_error = None
        if fin.ended_by == "exit" and fin.exit_code == 0 and not result_error:
            artifact_error = runner.check_expects(task_dir, task.get("expects"))
        # job.stop "signal": the worker is stopping: the result says so (ended_by "shutdown")
        return build_result(task, node, fin, timeout, result, result_error, artifact_error, job.stop == "signal")

    def _start_call(self, job: Job) -> bool:
        """Tell the supervisor the process starts; False if the lease is gone (do not run)."""
        task = job.task
        until = self.clock.monotonic() + START_RETRY_FOR
        tries = 0
        while True:
            if job.stop == "fenced":
                return False
            try:
                self.link.call("POST", f"/v1/tasks/{task['id']}/start", {"node": self.s.name, "fence": task["fence"]})
                return True
            except ApiError as e:
                if (e.status in (404, 409) and e.code != "not_active") or self.refused(e):
                    self.log.warning("task_not_started", task=task["id"], fence=task["fence"],
                                     trace_id=task.get("trace_id"), error=e.message)
                    return False
                err = e
            except ClientError as e:
                err = e
            tries += 1
            delay = err.retry_in if isinstance(err, BreakerOpen) else backoff.full_jitter(
                tries, self.s.retry_base, self.s.retry_cap, self.rand())
            if self.clock.monotonic() + delay > until or self.aborted is not None:
                given_up = f"{err.message}; given up (its lease will expire)"
                self.log.warning("task_not_started", task=task["id"], fence=task["fence"],
                                 trace_id=task.get("trace_id"), error=given_up)
                return False
            self.clock.sleep(max(delay, 0.05))

    def _store(self, body: dict):
        """Put a result in the outbox (never half-written): its entry name. If the disk refuses it
        (full), send it directly instead: once the supervisor has it there is nothing to keep (None).
        Both are retried (bounded) before the result is lost."""
        until = self.clock.monotonic() + STORE_RETRY_FOR
        tries = 0
        where = dict(task=body["task"], fence=body["fence"], trace_id=body.get("trace_id"))
        while True:
            try:
                return self.outbox.put(body)
            except OSError as e:
                why = f"cannot write the outbox: {e.strerror or e}"
                self.disk_write_failed(e)
            unsent = self.sender.send_now(body)
            if unsent is None:
                self.log.warning("result_sent_directly", **where, error=why)
                return None
            why += f"; nor send it: {unsent.message}"
            tries += 1
            delay = backoff.full_jitter(tries, self.s.retry_base, self.s.retry_cap, self.rand())
            if self.clock.monotonic() + delay > until:
                self.log.error("result_lost", **where, error=why)
                return None
            self.log.error("outbox_write_failed", **where, error=why, retry_in=round(delay, 2))
            self.clock.sleep(max(delay, 0.05))

    def _finish(self, job: Job, body) -> None:
        tid = job.task["id"]
        if job.stop == "fenced":
            self.log.warning("result_dropped", task=tid, fence=job.task["fence"], trace_id=job.task.get("trace_id"),
                             error="the lease is no longer ours (fenced)")
        name = self._store(body) if body is not None and job.stop != "fenced" else None
        with self.cond:
            if name is not None:
                self.unacked[name] = (body["task"], body["fence"])
            self.jobs.pop(tid, None)
        if body is not None:
            self.log.info("task_finished", task=tid, outcome=body["outcome"], ended_by=body["ended_by"],
                          error=body["error"], started_at=body["started_at"], trace_id=job.task.get("trace_id"))
        self.slot_freed.set()
        self.wake.set()
