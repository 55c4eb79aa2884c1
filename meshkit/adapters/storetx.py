"""Rows of the task table and the cursor of one store transaction, with the one
transition function every task state change goes through (it writes the history row).

Task ids are "t" + the row number, so an id can never name a path.
"""

import json
import sqlite3

from meshkit.core.errors import InvalidTransition, NotFound, StoreError
from meshkit.rules import fsm

TASK_JSON_FIELDS = ("payload", "requires", "expects", "after", "result")
FENCE_BLOCK = 1000      # fencing numbers reserved in meta per write (see Tx.next_fence)
FENCE_EPOCH_SHIFT = 32  # a supervisor promoted to epoch E hands out numbers from E << 32 on (Tx.fence_floor)
_UPDATES = {}           # transition()'s UPDATE statement per (columns set, RETURNING): one per call site


def store_error(e: sqlite3.Error) -> StoreError:
    """The StoreError (503) for a failed statement; retry_after becomes Retry-After."""
    msg = str(e)
    if "full" in msg:
        return StoreError("the supervisor's disk is full; nothing was stored (free space and retry)", retry_after=5)
    if "locked" in msg or "busy" in msg:
        return StoreError("the database is busy (another process holds a write lock); nothing was stored, retry",
                          retry_after=1)
    return StoreError(f"database error: {msg}; nothing was stored")


def task_id(n: int) -> str:
    return f"t{n}"


def task_n(tid: str) -> int:
    # One spelling per task: ASCII digits, no leading zero ("t01" is not t1).
    if not (isinstance(tid, str) and tid[:1] == "t" and tid[1:].isascii() and tid[1:].isdigit()
            and tid[1] != "0" and len(tid) < 20):
        raise NotFound(f"no task {str(tid)[:40]!r} (task ids look like t12)")
    return int(tid[1:])


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


class RowCache(dict):
    """Copies of rows that the claim path reads on every request (a node's row, the kinds
    table, the requirement sets of queued tasks, whether any task waits for others, how
    many tasks each node holds) and a reserved block of fencing numbers,
    kept between transactions. Who changes such a row drops its copy in the same
    transaction; the store empties the whole cache whenever rows may have changed behind
    it: a rollback that undid changes, rows applied from the primary, a rejoin. (The
    supervisor is the only writer of its database.)"""

    @staticmethod
    def node_key(name: str) -> tuple:
        """The key of a node's (info, state) (roles/supervisor/tasks.py)."""
        return ("node", name)

    @staticmethod
    def requires_key(kind: str) -> tuple:
        """The key of a kind's requirement sets of queued tasks (roles/supervisor/queue.py)."""
        return ("requires", kind)

    @staticmethod
    def active_key(node: str) -> tuple:
        """The key of the number of tasks leased to or running on a node (tasks.py's claim)."""
        return ("active", node)

    def lease_moved(self, node, delta: int) -> None:
        """A task entered (+1) or left (-1) the leased/running states on `node`: its cached
        count, if any, follows (transition() calls this; no other write changes a state)."""
        key = self.active_key(node)
        count = self.get(key)
        if count is not None:
            self[key] = count + delta

    def queued(self, kind: str, requires: str) -> None:
        """A task of `kind` needing `requires` (JSON text) is queued now: the kind's cached
        requirement sets, if any, must include it."""
        sets = self.get(self.requires_key(kind))
        if sets is not None and requires not in sets:
            sets.append(requires)


