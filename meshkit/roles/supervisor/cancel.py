"""Cancelling a task, and what happens to the tasks that wait for one that ended: an admin's
cancel (waiting or queued: cancelled now; leased or running: its worker is told to stop, and
the task ends when it has), and the dependents of an ended task (released once every
dependency succeeded; failed, recursively, when one failed or was cancelled). Each is one
JSON log line: task_cancelled, task_cancel_requested, task_upstream_failed.
"""

from meshkit.adapters.storetx import Tx, task_dict, task_id, task_n
from meshkit.core import wire
from meshkit.core.errors import InvalidTransition
from meshkit.rules import fsm

CANCEL_NOTE = "cancel requested by "     # + actor [+ ": " + reason]: the history note of a running task's cancel


def cancel_task(tasks, tid: str, body: dict, actor: str) -> dict:
    """Cancel `tid` for `actor` (a key id) with the reason in `body`, if any; the task as it is now.
    Logged once the transaction is stored: the cancel first, then the dependents it failed."""
    wire.validate(body, wire.CANCEL, "cancel")     # the API passes {} for no body; a JSON null is refused
    now = tasks.clock.time()
    n = task_n(tid)
    event, failed = None, []
    with tasks.store.tx() as tx:
        row = tx.task_row(n)
        given = (body or {}).get("reason")
        if row["state"] in ("waiting", "queued"):
            tx.transition(n, row["state"], "cancelled", given or f"cancelled by {actor}", actor, now)
            event, failed = "task_cancelled", settle_dependents(tx, n, "cancelled", now)
        elif row["state"] in fsm.ACTIVE:
            if not row["cancel_requested"]:
                tx.execute("UPDATE tasks SET cancel_requested=1, updated_at=? WHERE n=?", (now, n))
                # The reason travels in this row: the task's end (result, lost lease) reads it back.
                tx.note(n, row["state"], f"{CANCEL_NOTE}{actor}" + (f": {given}" if given else ""), actor, now)
                event = "task_cancel_requested"
        else:
            raise InvalidTransition(f"task {tid} already ended ({row['state']})", task=tid, state=row["state"])
        task = task_dict(tx.task_row(n))
    if event:
        tasks.log.info(event, task=tid, kind=row["kind"], actor=actor, reason=given, from_state=row["state"],
                       node=row["node"], trace_id=row["trace_id"])
    log_upstream_failed(tasks.log, failed)
    tasks.wake_all()
    return task


def settle_dependents(tx: Tx, n: int, state: str, now: float) -> list:
    """Task `n` ended in `state`: release or fail the tasks waiting for it (recursively for
    failures). The log lines of the tasks failed, for log_upstream_failed."""
    if not tx.any_waiting():
        return []
    failed = []
    for dep in tx.all("SELECT t.n, t.kind, t.trace_id FROM deps d JOIN tasks t ON t.n=d.task"
                      " WHERE d.dep=? AND t.state='waiting'", (n,)):
        m = dep["n"]
        if state == "succeeded":
            pending = tx.one("SELECT COUNT(*) AS c FROM deps d JOIN tasks t ON t.n=d.dep"
                             " WHERE d.task=? AND t.state!='succeeded'", (m,))["c"]
            if pending == 0:
                tx.transition(m, "waiting", "queued", "dependencies done", "supervisor", now)
        else:
            why = f"upstream failed: {task_id(n)}"       # also its error: what the page and overview show
            tx.transition(m, "waiting", "failed", why, "supervisor", now, error=why)
            failed.append(upstream_line(task_id(m), dep["kind"], task_id(n), state, dep["trace_id"]))
            failed += settle_dependents(tx, m, "failed", now)
    return failed


def upstream_line(tid: str, kind: str, upstream: str, upstream_state: str, trace_id: str) -> dict:
    """The fields of a task_upstream_failed line: `tid` failed because `upstream`, one of its
    dependencies, ended `upstream_state` (failed or cancelled)."""
    return {"task": tid, "kind": kind, "state": "failed", "upstream": upstream, "upstream_state": upstream_state,
            "trace_id": trace_id}


def log_upstream_failed(log, lines: list) -> None:
    for fields in lines:
        log.warning("task_upstream_failed", **fields)
