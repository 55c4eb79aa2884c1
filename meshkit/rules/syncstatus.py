"""Sync job status: results, the status record kept per job, and when to alert.

A run ends with one result:
  ok          a new snapshot was made, validated and made current
  unchanged   nothing changed since the current snapshot (no new snapshot)
  warning     like ok (or unchanged), but rsync said some files vanished while it ran
              (exit 24), or it skipped symlinks that point outside the source
  invalid     the new copy failed validation; it was kept aside, current unchanged
  refused     the deletion guard refused (source empty, missing, mass deletion)
  failed      rsync (or ssh) failed, or the copy could not be written
The first three are successes. A run that finds the job's lock held records nothing.

Alerts: on every failed run, and on the first success after failures (recovery).
The event carries consecutive_failures so an alert command can rate-limit.
"""

SUCCESS = ("ok", "unchanged", "warning")
FAILURE = ("invalid", "refused", "failed")
RESULTS = SUCCESS + FAILURE

STATUS_KEYS = ("job", "last_success", "last_failure", "consecutive_failures",
               "last_result", "last_error", "last_run")


def is_success(result: str) -> bool:
    return result in SUCCESS


def empty_status(job: str) -> dict:
    return {"job": job, "last_success": None, "last_failure": None, "consecutive_failures": 0,
            "last_result": None, "last_error": None, "last_run": None}


def next_status(prev: dict | None, job: str, result: str, error: str | None, now: float,
                extra: dict | None = None) -> tuple[dict, dict | None]:
    """(the new status record, the alert event to send or None).

    Times are Unix seconds. prev may be None or a record from an older version
    (missing keys are taken as empty)."""
    if result not in RESULTS:
        raise ValueError(f"unknown sync result {result!r}")
    base = empty_status(job)
    if isinstance(prev, dict):
        base.update({k: prev[k] for k in STATUS_KEYS if k in prev})
    failures = base["consecutive_failures"]
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 0:
        failures = 0
    now = round(now, 3)
    status = dict(base, job=job, last_result=result, last_run=now)
    if extra:
        status.update({k: v for k, v in extra.items() if k not in STATUS_KEYS})
    event = None
    if is_success(result):
        status.update(last_success=now, consecutive_failures=0, last_error=None)
        if failures:
            event = {"event": "sync_recovered", "failures_before": failures}
    else:
        status.update(last_failure=now, consecutive_failures=failures + 1, last_error=error)
        event = {"event": "sync_failed"}
    if event is not None:
        event.update(job=job, result=result, error=status["last_error"], time=now,
                     consecutive_failures=status["consecutive_failures"],
                     last_success=status["last_success"])
        event.update({k: v for k, v in (extra or {}).items() if k not in event})
    return status, event
