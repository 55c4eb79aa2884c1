"""The supervisor's SQLite store (WAL). Every write goes through tx(): one BEGIN IMMEDIATE
transaction; every task state change goes through transition(), which writes the history
row in the same transaction.

Task ids are "t" + the row number, so an id can never name a path.
"""

import contextlib
import json
import os
import sqlite3
import threading

from meshkit.core.errors import InvalidTransition, NotFound, StoreError
from meshkit.rules import fsm

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks(
  n INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL, payload TEXT NOT NULL, requires TEXT NOT NULL,
  priority INTEGER NOT NULL, timeout REAL NOT NULL, max_attempts INTEGER NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, fence INTEGER NOT NULL DEFAULT 0,
  node TEXT, lease_deadline REAL, started_at REAL, not_before REAL NOT NULL DEFAULT 0,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, key TEXT UNIQUE, trace_id TEXT NOT NULL,
  expects TEXT, after TEXT NOT NULL DEFAULT '[]', result TEXT, error TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0, hb_missing INTEGER NOT NULL DEFAULT 0,
  rank REAL NOT NULL DEFAULT 0);
DROP INDEX IF EXISTS tasks_queue;
DROP INDEX IF EXISTS tasks_fit;
DROP INDEX IF EXISTS tasks_node;
CREATE INDEX IF NOT EXISTS tasks_queued ON tasks(kind, requires, rank DESC) WHERE state='queued';
CREATE INDEX IF NOT EXISTS tasks_active ON tasks(node) WHERE state IN ('leased','running');
CREATE TABLE IF NOT EXISTS history(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task INTEGER NOT NULL, from_state TEXT,
  to_state TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL,
  fence INTEGER, trace_id TEXT);
CREATE INDEX IF NOT EXISTS history_task ON history(task, seq);
CREATE TABLE IF NOT EXISTS kinds(
  kind TEXT PRIMARY KEY, failures INTEGER NOT NULL DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0,
  since REAL, reason TEXT);
CREATE TABLE IF NOT EXISTS deps(task INTEGER NOT NULL, dep INTEGER NOT NULL, PRIMARY KEY(task, dep));
CREATE INDEX IF NOT EXISTS deps_dep ON deps(dep);
CREATE TABLE IF NOT EXISTS nodes(
  name TEXT PRIMARY KEY, info TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
  state TEXT NOT NULL DEFAULT 'alive');
