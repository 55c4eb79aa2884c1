"""`locks run`: run a command while this process holds a lock (like flock(1)).

The lock is held by this process, never by the command: the lock descriptor is
close-on-exec and the child gets no other descriptors (close_fds). The record names
this process and, once started, the command (pid, start time, whether it has its
own process group) so the reaper can end both. SIGTERM, SIGINT and SIGHUP are
forwarded to the command; the lock is released after the command has exited.

The command runs in its own process group (so the reaper can end its whole tree)
unless stdin is a terminal: then it stays in the foreground group so it can read
the terminal, and SIGINT is not forwarded (the terminal already sent it).
"""

import os
import signal
import subprocess

from meshkit.adapters.locks import FileLock, process_start_time
from meshkit.core.errors import MeshkitError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_CANNOT_RUN = 127


class _Interrupted(Exception):
    def __init__(self, sig):
        super().__init__(sig)
        self.sig = sig


class CannotRun(MeshkitError):
    code = "cannot_run"
    status = 0


def exit_status(returncode: int) -> int:
    """A shell-style exit code: 128 + N for a command ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_locked(lock: FileLock, argv: list, wait=0, env=None) -> int:
    """Acquire (LockHeld if still held after wait), run argv, release; the command's exit code."""
    if not argv:
        raise CannotRun("no command given (put it after --)")
    interactive = os.isatty(0)
    state = {"child": None, "pending": None, "acquiring": True}

    def forward(sig, _frame):
        child = state["child"]
        if child is None:
            if state["acquiring"]:
                raise _Interrupted(sig)     # stop waiting for the lock
            state["pending"] = sig
            return
        if interactive and sig == signal.SIGINT:
            return
        try:
            if interactive:
                child.send_signal(sig)
            else:
                os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    old = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        try:
            lock.acquire(wait)
            state["acquiring"] = False
        except _Interrupted as e:
            lock.release()
            return 128 + e.sig
        try:
            if state["pending"] is not None:
                return 128 + state["pending"]
            child_env = dict(os.environ if env is None else env, MESHKIT_LOCK=lock.path, **getattr(lock, "env", {}))
            try:
                child = subprocess.Popen(argv, close_fds=True, env=child_env,
                                         process_group=None if interactive else 0)
            except OSError as e:
                raise CannotRun(f"cannot run {argv[0]}: {e.strerror or e}",
                                path=lock.path) from None
            state["child"] = child
            lock.update(child={"pid": child.pid, "start_time": process_start_time(child.pid),
                               "group": not interactive, "argv": [str(a) for a in argv[:20]]})
            if state["pending"] is not None:
                forward(state["pending"], None)
            return exit_status(child.wait())
        finally:
            lock.release()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
