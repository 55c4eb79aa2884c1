"""Look at a directory of lock files and reap what is safe to reap.

Observation (kernel try, record, /proc facts) happens here; the decisions are
meshkit.rules.lockview's. The reaper never unlinks a lock file: a stale record is
truncated while the reaper itself holds the kernel lock (a non-blocking try, so a
live holder is never waited for or disturbed). A hung holder on this host is
reported; with kill=True it is ended with SIGTERM, a grace period, then SIGKILL,
and its start time is checked before each signal so a reused pid is never hit.
Records from another host or an earlier boot are never touched.

The supervisor calls reap() on its own lock dir every cycle.
"""

import fcntl
import json
import os
import signal
import subprocess

from meshkit.adapters.locks import (MAX_RECORD, boot_id, describe_holder, hostname, kernel_says_held,
                                    parse_record, pid_alive, process_start_time, read_record,
                                    try_flock, write_record)
from meshkit.core.clock import REAL
from meshkit.core.errors import MeshkitError
from meshkit.rules import lockview

LOCK_SUFFIX = ".lock"
_OBSERVE_TRIES = 3          # re-read if the record changed while we looked
_POLL = 0.05                # seconds between checks while a process is ending
_AFTER_KILL = 2.0           # seconds to wait for a SIGKILLed process to vanish


def lock_files(lock_dir: str) -> list[str]:
    """Paths of the lock files (NAME.lock, regular files) in lock_dir, sorted."""
    try:
        names = sorted(os.listdir(lock_dir))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise MeshkitError(f"lock directory {lock_dir} is not a directory") from None
    except OSError as e:
        raise MeshkitError(f"cannot read lock directory {lock_dir}: {e.strerror}") from None
    out = []
    for n in names:
        p = os.path.join(lock_dir, n)
        if n.endswith(LOCK_SUFFIX) and not n.startswith(".") and os.path.isfile(p) and not os.path.islink(p):
            out.append(p)
    return out


def lock_name(path: str) -> str:
    base = os.path.basename(path)
    return base[:-len(LOCK_SUFFIX)] if base.endswith(LOCK_SUFFIX) else base


def _child_alive(record) -> bool:
    child = record.get("child") if lockview.usable(record) else None
    if not isinstance(child, dict) or not isinstance(child.get("pid"), int):
        return False
    pid = child["pid"]
    alive = pid_alive(pid)
    return lockview.same_process(child.get("start_time"), alive, process_start_time(pid) if alive else None)


def observe(path: str) -> dict | None:
    """Plain facts about one lock file; None if it vanished."""
    for _ in range(_OBSERVE_TRIES):
        record = read_record(path)
        held = kernel_says_held(path)
        if held is None:
            return None
        if read_record(path) == record:
            break
    pid = record.get("pid") if lockview.usable(record) else None
    alive = pid_alive(pid) if pid is not None else False
    return {"record": record, "kernel_says_held": held, "pid_alive": alive,
            "pid_start_time": process_start_time(pid) if alive else None,
            "child_alive": _child_alive(record)}


def inspect(lock_dir: str, ttl, override_ttl: bool = False, clock=REAL) -> list[dict]:
    """Every lock in lock_dir with its state: [{lock, path, state, reason, holder, ...}]."""
    me, boot, now = hostname(), boot_id(), clock.time()
    out = []
    for path in lock_files(lock_dir):
        obs = observe(path)
        if obs is None:
            continue
        view = lockview.classify(obs["record"], obs["kernel_says_held"], obs["pid_alive"],
                                 obs["pid_start_time"], me, boot, now, ttl,
                                 override_ttl=override_ttl, child_alive=obs["child_alive"])
        view.update(lock=lock_name(path), path=path, holder=obs["record"],
                    purpose=obs["record"].get("purpose") if lockview.usable(obs["record"]) else None)
        out.append(view)
    return out


