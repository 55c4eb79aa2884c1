"""One sync run (memory or backup): lock, dry run, guard, copy, validate, swap, rotate.

    1. take the job's lock (a second run exits at once, naming the holder)
    2. with a current snapshot: `rsync --dry-run --delete SRC/ current/` lists what
       differs; the deletion guard may refuse (nothing is changed); nothing to do
       for memory if nothing differs
    3. copy into snapshots/NAME.incomplete: first run, or resuming a killed run,
       a whole `rsync --delete --link-dest=current`; otherwise meshkit hard-links
       the files the dry run reported unchanged and rsync (--link-dest=current)
       copies only the listed changes (much faster than rsync linking 10,000 files)
    4. validate what changed (everything on a first run, read while rsync is still
       copying: roles/sync/check.py) and every symlink carried over from current; a bad
       copy moves to invalid/NAME with a report and `current` stays where it was
    5. rename to snapshots/NAME, point `current` at it, then rotate old snapshots
    6. status file, one JSON log line, the alert command on failure and recovery

Before step 1 the status file's directory is probed: a run that could not record its
outcome refuses to start (StatusUnwritable). If the file still can't be written at the
end (the disk filled meanwhile), the run's work stands and Outcome.unrecorded says why.

SyncJob.step() is one run and returns its Outcome; the schedule belongs to cron or
the systemd timer (there is no run loop: a sync is a oneshot).
"""

import json
import os
import stat

from meshkit.adapters.locks import FileLock
from meshkit.adapters.rsync import run_alert
from meshkit.core.errors import BadRequest, LockHeld, MeshkitError, SyncError
from meshkit.core.record import Record
from meshkit.roles.sync import statusfile
from meshkit.roles.sync.check import FirstCopy, validate
from meshkit.roles.sync.statusfile import StatusUnwritable, os_error
from meshkit.roles.sync.store import SnapshotStore
from meshkit.rules.syncplan import (empty_source_reason, filter_args, guard, job_problem,
                                    missing_source, parse_itemized, parse_location, skipped_links_warning,
                                    summarize, transferred_files)
from meshkit.rules.syncrotate import incomplete_plan, invalid_plan, new_name, rotation_plan
from meshkit.rules.syncstatus import is_success, next_status

MAX_REPORTED = 50       # problems kept in a report and the outcome


class Outcome(Record):
    """What one run did."""
    __slots__ = ("result", "error", "snapshot", "files", "changed", "deleted", "bytes", "seconds",
                 "problems", "aside", "removed", "warnings", "unrecorded", "made")

    def __init__(self, result: str, error: str | None = None, snapshot: str | None = None, files: int = 0,
                 changed: int = 0, deleted: int = 0, bytes: int = 0, seconds: float = 0.0,
                 problems: list | None = None, aside: str | None = None, removed: list | None = None,
                 warnings: list | None = None, unrecorded: str | None = None, made: bool = False):
        self.result = result            # see meshkit.rules.syncstatus
        self.error = error
        self.snapshot = snapshot        # the snapshot made, or current if none was made
        self.files = files              # files in that snapshot
        self.changed = changed          # files new or changed since the previous one
        self.deleted = deleted
        self.bytes = bytes              # bytes of the new and changed files
        self.seconds = seconds
        self.problems = [] if problems is None else problems
        self.aside = aside              # where an invalid copy was kept
        self.removed = [] if removed is None else removed
        self.warnings = [] if warnings is None else warnings
        self.unrecorded = unrecorded    # why the status file could not be written (the run's work stands)
        self.made = made                # a new snapshot was made (else snapshot is the current one)


