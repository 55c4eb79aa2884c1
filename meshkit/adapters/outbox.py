"""The worker's durable outbox: one atomic JSON file per result not yet acknowledged.

A result is written (temp file, fsync, rename, fsync of the directory) before it is
sent and removed only when the supervisor acknowledges it, so a worker killed at any
point sends it again after a restart; the supervisor's (task, fence) idempotency makes
the resend harmless. One worker per outbox: an fcntl lock on DIR/.lock, held while open.
"""

import fcntl
import hashlib
import json
import os
import re

from meshkit.adapters.atomic import write_bytes
from meshkit.core.errors import LockHeld


def entry_name(task, fence) -> str:
    task = str(task)
    safe = task if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", task) else hashlib.sha256(task.encode()).hexdigest()[:40]
    return f"{safe}.{int(fence)}.json"


class Outbox:
    def __init__(self, directory: str, on_bad=None):
        self.dir = directory
        self.on_bad = on_bad or (lambda path, why: None)     # told of each entry set aside as *.bad
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LockHeld(f"another worker is using the outbox in {directory}") from None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, result: dict) -> str:
        """Store a result durably; returns its entry name. Replaces one with the same (task, fence)."""
        name = entry_name(result["task"], result["fence"])
        write_bytes(os.path.join(self.dir, name), json.dumps(result, separators=(",", ":")).encode(), 0o600)
        self._sync_dir()
        return name

    def remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            return
        self._sync_dir()

    def pending(self) -> list:
        """[(entry name, result)] oldest first (by finished_at). Unreadable entries are skipped
        and renamed *.bad so an operator can look (they never block the others)."""
        out = []
        for name in os.listdir(self.dir):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.dir, name)
            try:
                with open(path, "rb") as f:
                    result = json.loads(f.read())
                if not isinstance(result, dict) or "task" not in result or "fence" not in result:
                    raise ValueError("not a result")
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                os.replace(path, path + ".bad")
                self.on_bad(path + ".bad", str(e)[:200])
                continue
            out.append((name, result))
        out.sort(key=lambda e: (e[1].get("finished_at") or 0, e[0]))
        return out

    def __len__(self) -> int:
        return sum(1 for n in os.listdir(self.dir) if n.endswith(".json") and not n.startswith("."))
