"""The task state machine. This table is the documentation: README copies it.

    waiting  -> queued      dependencies done
    waiting  -> failed      an upstream task failed for good
    waiting  -> cancelled   cancelled before it could run
    queued   -> leased      claimed by a worker (attempt + 1, new fencing number)
    queued   -> cancelled
    queued   -> failed      upstream failed / refused for good
    leased   -> running     the worker started the process
    leased   -> queued      lease lost (expired, node stale, never started): retry
    running  -> queued      lease lost or a retryable failure: retry after backoff
    leased|running -> succeeded | failed | cancelled   a result arrived
Creation is None -> waiting (has unfinished dependencies) or None -> queued.
"""

from meshkit.core.errors import InvalidTransition

STATES = ("waiting", "queued", "leased", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"leased", "running"})

TRANSITIONS = frozenset({
    (None, "waiting"), (None, "queued"),
    ("waiting", "queued"), ("waiting", "failed"), ("waiting", "cancelled"),
    ("queued", "leased"), ("queued", "cancelled"), ("queued", "failed"),
    ("leased", "running"), ("leased", "queued"),
    ("leased", "succeeded"), ("leased", "failed"), ("leased", "cancelled"),
    ("running", "queued"), ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
})


def check(task_id: str, frm, to: str) -> None:
    """Raise InvalidTransition unless frm -> to is in the table."""
    if (frm, to) not in TRANSITIONS:
        raise InvalidTransition(f"task {task_id}: cannot go from {frm or 'nothing'} to {to}",
                                task=task_id, state=frm)


def after_result(outcome: str, ended_by: str, attempts: int, max_attempts: int,
                 cancel_requested: bool) -> tuple:
    """(next state, reason) when a worker reports an attempt's end."""
    if cancel_requested or ended_by == "cancel":
        return "cancelled", "cancelled while running"
    if outcome == "succeeded":
        return "succeeded", "attempt succeeded"
    if attempts < max_attempts:
        return "queued", f"attempt {attempts} failed ({ended_by}); retry {attempts + 1} of {max_attempts}"
    return "failed", f"attempt {attempts} failed ({ended_by}); no attempts left ({max_attempts})"


def after_lost_lease(why: str, attempts: int, max_attempts: int, cancel_requested: bool) -> tuple:
    """(next state, reason) when a lease is lost (expired, node stale, never started)."""
    if cancel_requested:
        return "cancelled", f"{why}; cancel was requested"
    if attempts < max_attempts:
        return "queued", f"{why}; requeued for attempt {attempts + 1} of {max_attempts}"
    return "failed", f"{why}; no attempts left ({max_attempts})"
