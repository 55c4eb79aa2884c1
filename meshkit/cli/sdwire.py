"""systemd notifications for roles whose loop is a step() method (the worker): wraps the
step so that READY=1 goes out when the loop starts, WATCHDOG=1 after every step (a loop
that is stuck stops pinging), STATUS= with a one-line summary and STOPPING=1 once the
role drains or aborts. Without NOTIFY_SOCKET nothing is wrapped."""

from meshkit.adapters import sdnotify


def worker_status(worker) -> str:
    return (f"{len(worker.jobs)}/{worker.s.slots} slots busy, {len(worker.unacked)} results unacknowledged, "
            f"supervisor {worker.link.url}" + (", draining" if worker.draining else ""))


def wire_worker(worker, notifier=None, status=worker_status):
    """Wrap worker.step (returns a delay, or None when the worker may exit)."""
    n = notifier if notifier is not None else sdnotify.Notifier.from_env()
    if not n.enabled:
        return n
    step = worker.step
    said = {"ready": False, "stopping": False}

    def notified_step():
        if not said["ready"]:
            said["ready"] = True
            n.ready(status(worker))
        delay = step()
        if not said["stopping"] and (worker.draining or worker.aborted is not None):
            said["stopping"] = True
            n.stopping(status(worker))
        if delay is None:
            return None
        n.watchdog(status(worker))
        return n.max_delay(delay)

    worker.step = notified_step
    return n
