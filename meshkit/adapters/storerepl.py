"""Replication of the supervisor's store: SQLite triggers append every insert, update and
delete of the replicated tables to a changelog in the same transaction; a standby pulls the
changed rows as they are now, and the keys of the deleted ones (changes_since), and stores
them (apply_changes); the changelog is compacted (compact_changelog); a former primary
about to follow another discards what the new primary never received and takes the new
primary's version of those rows, fetched by key (changed_keys, rows_by_key, rejoin).
Mixed into Store (store.py), whose lock, connection and tx() these use.
"""

import json
import sqlite3

from meshkit.adapters.storetx import store_error
from meshkit.core.errors import StoreError
from meshkit.rules import retention

# Replication: every insert or update of these tables appends (table, rowid) to the
# changelog, every delete (table, rowid, the row's key as JSON in `deleted`: a rowid is
# the same on both nodes only where it is the key) (SQLite triggers, in the same
# transaction); a standby pulls the rows. changelog.seq is a plain rowid (max + 1), without
# AUTOINCREMENT's extra write to sqlite_sequence per change (a database made before keeps
# its AUTOINCREMENT table; both behave the same): compaction never deletes the newest row,
# so no seq is handed out twice. changelog_last holds the newest entry of each row of the
# small tables updated in place again and again (IN_PLACE: a heartbeat updates its node),
# for the compaction; the busy tables pay no extra write per change for it (an index of
# the changelog by row cost ~10 % of a request: measured).
REPLICATED = ("tasks", "history", "deps", "nodes", "results", "kinds", "leases", "lease_history", "meta")
IN_PLACE = ("nodes", "kinds", "leases", "meta")
LOCAL_META = ("role", "epoch", "mode", "replicated_seq", "peer", "peer_epoch", "checked_at",   # never copied
              "rejoin", "promoted_from", "promoted_head", "changelog_floor", "peer_floor")


def triggers(key_columns) -> str:
    """The changelog, changelog_last and the triggers (made again at every start, so a database
    made before gets today's); key_columns(table): its primary-key columns."""
    out = ["CREATE TABLE IF NOT EXISTS changelog(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL,"
           " rid INTEGER NOT NULL, deleted TEXT)",
           "CREATE INDEX IF NOT EXISTS changelog_deleted ON changelog(seq) WHERE deleted IS NOT NULL",
           "CREATE TABLE IF NOT EXISTS changelog_last(tbl TEXT NOT NULL, rid INTEGER NOT NULL, seq INTEGER NOT NULL,"
           " PRIMARY KEY(tbl, rid)) WITHOUT ROWID"]
    local = ','.join(repr(k) for k in LOCAL_META)
    for t in REPLICATED:
        for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            cond = f" WHEN {row}.key NOT IN ({local})" if t == "meta" else ""
            if op == "DELETE":
                key = ", ".join(f"'{c}', OLD.{c}" for c in key_columns(t))
                values = f"'{t}', OLD.rowid, json_object({key})"
            else:
                values = f"'{t}', NEW.rowid, NULL"
            last = (f" INSERT INTO changelog_last VALUES('{t}', NEW.rowid, last_insert_rowid())"
                    " ON CONFLICT(tbl, rid) DO UPDATE SET seq=excluded.seq;" if t in IN_PLACE and op != "DELETE" else "")
            out.append(f"DROP TRIGGER IF EXISTS log_{t}_{op.lower()}")
            out.append(f"CREATE TRIGGER log_{t}_{op.lower()} AFTER {op} ON {t}{cond}"
                       f" BEGIN INSERT INTO changelog(tbl, rid, deleted) VALUES({values});{last} END")
    return ";\n".join(out) + ";\n"


