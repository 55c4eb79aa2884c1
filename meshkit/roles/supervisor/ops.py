"""What an operator sees of the supervisor, refreshed once per maintenance cycle:
systemd notifications (READY, WATCHDOG from the step loop, STATUS, STOPPING), the
memory guard (limits.rss_soft_mb / rss_hard_mb: shed, or exit 70 for systemd to restart),
the status files (HEARTBEAT.md, LOAD_STATUS.json) and the cycle's /metrics gauges."""

import gc

from meshkit import __version__
from meshkit.adapters import procself, sdnotify
from meshkit.core import metrics as m
from meshkit.core.errors import MeshkitError
from meshkit.roles.supervisor import statusfiles
from meshkit.rules import memguard, modes

MB = memguard.MB
# Every mode meshkit_mode shows, 1 for the current one and 0 for the others (a series that
# vanished could not be alerted on: `meshkit_mode{mode="normal"} < 1`).
MODES = tuple(modes.SEVERITY) + ("maintenance",)


def status_line(st: dict) -> str:
    """One line for `systemctl status`: role, epoch, mode, nodes, tasks."""
    nodes = st.get("nodes", [])
    alive = sum(1 for n in nodes if n.get("state") == "alive")
    t = st.get("tasks", {})
    return (f"{st.get('role')} epoch {st.get('epoch')}, mode {st.get('mode')}: {alive}/{len(nodes)} nodes alive, "
            f"{t.get('queued', 0)} queued, {t.get('leased', 0) + t.get('running', 0)} running, "
            f"{t.get('failed', 0)} failed")


class Ops:
    def __init__(self, sup, notifier=None, rss=procself.rss_bytes):
        self.sup = sup
        self.notify = notifier if notifier is not None else sdnotify.Notifier.from_env(clock=sup.clock)
        self.last_status = None
        self.read_rss = rss
        self.soft, self.hard = memguard.limits(sup.cfg.get("limits.rss_soft_mb"), sup.cfg.get("limits.rss_hard_mb"))
        self.rss = None
        self.memory = memguard.OK
        self.files_failing = False
        reg = sup.api.registry
        self.mode_gauge = reg.add(m.Gauge("meshkit_mode", "the supervisor's degradation mode (1 = current, 0 = not)",
                                          ("mode",)))
        self.update_mode(sup.brain.mode_state.mode)
        self.rss_gauge = reg.add(m.Gauge("meshkit_process_resident_memory_bytes", "the supervisor's resident memory"))
        self.guard_gauge = reg.add(m.Gauge("meshkit_memory_guard", "memory guard decision (1 = current)", ("state",)))
        reg.add(m.Gauge("meshkit_build_info", "meshkit version", ("version",))).set(1, __version__)

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
        """After each maintenance step: memory guard, then the watchdog ping (only a loop
        that runs sends it, and not once the guard decided to exit)."""
        if self.guard() == memguard.EXIT:
            return
        st = self._status()
        self.update_metrics(st)
        if st:
            self.write_files(st)
        self.notify.watchdog(status_line(st) if st else "status unavailable")

    def memory_view(self) -> dict:
        return {"rss_bytes": self.rss, "soft_bytes": self.soft or None, "hard_bytes": self.hard or None,
                "state": self.memory}

    def write_files(self, st: dict) -> None:
        """HEARTBEAT.md and LOAD_STATUS.json; a failure is logged once, not every cycle."""
        try:
            statusfiles.write(self.sup.data_dir, st, self.sup.clock.time(), self.memory_view())
        except OSError as e:
            if not self.files_failing:
                self.sup.log.error("status_files_failed", error=f"{e.strerror or e}", data_dir=self.sup.data_dir)
            self.files_failing = True
            return
        if self.files_failing:
            self.sup.log.info("status_files_ok", data_dir=self.sup.data_dir)
        self.files_failing = False

    def update_metrics(self, st) -> None:
        """Gauges /metrics shows that come from the cycle (tasks and nodes come at scrape time)."""
        if st:
            self.update_mode(str(st.get("mode")))
        if self.rss:
            self.rss_gauge.set(self.rss)
        self.guard_gauge.replace({(s,): float(s == self.memory) for s in (memguard.OK, memguard.SHED, memguard.EXIT)})

    def update_mode(self, current: str) -> None:
        """meshkit_mode: every mode, 1 for the current one (one meshkit does not know is added)."""
        self.mode_gauge.replace({(mode,): float(mode == current) for mode in dict.fromkeys(MODES + (current,))})

    def guard(self) -> str:
        """Read RSS, decide, act: shed = collect garbage (logged when it starts); exit = ask
        the run loop to stop with memguard.EXIT_CODE (a clean shutdown follows)."""
        rss = self.read_rss()
        decision = memguard.decide(rss, self.soft, self.hard)
        if decision != memguard.OK:
            gc.collect()
            rss = self.read_rss()
            decision = memguard.decide(rss, self.soft, self.hard)
        self.rss = rss
        fields = {"rss_mb": round(rss / MB, 1) if rss else None, "soft_mb": self.soft // MB or None,
                  "hard_mb": self.hard // MB or None}
        if decision == memguard.EXIT:
            self.sup.log.error("memory_limit_exceeded", exit_code=memguard.EXIT_CODE, **fields)
            self.sup.exit_code = memguard.EXIT_CODE
        elif decision != self.memory:
            log = self.sup.log.warning if decision == memguard.SHED else self.sup.log.info
            log("memory_shed" if decision == memguard.SHED else "memory_ok", **fields)
        self.memory = decision
        return decision

    def next_delay(self, delay: float) -> float:
        """The step delay, shortened so that a watchdog ping is never late."""
        return self.notify.max_delay(delay)

    def stopping(self) -> None:
        self.notify.stopping("shutting down: draining requests in flight")
