"""Sync decisions: where from, which files, what changed, whether to refuse.

Pure functions: text and numbers in, plain data out. The sync role runs rsync
and touches the file system; this module only reads what rsync printed and
decides. See meshkit/roles/sync/job.py for the order of steps.
"""

import os
import re

from meshkit.core.errors import BadRequest
from meshkit.core.record import Frozen, Record

_set = object.__setattr__

# What `sync memory` copies when no include pattern is given: every agent's
# memory/ tree and MEMORY.md (SRC/AGENT/...), or SRC itself if it is one agent.
MEMORY_INCLUDES = ("/*/", "/*/MEMORY.md", "/*/memory/***", "/MEMORY.md", "/memory/***")

# rsync --out-format the parser below reads: itemize flags, size, name.
OUT_FORMAT = "%i|%l|%n"
_ITEM = re.compile(rb"^(\*deleting *|[<>ch.*][fdLDS][^|]{9})\|(\d+)\|(.*)$")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")
_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# What rsync --safe-links says (with --info=name1) of a link it did not copy.
UNSAFE_LINK = b"ignoring unsafe symlink "
_UNSAFE = re.compile(rb'^ignoring unsafe symlink "(.*)" -> "(.*)"$')
SHOWN_LINKS = 3         # skipped links named in a warning


class Location(Frozen):
    """A sync source or restore target: a local path or [user@]host:path over ssh."""
    __slots__ = ("text", "host", "path")

    def __init__(self, text: str, host: str = "", path: str = ""):
        _set(self, "text", text)
        _set(self, "host", host)    # "" for a local path; "host" or "user@host" over ssh
        _set(self, "path", path)

    @property
    def remote(self) -> bool:
        return bool(self.host)

    def contents(self) -> str:
        """The argument that names the directory's contents (trailing slash)."""
        path = self.path if self.path.endswith("/") or self.path == "" else self.path + "/"
        return f"{self.host}:{path}" if self.host else path


class JobSpec(Frozen):
    """Everything one sync run needs to know, from the command line and config."""
    __slots__ = ("job", "kind", "source", "dest", "include", "exclude", "max_delete_share", "keep_last",
                 "keep_hourly", "keep_daily", "keep_invalid", "validate", "check_all", "skip_unchanged",
                 "require")

    def __init__(self, job: str, kind: str, source: str, dest: str, include: tuple = (), exclude: tuple = (),
                 max_delete_share: float = 0.5, keep_last: int = 3, keep_hourly: int = 0, keep_daily: int = 0,
                 keep_invalid: int = 5, validate: bool = True, check_all: bool = False,
                 skip_unchanged: bool = True, require: dict | None = None):
        _set(self, "job", job)                  # names the status file and the lock
        _set(self, "kind", kind)                # "memory" or "backup"
        _set(self, "source", source)
        _set(self, "dest", dest)
        _set(self, "include", include)
        _set(self, "exclude", exclude)
        _set(self, "max_delete_share", max_delete_share)
        _set(self, "keep_last", keep_last)      # newest complete snapshots kept
        _set(self, "keep_hourly", keep_hourly)
        _set(self, "keep_daily", keep_daily)
        _set(self, "keep_invalid", keep_invalid)
        _set(self, "validate", validate)
        _set(self, "check_all", check_all)      # validate every file, not only the changed ones
        _set(self, "skip_unchanged", skip_unchanged)    # no new snapshot when nothing changed
        _set(self, "require", {} if require is None else require)

    def owner(self) -> dict:
        return {"job": self.job, "kind": self.kind}


def parse_location(text: str) -> Location:
    """'/a/b', 'rel/dir', 'host:path', 'user@host:/path'. rsync's rule: a colon
    before the first slash means a remote host. Daemon syntax is refused."""
    if not text:
        raise BadRequest("empty path")
    if text.startswith("rsync://") or "::" in text.split("/", 1)[0]:
        raise BadRequest(f"{text}: rsync daemon sources are not supported; use [user@]host:path (ssh)")
    head, sep, rest = text.partition(":")
    if sep and "/" not in head and head:
        user, at, host = head.rpartition("@")
        if not host or (at and not user):
            raise BadRequest(f"{text}: expected [user@]host:path")
        return Location(text, head, rest)
    return Location(text, "", text)


