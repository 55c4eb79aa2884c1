"""What an operator sees of the supervisor, refreshed once per maintenance cycle:
systemd notifications (READY, WATCHDOG from the step loop, STATUS, STOPPING)."""

from meshkit.adapters import sdnotify
from meshkit.core.errors import MeshkitError


def status_line(st: dict) -> str:
    """One line for `systemctl status`: role, epoch, mode, nodes, tasks."""
    nodes = st.get("nodes", [])
    alive = sum(1 for n in nodes if n.get("state") == "alive")
    t = st.get("tasks", {})
    return (f"{st.get('role')} epoch {st.get('epoch')}, mode {st.get('mode')}: {alive}/{len(nodes)} nodes alive, "
            f"{t.get('queued', 0)} queued, {t.get('leased', 0) + t.get('running', 0)} running, "
            f"{t.get('failed', 0)} failed")


class Ops:
    def __init__(self, sup, notifier=None):
        self.sup = sup
        self.notify = notifier if notifier is not None else sdnotify.Notifier.from_env(clock=sup.clock)
        self.last_status = None

    def _status(self):
        try:
            self.last_status = self.sup.status()
        except MeshkitError as e:
            self.sup.log.error("status_failed", error=e.message)
            return None
        return self.last_status

    def ready(self) -> None:
        st = self._status()
        self.notify.ready(f"serving {self.sup.url}; " + (status_line(st) if st else "status unavailable"))

    def cycle(self) -> None:
        """After each maintenance step: the watchdog ping (only a loop that runs sends it)."""
        st = self._status()
        self.notify.watchdog(status_line(st) if st else "status unavailable")

    def next_delay(self, delay: float) -> float:
        """The step delay, shortened so that a watchdog ping is never late."""
        return self.notify.max_delay(delay)

    def stopping(self) -> None:
        self.notify.stopping("shutting down: draining requests in flight")
