"""Looking at and restoring what sync made: `sync list`, `sync restore`, `sync status`."""

import os

from meshkit.adapters import syncstatus
from meshkit.core.errors import BadRequest, NotFound, SyncError
from meshkit.core.record import Record
from meshkit.roles.sync.store import SnapshotStore
from meshkit.rules.syncplan import parse_location
from meshkit.rules.syncrotate import parse_name, sort_key


class Row(Record):
    """One snapshot of `sync list`."""
    __slots__ = ("name", "state", "files", "bytes", "created", "path", "note")

    def __init__(self, name: str, state: str, files: int, bytes: int, created: float, path: str, note: str = ""):
        self.name = name
        self.state = state          # current, complete, incomplete, invalid
        self.files = files
        self.bytes = bytes
        self.created = created      # from the name (UTC start time)
        self.path = path
        self.note = note


def owner(dest: str) -> dict:
    """Which job's snapshots DEST holds ({"job", "kind"}); NotFound if none."""
    store = SnapshotStore(dest)
    rec = store.owner()
    if not store.exists() or not rec or not isinstance(rec.get("job"), str):
        raise NotFound(f"{dest} holds no meshkit sync snapshots")
    return rec


def list_snapshots(dest: str) -> list[Row]:
    """Every snapshot under DEST, oldest first. Raises NotFound if DEST has none."""
    store = SnapshotStore(dest)
    if not store.exists():
        raise NotFound(f"{dest} has no snapshots (no {os.path.join(dest, 'snapshots')})")
    current = store.current()
    names = store.names()
    rows = []
    for state, group in names.items():
        for name in group:
            if state == "invalid":
                path, rec = store.invalid_path(name), store.report(name) or {}
                n = rec.get("problem_count")
                note = f"{n} problem(s), see {path}.report.json" if n else "see report"
            elif state == "incomplete":
                path, rec, note = store.work_path(name), {}, "partial copy; the next run resumes it"
            else:
                path, rec, note = store.path(name), store.meta(name) or {}, ""
            files, size = rec.get("files"), rec.get("bytes")
            if not isinstance(files, int) or not isinstance(size, int):
                inventory = store.walk(path)
                files, size = len(inventory), sum(s for _, s, _ in inventory)
            shown = "current" if name == current and state == "complete" else state
            rows.append(Row(name, shown, files, size, parse_name(name)[0], path, note))
    rows.sort(key=lambda r: sort_key(r.name))
    return rows


def resolve(dest: str, snapshot: str, force: bool) -> Row:
    """The snapshot row named (or 'current'/'latest'); BadRequest for one not fit to restore."""
    rows = list_snapshots(dest)
    if snapshot in ("current", "latest"):
        found = [r for r in rows if r.state == "current"]
    else:
        found = [r for r in rows if r.name == snapshot or os.path.basename(snapshot.rstrip("/")) == r.name]
    if not found:
        raise NotFound(f"no snapshot {snapshot!r} in {dest} (see `meshkit sync list {dest}`)")
    row = found[0]
    if row.state in ("incomplete", "invalid") and not force:
        raise BadRequest(f"snapshot {row.name} is {row.state}; restore it anyway with --force")
    return row


def restore(rsync, dest: str, snapshot: str, target: str, delete: bool = False,
            dry_run: bool = False, force: bool = False):
    """Copy a snapshot to TARGET (local or [user@]host:path). Returns (row, rsync run)."""
    row = resolve(dest, snapshot, force)
    loc = parse_location(target)
    if not loc.remote:
        real_dest = os.path.realpath(dest)
        real_target = os.path.realpath(loc.path)
        if real_target == real_dest or real_target.startswith(real_dest + os.sep):
            raise BadRequest(f"{target} is inside {dest}; restore somewhere outside the snapshot tree")
    run = rsync.restore(row.path + "/", loc.contents(), loc.remote, delete, dry_run)
    if not run.ok:
        raise SyncError(run.error())
    return row, run


def read_statuses(status_dir: str, job: str | None = None) -> list[dict]:
    """The status records of every job (or one), sorted by job name."""
    out = syncstatus.read_all(status_dir, job)
    if job and not out:
        raise NotFound(f"no status for job {job!r} in {status_dir} (has it run yet?)")
    return out
