"""Local file locks on fcntl.flock, with a record of who holds them.

The kernel answers "is it held?": the holder keeps the descriptor open, so the
lock is freed the moment the holder dies, however it dies. The file itself only
carries a JSON record of the holder (host, pid, process start time, boot id,
acquired_at, ttl, purpose) so people and the reaper can see who holds it.

A lock file is never unlinked, by anyone, while it may be in use: unlinking a
flock'd file lets a second process lock a fresh inode under the same name while
the first still holds the old one. Records are cleared by truncating the file,
under the lock. As a second guard, acquire() checks after locking that the path
still names the inode it locked, and starts over if not.

    lock = FileLock("/var/lib/meshkit/locks/memory.lock", ttl=7200, purpose="sync memory")
    with lock.acquired(wait=0):      # LockHeld (naming the holder) if someone has it
        ...
"""

import errno
import fcntl
import json
import os

from meshkit.core.clock import REAL
from meshkit.core.errors import BadRequest, LockHeld, MeshkitError
from meshkit.rules import lockview

RECORD_VERSION = 1
MAX_RECORD = 65536          # bytes of a lock file read; a record is a few hundred
_POLL_FIRST = 0.005         # seconds between tries while waiting, doubling ...
_POLL_MAX = 0.1             # ... up to this


# --- facts about processes and this machine (/proc on Linux; None elsewhere) ---

def hostname() -> str:
    """This machine's name, as socket.gethostname() gives it (gethostname(2) is
    uname's nodename), without importing socket (~2 ms at every `meshkit sync`)."""
    return os.uname().nodename


def boot_id() -> str | None:
    """This boot's random id (Linux); None where there is no /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: start time in clock ticks since boot; None if unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    # Field 2 (comm) is in parentheses and may hold spaces or ')'; fields after it
    # start at 3, so field 22 is index 19 after the last ')'.
    rest = data[data.rfind(b")") + 1:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid) -> bool:
    """True if a process with this pid exists (zombies count as gone)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rfind(b")") + 1:].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


# --- records ---

def parse_record(data: bytes):
    """The holder record in a lock file's bytes: a dict, None if empty, or
    {"unreadable": ...} if the bytes are not a record."""
    text = data.strip()
    if not text:
        return None
    try:
        rec = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"unreadable": f"{len(data)} bytes that are not a JSON record"}
    if not isinstance(rec, dict):
        return {"unreadable": "JSON that is not an object"}
    return rec


def read_record(path: str):
    """The record currently in the lock file at path (see parse_record); None if no file."""
    try:
        with open(path, "rb") as f:
            return parse_record(f.read(MAX_RECORD))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return {"unreadable": "a directory"}


def describe_holder(rec, now: float) -> str:
    """'host H pid P (purpose "x", held 12s)' for messages."""
    if not rec:
        return "an unknown holder (no record)"
    if "unreadable" in rec:
        return f"an unknown holder (record unreadable: {rec['unreadable']})"
    parts = [f"host {rec.get('host', '?')} pid {rec.get('pid', '?')}"]
    extra = []
    if rec.get("purpose"):
        extra.append(f"purpose {json.dumps(rec['purpose'])}")
    at = rec.get("acquired_at")
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        extra.append(f"held {max(0, int(now - at))}s")
        ttl = rec.get("ttl")
        if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0 and now - at > ttl:
            extra.append(f"past its TTL of {ttl:g}s: `meshkit locks reap --kill` ends it")
    if extra:
        parts.append("(" + ", ".join(extra) + ")")
    return " ".join(parts)


def orphaned_command(rec) -> int | None:
    """The pid of the command a dead holder ran under this lock (`locks run`) if it is still
    running on this host (same start time): it works as if it held the lock, so the lock is
    not free until it ends. None otherwise (no record, no command, another host or boot)."""
    child = rec.get("child") if lockview.is_local(rec, hostname(), boot_id()) else None
    if not isinstance(child, dict) or not isinstance(child.get("pid"), int) or child["pid"] == os.getpid():
        return None
    pid = child["pid"]
    alive = pid > 0 and pid_alive(pid)
    return pid if lockview.same_process(child.get("start_time"), alive, process_start_time(pid) if alive else None) \
        else None


def write_record(fd: int, rec) -> None:
    """Overwrite the file's content in place (never a new inode): write, then cut."""
    data = b"" if rec is None else (json.dumps(rec, sort_keys=True) + "\n").encode()
    if data:
        os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def try_flock(fd: int, shared: bool = False) -> bool:
    """One non-blocking try; True if locked."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def kernel_says_held(path: str) -> bool | None:
    """Is the lock at path held by anyone? A shared non-blocking try (so two
    lookers never disturb each other); None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if try_flock(fd, shared=True):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def lock_path(lock_dir: str, name: str, create_dir: bool = False) -> str:
    """lock_dir/NAME.lock for a validated name (BadRequest if it could escape lock_dir)."""
    problem = lockview.name_problem(name)
    if problem:
        raise BadRequest(problem)
    if create_dir:
        try:
            os.makedirs(lock_dir, exist_ok=True)
        except OSError as e:
            raise MeshkitError(f"cannot create lock directory {lock_dir}: {e.strerror}") from None
    return os.path.join(lock_dir, name + ".lock")


