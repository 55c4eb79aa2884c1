"""`meshkit sync memory|backup|list|restore|status`: validated rsync snapshots."""

import argparse
import contextlib
import gc
import os
import sys

from meshkit.adapters.locks import FileLock, hostname, lock_path
from meshkit.adapters.log import Logger
from meshkit.adapters.rsync import Rsync
from meshkit.cli.common import (EXIT_FAILED, EXIT_LOCK_HELD, EXIT_OK, EXIT_USAGE, add_config_arg,
                                fail, load_config, print_json, table)
from meshkit.core.clock import REAL
from meshkit.core.errors import BadRequest, ConfigError, LockHeld, MeshkitError, NotFound, SyncError
from meshkit.roles.sync import views
from meshkit.roles.sync.job import StatusUnwritable, SyncJob
from meshkit.roles.sync.store import SnapshotStore
from meshkit.rules.syncplan import JobSpec, job_problem, parse_location, skipped_links_warning
from meshkit.rules.syncstatus import FAILURE

EXIT_REFUSED = 4       # the deletion guard refused (source empty, missing, mass deletion)
EXIT_COPY = 5          # rsync/ssh failed (or is missing), or the copy could not be written
EXIT_UNRECORDED = 6    # the run did its work, but its status file could not be written
EXIT_BY_RESULT = {"ok": EXIT_OK, "unchanged": EXIT_OK, "warning": EXIT_OK, "invalid": EXIT_FAILED,
                  "refused": EXIT_REFUSED, "failed": EXIT_COPY}

EXIT_TEXT = """\
exit codes: 0 synced (or nothing changed; or a warning: rsync said files vanished,
exit 24, or skipped symlinks that point outside the source); 1 validation failed
(current unchanged, copy kept in DEST/invalid/); 2 bad arguments or config, or
the status file (sync.status_dir) cannot be written: checked before anything is
copied; 4 refused by the deletion guard (source empty, missing, or too many
deletions; nothing changed); 5 rsync/ssh failed or rsync is missing; 6 synced,
but the status file could not be written at the end (a failed run keeps its own
code; both say so on stderr); 75 another run of the job holds its lock.
"""

SYNC_HELP = """\
Copies agents' memory and backups with the system's rsync into snapshots under
DEST, validates each copy, and only then points DEST/current at it.

  DEST/current -> snapshots/<UTC time>   the last good copy (symlink, swapped atomically)
  DEST/snapshots/<time>.incomplete/      being written, or left by a killed run (resumed)
  DEST/invalid/<time>/ + .report.json    a copy that failed validation

""" + EXIT_TEXT + """
examples:
  python3 -m meshkit sync memory --source /srv/agents --dest /var/lib/meshkit/memory
  python3 -m meshkit sync status
"""

MEMORY_EXAMPLE = """\
Copies every agent's memory/ tree and MEMORY.md (SRC/AGENT/memory/..., SRC/AGENT/MEMORY.md)
unless --include is given. Validation: *.json parses, each *.jsonl line parses, *.md is
UTF-8 and not empty, [sync.memory.require] keys, no file shrank to zero, no symlink leads
out of the copy. Symlinks that point outside SRC (absolute, or up by '..') are not copied
(rsync --safe-links; the run warns, naming them). When nothing changed no snapshot is made.

""" + EXIT_TEXT + """
examples:
  python3 -m meshkit sync memory --source /srv/agents --dest /var/lib/meshkit/memory
  python3 -m meshkit sync memory --source meshkit@pi.lan:agents --dest /var/lib/meshkit/memory \\
      --ssh-key ~/.ssh/meshkit_sync --ssh-port 2222
"""

