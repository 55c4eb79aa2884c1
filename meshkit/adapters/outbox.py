"""The worker's durable outbox: one atomic JSON file per result not yet acknowledged.

A result is written (temp file, fsync, rename, fsync of the directory) before it is
sent and removed only when the supervisor acknowledges it, so a worker killed at any
point sends it again after a restart; the supervisor's (task, fence) idempotency makes
the resend harmless. One worker per outbox: an fcntl lock on DIR/.lock, held while open.

An entry is two files: NAME.json holds exactly the body the supervisor is sent, and
.NAME.json.local the worker's own fields (LOCAL: the trace id for its log lines), when it has any.
A worker from before the trace id reads every *.json entry and sends it whole; the
supervisor refuses unknown fields (400), so a trace id in NAME.json would have its result
dropped after a downgrade. Such a worker ignores the hidden .local file (a left-over one is
removed when the outbox opens next). An entry written with the trace id inside NAME.json
(the version before this layout) is rewritten in this layout when the outbox opens.
"""

import fcntl
import hashlib
import json
import os
import re

from meshkit.adapters.atomic import write_bytes
from meshkit.core.errors import LockHeld

LOCAL = ("trace_id",)           # an entry's fields for the worker's own log lines: never sent, kept in .NAME.local

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
        self._forget_stray_locals()
        self._move_locals_out()

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
        """Store a result durably; returns its entry name. Replaces one with the same (task, fence).
        Its LOCAL fields go to .NAME.local first (not fsynced: they only name log lines)."""
        name = entry_name(result["task"], result["fence"])
        body = {k: v for k, v in result.items() if k not in LOCAL}
        local = {k: result[k] for k in LOCAL if result.get(k) is not None}
        if local:
            write_bytes(self._local(name), json.dumps(local, separators=(",", ":")).encode(), 0o600, fsync=False)
        else:
            self._unlink(self._local(name))
        write_bytes(os.path.join(self.dir, name), json.dumps(body, separators=(",", ":")).encode(), 0o600)
        self._sync_dir()
        return name

    def remove(self, name: str) -> None:
        gone = self._unlink(os.path.join(self.dir, name))
        self._unlink(self._local(name))
        if gone:
            self._sync_dir()

    def _local(self, name: str) -> str:
        return os.path.join(self.dir, f".{name}.local")

    @staticmethod
    def _unlink(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def _read_local(self, name: str) -> dict:
        """An entry's LOCAL fields from .NAME.local; none if it is missing or unreadable."""
        try:
            with open(self._local(name), "rb") as f:
                local = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        return {k: local[k] for k in LOCAL if k in local} if isinstance(local, dict) else {}

    def _forget_stray_locals(self) -> None:
        """.NAME.local files whose entry is gone (sent by a worker from before them, set aside
        as *.bad, or a crash between the two unlinks of remove())."""
        names = set(os.listdir(self.dir))
        for n in names:
            if n.startswith(".") and n.endswith(".json.local") and n[1:-len(".local")] not in names:
                self._unlink(os.path.join(self.dir, n))

    def _move_locals_out(self) -> None:
        """Entries written with their LOCAL fields inside NAME.json (the layout before .local)
        are rewritten in the current layout, so a downgrade after this start sends them too."""
        for _, result in self.pending():
            if any(k in result for k in LOCAL):
                try:
                    self.put(result)
                except OSError:     # e.g. a full disk: it stays as it is, still read and sent
                    pass

    def set_aside(self, name: str) -> str:
        """Rename an entry NAME.bad, out of the way of the others, for an operator to look at; its path."""
        path = os.path.join(self.dir, name)
        os.replace(path, path + ".bad")
        self._unlink(self._local(name))
        return path + ".bad"

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
                self.on_bad(self.set_aside(name), str(e)[:200])
                continue
            for k, v in self._read_local(name).items():
                result.setdefault(k, v)      # (an entry with them inside keeps its own)
            out.append((name, result))
        out.sort(key=lambda e: (e[1].get("finished_at") or 0, e[0]))
        return out

    def __len__(self) -> int:
        return sum(1 for n in os.listdir(self.dir) if n.endswith(".json") and not n.startswith("."))