def clear_stale(path: str, this_host: str, this_boot_id) -> tuple[bool, str]:
    """Truncate a stale record, only while holding the kernel lock ourselves.
    Returns (done, why). Never creates, never unlinks."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, "lock file is gone"
    except OSError as e:
        return False, f"cannot open: {e.strerror}"
    try:
        if not try_flock(fd):
            return False, "the lock was taken meanwhile: it is held, not stale"
        try:
            record = parse_record(os.pread(fd, MAX_RECORD, 0))
            if record is None:
                return False, "record already empty"
            if lockview.usable(record) and not lockview.is_local(record, this_host, this_boot_id):
                return False, "the record now in the file is another host's: left alone"
            if lockview.usable(record) and _child_alive(record):
                return False, "the record's command still runs: kept"
            write_record(fd, None)
            return True, "record cleared under the kernel lock"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _same(pid: int, start) -> bool:
    alive = pid_alive(pid)
    return lockview.same_process(start, alive, process_start_time(pid) if alive else None)


def _signal(pid: int, start, sig, group: bool = False) -> bool:
    """Send sig if pid is still the recorded process (start time checked right before)."""
    if not _same(pid, start):
        return False
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(pid: int, start, seconds: float, clock) -> bool:
    deadline = clock.monotonic() + seconds
    for _ in range(int(seconds / _POLL) + 2):
        if not _same(pid, start):
            return True
        if clock.monotonic() >= deadline:
            break
        clock.sleep(_POLL)
    return not _same(pid, start)


def end_process(record, grace: float, clock=REAL, holder: bool = True) -> list[str]:
    """End the holder in record (if holder) and the command it runs: SIGTERM, grace,
    SIGKILL. Returns the steps taken, e.g. ["SIGTERM pid 12", "ended"]."""
    steps = []
    targets = []
    pid, start = record.get("pid"), record.get("start_time")
    if holder and isinstance(pid, int) and pid > 0 and pid != os.getpid():
        targets.append((pid, start, False))
    child = record.get("child")
    if (isinstance(child, dict) and isinstance(child.get("pid"), int) and child["pid"] > 0
            and child["pid"] != os.getpid()):
        targets.append((child["pid"], child.get("start_time"), bool(child.get("group"))))
    if not targets:
        return ["no process to signal"]
    for tpid, tstart, group in targets:
        if _signal(tpid, tstart, signal.SIGTERM, group):
            steps.append(f"SIGTERM {'group' if group else 'pid'} {tpid}")
    for tpid, tstart, group in targets:
        if _wait_gone(tpid, tstart, grace, clock):
            continue
        if _signal(tpid, tstart, signal.SIGKILL, group):
            steps.append(f"SIGKILL {'group' if group else 'pid'} {tpid}")
        _wait_gone(tpid, tstart, _AFTER_KILL, clock)
    gone = all(not _same(p, s) for p, s, _ in targets)
    steps.append("ended" if gone else "still running")
    return steps


def command_alert(argv: list, timeout: float = 30):
    """An alert function that runs argv with the event as JSON on stdin (best effort)."""
    def alert(event: dict) -> str:
        if not argv:
            return "no alert command configured"
        try:
            r = subprocess.run(argv, input=json.dumps(event, sort_keys=True).encode(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=timeout, close_fds=True)
            return f"alert command exited {r.returncode}"
        except (OSError, subprocess.SubprocessError) as e:
            return f"alert command failed: {e}"
    return alert


def reap(lock_dir: str, ttl, kill: bool = False, dry_run: bool = False, clock=REAL,
         logger=None, alert=None, grace: float = 10, override_ttl: bool = False) -> list[dict]:
    """One reaper pass over lock_dir. Returns one entry per lock:
    {lock, path, state, reason, action, done, result, holder, age, ttl, pid_status}.
    Every action other than "none" is logged (event lock_<action>) with its reason."""
    me, boot = hostname(), boot_id()
    out = []
    for view in inspect(lock_dir, ttl, override_ttl, clock):
        record = view["holder"]
        step = lockview.plan(view, kill)
        entry = dict(view, action=step["action"], reason=step["reason"], done=False,
                     result="", dry_run=dry_run)
        action = step["action"]
        if action == "none":
            entry["result"] = "nothing to do"
        elif dry_run:
            entry["result"] = f"dry run: would {action}"
        elif action == "clear":
            entry["done"], entry["result"] = clear_stale(view["path"], me, boot)
        elif action == "alert":
            entry["done"] = True
            entry["result"] = alert(_event(entry, clock)) if alert else "reported"
        elif action == "kill":
            steps = end_process(record, grace, clock, holder=view["pid_status"] == "alive")
            entry["done"] = steps[-1] == "ended"
            entry["result"] = ", ".join(steps)
            if entry["done"]:
                cleared, why = clear_stale(view["path"], me, boot)
                entry["result"] += f"; {why}" if cleared else ""
            if alert:
                entry["result"] += f"; {alert(_event(entry, clock))}"
        if action != "none" and logger is not None:
            level = "info" if action == "clear" else "warning"
            logger.log(level, f"lock_{action}", lock=entry["lock"], path=entry["path"],
                       state=entry["state"], reason=entry["reason"], done=entry["done"],
                       result=entry["result"], dry_run=dry_run or None,
                       holder=describe_holder(record, clock.time()))
        out.append(entry)
    return out


def _event(entry: dict, clock) -> dict:
    name = "lock_orphan" if entry.get("orphan") else f"lock_{entry['state']}"
    return {"event": name, "action": entry["action"], "lock": entry["lock"],
            "path": entry["path"], "host": hostname(), "reason": entry["reason"],
            "holder": entry["holder"], "result": entry["result"], "time": round(clock.time(), 3)}