def job_problem(name: str) -> str | None:
    """None if name is a usable job name (file names of status and lock)."""
    if _JOB.fullmatch(name or "") and ".." not in name:
        return None
    return f"job name {name!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"


def filter_args(include, exclude, memory_default: bool) -> tuple[list, bool]:
    """rsync filter arguments and whether empty directories are pruned (-m).

    Excludes come first (first match wins in rsync). With include patterns
    (given, or the memory default), everything else is excluded; user patterns
    get '*/' first so rsync descends into directories to find them."""
    args = [f"--exclude={p}" for p in exclude]
    if include:
        args += ["--include=*/"] + [f"--include={p}" for p in include] + ["--exclude=*"]
        return args, True
    if memory_default:
        args += [f"--include={p}" for p in MEMORY_INCLUDES] + ["--exclude=*"]
        return args, True
    return args, False


class Item(Frozen):
    """One line of rsync's itemized output."""
    __slots__ = ("flags", "size", "path")

    def __init__(self, flags: str, size: int, path: str):
        _set(self, "flags", flags)      # "YXcstpoguax" (11 chars) or "*deleting"
        _set(self, "size", size)
        _set(self, "path", path)        # relative to the transfer root, no trailing slash; "" is the root

    @property
    def deleted(self) -> bool:
        return self.flags.startswith("*deleting")

    @property
    def kind(self) -> str:
        """'f' file, 'd' directory, 'L' symlink, 'D' device, 'S' special; '?' for a deletion."""
        return "?" if self.deleted else self.flags[1]

    @property
    def created(self) -> bool:
        return not self.deleted and self.flags[2:].startswith("+++")


def unescape(raw: bytes) -> str:
    """rsync writes unprintable bytes of names as \\#ooo (octal)."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def parse_itemized(output: bytes) -> list[Item]:
    """Items from rsync's stdout (written with OUT_FORMAT); other lines are skipped."""
    items = []
    for line in output.split(b"\n"):
        m = _ITEM.match(line)
        if not m:
            continue
        flags = m.group(1).decode("ascii", "replace").rstrip() if m.group(1).startswith(b"*") \
            else m.group(1).decode("ascii", "replace")
        path = unescape(m.group(3))
        is_dir = path.endswith("/")
        path = path.rstrip("/")
        if path == ".":
            path = ""
        if is_dir and flags.startswith("*"):
            flags = "*deleting/"
        items.append(Item(flags, int(m.group(2)), path))
    return items


class Changes(Record):
    """What a dry run against the current snapshot says will differ."""
    __slots__ = ("new_files", "changed_files", "deleted_files", "deleted_dirs", "fetch", "deleted", "bytes")

    def __init__(self, new_files: int = 0, changed_files: int = 0, deleted_files: int = 0,
                 deleted_dirs: int = 0, fetch: list | None = None, deleted: list | None = None, bytes: int = 0):
        self.new_files = new_files          # non-directories that current does not have
        self.changed_files = changed_files  # non-directories current has, with other content or attributes
        self.deleted_files = deleted_files  # non-directories current has and the source does not
        self.deleted_dirs = deleted_dirs
        self.fetch = [] if fetch is None else fetch         # paths to (re)transfer, in rsync's order
        self.deleted = [] if deleted is None else deleted   # paths (files or dirs) gone from the source
        self.bytes = bytes                  # size of the new and changed files

    @property
    def any(self) -> bool:
        return bool(self.new_files or self.changed_files or self.deleted_files
                    or self.deleted_dirs or self.fetch)

    def skip_set(self) -> set:
        """Paths not to carry over from current: replaced or deleted (deleted dirs whole)."""
        return set(self.fetch) | set(self.deleted)