class SyncJob:
    def __init__(self, spec, rsync, clock, logger, status_dir: str, alert=(),
                 lock_path: str = "", lock_ttl: float = 7200, extra: dict | None = None):
        problem = job_problem(spec.job)
        if problem:
            raise BadRequest(problem)
        self.spec, self.rsync, self.clock, self.log = spec, rsync, clock, logger
        self.loc = parse_location(spec.source)
        self.store = SnapshotStore(spec.dest)
        self.status_dir, self.alert = status_dir, list(alert)
        self.status_path = os.path.join(status_dir, f"{spec.job}.json")
        self.lock_path, self.lock_ttl = lock_path, lock_ttl
        self.extra = dict(extra or {})
        if not self.loc.remote:
            src, dest = (os.path.realpath(p) for p in (self.loc.path, spec.dest))
            if dest == src or dest.startswith(src.rstrip("/") + "/"):
                raise BadRequest(f"--dest {spec.dest} is inside --source {spec.source}; "
                                 "it would copy its own snapshots")
        owner = self.store.owner()
        if owner and owner.get("job") != spec.job:
            raise BadRequest(f"{spec.dest} holds the snapshots of job {owner.get('job')!r} "
                             f"({owner.get('kind')}); use --job {owner.get('job')} or another --dest")

    # --- the run ---

    def step(self) -> Outcome:
        """One run. Raises LockHeld if another run of the job holds the lock, StatusUnwritable
        (having logged it and run the alert) if its status file cannot be written."""
        start = self.clock.monotonic()
        self._check_status(start)
        purpose = f"sync {self.spec.kind} {self.spec.job}"
        # The job's lock (in locks.dir, by name: `meshkit locks list` shows it) and DEST's own:
        # two runs with different configs (cron's and an operator's) have different lock
        # dirs, but they share DEST, and only one of them may write into it.
        locks = [FileLock(path, ttl=self.lock_ttl, purpose=purpose, clock=self.clock)
                 for path in (self.lock_path, self.store.lock_path())]
        try:
            try:
                for lock in locks:
                    os.makedirs(os.path.dirname(lock.path) or ".", exist_ok=True)
                    _take(lock)
                out = self._sync()
            except LockHeld as e:
                self.log.warning("sync_run", job=self.spec.job, kind=self.spec.kind, result="lock_held",
                                 error=e.message, duration=round(self.clock.monotonic() - start, 3))
                raise
            except (SyncError, OSError) as e:
                out = Outcome("failed", error=getattr(e, "message", None) or os_error(e))
            if out.result in ("failed", "refused") and out.snapshot is None:
                self._keeps_current(out)
            out.seconds = round(self.clock.monotonic() - start, 3)
            event = self._record(out)
        finally:
            for lock in reversed(locks):
                if lock.locked:
                    lock.release()
        self._log(out)
        self._alert(event)
        return out

    def _alert(self, event: dict | None) -> None:
        if event and self.alert:
            why = run_alert(self.alert, json.dumps(event, sort_keys=True).encode())
            if why:
                self.log.warning("sync_alert_failed", job=self.spec.job, error=why)

    def _check_status(self, start: float) -> None:
        """Refuse (StatusUnwritable) a run whose outcome could not be recorded (statusfile.probe).
        Logged and alerted, not recorded."""
        try:
            statusfile.probe(self.status_dir, self.status_path)
            return
        except StatusUnwritable as e:
            err = e
        self.log.error("sync_run", job=self.spec.job, kind=self.spec.kind, result="status_unwritable",
                       source=self.spec.source, dest=self.store.dest, error=err.message,
                       duration=round(self.clock.monotonic() - start, 3))
        _, event = next_status(self._previous(), self.spec.job, "failed",
                               f"refused to run: {err.message}", self.clock.time(), self._extra(None))
        self._alert(event)
        raise err

    def _keeps_current(self, out: Outcome) -> None:
        """A run that failed before it looked at DEST still reports the copy current keeps."""
        try:
            out.snapshot = self.store.current()
            if out.snapshot:
                out.files = self._file_count(out.snapshot)
        except (SyncError, OSError):
            out.snapshot = None

    def _sync(self) -> Outcome:
        spec, store, loc = self.spec, self.store, self.loc
        if not loc.remote and not os.path.isdir(loc.path):
            return Outcome("refused", error=f"the source {loc.path} does not exist or is not a "
                                            "directory (not mounted?); refusing to sync")
        store.ensure(spec.owner())
        current = store.current()
        if current is None:
            current = self._adopt()
        names = store.names()
        resume, stale = incomplete_plan(names["incomplete"])
        filters, prune = filter_args(spec.include, spec.exclude, spec.kind == "memory")
        src, out = loc.contents(), Outcome("ok", snapshot=current)
        cur_path = store.path(current) if current else None
        changes = None
        if current:
            dry = self.rsync.dry_run(src, cur_path + "/", filters, prune, loc.remote)
            bad = self._rsync_failed(dry, out)
            if bad:
                return bad
            _warn_skipped(dry, out)     # the dry run goes through the whole source
            changes = summarize(parse_itemized(dry.stdout))
            cur_files = self._file_count(current)
            why = guard(cur_files, changes, spec.max_delete_share)
            if why:
                return Outcome("refused", error=why, snapshot=current, files=cur_files,
                               deleted=changes.deleted_files)
            out.deleted = changes.deleted_files
            out.changed = changes.new_files + changes.changed_files
            out.bytes = changes.bytes
            if not changes.any and spec.skip_unchanged:
                out.result = "warning" if out.warnings else "unchanged"
                out.files = cur_files
                return out
        started = self.clock.time()
        name = new_name(started, sum(names.values(), []))
        for old in stale:
            store.remove("incomplete", old)
            out.removed.append(old + ".incomplete")
        linked = first = None
        if resume:
            work = store.resume(resume, name)
            if current:
                store.unlink_shared(work, cur_path, changes.fetch)
            run = self.rsync.copy_tree(src, work + "/", filters, prune, loc.remote, cur_path)
        elif current:
            work = store.start(name)
            linked = store.link_tree(cur_path, work, changes.skip_set())
            run = self.rsync.copy_listed(src, work + "/", changes.fetch, loc.remote, cur_path) \
                if changes.fetch else None
        else:       # the first copy, checked while rsync writes it
            work = store.start(name)
            first = FirstCopy(work, spec.require) if spec.validate else None
            run = self.rsync.copy_tree(src, work + "/", filters, prune, loc.remote, None,
                                       on_lines=first.feed if first else None)
        if run is not None:
            bad = self._rsync_failed(run, out)
            if bad:
                if bad.result == "refused" and not resume:
                    store.remove("incomplete", name)
                return bad
            if not current:
                _warn_skipped(run, out)     # a whole copy, not checked by a dry run first
        sent = transferred_files(parse_itemized(run.stdout)) if run is not None and current else []
        return self._finish(name, started, work, current, changes, linked, sent, names, out, first)

    def _finish(self, name, started, work, current, changes, linked, sent, names, out, first) -> Outcome:
        spec, store = self.spec, self.store
        cur_path = store.path(current) if current else None
        changed = sorted(set(changes.fetch) | set(sent)) if changes else []
        if first is not None:
            out.files, size, checked, out.problems = first.finish()
            out.changed, out.bytes, check = out.files, size, None
        elif linked is None or spec.check_all:
            inventory = store.walk(work)
            out.files, size = len(inventory), sum(s for _, s, _ in inventory)
            check = [(p, s if reg else None) for p, s, reg in inventory] if (not current or spec.check_all) \
                else [(p, None) for p in changed]
            if not current:
                out.changed, out.bytes = out.files, size
        else:       # linked: (files, the symlinks among them), carried over from current
            check = [(p, None) for p in sorted(set(changed).union(linked[1]))]
            out.files, size = self._count(work, current, linked[0], changes)
        why = empty_source_reason(out.files)
        if why:
            store.remove("incomplete", name)
            return Outcome("refused", error=why, snapshot=current)
        if check is not None:
            checked = len(check)
            if spec.validate:
                out.problems = validate(work, cur_path, spec.require, check)
        meta = {"name": name, "job": spec.job, "kind": spec.kind, "source": spec.source,
                "started": round(started, 3), "finished": round(self.clock.time(), 3),
                "files": out.files, "bytes": size, "changed": out.changed, "deleted": out.deleted,
                "checked": checked, "previous": current}
        if out.problems:
            report = dict(meta, result="invalid", problems=out.problems[:MAX_REPORTED],
                          problem_count=len(out.problems))
            out.aside = store.set_aside(name, report)
            out.result, out.snapshot = "invalid", current
            first = out.problems[0]
            out.error = (f"validation failed: {first['path']}: {first['problem']}"
                         + (f" (and {len(out.problems) - 1} more)" if len(out.problems) > 1 else "")
                         + f"; copy kept in {out.aside}")
            # Without a current copy each invalid one is a whole copy, not links to current:
            # keep only the newest as evidence (a source that stays bad would fill the disk).
            self._drop_invalid(names["invalid"] + [name], out, None if current else 1)
            return out
        store.commit(name, meta)
        store.point_current(name)
        out.snapshot, out.made = name, True
        out.result = "warning" if out.warnings else "ok"
        plan = rotation_plan(names["complete"] + [name], name, spec.keep_last,
                             spec.keep_hourly, spec.keep_daily)
        for old in plan.remove:
            store.remove("complete", old)
            out.removed.append(old)
        self._drop_invalid(names["invalid"], out)
        return out

    def _adopt(self) -> str | None:
        """No current but a complete snapshot (a run stopped between naming it and pointing
        current at it, e.g. on a full disk): every complete snapshot was validated, so
        current points at the newest one and this run goes on from there, not from nothing."""
        name = self.store.newest_complete()
        if name is not None:
            self.store.point_current(name)
            self.log.warning("sync_adopted", job=self.spec.job, snapshot=name,
                             reason="current was missing; it now points at the newest complete snapshot")
        return name

    def _count(self, work, current, linked: int, changes) -> tuple[int, int]:
        """(files, bytes) of a snapshot made by linking current and copying changes,
        from current's record and the changed paths, without walking 10,000 files."""
        files, fetched = linked, 0
        for p in changes.fetch:
            st = self.store.lstat(work, p)
            if st and not stat.S_ISDIR(st.st_mode):
                files += 1
                fetched += st.st_size
        before = (self.store.meta(current) or {}).get("bytes")
        if not isinstance(before, int) or isinstance(before, bool):
            return files, sum(s for _, s, _ in self.store.walk(work))
        gone = 0
        for p in changes.skip_set():
            st = self.store.lstat(self.store.path(current), p)
            if st and not stat.S_ISDIR(st.st_mode):
                gone += st.st_size
        return files, max(0, before - gone + fetched)

    # --- pieces ---

    def _rsync_failed(self, run, out) -> Outcome | None:
        if run.code == 24:
            out.warnings.append("some source files vanished during the copy (rsync exit 24)")
        if run.ok:
            return None
        if missing_source(run.code, run.stderr):
            return Outcome("refused", error=f"the source {self.spec.source} cannot be read "
                                            f"(not mounted?): {run.error()}", snapshot=out.snapshot)
        return Outcome("failed", error=run.error(), snapshot=out.snapshot)

    def _file_count(self, name: str) -> int:
        n = (self.store.meta(name) or {}).get("files")
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            return n
        return len(self.store.walk(self.store.path(name)))

    def _drop_invalid(self, invalid, out, keep: int | None = None) -> None:
        keep = self.spec.keep_invalid if keep is None else min(keep, self.spec.keep_invalid)
        for old in invalid_plan(invalid, keep):
            self.store.remove("invalid", old)
            out.removed.append(f"invalid/{old}")

    def _previous(self) -> dict | None:
        return statusfile.previous(self.status_path)

    def _extra(self, out: Outcome | None) -> dict:
        extra = dict(self.extra, kind=self.spec.kind, source=self.spec.source, dest=self.store.dest)
        if out is not None:
            extra.update(snapshot=out.snapshot, files=out.files, duration=out.seconds)
        return extra

    def _record(self, out: Outcome) -> dict | None:
        status, event = next_status(self._previous(), self.spec.job, out.result, out.error,
                                    self.clock.time(), self._extra(out))
        out.unrecorded = statusfile.write(self.status_path, status)
        if out.unrecorded:
            self.log.error("sync_status_unwritable", job=self.spec.job, path=self.status_path,
                           error=out.unrecorded)
        return event

    def _log(self, out: Outcome) -> None:
        level = "info" if out.result in ("ok", "unchanged") else \
            "warning" if is_success(out.result) else "error"
        self.log.log(level, "sync_run", job=self.spec.job, kind=self.spec.kind, result=out.result,
                     source=self.spec.source, dest=self.store.dest, snapshot=out.snapshot,
                     files=out.files, changed=out.changed, deleted=out.deleted, bytes=out.bytes,
                     duration=out.seconds, error=out.error, removed=out.removed or None,
                     warnings=out.warnings or None)


def _warn_skipped(run, out: Outcome) -> None:
    why = skipped_links_warning(run.skipped_links)
    if why:
        out.warnings.append(why)


def _take(lock: FileLock) -> None:
    """Acquire without waiting: LockHeld if another run holds it, SyncError if the lock file
    cannot be made (its directory is read-only or missing)."""
    try:
        lock.acquire(wait=0)
    except LockHeld:
        raise
    except MeshkitError as e:
        raise SyncError(e.message) from None
