"""Replication of the supervisor's store: SQLite triggers append every insert or update of
the replicated tables to a changelog in the same transaction; a standby pulls the changed
rows as they are now (changes_since) and stores them (apply_changes); a former primary
about to follow another discards what the new primary never received and takes the new
primary's version of those rows, fetched by key (changed_keys, rows_by_key, rejoin).
Mixed into Store (store.py), whose lock, connection and tx() these use.
"""

import sqlite3

from meshkit.adapters.storetx import store_error
from meshkit.core.errors import StoreError

# Replication: every insert or update of these tables appends (table, rowid) to the
# changelog (SQLite triggers, in the same transaction); a standby pulls the rows.
# changelog.seq is a plain rowid (max + 1): no changelog row is ever deleted, so it only
# grows, without AUTOINCREMENT's extra write to sqlite_sequence per change (a database
# made before keeps its AUTOINCREMENT table; both behave the same).
REPLICATED = ("tasks", "history", "deps", "nodes", "results", "kinds", "leases", "lease_history", "meta")
LOCAL_META = ("role", "epoch", "mode", "replicated_seq", "peer", "peer_epoch", "checked_at",   # never copied
              "rejoin", "promoted_from", "promoted_head")


def triggers() -> str:
    out = ["CREATE TABLE IF NOT EXISTS changelog(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL,"
           " rid INTEGER NOT NULL)"]
    for t in REPLICATED:
        cond = f" WHEN NEW.key NOT IN ({','.join(repr(k) for k in LOCAL_META)})" if t == "meta" else ""
        for op in ("INSERT", "UPDATE"):
            out.append(f"CREATE TRIGGER IF NOT EXISTS log_{t}_{op.lower()} AFTER {op} ON {t}{cond}"
                       f" BEGIN INSERT INTO changelog(tbl, rid) VALUES('{t}', NEW.rowid); END")
    return ";\n".join(out) + ";\n"


class Replicated:
    """Store's replication half (needs self._lock, self.db, self._column_cache, self.cache, tx(), read())."""

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
                raise store_error(e) from None

    def apply_changes(self, changes: list, upto: int) -> None:
        """Store rows pulled from the primary (one transaction) and the position reached."""
        with self.tx(replication=True) as tx:
            self.cache.clear()         # rows change under the cached copies
            self._apply_rows(tx, changes)
            tx.set_meta("replicated_seq", upto)

    def _apply_rows(self, tx, changes: list) -> None:
        for c in changes:
            table, row = c.get("table"), c.get("row")
            if table not in REPLICATED or not isinstance(row, dict) or (table == "meta" and row.get("key") in LOCAL_META):
                continue
            cols = list(row)
            if not set(cols) <= self._columns(table):
                raise StoreError(f"replication: unknown columns for {table}: {sorted(set(cols) - self._columns(table))}")
            tx.execute(f"INSERT OR REPLACE INTO {table}({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})",
                       tuple(row[c] for c in cols))

    def _key_columns(self, table: str) -> list:
        """A table's primary-key columns: how a row is named between two nodes (a rowid is
        the same on both only where it is the key: tasks.n, history.seq...)."""
        got = self._column_cache.get(("key", table))
        if got is None:
            info = sorted((r for r in self.db.execute(f"PRAGMA table_info({table})") if r["pk"]), key=lambda r: r["pk"])
            got = self._column_cache[("key", table)] = [r["name"] for r in info]
        return got

    def changed_keys(self, after: int) -> list:
        """[{"table", "key": {column: value}}] of every row changed here after position `after`
        of our changelog (local meta rows excepted): what a rejoin drops and asks the new
        primary for."""
        with self._lock:
            try:
                out = []
                for e in self.db.execute("SELECT DISTINCT tbl, rid FROM changelog WHERE seq > ?", (after,)).fetchall():
                    if e["tbl"] not in REPLICATED:
                        continue
                    cols = self._key_columns(e["tbl"])
                    row = self.db.execute(f"SELECT {', '.join(cols)} FROM {e['tbl']} WHERE rowid=?", (e["rid"],)).fetchone()
                    if row is not None and not (e["tbl"] == "meta" and row["key"] in LOCAL_META):
                        out.append({"table": e["tbl"], "key": dict(row)})
                return out
            except sqlite3.Error as e:
                raise store_error(e) from None

    def rows_by_key(self, keys: list) -> list:
        """The rows named by [{"table", "key"}] as they are now, as [{"table", "row"}]; a row
        that does not exist is left out. ValueError for a table that is not replicated or a
        key that is not the table's primary key."""
        with self._lock:
            try:
                out = []
                for k in keys:
                    table, key = k["table"], k["key"]
                    if table not in REPLICATED:
                        raise ValueError(f"{table[:40]!r} is not a replicated table")
                    cols = self._key_columns(table)
                    if sorted(key) != sorted(cols):
                        raise ValueError(f"a key of {table} has the columns {cols}")
                    if table == "meta" and key["key"] in LOCAL_META:
                        continue
                    row = self.db.execute(f"SELECT * FROM {table} WHERE {' AND '.join(c + '=?' for c in cols)}",
                                          tuple(key[c] for c in cols)).fetchone()
                    if row is not None:
                        out.append({"table": table, "row": dict(row)})
                return out
            except sqlite3.Error as e:
                raise store_error(e) from None

    def rejoin(self, discard_after, since: int, rows: list | None = None) -> dict:
        """A former primary about to follow another: delete every row changed here after
        position `discard_after` of our own changelog (None: keep everything), store `rows`
        (the new primary's version of those it has: changed_keys, rows_by_key), then follow
        from `since` (one transaction). The deleted rows are what the new primary never
        received; without `rows`, a pull from 0 brings back its version of any it has. Meta
        rows are not deleted: the primary's overwrite them. Returns {"rows": {table: n},
        "tasks": [task n, ...], "traces": {task n: trace id of the task row deleted}}."""
        deleted, tasks, traces = {}, set(), {}
        with self.tx(replication=True) as tx:
            self.cache.clear()
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
                    if e["tbl"] == "tasks":
                        traces[row["n"]] = row["trace_id"]
                    tx.execute(f"DELETE FROM {e['tbl']} WHERE rowid=?", (e["rid"],))
                    deleted[e["tbl"]] = deleted.get(e["tbl"], 0) + 1
            self._apply_rows(tx, rows or [])
            tx.set_meta("replicated_seq", since)
            tx.execute("DELETE FROM meta WHERE key='rejoin'")
        return {"rows": deleted, "tasks": sorted(tasks), "traces": traces}
