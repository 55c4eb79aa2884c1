"""The supervisor's SQLite store (WAL). Every write goes through tx(): one BEGIN IMMEDIATE
transaction; every task state change goes through transition(), which writes the history
row in the same transaction.

The task rows and the transaction cursor (transition()) are in storetx.py, replication
(changelog, pulling, rejoin) in storerepl.py.
"""

import contextlib
import json
import os
import sqlite3
import threading

from meshkit.adapters.storerepl import Replicated
from meshkit.adapters.storetx import RowCache, Tx, store_error, task_dict, task_n
from meshkit.core.errors import NotFound, StoreError
from meshkit.rules import fsm

# results: the answer to each lease's result, for a result posted again. A fencing number
# belongs to one lease of one task, so it alone is the key (the rowid: no second b-tree
# to write per result; a database made before keeps its (task, fence) key, same answers).
# history.seq is a plain rowid (max + 1), like the changelog's: history rows are deleted by
# a rejoin, whose rows the new primary sends again, and with their ended task (retention,
# which never deletes the newest, so no number is handed out twice); AUTOINCREMENT would also
# rewrite sqlite_sequence on every state change (two per task). Task numbers keep it: an
# id, once handed out, never names another task. (A database made before keeps its table.)
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
CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks(n) WHERE state='waiting';
CREATE TABLE IF NOT EXISTS history(
  seq INTEGER PRIMARY KEY, task INTEGER NOT NULL, from_state TEXT,
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
  fence INTEGER PRIMARY KEY, task INTEGER NOT NULL, answer TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases(
  name TEXT PRIMARY KEY, holder TEXT, token INTEGER NOT NULL, expires REAL NOT NULL,
  acquired_at REAL NOT NULL, purpose TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS lease_history(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, event TEXT NOT NULL, holder TEXT,
  token INTEGER, at REAL NOT NULL, reason TEXT NOT NULL);
"""


CHECKPOINT_EVERY = 200          # commits between background checkpoints (also at least once a second)
AUTOCHECKPOINT_PAGES = 20000    # SQLite's own checkpoint, in a commit, only if the background one falls behind
# How long a write waits for SQLite's write lock once the store is open (its busy timeout;
# startup and the shutdown checkpoint wait busy_timeout). The supervisor is the database's
# only writer: the lock is busy only when another process holds it (a sqlite3 shell, a
# script, a backup tool taking a write lock), for an unknown time. Every thread writes
# through the one connection under self._lock, and the event loop holds that lock for a
# whole round of requests: a write waiting in SQLite's busy handler stops every request
# behind it, /health and reads included (they need no write lock in WAL mode, but wait for
# the round), and so do the maintenance cycle's and HA's writes, which hold the same lock
# (so they get the same bound: the cycle tries again at its next cycle, a standby's pull at
# its next pull; a longer wait there would stall the loop just the same).
# 0.2 s rides out a short write by another tool (milliseconds) and keeps a round, and the
# /health or read answered after it, far below a client's or the watchdog's timeout; past
# it the write is refused (503 store_error, Retry-After) and the client retries.
WRITE_WAIT = 0.2


class Store(Replicated):
    def __init__(self, path: str, durability: str = "normal", busy_timeout: float = 5.0,
                 write_wait: float = WRITE_WAIT):
        self.path = path
        self._commits = 0
        self._busy_timeout = busy_timeout
        self._reader = None          # snapshot()'s connection, opened on first use
        self._batch = None           # [owner thread, cursor] while batch() runs
        self._reader_lock = threading.Lock()
        self._checkpoint_due = threading.Event()
        self._closed = False
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.RLock()
        self._column_cache = {}
        self.cache = RowCache()    # rows the claim path reads each time (storetx.RowCache)
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
                self._setup_changelog(cur)
                cur.execute("INSERT OR IGNORE INTO meta VALUES('epoch', '1')")
                cur.execute("INSERT OR IGNORE INTO meta VALUES('fence_seq', '0')")
                cur.execute("INSERT OR IGNORE INTO meta VALUES('role', 'primary')")
            # Opened (nothing is served yet: waiting busy_timeout above was right): from here on
            # a write that can't get the lock within write_wait is refused (WRITE_WAIT).
            self.db.execute(f"PRAGMA busy_timeout={int(write_wait * 1000)}")
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

    def tx(self, replication: bool = False):
        """One BEGIN IMMEDIATE transaction: all of it is stored, or none of it (inside a
        batch() of this thread: a savepoint of the batch's transaction).
        Commit hooks run after the store's lock is released (no lock-order traps).
        A transaction that changed rows asks write_guard before it commits (a supervisor that
        stopped accepting work meanwhile refuses it), unless it is replication's own."""
        batch = self._batch
        if batch is not None and batch[0] == threading.get_ident():
            return Savepoint(self, replication)
        return self._tx_alone(replication)

    @contextlib.contextmanager
    def _tx_alone(self, replication: bool):
        with self.batch(), Savepoint(self, replication) as tx:      # a batch of one
            yield tx

    @contextlib.contextmanager
    def batch(self):
        """Group commit: the tx() calls this thread makes inside are one transaction, each
        in a savepoint of its own (a failed one is undone alone); all of it commits at the
        end, or none of it, raising StoreError. Other threads' transactions wait until then."""
        with self._lock:
            self._batch = [threading.get_ident(), None, None]     # owner, cursor once begun, a lost batch
            changes = self.db.total_changes
            try:
                yield
                cur = self._batch[1]
                if self._batch[2] is not None:
                    raise self._batch[2]
                if cur is not None:
                    try:
                        self._commit(cur)
                    except sqlite3.Error as e:
                        self._rollback(cur)
                        raise store_error(e) from None
            except BaseException:
                if self._batch[1] is not None:
                    self._rollback(self._batch[1])
                if self.db.total_changes != changes:
                    self.cache.clear()      # rows it read or reserved may be undone
                raise
            finally:
                began, self._batch = self._batch[1] is not None, None
        if began:
            for hook in self.commit_hooks:
                hook()

    def _guard(self, replication: bool, changes_before: int) -> None:
        if self.write_guard is not None and not replication and self.db.total_changes != changes_before:
            self.write_guard()

    def _commit(self, cur) -> None:
        cur.execute("COMMIT")
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            self._checkpoint_due.set()

    @staticmethod
    def _rollback(cur):
        try:
            cur.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    @contextlib.contextmanager
    def snapshot(self):
        """A consistent read-only view on a second connection (WAL: readers never wait for the
        writer, nor it for them), for long reads that must not hold the writers' lock."""
        with self._reader_lock:
            try:
                if self._reader is None:
                    self._reader = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                                   check_same_thread=False)
                    self._reader.row_factory = sqlite3.Row
                    self._reader.execute("PRAGMA query_only=1")
                cur = self._reader.cursor()
                cur.execute("BEGIN")
            except sqlite3.Error as e:
                raise store_error(e) from None
            try:
                yield Tx(cur)
            except sqlite3.Error as e:
                raise store_error(e) from None
            finally:
                try:
                    cur.execute("COMMIT")
                except sqlite3.Error:
                    pass

    def read(self, sql: str, args=()) -> list:
        with self._lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise store_error(e) from None

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (at shutdown: nothing is served
        any more, so it may wait the startup's busy_timeout for another process's lock)."""
        with self._lock:
            try:
                self.db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        self._closed = True
        self._checkpoint_due.set()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
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

    def tasks(self, state: str | None = None, limit: int = 100, after_n: int = 0, before_n: int | None = None,
              newest_first: bool = False) -> list:
        """Up to `limit` tasks numbered above after_n (and below before_n), oldest first, or newest first."""
        sql, args = "SELECT * FROM tasks WHERE n > ?", [after_n]
        if before_n is not None:
            sql += " AND n < ?"
            args.append(before_n)
        if state:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY n DESC LIMIT ?" if newest_first else " ORDER BY n LIMIT ?"
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


class Savepoint:
    """One tx() inside the batch of this thread: a savepoint of the batch's transaction
    (begun by the first one). A failed one is undone alone; a failure that made SQLite
    roll the whole transaction back (disk full, I/O error) loses the batch: every
    request in it gets that error. So does a BEGIN that failed (the write lock held by
    another process past WRITE_WAIT): the round's other writes would wait for the same lock
    again, one after the other. (A class, not a generator: it is on every request.)"""

    __slots__ = ("store", "replication", "cur", "changes")

    def __init__(self, store: Store, replication: bool):
        self.store, self.replication = store, replication

    def __enter__(self) -> Tx:
        store = self.store
        batch = store._batch
        if batch[2] is not None:
            raise batch[2]
        cur = batch[1]
        try:
            if cur is None:
                cur = store.db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                batch[1] = cur
            cur.execute("SAVEPOINT tx")
        except sqlite3.Error as e:
            raise self._lost(e) from None
        self.cur, self.changes = cur, store.db.total_changes
        return Tx(cur, store.cache)

    def __exit__(self, etype, error, tb) -> bool:
        if etype is None:
            try:
                self.store._guard(self.replication, self.changes)
                self.cur.execute("RELEASE tx")
                return False
            except BaseException as e:      # refused by the guard, or RELEASE failed
                error = e
                self._undo()
                if isinstance(e, sqlite3.Error):
                    raise self._lost(e) from None
                raise
        self._undo()
        if isinstance(error, sqlite3.Error):
            raise self._lost(error) from None
        return False

    def _undo(self) -> None:
        store = self.store
        if store.db.total_changes != self.changes:
            store.cache.clear()      # rows it read or reserved may be undone
        try:
            self.cur.execute("ROLLBACK TO tx")
            self.cur.execute("RELEASE tx")
        except sqlite3.Error:
            pass

    def _lost(self, e: sqlite3.Error) -> StoreError:
        err = store_error(e)
        if not self.store.db.in_transaction:
            self.store._batch[2] = err
        return err
