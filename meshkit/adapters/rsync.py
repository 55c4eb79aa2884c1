"""The system's rsync (and ssh under it), and the alert command sync runs.

Each call runs one rsync process and returns its exit code, stdout (itemized
with meshkit.rules.syncplan.OUT_FORMAT; or handed to a callback line by line
while rsync runs) and stderr; deciding what they mean is the caller's. On
Linux the child gets SIGKILL if meshkit dies (PR_SET_PDEATHSIG), so a killed
run never leaves an rsync writing into a snapshot behind it.
Times are compared to the nanosecond (--modify-window=-1): a file rewritten
with the same size in the same second is still seen as changed.
Symlinks are copied as symlinks (-a), except unsafe ones (--safe-links): absolute,
empty, or climbing out of the copied tree with '..' are not copied, so no copy can
read the receiving machine's files through them; rsync names each (--info=name1)
and RsyncRun.skipped_links lists them. Links that stay inside the tree are kept.
rsync >= 3.1.3 is needed (--ignore-missing-args, nanosecond times): macOS's /usr/bin/rsync is too
old or openrsync; use Homebrew's (`brew install rsync`, then [sync] rsync = PATH).
"""

import ctypes
import os
import selectors
import shlex
import shutil
import subprocess
import sys

from meshkit.core.clock import REAL
from meshkit.core.errors import SyncError
from meshkit.core.record import Record
from meshkit.rules.syncplan import OUT_FORMAT, UNSAFE_LINK, unsafe_links

INSTALL_HINT = ("install the package `rsync` (Debian/Ubuntu: apt-get install rsync; "
                "macOS: brew install rsync)")
_PR_SET_PDEATHSIG = 1
_EXPLAIN = {
    1: "syntax or usage error (an rsync older than 3.1? " + INSTALL_HINT + ")",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or directories",
    5: "error starting the client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O (disk full?)",
    12: "error in the rsync protocol data stream (is rsync installed on the remote host?)",
    20: "rsync was interrupted by a signal",
    23: "some files could not be transferred",
    24: "some source files vanished during the transfer",
    30: "timeout in data send/receive (sync.io_timeout)",
    35: "timeout waiting for a daemon connection",
    127: "rsync not found on the remote host (" + INSTALL_HINT + " there)",
    255: "ssh failed (host unreachable, key refused, or unknown host key?)",
}


def _die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_PREEXEC = _die_with_parent if sys.platform.startswith("linux") else None


