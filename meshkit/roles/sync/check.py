"""Validating a copy (meshkit.rules.syncvalidate decides; this reads the files).

validate() checks a list of files after rsync: the changed ones, or all of them
with --check-all. A first copy (a new, empty snapshot directory) is checked while
rsync is still writing it, by FirstCopy: rsync writes each file under a temporary
name and renames it when it is complete, so a file found under its own name is
whole. FirstCopy reads each file rsync reports as soon as it is there, which
overlaps reading and parsing 10,000 files with the copy instead of following it;
finish(), after rsync, lists the copy once and checks every file that was not
read yet or is no longer the inode that was read. Every file is checked either way.
A symlink is checked too, by its target only (never followed): one that leads out of
the copy is a problem (rsync --safe-links leaves such links out, so one found here came
another way, e.g. from a snapshot made before meshkit passed it).
"""

import os
import stat

from meshkit.roles.sync.store import SnapshotStore
from meshkit.rules.syncplan import reported_files
from meshkit.rules.syncvalidate import check_file, link_problem, needs_content

RETRY_AFTER = 32        # reports to wait for before trying a file that was not in place yet


class _Checks:
    """How one file of a copy is checked (old_root: the current copy, or None)."""

    def __init__(self, root: str, old_root: str | None, require: dict):
        self.root, self.old_root, self.require = root, old_root, require

    def one(self, rel: str, size: int | None = None) -> list:
        """The problems of one file; size: its size if the caller knows it is a
        regular file (else it is looked up: a symlink's target is checked, anything
        else that is not a regular file is skipped)."""
        if size is None:
            st = SnapshotStore.lstat(self.root, rel)
            if st is not None and stat.S_ISLNK(st.st_mode):
                return self.link(rel)
            if st is None or not stat.S_ISREG(st.st_mode):
                return []
            size = st.st_size
        old = SnapshotStore.lstat(self.old_root, rel) if self.old_root else None
        old_size = old.st_size if old is not None and stat.S_ISREG(old.st_mode) else None
        if not needs_content(rel, self.require):
            return check_file(rel, None, size, old_size, self.require)
        try:
            st, data = SnapshotStore.read_regular(self.root, rel)
        except OSError as e:
            return [f"cannot be read: {e.strerror}"]
        if data is None:        # no longer a regular file
            return []
        return check_file(rel, data, st.st_size, old_size, self.require)

    def link(self, rel: str) -> list:
        """The problem of a symlink in the copy that may lead out of it ([] if none)."""
        try:
            target = os.readlink(os.path.join(self.root, rel))
        except OSError as e:
            return [f"cannot be read: {e.strerror}"]
        why = link_problem(rel, target)
        return [why] if why else []


def _problems(rel: str, found: list) -> list:
    return [{"path": rel, "problem": p} for p in found]


def validate(root: str, old_root: str | None, require: dict, check) -> list:
    """Problems of the files in check, [(path, size of a regular file, or None)];
    old_root is the current copy (a file that had content must not shrink to zero)."""
    checks, problems = _Checks(root, old_root, require), []
    for rel, size in check:
        problems += _problems(rel, checks.one(rel, size))
    return problems


class FirstCopy:
    """Checks a new copy while rsync writes it: pass feed as rsync's on_lines."""

    def __init__(self, root: str, require: dict):
        self.root = root
        self.checks = _Checks(root, None, require)
        self.require = require
        self.pending, self.next, self.retry_at = [], 0, 0
        self.done = {}          # path -> (inode, size, problems) of the files read

    def feed(self, lines) -> None:
        """rsync's itemized output as it comes (None: a pause; rsync is still busy)."""
        pending, require = self.pending, self.require
        if lines:
            pending += [p for p in reported_files(lines) if needs_content(p, require)]
            if len(pending) < self.retry_at:
                return          # rsync reports files before it writes them: try again a little later
        # 10,000 times on a first sync, on a CPU rsync's three processes want too: locals only
        root, done, read, n, end = self.root, self.done, SnapshotStore.read_regular, self.next, len(pending)
        try:
            while n < end:
                rel = pending[n]
                try:
                    st, data = read(root, rel)
                except (FileNotFoundError, NotADirectoryError):
                    if n + 1 == end or SnapshotStore.lstat(root, pending[n + 1]) is None:
                        self.retry_at = end + RETRY_AFTER
                        return      # not renamed into place yet: wait
                    data = None     # rsync wrote a later file (this one vanished?): left to finish()
                except OSError:
                    data = None     # finish() reports it
                n += 1
                if data is not None:
                    done[rel] = (st.st_ino, st.st_size, check_file(rel, data, st.st_size, None, require))
        finally:
            self.next = n

    def finish(self) -> tuple[int, int, int, list]:
        """(files, bytes, files checked, problems) of the whole copy, once rsync is done."""
        files = size = checked = 0
        problems = []
        known_of, one = self.done.get, self.checks.one
        stack = [("", self.root)]
        while stack:
            rel, path = stack.pop()
            with os.scandir(path) as it:
                for e in it:
                    r = rel + e.name
                    known = known_of(r)     # the usual case first: a file read while rsync ran
                    if known is not None and known[0] == e.inode() and e.is_file(follow_symlinks=False):
                        files += 1
                        size += known[1]
                        checked += 1
                        if known[2]:
                            problems += _problems(r, known[2])
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append((r + "/", e.path))
                        continue
                    files += 1
                    st = e.stat(follow_symlinks=False)
                    size += st.st_size
                    if stat.S_ISREG(st.st_mode):
                        checked += 1
                        problems += _problems(r, one(r, st.st_size))
                    elif stat.S_ISLNK(st.st_mode):
                        problems += _problems(r, self.checks.link(r))
        problems.sort(key=lambda p: p["path"])
        return files, size, checked, problems