def _open_lock_file(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise MeshkitError(f"lock directory {os.path.dirname(path) or '.'} does not exist") from None
    except OSError as e:
        raise MeshkitError(f"cannot open lock file {path}: {e.strerror}") from None


def _same_inode(fd: int, path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class FileLock:
    """An exclusive lock on a file, freed by the kernel when its holder dies.

    Not reentrant: a second FileLock on the same path, even in the same process,
    waits for the first. The descriptor is close-on-exec, so children never hold it.
    """

    def __init__(self, path: str, ttl: float = 7200, purpose: str = "", clock=REAL):
        self.path = os.fspath(path)
        self.ttl = ttl
        self.purpose = purpose
        self.clock = clock
        self.record: dict | None = None
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        return self._fd

    def acquire(self, wait: float | None = 0) -> "FileLock":
        """Take the lock. wait=0 tries once, wait=S retries for S seconds,
        wait=None blocks until free. Raises LockHeld naming the holder."""
        if self._fd is not None:
            raise MeshkitError(f"lock {self.path} is already held by this FileLock")
        deadline = None if wait is None else self.clock.monotonic() + max(0.0, wait)
        pause = _POLL_FIRST
        while True:
            fd = _open_lock_file(self.path)
            orphan = None       # the kernel lock was ours, but a dead holder's command still runs
            try:
                if wait is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    got = True
                else:
                    got = try_flock(fd)
                if got and _same_inode(fd, self.path):
                    orphan = orphaned_command(read_record(self.path))
                    if orphan is None:
                        self._fd, fd = fd, None
                        self._write_own_record()
                        return self
                    got = False     # the dead holder's command still works under this lock: held
            finally:
                if fd is not None:
                    os.close(fd)
            if got:
                continue    # the path was replaced under us: lock the file that is there now
            left = _POLL_MAX if deadline is None else deadline - self.clock.monotonic()
            if left <= 0:
                raise self._held_error(orphan)
            self.clock.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)

    def _held_error(self, orphan: int | None) -> LockHeld:
        """orphan: the pid of a dead holder's command still running, found on the last try
        (the kernel lock was free); None when a live holder has the lock."""
        rec = read_record(self.path)
        if orphan is not None:
            return LockHeld(f"lock {self.path} is free, but the command its holder ran (pid {orphan}) still runs: "
                            f"its holder, {describe_holder(rec, self.clock.time())}, was killed; "
                            "`meshkit locks reap --kill` ends the command", path=self.path, holder=rec)
        return LockHeld(f"lock {self.path} is held by {describe_holder(rec, self.clock.time())}",
                        path=self.path, holder=rec)

    def _write_own_record(self, **extra) -> None:
        pid = os.getpid()
        rec = {"version": RECORD_VERSION, "host": hostname(), "pid": pid,
               "start_time": process_start_time(pid), "boot_id": boot_id(),
               "acquired_at": round(self.clock.time(), 3), "ttl": self.ttl,
               "purpose": self.purpose}
        rec.update(extra)
        write_record(self._fd, rec)
        self.record = rec

    def update(self, **extra) -> None:
        """Add fields to the holder record (e.g. the child a command runs as)."""
        if self._fd is None:
            raise MeshkitError(f"lock {self.path} is not held")
        merged = {k: v for k, v in (self.record or {}).items()
                  if k not in ("version", "host", "pid", "start_time", "boot_id", "ttl", "purpose")}
        # acquired_at is kept: it says since when the lock is held
        merged.update(extra)
        self._write_own_record(**merged)

    def release(self) -> None:
        """Clear the record, then unlock. The file stays (it is never unlinked)."""
        fd, self._fd = self._fd, None
        self.record = None
        if fd is None:
            return
        try:
            write_record(fd, None)
        except OSError:
            pass        # a record left behind is cleaned by the reaper; the unlock matters
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def holder(self):
        """The holder record currently in the file: a dict, or None if empty or no file."""
        return read_record(self.path)

    def acquired(self, wait: float | None = 0) -> "_Held":
        """with lock.acquired(wait=5): ...  (acquire on enter, release on exit)"""
        return _Held(self, wait)

    def __enter__(self) -> "FileLock":
        return self.acquire(wait=None)

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class _Held:
    def __init__(self, lock: FileLock, wait):
        self.lock, self.wait = lock, wait

    def __enter__(self) -> FileLock:
        return self.lock.acquire(self.wait)

    def __exit__(self, *exc) -> None:
        self.lock.release()