class RsyncRun(Record):
    __slots__ = ("argv", "code", "stdout", "stderr", "seconds", "skipped_links")

    def __init__(self, argv: list, code: int, stdout: bytes, stderr: str, seconds: float,
                 skipped_links: list | None = None):
        self.argv, self.code, self.stdout, self.stderr, self.seconds = argv, code, stdout, stderr, seconds
        self.skipped_links = [] if skipped_links is None else skipped_links   # [(path, target)] not copied

    @property
    def ok(self) -> bool:
        return self.code in (0, 24)

    def error(self) -> str:
        """One line: what failed, rsync's own last words, and what the code means."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        said = [ln for ln in lines if not ln.startswith("rsync error:")][-2:] or lines[-1:]
        meaning = _EXPLAIN.get(self.code, "see `man rsync`, EXIT VALUES")
        over_ssh = any(isinstance(a, str) and a.startswith("ssh ") for a in self.argv)
        ended = f"was killed by signal {-self.code}" if self.code < 0 else f"exited {self.code}: {meaning}"
        text = f"rsync{' over ssh' if over_ssh else ''} {ended}"
        return text + (": " + " | ".join(said) if said else "")


class Rsync:
    """Builds and runs rsync command lines for one job's settings."""

    def __init__(self, program: str = "rsync", ssh_port: int = 22, ssh_key: str = "",
                 ssh_options=(), io_timeout: float = 0, bwlimit: int = 0, clock=REAL):
        self.program = program
        self.ssh_port, self.ssh_key = ssh_port, ssh_key
        self.ssh_options = list(ssh_options)
        self.io_timeout, self.bwlimit = io_timeout, bwlimit
        self.clock = clock
        self._path = None

    def find(self) -> str:
        """The rsync executable's path; SyncError naming the package if there is none."""
        if self._path is None:
            found = shutil.which(self.program)
            if not found:
                raise SyncError(f"rsync not found (looked for {self.program!r} on PATH): {INSTALL_HINT}")
            self._path = found
        return self._path

    def ssh_command(self) -> str:
        argv = ["ssh", "-p", str(self.ssh_port), "-o", "BatchMode=yes"]
        if self.ssh_key:
            argv += ["-i", self.ssh_key]
        if self.io_timeout:
            argv += ["-o", f"ConnectTimeout={int(self.io_timeout)}"]
        return shlex.join(argv + self.ssh_options)

    def _base(self, remote: bool) -> list:
        argv = [self.find(), "-a", "--safe-links", "--modify-window=-1", f"--out-format={OUT_FORMAT}",
                "--info=name1"]
        if remote:
            argv += ["-e", self.ssh_command()]
        if self.io_timeout:
            argv.append(f"--timeout={int(self.io_timeout)}")
        if self.bwlimit:
            argv.append(f"--bwlimit={int(self.bwlimit)}")
        return argv

    def dry_run(self, src: str, dest: str, filters, prune: bool, remote: bool) -> RsyncRun:
        """What `rsync --delete SRC/ DEST/` would change, changing nothing."""
        argv = self._base(remote) + ["--dry-run", "--delete"] + (["-m"] if prune else [])
        return self.run(argv + list(filters) + ["--", src, dest])

    def copy_tree(self, src: str, dest: str, filters, prune: bool, remote: bool,
                  link_dest: str | None, on_lines=None) -> RsyncRun:
        """Make dest an exact copy of src (a new or resumed snapshot directory);
        unchanged files are hard-linked to link_dest. With on_lines, the itemized
        output goes to on_lines(list of lines) while rsync runs (see run())."""
        argv = self._base(remote) + ["--delete", "--delete-excluded"] + (["-m"] if prune else [])
        if link_dest:
            argv.append(f"--link-dest={link_dest}")
        return self.run(argv + list(filters) + ["--", src, dest], on_lines=on_lines)

    def copy_listed(self, src: str, dest: str, paths, remote: bool, link_dest: str | None) -> RsyncRun:
        """Copy only the listed paths (files and directories, not recursive);
        a listed path that has vanished from the source is skipped."""
        argv = self._base(remote) + ["--from0", "--files-from=-", "--ignore-missing-args"]
        if link_dest:
            argv.append(f"--link-dest={link_dest}")
        data = b"".join(os.fsencode(p) + b"\0" for p in paths)
        return self.run(argv + ["--", src, dest], stdin=data)

    def restore(self, src: str, dest: str, remote: bool, delete: bool, dry_run: bool) -> RsyncRun:
        argv = self._base(remote) + (["--delete"] if delete else []) + (["--dry-run"] if dry_run else [])
        return self.run(argv + ["--", src, dest])

    def run(self, argv: list, stdin: bytes | None = None, on_lines=None) -> RsyncRun:
        """Run rsync to the end. With on_lines, stdout is not kept: each chunk of
        complete lines is passed to on_lines(lines) as rsync prints it, and
        on_lines(None) is called when nothing arrived for IDLE_CALL seconds (the
        caller may use the wait); if on_lines raises, rsync is killed."""
        start = self.clock.monotonic()
        skipped = []
        try:
            if on_lines is not None:
                code, out, err = _stream(argv, on_lines, skipped)
            else:
                feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
                proc = subprocess.run(argv, capture_output=True, close_fds=True, **feed, preexec_fn=_PREEXEC)
                code, out, err = proc.returncode, proc.stdout, proc.stderr
        except FileNotFoundError:
            raise SyncError(f"rsync not found ({argv[0]}): {INSTALL_HINT}") from None
        except OSError as e:
            raise SyncError(f"cannot run rsync ({argv[0]}): {e.strerror}") from None
        return RsyncRun(argv, code, out, err.decode("utf-8", "replace"), self.clock.monotonic() - start,
                        unsafe_links(out.split(b"\n") if out else skipped))


IDLE_CALL = 0.005


def _stream(argv: list, on_lines, skipped: list) -> tuple[int, bytes, bytes]:
    """(exit code, b"", stderr) of rsync, its stdout fed to on_lines line by line;
    the lines about unsafe symlinks it skipped are also added to skipped."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, close_fds=True, preexec_fn=_PREEXEC)
    err, rest = [], b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map():
                ready = sel.select(IDLE_CALL)
                if not ready:
                    on_lines(None)
                for key, _ in ready:
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fileobj)
                    elif key.fileobj is proc.stderr:
                        err.append(data)
                    else:
                        lines = (rest + data).split(b"\n")
                        rest = lines.pop()
                        skipped += [ln for ln in lines if ln.startswith(UNSAFE_LINK)]
                        on_lines(lines)
        if rest:
            if rest.startswith(UNSAFE_LINK):
                skipped.append(rest)
            on_lines([rest])
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    return proc.returncode, b"", b"".join(err)


def run_alert(argv, event_json: bytes, timeout: float = 30) -> str | None:
    """Run the alert command with the event on stdin; None if it succeeded, else why not."""
    try:
        proc = subprocess.run(list(argv), input=event_json, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"alert command timed out after {timeout:g}s"
    except OSError as e:
        return f"alert command {argv[0]!r} could not run: {e.strerror}"
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        return f"alert command exited {proc.returncode}" + (f": {tail[0]}" if tail else "")
    return None
