"""Run one task attempt as a subprocess in a fresh directory, and make sure it ends.

The child runs in a session and process group of its own, with task.json (the payload)
on stdin, its stdout/stderr kept as bounded tails, and a per-attempt marker in its
environment. Ending it (timeout, cancel, shutdown): SIGTERM to the group and to every
process carrying the marker (descendants that escaped with setsid or setpgid), a grace
period, then SIGKILL to both. Processes of an attempt never outlive it: leftovers
after a normal exit are ended the same way (with a short grace).

Known limit: a descendant that leaves the group AND clears its environment cannot be
found (and without /proc, e.g. on macOS, only the group is signalled).
"""

import hashlib
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass

from meshkit.core.clock import REAL

MARKER_ENV = "MESHKIT_RUN_MARKER"
PROC = "/proc"
READ_CHUNK = 65536
LEFTOVER_GRACE = 1.0          # seconds a leftover of a finished attempt gets after SIGTERM
ARTIFACT_MAX = 16 * 1024 * 1024


@dataclass
class Attempt:
    task_id: str
    attempt: int
    trace_id: str
    argv: tuple
    task_dir: str
    marker: str
    timeout: float | None = None
    env: dict | None = None       # added to the worker's environment (a kind's env)


@dataclass
class Finished:
    ended_by: str                 # exit | timeout | cancel | signal | error
    exit_code: int | None
    signal: int | None
    stdout_tail: str
    stderr_tail: str
    started_at: float
    finished_at: float
    error: str | None = None      # why it could not start


class Tail:
    """The last `limit` bytes written."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        self.buf += data
        extra = len(self.buf) - self.limit
        if extra > 0:
            del self.buf[:extra]
            self.dropped += extra

    def text(self) -> str:
        data = bytes(self.buf)
        if self.dropped:   # do not start in the middle of a UTF-8 sequence
            i = 0
            while i < min(3, len(data)) and 0x80 <= data[i] <= 0xBF:
                i += 1
            data = data[i:]
        return data.decode("utf-8", errors="replace")


# ---- finding an attempt's processes by their marker ----

def marker_prefix(work_dir: str) -> str:
    """The marker prefix of every attempt run from work_dir (to find orphans after a restart)."""
    return hashlib.sha256(os.path.abspath(work_dir).encode()).hexdigest()[:12] + "."


def new_marker(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def find_marked(prefix: str, proc: str = PROC) -> list:
    """PIDs (not this process) whose environment has MARKER_ENV starting with prefix."""
    needle = f"{MARKER_ENV}={prefix}".encode()
    me, found = os.getpid(), []
    try:
        names = os.listdir(proc)
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(os.path.join(proc, name, "environ"), "rb") as f:
                env = f.read()
        except OSError:
            continue
        if any(var.startswith(needle) for var in env.split(b"\0")):
            found.append(int(name))
    return found


def signal_marked(prefix: str, sig: int, proc: str = PROC) -> list:
    pids = find_marked(prefix, proc)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- task directories and what a task leaves in them ----

def dir_name(task_id: str, attempt: int, fence: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(task_id))[:80] or "task"
    return f"{safe}.{int(attempt)}.{int(fence)}"


def prepare_dir(root: str, name: str, payload) -> str:
    """A fresh, empty directory root/name holding task.json (the payload)."""
    path = os.path.join(root, name)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    with open(os.path.join(path, "task.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f)
    return path


def resolve_inside(task_dir: str, rel: str) -> str | None:
    """The real path of rel under task_dir, or None if it escapes (.., absolute, symlink)."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\0" in rel:
        return None
    root = os.path.realpath(task_dir)
    full = os.path.realpath(os.path.join(root, rel))
    return full if os.path.commonpath([root, full]) == root and full != root else None


def _load_json(path: str, max_bytes: int) -> tuple:
    """(value, error text)"""
    size = os.path.getsize(path)
    if size > max_bytes:
        return None, f"larger than {max_bytes} bytes ({size})"
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    try:
        return json.loads(raw), None
    except ValueError as e:
        return None, f"not JSON ({e})"


def read_result(task_dir: str, max_bytes: int) -> tuple:
    """(result, error): result.json parsed; (None, None) when there is none."""
    path = resolve_inside(task_dir, "result.json")
    if path is None:
        return None, "result.json invalid: it points outside the task directory"
    if not os.path.isfile(path):
        return None, None
    try:
        value, err = _load_json(path, max_bytes)
    except OSError as e:
        return None, f"result.json invalid: {e.strerror}"
    return (value, None) if err is None else (None, f"result.json invalid: {err}")


def check_expects(task_dir: str, expects) -> str | None:
    """None if the expected artifact is there, parses as JSON and holds the keys."""
    if not expects:
        return None
    rel, keys = expects.get("path"), expects.get("keys") or []
    path = resolve_inside(task_dir, rel)
    if path is None:
        return f"artifact invalid: {rel!r} is not a path inside the task directory"
    if not os.path.isfile(path):
        return "artifact missing"
    try:
        value, err = _load_json(path, ARTIFACT_MAX)
    except OSError as e:
        return f"artifact invalid: {e.strerror}"
    if err:
        return f"artifact invalid: {err}"
    if keys and not isinstance(value, dict):
        return "artifact invalid: not a JSON object"
    missing = [k for k in keys if k not in value]
    return f"artifact invalid: missing keys {', '.join(missing)}" if missing else None


