"""sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET.

systemd (Type=notify) passes NOTIFY_SOCKET (a path, or "@name" for an abstract socket)
and, with WatchdogSec=, WATCHDOG_USEC (and WATCHDOG_PID). With no NOTIFY_SOCKET every
call is a no-op, so the roles call it unconditionally.

- ready(status):    READY=1 once serving
- watchdog(status): WATCHDOG=1 at most every WATCHDOG_USEC/2; the role calls it from its
                    step loop, so a loop that is stuck stops the pings and systemd kills it
- status(text):     STATUS= one line for `systemctl status`
- stopping():       STOPPING=1 when shutdown begins
"""

import os
import socket
import threading

from meshkit.core.clock import REAL

ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def socket_address(value: str):
    """NOTIFY_SOCKET as an address for sendto: '@name' is the abstract name '\\0name'."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


class Notifier:
    def __init__(self, address: str = "", watchdog_usec: int = 0, clock=REAL):
        self.address = address
        self.interval = watchdog_usec / 2e6 if watchdog_usec > 0 else 0.0   # seconds between pings
        self.clock = clock
        self.next_ping = 0.0
        self.last_status = None
        self.sent = 0
        self.errors = 0
        self._sock = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ=None, clock=REAL, unset: bool = True) -> "Notifier":
        """Read (and by default remove, so task subprocesses don't inherit it) systemd's
        variables. WATCHDOG_USEC counts only if WATCHDOG_PID is unset or this process."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if unset:
            for k in ENV_KEYS:
                env.pop(k, None)
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        return cls(address, watchdog, clock)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """One datagram of KEY=VALUE lines; False (never an exception) if it could not go."""
        if not self.address:
            return False
        data = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, socket_address(self.address))
                self.sent += 1
                return True
            except OSError:
                self.errors += 1
                return False

    def _with_status(self, fields: list, status) -> list:
        if status is not None:
            line = one_line(status)
            if line != self.last_status:
                self.last_status = line
                fields.append(f"STATUS={line}")
        return fields

    def ready(self, status: str | None = None) -> bool:
        self.next_ping = self.clock.monotonic() + self.interval
        return self.send(*self._with_status(["READY=1"], status))

    def status(self, text: str) -> bool:
        fields = self._with_status([], text)
        return self.send(*fields) if fields else False

    def watchdog(self, status: str | None = None) -> bool:
        """WATCHDOG=1 if half the watchdog timeout passed since the last one (STATUS too if
        it changed); else only a changed STATUS. True if a ping went out."""
        now = self.clock.monotonic()
        if self.interval and now >= self.next_ping:
            self.next_ping = now + self.interval
            return self.send(*self._with_status(["WATCHDOG=1"], status))
        if status is not None:
            self.status(status)
        return False

    def stopping(self, status: str | None = None) -> bool:
        return self.send(*self._with_status(["STOPPING=1"], status))

    def max_delay(self, delay: float) -> float:
        """A loop's delay, shortened so the next ping is not late."""
        return min(delay, self.interval) if self.interval else delay

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
