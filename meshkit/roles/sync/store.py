"""The snapshot tree under DEST, and the only code that changes it.

    DEST/
      current -> snapshots/20250102T030405Z      relative symlink, swapped atomically
      snapshots/20250102T030405Z/                a complete, validated copy
      snapshots/20250102T030405Z.json            its record: files, bytes, source, times
      snapshots/20250102T040405Z.incomplete/     being written, or left by a killed run
      invalid/20250102T035405Z/                  a copy that failed validation (evidence)
      invalid/20250102T035405Z.report.json       why
      .meshkit-sync.json                         which job owns DEST
      .meshkit-sync.lock                         held by the run (or restore) using DEST

A snapshot directory is renamed to its final name only after rsync succeeded
and the copy was validated; `current` moves only after that.
"""

import errno
import os
import shutil
import stat

from meshkit.adapters.atomic import read_json, write_json
from meshkit.core.errors import SyncError
from meshkit.rules.syncrotate import INCOMPLETE, parse_name

SNAPSHOTS, INVALID, CURRENT, MARKER = "snapshots", "invalid", "current", ".meshkit-sync.json"
DEST_LOCK = ".meshkit-sync.lock"
_NOFOLLOW, _NONBLOCK = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_NONBLOCK", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _NONBLOCK


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_dir_attrs(st, path: str) -> None:
    try:
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, st.st_mode & 0o7777)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


def _record(path: str) -> dict | None:
    """A JSON object from a file; None if missing, unreadable or not an object."""
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _rmtree(path: str) -> None:
    """shutil.rmtree that also removes directories copied without write permission."""
    def retry(func, p, exc):
        parent = os.path.dirname(p)
        if func in (os.rmdir, os.unlink) and os.path.isdir(parent):
            os.chmod(parent, 0o700)
            func(p)
        elif func is os.open or func is os.scandir:
            os.chmod(p, 0o700)
            shutil.rmtree(p, onerror=retry)
        else:
            raise exc[1]
    shutil.rmtree(path, onerror=retry)