CREATE TABLE IF NOT EXISTS results(
  task INTEGER NOT NULL, fence INTEGER NOT NULL, answer TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY(task, fence));
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases(
  name TEXT PRIMARY KEY, holder TEXT, token INTEGER NOT NULL, expires REAL NOT NULL,
  acquired_at REAL NOT NULL, purpose TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS lease_history(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, event TEXT NOT NULL, holder TEXT,
  token INTEGER, at REAL NOT NULL, reason TEXT NOT NULL);
"""

TASK_JSON_FIELDS = ("payload", "requires", "expects", "after", "result")

# Replication: every insert or update of these tables appends (table, rowid) to the
# changelog (SQLite triggers, in the same transaction); a standby pulls the rows.
REPLICATED = ("tasks", "history", "deps", "nodes", "results", "kinds", "leases", "lease_history", "meta")
LOCAL_META = ("role", "epoch", "mode", "replicated_seq", "peer", "peer_epoch", "checked_at",   # never copied
              "rejoin", "promoted_from", "promoted_head")


def _triggers() -> str:
    out = ["CREATE TABLE IF NOT EXISTS changelog(seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL,"
           " rid INTEGER NOT NULL)"]
    for t in REPLICATED:
        cond = f" WHEN NEW.key NOT IN ({','.join(repr(k) for k in LOCAL_META)})" if t == "meta" else ""
        for op in ("INSERT", "UPDATE"):
            out.append(f"CREATE TRIGGER IF NOT EXISTS log_{t}_{op.lower()} AFTER {op} ON {t}{cond}"
                       f" BEGIN INSERT INTO changelog(tbl, rid) VALUES('{t}', NEW.rowid); END")
    return ";\n".join(out) + ";\n"



def task_id(n: int) -> str:
    return f"t{n}"


def task_n(tid: str) -> int:
    # One spelling per task: ASCII digits, no leading zero ("t01" is not t1).
    if not (isinstance(tid, str) and tid[:1] == "t" and tid[1:].isascii() and tid[1:].isdigit()
            and tid[1] != "0" and len(tid) < 20):
        raise NotFound(f"no task {str(tid)[:40]!r} (task ids look like t12)")
    return int(tid[1:])


def _store_error(e: sqlite3.Error) -> StoreError:
    msg = str(e)
    if "full" in msg:
        return StoreError("the supervisor's disk is full; nothing was stored (free space and retry)")
    if "locked" in msg or "busy" in msg:
        return StoreError("the database is busy (another process holds a write lock); nothing was stored, retry")
    return StoreError(f"database error: {msg}; nothing was stored")


CHECKPOINT_EVERY = 200          # commits between background checkpoints (also at least once a second)
AUTOCHECKPOINT_PAGES = 20000    # SQLite's own checkpoint, in a commit, only if the background one falls behind


class Store:
    def __init__(self, path: str, durability: str = "normal", busy_timeout: float = 5.0):
        self.path = path
        self._commits = 0
        self._checkpoint_due = threading.Event()
        self._closed = False
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.RLock()
        self._column_cache = {}
        self.commit_hooks = []     # called after every committed write transaction
        self.write_guard = None    # HA: called under the lock before a write commits; raises to refuse it
        try:
            self.db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA cache_size=-32768")
            # Checkpoints (copying the WAL into the database file, with an fsync) run in a
            # background thread on their own connection, not inside some request's COMMIT.
            self.db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            self.db.execute("PRAGMA journal_size_limit=67108864")
            with self.tx() as cur:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                for stmt in _triggers().split(";\n"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute("INSERT OR IGNORE INTO meta VALUES('epoch', '1')")
                cur.execute("INSERT OR IGNORE INTO meta VALUES('fence_seq', '0')")
                cur.execute("INSERT OR IGNORE INTO meta VALUES('role', 'primary')")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open database {path}: {e}") from None
        threading.Thread(target=self._checkpointer, args=(busy_timeout,), name="checkpoint", daemon=True).start()

    def _checkpointer(self, busy_timeout: float) -> None:
        """PASSIVE checkpoints on a second connection: they never block a writer; what they
        can't copy yet (a frame a reader still needs) waits for the next one."""
        try:
            db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return              # SQLite's own autocheckpoint still bounds the WAL
        try:
            while not self._closed:
                self._checkpoint_due.wait(1.0)
                self._checkpoint_due.clear()
                if self._closed:
                    break
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass        # disk full, busy: the next round retries
        finally:
            db.close()

    # -- transactions -------------------------------------------------------

    @contextlib.contextmanager
    def tx(self, replication: bool = False):
        """One BEGIN IMMEDIATE transaction: all of it is stored, or none of it.
        Commit hooks run after the store's lock is released (no lock-order traps).
        A transaction that changed rows asks write_guard before it commits (a supervisor that
        stopped accepting work meanwhile refuses it), unless it is replication's own."""
        with self._lock:
            cur = self.db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                changes = self.db.total_changes
            except sqlite3.Error as e:
                raise _store_error(e) from None
            try:
                yield Tx(cur)
                if self.write_guard is not None and not replication and self.db.total_changes != changes:
                    self.write_guard()
                cur.execute("COMMIT")
                self._commits += 1
                if self._commits % CHECKPOINT_EVERY == 0:
                    self._checkpoint_due.set()
            except sqlite3.Error as e:
                self._rollback(cur)
                raise _store_error(e) from None
            except BaseException:
                self._rollback(cur)
                raise
        for hook in self.commit_hooks:
            hook()

    @staticmethod
    def _rollback(cur):
        try:
            cur.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def read(self, sql: str, args=()) -> list:
        with self._lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise _store_error(e) from None

    def checkpoint(self) -> None:
        with self._lock:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass

    # -- replication -----------------------------------------------------------

    def _columns(self, table: str) -> set:
        if table not in self._column_cache:
            self._column_cache[table] = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
        return self._column_cache[table]

    def head_seq(self) -> int:
        return self.read("SELECT COALESCE(MAX(seq), 0) AS s FROM changelog")[0]["s"]

    def changes_since(self, since: int, limit: int = 2000) -> list:
        """[{"seq", "table", "row"}] after `since`: each changed row once, as it is now."""
        with self._lock:
            try:
                log = self.db.execute("SELECT seq, tbl, rid FROM changelog WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (since, limit)).fetchall()
                latest = {}
                for e in log:
                    latest[(e["tbl"], e["rid"])] = e["seq"]
                out = []
                for (tbl, rid), seq in sorted(latest.items(), key=lambda kv: kv[1]):
                    row = self.db.execute(f"SELECT * FROM {tbl} WHERE rowid=?", (rid,)).fetchone()
                    if row is not None:
                        out.append({"seq": seq, "table": tbl, "row": dict(row)})
                last = log[-1]["seq"] if log else since
                return out, last
            except sqlite3.Error as e:
                raise _store_error(e) from None

    def apply_changes(self, changes: list, upto: int) -> None:
        """Store rows pulled from the primary (one transaction) and the position reached."""
        with self.tx(replication=True) as tx:
            for c in changes:
                table, row = c.get("table"), c.get("row")
                if table not in REPLICATED or not isinstance(row, dict) or (table == "meta" and row.get("key") in LOCAL_META):
                    continue
                cols = list(row)
                if not set(cols) <= self._columns(table):
                    raise StoreError(f"replication: unknown columns for {table}: {sorted(set(cols) - self._columns(table))}")
                tx.execute(f"INSERT OR REPLACE INTO {table}({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})",
                           tuple(row[c] for c in cols))
            tx.set_meta("replicated_seq", upto)

    def rejoin(self, discard_after, since: int) -> dict:
        """A former primary about to follow another: delete every row changed here after
        position `discard_after` of our own changelog (None: keep everything), then follow
        from `since` (one transaction). Those rows are what the new primary never received;
        a pull from 0 brings back its version of any it has. Meta rows are kept: the
        primary's overwrite them. Returns {"rows": {table: n}, "tasks": [task n, ...]}."""
        rows, tasks = {}, set()
        with self.tx(replication=True) as tx:
            if discard_after is not None:
                for e in tx.all("SELECT DISTINCT tbl, rid FROM changelog WHERE seq > ? AND tbl != 'meta'",
                                (discard_after,)):
                    if e["tbl"] not in REPLICATED:
                        continue
                    row = tx.one(f"SELECT * FROM {e['tbl']} WHERE rowid=?", (e["rid"],))
                    if row is None:
                        continue
                    if e["tbl"] in ("tasks", "history", "deps", "results"):
                        tasks.add(row["n"] if e["tbl"] == "tasks" else row["task"])
                    tx.execute(f"DELETE FROM {e['tbl']} WHERE rowid=?", (e["rid"],))
                    rows[e["tbl"]] = rows.get(e["tbl"], 0) + 1
            tx.set_meta("replicated_seq", since)
            tx.execute("DELETE FROM meta WHERE key='rejoin'")
        return {"rows": rows, "tasks": sorted(tasks)}

    def close(self) -> None:
        self._closed = True
        self._checkpoint_due.set()
        with self._lock:
            self.checkpoint()
            self.db.close()

    # -- reads ---------------------------------------------------------------

    def meta(self, key: str, default=None):
        rows = self.read("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else default

    def task(self, tid: str, with_history: bool = True) -> dict:
        rows = self.read("SELECT * FROM tasks WHERE n=?", (task_n(tid),))
        if not rows:
            raise NotFound(f"no task {tid}")
        task = task_dict(rows[0])
        if with_history:
            task["history"] = self.history(rows[0]["n"])
        return task

    def history(self, n: int) -> list:
        rows = self.read("SELECT * FROM history WHERE task=? ORDER BY seq", (n,))
        return [{"from": r["from_state"], "to": r["to_state"], "at": r["at"], "reason": r["reason"],
                 "actor": r["actor"], "fence": r["fence"], "trace_id": r["trace_id"]} for r in rows]

    def tasks(self, state: str | None = None, limit: int = 100, after_n: int = 0) -> list:
        sql, args = "SELECT * FROM tasks WHERE n > ?", [after_n]
        if state:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY n LIMIT ?"
        args.append(limit)
        return [task_dict(r) for r in self.read(sql, args)]

    def counts(self) -> dict:
        counts = {s: 0 for s in fsm.STATES}
        for r in self.read("SELECT state, COUNT(*) AS c FROM tasks GROUP BY state"):
            counts[r["state"]] = r["c"]
        return counts

    def nodes(self) -> list:
        out = []
        for r in self.read("SELECT * FROM nodes ORDER BY name"):
            node = json.loads(r["info"])
            node.update(name=r["name"], first_seen=r["first_seen"], last_seen=r["last_seen"], state=r["state"])
            out.append(node)
        return out


def task_dict(row) -> dict:
    d = dict(row)
    n = d.pop("n")
    d["id"] = task_id(n)
    for f in TASK_JSON_FIELDS:
        if d.get(f) is not None:
            d[f] = json.loads(d[f])
    d["cancel_requested"] = bool(d["cancel_requested"])
    d.pop("hb_missing", None)
    d.pop("rank", None)
    return d


class Tx:
    """A cursor inside one transaction, with the one transition function."""

    def __init__(self, cur):
        self.cur = cur

    def execute(self, sql, args=()):
        return self.cur.execute(sql, args)

    def cursor(self, sql, args=()):
        """A separate cursor to iterate lazily inside this transaction."""
        return self.cur.connection.execute(sql, args)

    def one(self, sql, args=()):
        return self.cur.execute(sql, args).fetchone()

    def all(self, sql, args=()):
        return self.cur.execute(sql, args).fetchall()

    def meta(self, key: str) -> str:
        return self.one("SELECT value FROM meta WHERE key=?", (key,))["value"]

    def set_meta(self, key: str, value) -> None:
        self.execute("INSERT INTO meta VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                     (key, str(value)))

    def next_fence(self) -> int:
        return int(self.one("UPDATE meta SET value=CAST(value AS INTEGER)+1 WHERE key='fence_seq' RETURNING value")[0])

    def task_row(self, n: int):
        row = self.one("SELECT * FROM tasks WHERE n=?", (n,))
        if row is None:
            raise NotFound(f"no task {task_id(n)}")
        return row

    def insert_task(self, fields: dict, state: str, reason: str, actor: str, now: float) -> int:
        """Create a task and its first history row (None -> state)."""
        fsm.check("new", None, state)
        row = dict(fields, state=state, created_at=now, updated_at=now)
        for f in TASK_JSON_FIELDS:
            if f in row and (row[f] is not None or f == "payload"):
                row[f] = json.dumps(row[f], separators=(",", ":"))
        cols = ", ".join(row)
        n = self.execute(f"INSERT INTO tasks({cols}) VALUES({', '.join('?' * len(row))})",
                         tuple(row.values())).lastrowid
        self._history(n, None, state, now, reason, actor, None, fields.get("trace_id"))
        return n

    def transition(self, n: int, expect_from, to: str, reason: str, actor: str, now: float, row=None,
                   **updates) -> None:
        """Move task n from `expect_from` (a state or a set of states) to `to`; write its history row.
        `row`: the task's row as read in this transaction, if the caller has it (saves a read).

        Raises InvalidTransition if the table forbids the move or the task is not in expect_from.
        """
        if row is None:
            row = self.task_row(n)
        frm = row["state"]
        allowed = {expect_from} if isinstance(expect_from, str) else set(expect_from or ())
        if allowed and frm not in allowed:
            raise InvalidTransition(f"task {task_id(n)} is {frm}, not {' or '.join(sorted(allowed))}",
                                    task=task_id(n), state=frm)
        fsm.check(task_id(n), frm, to)
        updates = {k: (json.dumps(v, separators=(",", ":")) if k in TASK_JSON_FIELDS and v is not None else v)
                   for k, v in updates.items()}
        updates.update(state=to, updated_at=now)
        sets = ", ".join(f"{k}=?" for k in updates)
        self.execute(f"UPDATE tasks SET {sets} WHERE n=? AND state=?", (*updates.values(), n, frm))
        self._history(n, frm, to, now, reason, actor, updates.get("fence", row["fence"]), row["trace_id"])

    def note(self, n: int, state: str, reason: str, actor: str, now: float) -> None:
        """A history row for a change that is not a state change (e.g. a cancel request)."""
        row = self.task_row(n)
        self._history(n, state, state, now, reason, actor, row["fence"], row["trace_id"])

    def _history(self, n, frm, to, now, reason, actor, fence, trace_id):
        self.execute("INSERT INTO history(task, from_state, to_state, at, reason, actor, fence, trace_id)"
                     " VALUES(?,?,?,?,?,?,?,?)", (n, frm, to, now, reason, actor, fence, trace_id))