BACKUP_EXAMPLE = """\
A new snapshot every run (unchanged files share inodes with the previous one),
validated like `sync memory` unless --no-validate. Old snapshots are removed only
after a new one succeeded: kept are current, the newest of each of the last
--keep-hourly hours and --keep-daily days.

""" + EXIT_TEXT + """
examples:
  python3 -m meshkit sync backup --source /srv/agents --dest /backup/agents --keep-hourly 24 --keep-daily 14
  python3 -m meshkit sync list /backup/agents
"""


def register(sub) -> None:
    p = sub.add_parser("sync", help="memory sync and backups: rsync, validated snapshots",
                       description=SYNC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ss = p.add_subparsers(dest="sync_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: _usage(p))

    q = _sub(ss, "memory", "copy agents' memory into a validated snapshot", MEMORY_EXAMPLE)
    _copy_args(q, "memory")
    q.add_argument("--keep", type=_posint, metavar="N", help="complete snapshots kept (config sync.keep_snapshots, 3)")
    q.set_defaults(func=cmd_memory)

    q = _sub(ss, "backup", "make a rotating, validated backup snapshot", BACKUP_EXAMPLE)
    _copy_args(q, "backup")
    q.add_argument("--keep-hourly", type=_count, metavar="N", help="hours kept (config sync.keep_hourly, 24)")
    q.add_argument("--keep-daily", type=_count, metavar="N", help="days kept (config sync.keep_daily, 7)")
    q.add_argument("--no-validate", action="store_true", help="do not validate the copy's files")
    q.set_defaults(func=cmd_backup)

    q = _sub(ss, "list", "show the snapshots under DEST: state, files, size, age",
             "examples:\n  python3 -m meshkit sync list /var/lib/meshkit/memory\n"
             "  python3 -m meshkit sync list /backup/agents --json\n")
    q.add_argument("dest", metavar="DEST")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)

    q = _sub(ss, "restore", "copy one snapshot to TARGET",
             "SNAPSHOT is a name from `sync list` or 'current'. Without --delete, files in\n"
             "TARGET that the snapshot lacks are left alone. Incomplete or invalid snapshots\n"
             "need --force. Takes the job's lock so rotation cannot remove the snapshot meanwhile.\n\n"
             "examples:\n  python3 -m meshkit sync restore /backup/agents 20250102T030405Z /srv/agents-restored\n"
             "  python3 -m meshkit sync restore /var/lib/meshkit/memory current /srv/agents --dry-run\n")
    q.add_argument("dest", metavar="DEST")
    q.add_argument("snapshot", metavar="SNAPSHOT")
    q.add_argument("target", metavar="TARGET", help="a local directory or [user@]host:path")
    q.add_argument("--delete", action="store_true", help="also remove files in TARGET that the snapshot lacks")
    q.add_argument("--dry-run", action="store_true", help="list what would change, change nothing")
    q.add_argument("--force", action="store_true", help="restore an incomplete or invalid snapshot")
    _ssh_args(q)
    q.set_defaults(func=cmd_restore)

    q = _sub(ss, "status", "last success, last failure and consecutive failures of each sync job",
             "exit: 0 every job's last run succeeded, 1 one failed, 2 sync.status_dir can't be read\n\n"
             "examples:\n  python3 -m meshkit sync status\n  python3 -m meshkit sync status memory --json\n")
    q.add_argument("job", nargs="?", metavar="JOB")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)


def _sub(ss, name, help_text, epilog):
    q = ss.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                      epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(q)
    return q