class Replicated:
    """Store's replication half (needs self._lock, self.db, self._column_cache, self.cache, tx(), read())."""

    def _setup_changelog(self, cur) -> None:
        """Create the changelog and its triggers (in the store's opening transaction); a
        changelog made before gets its `deleted` column first."""
        first, rest = triggers(self._key_columns).split(";\n", 1)
        cur.execute(first)
        if "deleted" not in {r["name"] for r in cur.execute("PRAGMA table_info(changelog)")}:
            cur.execute("ALTER TABLE changelog ADD COLUMN deleted TEXT")
        for stmt in rest.split(";\n"):
            if stmt.strip():
                cur.execute(stmt)

    def _columns(self, table: str) -> set:
        if table not in self._column_cache:
            self._column_cache[table] = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
        return self._column_cache[table]

    def head_seq(self) -> int:
        return self.read("SELECT COALESCE(MAX(seq), 0) AS s FROM changelog")[0]["s"]

    def changes_since(self, since: int, limit: int = 2000) -> list:
        """([{"seq", "table", "row"} | {"seq", "table", "key", "deleted": True}] after `since`,
        the last position read): each changed row once, as it is now, and each deletion (by
        key), in changelog order."""
        with self._lock:
            try:
                log = self.db.execute("SELECT seq, tbl, rid, deleted FROM changelog WHERE seq > ? ORDER BY seq"
                                      " LIMIT ?", (since, limit)).fetchall()
                latest, out = {}, []
                for e in log:
                    if e["deleted"] is None:
                        latest[(e["tbl"], e["rid"])] = e["seq"]
                    else:
                        out.append({"seq": e["seq"], "table": e["tbl"], "key": json.loads(e["deleted"]),
                                    "deleted": True})
                for (tbl, rid), seq in latest.items():
                    row = self.db.execute(f"SELECT * FROM {tbl} WHERE rowid=?", (rid,)).fetchone()
                    if row is not None:
                        out.append({"seq": seq, "table": tbl, "row": dict(row)})
                out.sort(key=lambda c: c["seq"])
                last = log[-1]["seq"] if log else since
                return out, last
            except sqlite3.Error as e:
                raise store_error(e) from None

    def apply_changes(self, changes: list, upto: int, peer_floor: int | None = None) -> None:
        """Store rows pulled from the primary (one transaction) and the position reached (and
        the primary's changelog_floor seen, if given: roles/supervisor/pull.py)."""
        with self.tx(replication=True) as tx:
            self.cache.clear()         # rows change under the cached copies
            self._apply_rows(tx, changes)
            tx.set_meta("replicated_seq", upto)
            if peer_floor is not None:
                tx.set_meta("peer_floor", peer_floor)

    def _apply_rows(self, tx, changes: list) -> None:
        for c in changes:
            table, row = c.get("table"), c.get("row")
            if c.get("deleted") is True and table in REPLICATED:
                self._apply_deletion(tx, table, c.get("key"))
                continue
            if table not in REPLICATED or not isinstance(row, dict) or (table == "meta" and row.get("key") in LOCAL_META):
                continue
            cols = list(row)
            if not set(cols) <= self._columns(table):
                raise StoreError(f"replication: unknown columns for {table}: {sorted(set(cols) - self._columns(table))}")
            tx.execute(f"INSERT OR REPLACE INTO {table}({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})",
                       tuple(row[c] for c in cols))

    def _apply_deletion(self, tx, table: str, key) -> None:
        """Delete the row the primary deleted, by its key there (its columns: a database made
        before may key a table otherwise; results by (task, fence), whose fence alone names it)."""
        if not isinstance(key, dict) or not key or (table == "meta" and key.get("key") in LOCAL_META):
            return
        if not set(key) <= self._columns(table):
            raise StoreError(f"replication: unknown key columns for {table}: {sorted(set(key) - self._columns(table))}")
        tx.execute(f"DELETE FROM {table} WHERE {' AND '.join(c + '=?' for c in key)}", tuple(key.values()))

    def compact_changelog(self, after: int, limit: int) -> tuple:
        """Drop the entries no pull needs (rules.retention.changelog_drops) among the `limit`
        after position `after` (one transaction). (Where to go on from: 0 once the window
        reached the newest entry; how many were dropped.)"""
        with self.tx(replication=True) as tx:
            window = tx.all("SELECT seq, tbl, rid, deleted IS NOT NULL AS gone FROM changelog WHERE seq > ?"
                            " ORDER BY seq LIMIT ?", (after, limit))
            if not window:
                return 0, 0
            end, head = window[-1]["seq"], tx.one("SELECT MAX(seq) AS s FROM changelog")["s"]
            rows = {(e["tbl"], e["rid"]) for e in window if not e["gone"] and e["tbl"] in REPLICATED}
            later = {k for k in rows if k[0] in IN_PLACE
                     and tx.one("SELECT 1 FROM changelog_last WHERE tbl=? AND rid=? AND seq > ?", (*k, end))}
            gone = {k for k in rows if tx.one(f"SELECT 1 FROM {k[0]} WHERE rowid=?", (k[1],)) is None}
            drops = retention.changelog_drops([(e["seq"], e["tbl"], e["rid"], e["gone"]) for e in window],
                                              later, gone, head)
            self._drop_entries(tx, drops)
            for t in IN_PLACE:      # rows gone; on a standby also every replaced one (INSERT OR REPLACE gives
                tx.execute(         # the row a new rowid, so each applied heartbeat left one behind)
                    f"DELETE FROM changelog_last WHERE tbl='{t}' AND NOT EXISTS"
                    f" (SELECT 1 FROM {t} WHERE {t}.rowid=changelog_last.rid)")
        return (0 if len(window) < limit else end), len(drops)

    def expire_deletions(self, upto: int, limit: int) -> tuple:
        """Drop up to `limit` entries saying a row was deleted, at or below position `upto`
        (never the newest entry); meta changelog_floor keeps the highest one dropped: a
        standby behind it copies everything again (roles/supervisor/pull.py). (How many were
        dropped, whether any such entry is left.)"""
        with self.tx(replication=True) as tx:
            head = tx.one("SELECT COALESCE(MAX(seq), 0) AS s FROM changelog")["s"]
            seqs = [r["seq"] for r in tx.all("SELECT seq FROM changelog WHERE deleted IS NOT NULL AND seq <= ?"
                                             " AND seq < ? ORDER BY seq LIMIT ?", (upto, head, limit))]
            if seqs:
                self._drop_entries(tx, seqs)
                tx.execute("INSERT INTO meta VALUES('changelog_floor', ?) ON CONFLICT(key) DO UPDATE SET"
                           " value=MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))", (str(seqs[-1]),))
        return len(seqs), len(seqs) == limit

    @staticmethod
    def _drop_entries(tx, seqs: list) -> None:
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            tx.execute(f"DELETE FROM changelog WHERE seq IN ({','.join('?' * len(chunk))})", chunk)

    def changelog_floor(self) -> int:
        """The highest changelog position of a deletion entry dropped (0: none)."""
        return int(self.meta("changelog_floor", "0"))

    def _key_columns(self, table: str) -> list:
        """A table's primary-key columns: how a row is named between two nodes (a rowid is
        the same on both only where it is the key: tasks.n, history.seq...)."""
        got = self._column_cache.get(("key", table))
        if got is None:
            info = sorted((r for r in self.db.execute(f"PRAGMA table_info({table})") if r["pk"]), key=lambda r: r["pk"])
            got = self._column_cache[("key", table)] = [r["name"] for r in info]
        return got

    def changed_keys(self, after: int) -> list:
        """[{"table", "key": {column: value}}] of every row changed or deleted here after
        position `after` of our changelog (local meta rows excepted): what a rejoin drops
        and asks the new primary for (a row deleted here that it still has comes back)."""
        with self._lock:
            try:
                out = []
                for e in self.db.execute("SELECT DISTINCT tbl, deleted FROM changelog WHERE seq > ?"
                                         " AND deleted IS NOT NULL", (after,)).fetchall():
                    key = json.loads(e["deleted"])      # deleted here: the new primary may have it
                    if e["tbl"] in REPLICATED and not (e["tbl"] == "meta" and key.get("key") in LOCAL_META):
                        out.append({"table": e["tbl"], "key": key})
                for e in self.db.execute("SELECT DISTINCT tbl, rid FROM changelog WHERE seq > ?"
                                         " AND deleted IS NULL", (after,)).fetchall():
                    if e["tbl"] not in REPLICATED:
                        continue
                    cols = self._key_columns(e["tbl"])
                    row = self.db.execute(f"SELECT {', '.join(cols)} FROM {e['tbl']} WHERE rowid=?", (e["rid"],)).fetchone()
                    if row is not None and not (e["tbl"] == "meta" and row["key"] in LOCAL_META):
                        out.append({"table": e["tbl"], "key": dict(row)})
                once = {json.dumps(k, sort_keys=True): k for k in out}      # deleted, then made again
                return list(once.values())
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
                for e in tx.all("SELECT DISTINCT tbl, rid FROM changelog WHERE seq > ? AND tbl != 'meta'"
                                " AND deleted IS NULL",
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
            tx.execute("DELETE FROM meta WHERE key IN ('rejoin', 'peer_floor')")   # a new changelog to follow
        return {"rows": deleted, "tasks": sorted(tasks), "traces": traces}
