"""What an attempt's end means (pure), and the outbox sender that delivers it.

The result body follows wire.RESULT. Delivery answers are classified:
  ack      2xx (also a duplicate: it was recorded before)      -> remove from the outbox
  drop     404, or a 409 other than not_active (stale fence,
           task already ended): a final answer                  -> remove, log
  rewrite  400 / 413: the body itself is refused               -> replace it once by a
           small failure report (so the task still ends), then drop if that is refused too
  retry    network, 5xx, 429, not_active, open breaker, a 401   -> keep, resend later
           that may pass (clock skew, replay: refusals.py)
  refused  the key refused for good (403, 401 unknown key id or
           bad signature: refusals.py)                          -> keep (as retry), end the round;
           the worker stops (on_refused) and the next start sends them
A result the outbox cannot hold (its disk is full) is sent at once instead (send_now, from the
task's thread: jobs.py _store); acknowledged, there is nothing to keep.
An outbox entry is the wire body plus the worker's own fields (outbox.LOCAL: the task's trace
id, for the log lines about its delivery), which are never sent; the outbox keeps them beside
the body, an entry from before them has none.
An attempt the worker ended because it is itself stopping says so: ended_by "shutdown"
(wire.SHUTDOWN); to a supervisor from before that value (400 on field ended_by) it is
resent in the older form, ended_by "signal" with error policy.WORKER_SHUTDOWN.
"""

from meshkit.adapters.outbox import LOCAL
from meshkit.core.errors import ApiError, MeshkitError
from meshkit.core.wire import SHUTDOWN
from meshkit.roles.worker import refusals
from meshkit.rules import backoff
from meshkit.rules.policy import WORKER_SHUTDOWN

MAX_TAIL_CHARS = 65536          # wire.MAX_STR
REFUSED = "result refused by the supervisor"


def wire_body(entry: dict) -> dict:
    """The result as sent: an outbox entry without the worker's own fields (LOCAL)."""
    return {k: v for k, v in entry.items() if k not in LOCAL}


def describe_end(ended_by: str, exit_code, sig, timeout) -> str | None:
    """The error text of an attempt that ended otherwise than by exit 0 (None for exit 0)."""
    if ended_by == "timeout":
        return f"timed out after {timeout:g} s" if timeout else "timed out"
    if ended_by == "cancel":
        return "cancelled"
    if ended_by == SHUTDOWN:
        return WORKER_SHUTDOWN
    if ended_by == "signal":
        return f"killed by signal {sig}"
    if ended_by == "exit" and exit_code != 0:
        return f"exit code {exit_code}"
    return None


def build_result(task: dict, node: str, fin, timeout, result, result_error, artifact_error,
                 shutdown: bool = False) -> dict:
    """The wire body for an attempt that ran (or tried to). `fin` is a runner.Finished;
    shutdown: the worker stopped it because the worker itself is stopping."""
    ended_by = SHUTDOWN if shutdown and fin.ended_by == "signal" else fin.ended_by
    error = fin.error if ended_by == "error" else describe_end(ended_by, fin.exit_code, fin.signal, timeout)
    error = error or result_error or artifact_error
    return {"task": task["id"], "fence": task["fence"], "node": node,
            "outcome": "failed" if error else "succeeded", "ended_by": ended_by,
            "exit_code": fin.exit_code, "signal": fin.signal, "result": result, "error": error,
            "stdout_tail": fin.stdout_tail[-MAX_TAIL_CHARS:], "stderr_tail": fin.stderr_tail[-MAX_TAIL_CHARS:],
            "started_at": fin.started_at, "finished_at": fin.finished_at, "trace_id": task.get("trace_id")}


def refusal(task: dict, node: str, ended_by: str, error: str, now: float) -> dict:
    """A failure for an attempt whose process never started (kind not allowed, worker stopping)."""
    return {"task": task["id"], "fence": task["fence"], "node": node, "outcome": "failed",
            "ended_by": ended_by, "exit_code": None, "signal": None, "result": None, "error": error,
            "stdout_tail": "", "stderr_tail": "", "started_at": now, "finished_at": now,
            "trace_id": task.get("trace_id")}


def classify(err, body: dict) -> str:
    if err is None:
        return "ack"
    if isinstance(err, ApiError):
        if err.status == 404 or (err.status == 409 and err.code != "not_active"):
            return "drop"
        if err.status in (400, 413):
            return "drop" if str(body.get("error") or "").startswith(REFUSED) else "rewrite"
    return "retry"