class SnapshotStore:
    def __init__(self, dest: str):
        self.dest = os.path.abspath(dest)
        self.snapshots = os.path.join(self.dest, SNAPSHOTS)
        self.invalid = os.path.join(self.dest, INVALID)
        self.link = os.path.join(self.dest, CURRENT)

    # --- reading ---

    def exists(self) -> bool:
        return os.path.isdir(self.snapshots)

    def path(self, name: str) -> str:
        return os.path.join(self.snapshots, name)

    def work_path(self, name: str) -> str:
        return os.path.join(self.snapshots, name + INCOMPLETE)

    def invalid_path(self, name: str) -> str:
        return os.path.join(self.invalid, name)

    def current(self) -> str | None:
        """The snapshot name `current` points to; None if there is no current copy."""
        try:
            target = os.readlink(self.link)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise SyncError(f"{self.link} exists but is not a symlink; move it away "
                                "(meshkit keeps copies under snapshots/ and points current at one)") from None
            raise
        head, _, name = target.rstrip("/").rpartition("/")
        if head != SNAPSHOTS or not parse_name(name) or not os.path.isdir(self.path(name)):
            raise SyncError(f"{self.link} points to {target!r}, which is not a snapshot here; "
                            "fix or remove the link")
        return name

    def names(self) -> dict:
        """{'complete': [...], 'incomplete': [...], 'invalid': [...]} (unsorted names)."""
        out = {"complete": [], "incomplete": [], "invalid": []}
        for d, kind in ((self.snapshots, None), (self.invalid, "invalid")):
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for e in entries:
                if not e.is_dir(follow_symlinks=False):
                    continue
                name = e.name
                if kind is None and name.endswith(INCOMPLETE):
                    name, k = name[:-len(INCOMPLETE)], "incomplete"
                else:
                    k = kind or "complete"
                if parse_name(name):
                    out[k].append(name)
        return out

    def newest_complete(self) -> str | None:
        """The newest complete (validated) snapshot, whether or not current points to it."""
        return max(self.names()["complete"], key=parse_name, default=None)

    def lock_path(self) -> str:
        """DEST's own lock file: runs that share DEST exclude each other whatever their config."""
        return os.path.join(self.dest, DEST_LOCK)

    def meta(self, name: str) -> dict | None:
        return _record(self.path(name) + ".json")

    def report(self, name: str) -> dict | None:
        return _record(self.invalid_path(name) + ".report.json")

    def owner(self) -> dict | None:
        return _record(os.path.join(self.dest, MARKER))

    @staticmethod
    def walk(root: str) -> list:
        """[(relative path, size, is regular file)] of every non-directory under root."""
        out, stack = [], [("", root)]
        while stack:
            rel, path = stack.pop()
            with os.scandir(path) as it:
                for e in it:
                    r = f"{rel}{e.name}"
                    if e.is_dir(follow_symlinks=False):
                        stack.append((r + "/", e.path))
                    else:
                        st = e.stat(follow_symlinks=False)
                        out.append((r, st.st_size, e.is_file(follow_symlinks=False)))
        return out

    @staticmethod
    def lstat(root: str, rel: str):
        try:
            return os.lstat(os.path.join(root, rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    @staticmethod
    def read_regular(root: str, rel: str) -> tuple:
        """(fstat, bytes) of a regular file, (fstat, None) if the path is something
        else; a symlink is not followed (ELOOP) and a FIFO does not block."""
        fd = os.open(root + "/" + rel, _READ_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return st, None
            data = os.read(fd, st.st_size + 1)
            if len(data) <= st.st_size:     # a regular file reads short only at its end
                return st, data
            chunks = [data]
            while data:
                data = os.read(fd, 1 << 20)
                chunks.append(data)
            return st, b"".join(chunks)
        finally:
            os.close(fd)

    # --- changing ---

    def ensure(self, owner: dict) -> None:
        os.makedirs(self.snapshots, exist_ok=True)
        if self.owner() != owner:
            write_json(os.path.join(self.dest, MARKER), owner)

    def start(self, name: str) -> str:
        path = self.work_path(name)
        os.mkdir(path)
        return path

    def resume(self, old: str, name: str) -> str:
        path = self.work_path(name)
        os.rename(self.work_path(old), path)
        return path

    @staticmethod
    def link_tree(src: str, dst: str, skip: set) -> tuple[int, list]:
        """Fill the new directory dst with hard links to src's files, except the
        paths in skip (a skipped directory is skipped whole). Directories are made
        anew, with src's attributes. Returns the number of files linked and the
        paths of the symlinks among them (a symlink is linked, not followed)."""
        files, links = 0, []
        made = [(os.lstat(src), dst)]
        todo = [("", src, dst)]
        link, mkdir = os.link, os.mkdir
        while todo:
            rel, s, d = todo.pop()
            with os.scandir(s) as it:
                for e in it:
                    r = rel + e.name
                    if r in skip:
                        continue
                    target = d + "/" + e.name
                    if e.is_dir(follow_symlinks=False):
                        mkdir(target, 0o700)
                        made.append((e.stat(follow_symlinks=False), target))
                        todo.append((r + "/", e.path, target))
                    else:
                        link(e.path, target, follow_symlinks=False)
                        files += 1
                        if e.is_symlink():
                            links.append(r)
        for st, d in reversed(made):
            _copy_dir_attrs(st, d)
        return files, links

    @staticmethod
    def unlink_shared(work: str, base: str, paths) -> None:
        """Remove from work the listed files that are hard links to base's files,
        so rsync replaces them instead of changing attributes shared with base."""
        for rel in paths:
            a, b = SnapshotStore.lstat(work, rel), SnapshotStore.lstat(base, rel)
            if a and b and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and not os.path.isdir(os.path.join(work, rel)):
                os.unlink(os.path.join(work, rel))

    def commit(self, name: str, meta: dict) -> None:
        """Record and name a finished, validated snapshot."""
        write_json(self.path(name) + ".json", meta)
        os.rename(self.work_path(name), self.path(name))
        _fsync_dir(self.snapshots)

    def point_current(self, name: str) -> None:
        """Atomically point DEST/current at snapshots/NAME."""
        tmp = os.path.join(self.dest, f".{CURRENT}.tmp-{os.getpid()}")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        try:
            os.symlink(f"{SNAPSHOTS}/{name}", tmp)
            try:
                os.replace(tmp, self.link)
            except OSError:
                os.unlink(tmp)
                raise
        except OSError as e:
            raise SyncError(f"cannot point {self.link} at {SNAPSHOTS}/{name}: {e.strerror or e}; the snapshot "
                            "is complete and the next run points current at it") from None
        _fsync_dir(self.dest)

    def set_aside(self, name: str, report: dict) -> str:
        """Move a failed copy to invalid/NAME with its report; returns its path."""
        os.makedirs(self.invalid, exist_ok=True)
        write_json(self.invalid_path(name) + ".report.json", report)
        os.rename(self.work_path(name), self.invalid_path(name))
        _fsync_dir(self.invalid)
        return self.invalid_path(name)

    def remove(self, state: str, name: str) -> None:
        """Remove one snapshot ('complete', 'incomplete' or 'invalid') and its record."""
        if state == "complete":
            tree, record = self.path(name), self.path(name) + ".json"
        elif state == "incomplete":
            tree, record = self.work_path(name), None
        else:
            tree, record = self.invalid_path(name), self.invalid_path(name) + ".report.json"
        if os.path.isdir(tree):
            _rmtree(tree)
        if record:
            try:
                os.unlink(record)
            except FileNotFoundError:
                pass