def summarize(items: list[Item]) -> Changes:
    """Count a dry run's items. A directory whose only change is its attributes
    (typically its time, after a file in it changed) is not a change of its own."""
    ch = Changes()
    for it in items:
        if it.path == "":
            continue
        if it.deleted:
            ch.deleted.append(it.path)
            if it.flags.endswith("/"):
                ch.deleted_dirs += 1
            else:
                ch.deleted_files += 1
            continue
        if it.kind == "d":
            if it.created:
                ch.fetch.append(it.path)
            continue
        ch.fetch.append(it.path)
        if it.created:
            ch.new_files += 1
        else:
            ch.changed_files += 1
        if it.kind == "f":
            ch.bytes += it.size
    return ch


def transferred_files(items: list[Item]) -> list[str]:
    """Regular files rsync wrote (content or a local copy): the ones to validate."""
    return [it.path for it in items if not it.deleted and it.kind == "f" and it.flags[0] in "<>c"]


def reported_files(lines) -> list[str]:
    """transferred_files(parse_itemized(...)) of some lines of output, without
    building Items: a first copy feeds 10,000 of these lines while rsync runs."""
    out = []
    for line in lines:
        # flags are 11 characters: [<>c] 'f' then 9 more; then '|size|name'
        if len(line) > 13 and line[1] == 0x66 and line[0] in b"<>c" and line[11] == 0x7C:
            name = line[12:].partition(b"|")[2]
            out.append(unescape(name) if b"\\#" in name else os.fsdecode(name))
    return out


def unsafe_links(lines) -> list[tuple[str, str]]:
    """[(path, target)] of the symlinks rsync --safe-links skipped, from its output
    lines: absolute, empty, or climbing out of the copied tree with '..'."""
    out = []
    for line in lines:
        m = _UNSAFE.match(line) if line.startswith(UNSAFE_LINK) else None
        if m:
            out.append((unescape(m.group(1)), unescape(m.group(2))))
    return out


def skipped_links_warning(links, source: str = "the source") -> str | None:
    """The warning for the symlinks a copy left out (None if none)."""
    links = sorted(set(links))
    if not links:
        return None
    shown = ", ".join(f"{p} -> {t}" for p, t in links[:SHOWN_LINKS])
    more = f" (and {len(links) - SHOWN_LINKS} more)" if len(links) > SHOWN_LINKS else ""
    n = len(links)
    return (f"skipped {n} {'symlinks that point' if n > 1 else 'symlink that points'} outside {source} "
            f"(absolute, or up out of it by '..'), so nothing reading the copy follows them to this "
            f"machine's files: {shown}{more}")


def guard(current_files: int, changes: Changes, max_delete_share: float) -> str | None:
    """Why a sync onto a snapshot of current_files files must be refused, or None.

    Refuses when the source would be empty and when more than max_delete_share
    of the current files would be removed."""
    remaining = current_files - changes.deleted_files + changes.new_files
    if remaining <= 0:
        return (f"the source is empty (no files match; the current copy has {current_files}); "
                "refusing to sync. Is it mounted?")
    if current_files > 0 and changes.deleted_files / current_files > max_delete_share:
        share = changes.deleted_files / current_files
        return (f"the sync would remove {changes.deleted_files} of {current_files} files "
                f"({share:.0%}), more than sync.max_delete_share ({max_delete_share:.0%}); "
                "refusing. If this is intended, run once with --max-delete-share 1")
    return None


def empty_source_reason(files: int) -> str | None:
    """The check of a first sync (no current copy to compare with)."""
    if files == 0:
        return "the source is empty (no files match); refusing to make an empty copy. Is it mounted?"
    return None


def missing_source(code: int, stderr: str) -> bool:
    """Did rsync fail because it could not enter the source directory (missing,
    not a directory, unreadable)? rsync says so with exit 23 and 'change_dir'."""
    return code == 23 and "change_dir" in stderr
