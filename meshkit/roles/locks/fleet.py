"""A fleet-wide lease held through the supervisor, with the same interface as FileLock
so `locks run --fleet NAME` reuses the local runner.

While the command runs, a thread renews the lease every ttl/3. If a renewal is refused
(the lease expired and was granted to someone else), the command is sent SIGTERM:
whoever holds a newer fencing token owns the resource now.
"""

import os
import signal
import sys
import threading

from meshkit.adapters.locks import hostname
from meshkit.core.clock import REAL
from meshkit.core.errors import ApiError, ClientError, LockHeld


class FleetLease:
    def __init__(self, client, name: str, ttl: float = 60.0, purpose: str = "", clock=REAL, logger=None,
                 node: str = ""):
        self.client, self.name, self.ttl, self.purpose = client, name, float(ttl), purpose
        self.clock, self.log = clock, logger
        # NODE:PID; a key bound to nodes may hold a lease only as one of them (worker.name, else the hostname)
        self.holder = f"{node or hostname()}:{os.getpid()}"
        self.token = None
        self.path = f"fleet:{name}"
        self.env = {}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def acquire(self, wait=0) -> None:
        deadline = self.clock.monotonic() + (float("inf") if wait is None else wait)
        body = {"holder": self.holder, "ttl": self.ttl, "purpose": self.purpose[:200]}
        while True:
            try:
                got = self.client.call("POST", f"/v1/leases/{self.name}/acquire", body)
                break
            except ApiError as e:
                if e.code != "lock_held":
                    raise
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    raise LockHeld(e.message.replace(" (HTTP 409)", ""), lease=e.details.get("lease")) from None
                self.clock.sleep(min(1.0, remaining))
        self.token = got["token"]
        self.env = {"MESHKIT_FENCING_TOKEN": str(self.token), "MESHKIT_LEASE": self.name}
        sys.stderr.write(f"meshkit: fleet lease {self.name} granted, fencing token {self.token}\n")
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        body = {"holder": self.holder, "token": self.token, "ttl": self.ttl}
        while not self._stop.wait(self.ttl / 3):
            try:
                self.client.call("POST", f"/v1/leases/{self.name}/renew", body)
            except ApiError as e:
                if e.code == "stale_fence":
                    self.lost.set()
                    sys.stderr.write(f"meshkit: fleet lease {self.name} lost: {e.message}; stopping the command\n")
                    os.kill(os.getpid(), signal.SIGTERM)     # the runner forwards it to the command
                    return
            except ClientError as e:     # supervisor unreachable: keep trying until the lease would expire
                sys.stderr.write(f"meshkit: fleet lease {self.name}: renewal failed ({e.message}); retrying\n")

    def update(self, **fields) -> None:
        """FileLock records its holder's child; the supervisor knows the holder already."""

    def release(self) -> None:
        self._stop.set()
        if self.token is None or self.lost.is_set():
            return
        try:
            self.client.call("POST", f"/v1/leases/{self.name}/release", {"holder": self.holder, "token": self.token})
        except (ApiError, ClientError) as e:
            sys.stderr.write(f"meshkit: fleet lease {self.name}: release failed ({e.message}); it expires by itself\n")