def _copy_args(q, kind: str) -> None:
    q.add_argument("--source", required=True, metavar="SRC", help="a local directory or [user@]host:path (ssh)")
    q.add_argument("--dest", required=True, metavar="DEST", help="local directory that holds the snapshots")
    q.add_argument("--job", default=kind, metavar="NAME",
                   help=f"job name: status file NAME.json and lock sync-NAME (default {kind})")
    what = "every agent's memory/ and MEMORY.md" if kind == "memory" else "everything"
    q.add_argument("--include", action="append", metavar="PATTERN",
                   help=f"rsync include pattern (repeat; config sync.include; default {what})")
    q.add_argument("--exclude", action="append", metavar="PATTERN", help="rsync exclude pattern (repeat; config sync.exclude)")
    q.add_argument("--max-delete-share", type=_share, metavar="X",
                   help="refuse if more than this share of files would be removed (config, 0.5)")
    q.add_argument("--check-all", action="store_true", help="validate every file, not only the changed ones")
    q.add_argument("--bwlimit", type=_count, metavar="KBPS", help="rsync bandwidth limit in KiB/s (config sync.bwlimit)")
    q.add_argument("--quiet", "-q", action="store_true", help="no summary line on stdout (the JSON log line stays on stderr)")
    _ssh_args(q)


def _ssh_args(q) -> None:
    q.add_argument("--ssh-port", type=_port, metavar="PORT", help="ssh port (config sync.ssh_port, 22)")
    q.add_argument("--ssh-key", metavar="PATH", help="ssh identity file (config sync.ssh_key)")
    q.add_argument("--ssh-option", action="append", metavar="OPT",
                   help="extra ssh argument, written with = as it starts with a dash: "
                        "--ssh-option=-oUserKnownHostsFile=F (repeat; config sync.ssh_options)")