def clean_old_dirs(root: str, older_than: float, now: float, keep=()) -> list:
    """Remove directories under root last modified more than older_than seconds ago."""
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for e in entries:
        try:
            if e.name in keep or not e.is_dir(follow_symlinks=False):
                continue
            if now - e.stat(follow_symlinks=False).st_mtime > older_than:
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.name)
        except OSError:
            continue
    return removed


# ---- one attempt ----

class Run:
    """One attempt. run() blocks until every process of it has ended; cancel() from any thread."""

    def __init__(self, attempt: Attempt, grace: float, tail_bytes: int, clock=REAL, proc: str = PROC):
        self.a = attempt
        self.grace = grace
        self.clock = clock
        self.proc_root = proc
        self.out, self.err = Tail(tail_bytes), Tail(tail_bytes)
        self.pid = None
        self.started = threading.Event()
        self._ending = None             # ended_by asked for by cancel()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False

    def cancel(self, ended_by: str = "cancel") -> None:
        with self._lock:
            if self._ending is None:
                self._ending = ended_by
            if not self._closed:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(self.a.env or {})
        env.update({"MESHKIT_TASK_ID": str(self.a.task_id), "MESHKIT_TASK_DIR": self.a.task_dir,
                    "MESHKIT_ATTEMPT": str(self.a.attempt), "MESHKIT_TRACE_ID": str(self.a.trace_id or ""),
                    MARKER_ENV: self.a.marker})
        return env

    def run(self) -> Finished:
        try:
            return self._run()
        finally:
            with self._lock:
                self._closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _run(self) -> Finished:
        started = self.clock.time()
        try:
            with open(os.path.join(self.a.task_dir, "task.json"), "rb") as stdin:
                p = subprocess.Popen(list(self.a.argv), cwd=self.a.task_dir, env=self.env(), stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except (OSError, ValueError) as e:
            self.started.set()
            return Finished("error", None, None, "", "", started, self.clock.time(),
                            f"cannot start {self.a.argv[0]}: {getattr(e, 'strerror', None) or e}")
        started = self.clock.time()
        self.pid = p.pid
        self.started.set()
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ, self.out)
        sel.register(p.stderr, selectors.EVENT_READ, self.err)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        pidfd = self._open_pidfd(p.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, None)
        try:
            ended_by = self._watch(p, sel, pidfd is not None)
            if ended_by is not None:
                self._end(p, sel, self.grace)
            elif find_marked(self.a.marker, self.proc_root):
                self._end(p, sel, min(self.grace, LEFTOVER_GRACE))
            self._drain(sel, 1.0)
        finally:
            sel.close()
            for f in (p.stdout, p.stderr):
                f.close()
            if pidfd is not None:
                os.close(pidfd)
        code = p.wait()
        return Finished(ended_by or ("exit" if code >= 0 else "signal"),
                        code if code >= 0 else None, -code if code < 0 else None,
                        self.out.text(), self.err.text(), started, self.clock.time())

    @staticmethod
    def _open_pidfd(pid: int):
        try:
            return os.pidfd_open(pid)
        except (AttributeError, OSError):
            return None

    def _read_ready(self, sel, timeout) -> None:
        for key, _ in sel.select(timeout):
            if key.fd == self._wake_r:
                os.read(self._wake_r, 512)
            elif key.data is None:    # the pidfd: the child has exited; it stays readable
                sel.unregister(key.fileobj)
            else:
                data = os.read(key.fd, READ_CHUNK)
                if data:
                    key.data.add(data)
                else:
                        sel.unregister(key.fileobj)

    def _pipes_open(self, sel) -> bool:
        return any(k.data is not None for k in sel.get_map().values())

    def _watch(self, p, sel, has_pidfd: bool):
        """Until the child exits (None), or the attempt must be ended (its ended_by)."""
        deadline = self.clock.monotonic() + self.a.timeout if self.a.timeout else None
        while True:
            if p.poll() is not None:
                return None
            if self._ending is not None:
                return self._ending
            now = self.clock.monotonic()
            if deadline is not None and now >= deadline:
                return "timeout"
            timeout = None if has_pidfd else (0.5 if self._pipes_open(sel) else 0.05)
            if deadline is not None:
                timeout = deadline - now if timeout is None else min(timeout, deadline - now)
            self._read_ready(sel, timeout)

    def _alive(self, p) -> bool:
        return p.poll() is None or bool(find_marked(self.a.marker, self.proc_root))

    def _end(self, p, sel, grace: float) -> None:
        """SIGTERM the group and the marked, wait up to grace, SIGKILL whatever is left."""
        self._signal_all(p.pid, signal.SIGTERM)
        until = self.clock.monotonic() + grace
        while self._alive(p) and self.clock.monotonic() < until:
            self._read_ready(sel, min(0.05, max(0.0, until - self.clock.monotonic())))
        for _ in range(20):   # a process may fork while being killed: repeat until none is left
            self._signal_all(p.pid, signal.SIGKILL)
            self._read_ready(sel, 0.02)
            if p.poll() is not None and not find_marked(self.a.marker, self.proc_root):
                break

    def _signal_all(self, pgid: int, sig: int) -> None:
        """The group, and each marked process outside it (once: a second SIGTERM can
        hit a child in its interpreter's shutdown, when handlers are back to default)."""
        _signal_group(pgid, sig)
        for pid in find_marked(self.a.marker, self.proc_root):
            try:
                if os.getpgid(pid) != pgid:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _drain(self, sel, seconds: float) -> None:
        """Read what is left in the pipes (bounded: a stray holder cannot block us)."""
        until = self.clock.monotonic() + seconds
        while self._pipes_open(sel) and self.clock.monotonic() < until:
            self._read_ready(sel, min(0.05, max(0.0, until - self.clock.monotonic())))