class Tx:
    """A cursor inside one transaction, with the one transition function."""

    def __init__(self, cur, cache: RowCache = None):
        self.cur = cur
        self.cache = RowCache() if cache is None else cache

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
        """The next fencing number: greater than any handed out before, here or by a former
        primary. meta.fence_seq holds the highest number reserved; a block of FENCE_BLOCK is
        reserved at a time and handed out from memory (a restart or a promotion starts above
        the reserved block; a rollback of the reservation empties the cache, so no number
        is used that the database does not cover)."""
        block = self.cache.get("fence")
        if block is None or block[0] > block[1]:
            top = int(self.one("UPDATE meta SET value=CAST(value AS INTEGER)+? WHERE key='fence_seq' RETURNING value",
                               (FENCE_BLOCK,))[0])
            block = self.cache["fence"] = [top - FENCE_BLOCK + 1, top]
        block[0] += 1
        return block[0] - 1

    def fence_floor(self, epoch: int) -> None:
        """This supervisor becomes primary at `epoch`: its fencing numbers from here on are
        above every number an earlier epoch handed out, also those of leases its former
        primary granted that never reached it (asynchronous replication), as long as one
        epoch hands out fewer than 2^32. They still only grow (a higher count stays)."""
        self.execute("UPDATE meta SET value=MAX(CAST(value AS INTEGER), ?) WHERE key='fence_seq'",
                     (epoch << FENCE_EPOCH_SHIFT,))
        self.cache.pop("fence", None)

    def skip_task_ids(self, gap: int) -> None:
        """This supervisor becomes primary: its next task numbers start `gap` past the highest
        it has seen, so a task its former primary created in the async window (and this one
        never received) is not given the same id as a new one here: that id stays unknown
        (404), never names another task."""
        self.execute("INSERT INTO sqlite_sequence(name, seq) SELECT 'tasks', COALESCE(MAX(n), 0) FROM tasks "
                     "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='tasks')")
        self.execute("UPDATE sqlite_sequence SET seq=seq+? WHERE name='tasks'", (gap,))

    def any_waiting(self) -> bool:
        """Whether any task waits for others (the index of waiting tasks is empty, mostly)."""
        got = self.cache.get("waiting")
        if got is None:
            got = self.cache["waiting"] = self.one("SELECT n FROM tasks WHERE state='waiting' LIMIT 1") is not None
        return got

    def task_row(self, n: int, columns: str = "*"):
        """Task n's row (NotFound if there is none): every column, or those named."""
        row = self.one(f"SELECT {columns} FROM tasks WHERE n=?", (n,))
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
        if state == "queued":
            self.cache.queued(row["kind"], row["requires"])
        elif state == "waiting":
            self.cache["waiting"] = True
        self._history(n, None, state, now, reason, actor, None, fields.get("trace_id"))
        return n

    def transition(self, n: int, expect_from, to: str, reason: str, actor: str, now: float, row=None,
                   returning: str = "", **updates):
        """Move task n from `expect_from` (a state or a set of states) to `to`; write its history row.
        `row`: the task's row as read in this transaction, if the caller has it (saves a read;
        at least state, fence, trace_id, kind, requires). `returning`: columns of the changed
        row to return (UPDATE ... RETURNING); else None.

        Raises InvalidTransition if the table forbids the move or the task is not in expect_from.
        """
        if row is None:
            row = self.task_row(n)
        frm = row["state"]
        if frm != expect_from and expect_from and (isinstance(expect_from, str) or frm not in expect_from):
            allowed = {expect_from} if isinstance(expect_from, str) else set(expect_from)
            raise InvalidTransition(f"task {task_id(n)} is {frm}, not {' or '.join(sorted(allowed))}",
                                    task=task_id(n), state=frm)
        if (frm, to) not in fsm.TRANSITIONS:
            fsm.check(task_id(n), frm, to)          # raises, with the words
        for k in TASK_JSON_FIELDS:
            if updates.get(k) is not None:
                updates[k] = json.dumps(updates[k], separators=(",", ":"))
        updates["state"], updates["updated_at"] = to, now
        key = (tuple(updates), returning)
        sql = _UPDATES.get(key)
        if sql is None:
            sql = _UPDATES[key] = (f"UPDATE tasks SET {', '.join(f'{k}=?' for k in updates)} WHERE n=? AND state=?"
                                   + (f" RETURNING {returning}" if returning else ""))
        changed = self.execute(sql, (*updates.values(), n, frm))
        changed = changed.fetchone() if returning else None
        if to == "queued":
            self.cache.queued(row["kind"], row["requires"])
        if frm == "waiting":
            self.cache.pop("waiting", None)     # maybe the last one: ask again
        if (frm in fsm.ACTIVE) != (to in fsm.ACTIVE):
            if to in fsm.ACTIVE:
                self.cache.lease_moved(updates["node"] if "node" in updates else row["node"], 1)
            else:
                self.cache.lease_moved(row["node"], -1)
        self._history(n, frm, to, now, reason, actor, updates.get("fence", row["fence"]), row["trace_id"])
        return changed

    def note(self, n: int, state: str, reason: str, actor: str, now: float) -> None:
        """A history row for a change that is not a state change (e.g. a cancel request)."""
        row = self.task_row(n)
        self._history(n, state, state, now, reason, actor, row["fence"], row["trace_id"])

    def _history(self, n, frm, to, now, reason, actor, fence, trace_id):
        self.execute("INSERT INTO history(task, from_state, to_state, at, reason, actor, fence, trace_id)"
                     " VALUES(?,?,?,?,?,?,?,?)", (n, frm, to, now, reason, actor, fence, trace_id))