def _typed(conv, check, what):
    def parse(text):
        try:
            v = conv(text)
        except ValueError:
            v = None
        if v is None or not check(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_posint = _typed(int, lambda v: v >= 1, "a whole number >= 1")
_count = _typed(int, lambda v: v >= 0, "a whole number >= 0")
_port = _typed(int, lambda v: 1 <= v <= 65535, "a port from 1 to 65535")
_share = _typed(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def _usage(p) -> int:
    p.print_help(sys.stderr)
    return EXIT_USAGE


def _pick(arg, cfg, key):
    return arg if arg is not None else cfg.get(key)


def _rsync(args, cfg) -> Rsync:
    key = args.ssh_key if args.ssh_key is not None else cfg.path("sync.ssh_key")
    remote = bool(getattr(args, "source", None)) and parse_location(args.source).remote
    if remote and key and not os.path.isfile(key):      # ssh would warn, then say "Permission denied"
        where = "--ssh-key" if args.ssh_key is not None else f"sync.ssh_key in {cfg.source or 'the config'}"
        raise BadRequest(f"the ssh key {key} ({where}) does not exist or is not a file")
    return Rsync(program=cfg.get("sync.rsync"), ssh_port=_pick(args.ssh_port, cfg, "sync.ssh_port"),
                 ssh_key=key, ssh_options=list(cfg.get("sync.ssh_options")) + (args.ssh_option or []),
                 io_timeout=cfg.get("sync.io_timeout"), bwlimit=_pick(getattr(args, "bwlimit", None), cfg, "sync.bwlimit"))


def _lock_path(cfg, job: str) -> str:
    return lock_path(cfg.path("locks.dir"), f"sync-{job}")     # its directory: made by the run


def _run(args, kind: str, fields) -> int:
    # A run is one short process. What exists now (modules, config) and what the run
    # keeps to its end (a first copy's 10,000 check results) is never garbage:
    # gc.freeze() keeps the collector from walking it again during the run and in
    # the interpreter's final collection at exit (~5 ms). Frozen objects are still
    # freed by reference counting; nothing on this path relies on a finalizer (log
    # lines are flushed as written, status files and records are written atomically).
    gc.freeze()
    cfg = load_config(args)
    problem = job_problem(args.job)
    if problem:
        return fail(problem, EXIT_USAGE)
    spec = JobSpec(job=args.job, kind=kind, source=args.source, dest=args.dest,
                   include=tuple(args.include or cfg.get("sync.include")),
                   exclude=tuple(args.exclude or cfg.get("sync.exclude")),
                   max_delete_share=_pick(args.max_delete_share, cfg, "sync.max_delete_share"),
                   keep_invalid=cfg.get("sync.keep_invalid"), check_all=args.check_all,
                   require=cfg.require, **fields(cfg))
    host = hostname()
    try:
        job = SyncJob(spec, _rsync(args, cfg), REAL, Logger("sync", host, cfg.get("logging.level")),
                      status_dir=cfg.path("sync.status_dir"), alert=cfg.get("sync.alert"),
                      lock_path=_lock_path(cfg, args.job), lock_ttl=cfg.get("locks.ttl"),
                      extra={"host": host})
        out = job.step()
        gc.freeze()
    except (BadRequest, ConfigError) as e:
        return fail(e.message, EXIT_USAGE)
    except LockHeld as e:
        return fail(f"sync {kind} ({args.job}) is already running: {e.message}", EXIT_LOCK_HELD)
    except StatusUnwritable as e:       # found before anything ran: the watchdog's exit 2
        return fail(f"sync {kind} not run, nothing was copied: {e.message}; check {_status_key(cfg)}",
                    EXIT_USAGE)
    code = _report(kind, args, out)
    if out.unrecorded:
        sys.stderr.write(f"meshkit: sync {kind} ({out.result}) is not recorded: the status file "
                         f"{job.status_path} could not be written: {out.unrecorded}; `meshkit sync status` "
                         f"and monitoring still show the run before; check {_status_key(cfg)}\n")
        if code == EXIT_OK:
            code = EXIT_UNRECORDED
    return code


def _status_key(cfg) -> str:
    return f"sync.status_dir in {cfg.source}" if cfg.source else "sync.status_dir (the built-in default)"


def _report(kind: str, args, out) -> int:
    """The run's lines (failure on stderr, summary on stdout) and its exit code."""
    code = EXIT_BY_RESULT[out.result]
    if out.result in FAILURE:
        what = "" if out.result == "invalid" else f" {out.result}"
        sys.stderr.write(f"meshkit: sync {kind}{what}: {out.error}\n")
        for p in out.problems[:10]:
            sys.stderr.write(f"  {p['path']}: {p['problem']}\n")
        if len(out.problems) > 10:
            sys.stderr.write(f"  ... {len(out.problems) - 10} more in the report\n")
        if out.result != "invalid" and out.snapshot:
            sys.stderr.write(f"meshkit: current still points to {out.snapshot}\n")
    elif not args.quiet:
        print(_summary(kind, out))
    return code


def _summary(kind: str, out) -> str:
    if not out.made:        # nothing changed (the result may still be a warning)
        text = f"sync {kind}: nothing changed; current stays at {out.snapshot} ({out.files} files, {out.seconds:.2f} s)"
    else:
        text = (f"sync {kind}: current -> snapshots/{out.snapshot} ({out.files} files; {out.changed} new or "
                f"changed, {_size(out.bytes)}; {out.deleted} removed; {out.seconds:.2f} s)")
    if out.removed:
        text += f"; rotated out: {', '.join(out.removed)}"
    for w in out.warnings:
        text += f"\nwarning: {w}"
    return text


def cmd_memory(args) -> int:
    return _run(args, "memory", lambda cfg: dict(
        keep_last=_pick(args.keep, cfg, "sync.keep_snapshots"), skip_unchanged=True))


def cmd_backup(args) -> int:
    return _run(args, "backup", lambda cfg: dict(
        keep_last=1, skip_unchanged=False, validate=not args.no_validate,
        keep_hourly=_pick(args.keep_hourly, cfg, "sync.keep_hourly"),
        keep_daily=_pick(args.keep_daily, cfg, "sync.keep_daily")))


def cmd_list(args) -> int:
    try:
        rows = views.list_snapshots(args.dest)
    except (NotFound, SyncError) as e:
        return fail(e.message, EXIT_FAILED)
    now = REAL.time()
    if args.json:
        print_json([dict(r.as_dict(), age=round(now - r.created, 1)) for r in rows])
        return EXIT_OK
    _print_table([("SNAPSHOT", "STATE", "FILES", "SIZE", "AGE", "NOTE")] +
                 [(r.name, r.state, str(r.files), _size(r.bytes), _age(now - r.created), r.note) for r in rows])
    return EXIT_OK


def cmd_restore(args) -> int:
    cfg = load_config(args)
    try:
        owner = views.owner(args.dest)
        purpose = f"sync restore {args.snapshot}"
        lock = FileLock(lock_path(cfg.path("locks.dir"), f"sync-{owner.get('job', 'restore')}", create_dir=True),
                        ttl=cfg.get("locks.ttl"), purpose=purpose)
        with lock.acquired(wait=0), _dest_lock(args.dest, cfg.get("locks.ttl"), purpose):
            row, run = views.restore(_rsync(args, cfg), args.dest, args.snapshot, args.target,
                                     delete=args.delete, dry_run=args.dry_run, force=args.force)
    except (BadRequest, NotFound) as e:
        return fail(e.message, EXIT_USAGE)
    except LockHeld as e:
        return fail(f"a sync of {args.dest} is running: {e.message}", EXIT_LOCK_HELD)
    except (SyncError, MeshkitError) as e:
        return fail(f"restore failed: {e.message}", EXIT_COPY)
    if args.dry_run:
        sys.stdout.write(run.stdout.decode("utf-8", "replace"))
    why = skipped_links_warning(run.skipped_links, "the snapshot")
    if why:
        sys.stderr.write(f"meshkit: warning: {why}\n")
    print(f"{'would restore' if args.dry_run else 'restored'} {row.name} ({row.state}, {row.files} files) "
          f"to {args.target}")
    return EXIT_OK


@contextlib.contextmanager
def _dest_lock(dest: str, ttl: float, purpose: str):
    """DEST's own lock, so no run with another config rotates the snapshot away meanwhile; on
    a DEST this machine cannot write (a read-only backup mount) no run can either: none."""
    lock = FileLock(SnapshotStore(dest).lock_path(), ttl=ttl, purpose=purpose)
    try:
        lock.acquire(wait=0)
    except LockHeld:
        raise
    except MeshkitError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def cmd_status(args) -> int:
    cfg = load_config(args)
    try:
        os.listdir(cfg.path("sync.status_dir"))     # none yet: no job has run; not a dir: say so
    except FileNotFoundError:
        pass
    except OSError as e:
        return fail(f"{_status_key(cfg)}: cannot read {cfg.path('sync.status_dir')}: {e.strerror}", EXIT_USAGE)
    try:
        recs = views.read_statuses(cfg.path("sync.status_dir"), args.job)
    except NotFound as e:
        return fail(e.message, EXIT_FAILED)
    failing = any(r.get("last_result") not in ("ok", "unchanged", "warning") for r in recs)
    if args.json:
        print_json(recs)
        return EXIT_FAILED if failing else EXIT_OK
    now = REAL.time()
    lines = [("JOB", "LAST RESULT", "LAST SUCCESS", "LAST FAILURE", "FAILURES", "ERROR")]
    for r in recs:
        lines.append((str(r.get("job")), str(r.get("last_result")), _ago(now, r.get("last_success")),
                      _ago(now, r.get("last_failure")), str(r.get("consecutive_failures", "")),
                      (r.get("last_error") or "")[:100]))
    if len(lines) == 1:
        print(f"no sync jobs have run yet (status dir {cfg.path('sync.status_dir')})")
    else:
        _print_table(lines)
    return EXIT_FAILED if failing else EXIT_OK


def _print_table(rows) -> None:
    """rows[0]: the titles."""
    for line in table([(title, 0, "<") for title in rows[0]], rows[1:], gap="  "):
        print(line)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


def _ago(now: float, t) -> str:
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return "never"
    return _age(now - t) + " ago"