def rewritten(body: dict, err: MeshkitError) -> dict:
    if body.get("ended_by") == SHUTDOWN and err.details.get("field") == "ended_by":
        return dict(body, ended_by="signal", error=WORKER_SHUTDOWN)     # a supervisor from before SHUTDOWN
    return dict(body, outcome="failed", ended_by="error", result=None,
                error=f"{REFUSED}: {err.message}"[:1000],
                stdout_tail=body.get("stdout_tail", "")[-1000:], stderr_tail=body.get("stderr_tail", "")[-1000:])


class Sender:
    """Sends the outbox, oldest first; per entry full-jitter backoff; a network failure ends the round."""

    IDLE = 3600.0

    def __init__(self, outbox, link, clock, rand, base: float, cap: float, log, on_done=None, on_refused=None,
                 node: str | None = None):
        self.outbox, self.link, self.clock, self.rand = outbox, link, clock, rand
        self.node = node          # this worker's name: a result of another (worker.name changed) may be set aside
        self.base, self.cap, self.log = base, cap, log
        self.on_done = on_done or (lambda name: None)
        self.on_refused = on_refused or (lambda err: False)    # True: the key is refused for good
        self.tries = {}      # entry name -> (failed sends, monotonic time of the next try)

    def step(self, force: bool = False) -> float:
        """Send what is due (everything if force); the delay until the next entry is due."""
        pending = self.outbox.pending()
        names = {name for name, _ in pending}
        self.tries = {k: v for k, v in self.tries.items() if k in names}
        for name, body in pending:
            now = self.clock.monotonic()
            n, due = self.tries.get(name, (0, 0.0))
            if due > now and not force:
                continue
            err = self._send(body)
            if getattr(err, "code", None) == "breaker_open":
                break
            if self.node and body.get("node") != self.node and refusals.reason_of(err) == "node_not_bound":
                path = self.outbox.set_aside(name)      # kept for a look; the others are still sent
                self.tries.pop(name, None)
                self.log.error("result_set_aside", task=body["task"], fence=body["fence"],
                               result_node=body.get("node"), trace_id=body.get("trace_id"), path=path, error=err.message,
                               reason=f"the result names node {body.get('node')}, this worker is {self.node} and its "
                                      "key is not bound to the old name: it can't be delivered with this key")
                continue
            refused = err is not None and self.on_refused(err)     # for good: kept, and no more sends now
            action = classify(err, body)
            if action in ("ack", "drop"):
                self.outbox.remove(name)
                self.tries.pop(name, None)
                self.on_done(name)
            elif action == "rewrite":
                self.outbox.put(rewritten(body, err))
                self.tries[name] = (n, now)
            else:
                delay = backoff.full_jitter(n + 1, self.base, self.cap, self.rand())
                self.tries[name] = (n + 1, now + delay)
                self.log.info("result_retry", task=body["task"], fence=body["fence"], trace_id=body.get("trace_id"),
                              error=err.message, retry_in=round(delay, 2))
                if refused or not isinstance(err, ApiError) or err.status >= 500:
                    break      # the supervisor is not answering, or refuses our key: not the others now
        return self.next_due()

    def send_now(self, body: dict):
        """Any thread: deliver a result the outbox could not hold (its disk is full) at once. None
        once the supervisor has settled it (acknowledged, or a final refusal: nothing to keep; a
        refused body is rewritten once as a failure report), else the error to retry after."""
        for _ in range(2):
            err = self._send(body, direct=True)
            if err is not None:
                self.on_refused(err)
            action = classify(err, body)
            if action != "rewrite":
                return None if action in ("ack", "drop") else err
            body = rewritten(body, err)
        return err

    def _send(self, body: dict, **fields):
        """One POST of a result, its answer logged (fields: added to the line); the error, or None."""
        try:
            answer, err = self.link.call("POST", "/v1/results", wire_body(body)), None
        except MeshkitError as e:
            answer, err = None, e
        action = classify(err, body)
        where = dict(task=body["task"], fence=body["fence"], trace_id=body.get("trace_id"), **fields)
        if action == "ack":
            answer = answer if isinstance(answer, dict) else {}
            self.log.info("result_delivered", **where, state=answer.get("state"), duplicate=answer.get("duplicate"))
        elif action == "drop":
            self.log.warning("result_dropped", **where, error=err.message, code=getattr(err, "code", None))
        elif action == "rewrite":
            self.log.warning("result_refused", **where, error=err.message)
        return err

    def next_due(self) -> float:
        now = self.clock.monotonic()
        dues = [due for _, due in self.tries.values()]
        if len(self.outbox) > len(self.tries):
            dues.append(now)          # entries not tried yet
        if not dues:
            return self.IDLE
        delay = max(0.0, min(dues) - now)
        return delay if self.link.healthy else max(delay, self.link.retry_in())
