"""The supervisor's task operations: each one transaction through the store, decisions
from meshkit.rules. Long-poll claims wait on a condition that every change which could
make work available notifies.
"""

import json
import random
import secrets
import threading

from meshkit.adapters.store import Store, Tx, task_dict, task_id, task_n
from meshkit.core import wire
from meshkit.core.errors import BadRequest, InvalidTransition, StaleFence, UnknownNode
from meshkit.rules import backoff, fsm
from meshkit.rules.config import Config

MAX_WAIT = 60.0


class Tasks:
    def __init__(self, store: Store, cfg: Config, clock, logger, rand=None):
        self.store, self.cfg, self.clock, self.log = store, cfg, clock, logger
        self.rand = rand or random.Random()
        self.cond = threading.Condition()
        self.generation = 0
        self.draining = False

    # -- notifications for long-polls -----------------------------------------

    def _wake(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wake_all(self) -> None:
        self._wake()

    # -- dispatch ---------------------------------------------------------------

    def dispatch(self, body: dict, actor: str) -> tuple:
        """(task dict, created?). The same idempotency key returns the same task."""
        wire.validate(body, wire.DISPATCH, "dispatch")
        now = self.clock.time()
        cfg = self.cfg
        timeout = body.get("timeout", cfg.get("tasks.timeout"))
        max_attempts = body.get("max_attempts", cfg.get("tasks.max_attempts"))
        if not 0 < timeout <= 7 * 86400:
            raise BadRequest("dispatch: field 'timeout' must be between 0 and 604800 seconds", field="timeout")
        if not 1 <= max_attempts <= 100:
            raise BadRequest("dispatch: field 'max_attempts' must be from 1 to 100", field="max_attempts")
        if not -1_000_000 <= body.get("priority", 0) <= 1_000_000:
            raise BadRequest("dispatch: field 'priority' must be from -1000000 to 1000000", field="priority")
        key = body.get("key")
        if key is not None and not 0 < len(key) <= 200:
            raise BadRequest("dispatch: field 'key' must be 1-200 characters", field="key")
        after = list(dict.fromkeys(body.get("after", [])))
        fields = {
            "kind": body["kind"], "payload": body.get("payload"), "requires": sorted(set(body.get("requires", []))),
            "priority": body.get("priority", 0), "timeout": float(timeout), "max_attempts": max_attempts,
            "key": key, "trace_id": body.get("trace_id") or secrets.token_hex(8),
            "expects": body.get("expects"), "after": after,
        }
        with self.store.tx() as tx:
            if key is not None:
                row = tx.one("SELECT * FROM tasks WHERE key=?", (key,))
                if row is not None:
                    return task_dict(row), False
            deps = []
            for dep in after:
                row = tx.one("SELECT n, state FROM tasks WHERE n=?", (task_n(dep),))
                if row is None:
                    raise BadRequest(f"dispatch: unknown dependency {dep}", field="after")
                deps.append(row)
            waiting = any(d["state"] != "succeeded" for d in deps)
            n = tx.insert_task(fields, "waiting" if waiting else "queued",
                               f"dispatched by {actor}" + (f", after {', '.join(after)}" if after else ""), actor, now)
            for d in deps:
                tx.execute("INSERT INTO deps(task, dep) VALUES(?, ?)", (n, d["n"]))
            failed = [d for d in deps if d["state"] in ("failed", "cancelled")]
            if failed:
                tx.transition(n, "waiting", "failed", f"upstream failed: {task_id(failed[0]['n'])}", "supervisor", now)
            task = task_dict(tx.task_row(n))
        self.log.info("task_dispatched", task=task["id"], kind=task["kind"], trace_id=task["trace_id"],
                      state=task["state"], actor=actor)
        self._wake()
        return task, True

    # -- claims -----------------------------------------------------------------

    def claim(self, body: dict) -> list:
        """Lease up to `max` tasks this node can run; hold the request up to `wait` seconds."""
        wire.validate(body, wire.CLAIM, "claim")
        node = body["node"]
        want = body.get("max", 1)
        wait = min(max(float(body.get("wait", 0)), 0.0), MAX_WAIT)
        if want < 1:
            raise BadRequest("claim: field 'max' must be at least 1", field="max")
        deadline = self.clock.monotonic() + wait
        while True:
            with self.cond:
                generation = self.generation
            leased = self._claim_once(node, want)
            remaining = deadline - self.clock.monotonic()
            if leased is None:          # no free slot on this node: nothing to wait for
                return []
            if leased or remaining <= 0 or self.draining:
                return leased
            with self.cond:
                if self.generation == generation and not self.draining:
                    self.cond.wait(remaining)

    def _claim_once(self, node: str, want: int):
        """The leased tasks (maybe none), or None when the node has no free slot."""
        now = self.clock.time()
        lease_ttl = self.cfg.get("supervisor.lease_ttl")
        with self.store.tx() as tx:
            info = self._node_info(tx, node)
            caps, kinds = set(info.get("capabilities", [])), info.get("kinds", [])
            active = tx.one("SELECT COUNT(*) AS c FROM tasks WHERE node=? AND state IN ('leased','running')",
                            (node,))["c"]
            room = min(want, max(0, int(info.get("slots", 1)) - active))
            if room <= 0:
                return None
            if not kinds:
                return []
            marks = ",".join("?" * len(kinds))
            # Lazy cursor: the best candidates come first and we stop as soon as the node is full.
            candidates = tx.cursor(f"SELECT n, requires, attempts FROM tasks WHERE state='queued' AND not_before<=?"
                                    f" AND kind IN ({marks}) ORDER BY priority DESC, n", (now, *kinds))
            picked = []
            for row in candidates:
                if row["requires"] == "[]" or set(json.loads(row["requires"])) <= caps:
                    picked.append((row["n"], row["attempts"] + 1))
                    if len(picked) >= room:
                        break
            candidates.close()
            leased = []
            for n, attempts in picked:
                fence = tx.next_fence()
                tx.transition(n, "queued", "leased", f"leased to {node} (attempt {attempts})", node, now,
                              node=node, fence=fence, attempts=attempts, lease_deadline=now + lease_ttl,
                              started_at=None)
                leased.append(tx.task_row(n))
            if leased:
                tx.execute("UPDATE nodes SET last_seen=? WHERE name=?", (now, node))
        out = []
        for row in leased:
            t = task_dict(row)
            out.append({"id": t["id"], "kind": t["kind"], "payload": t["payload"], "attempt": t["attempts"],
                        "fence": t["fence"], "timeout": t["timeout"], "expects": t["expects"],
                        "trace_id": t["trace_id"], "lease_deadline": t["lease_deadline"]})
            self.log.info("task_leased", task=t["id"], node=node, fence=t["fence"], attempt=t["attempts"],
                          trace_id=t["trace_id"])
        return out

    @staticmethod
    def _node_info(tx: Tx, node: str) -> dict:
        row = tx.one("SELECT info, state FROM nodes WHERE name=?", (node,))
        if row is None:
            raise UnknownNode(f"unknown node {node!r}: send a heartbeat first")
        return json.loads(row["info"])

    # -- start / results ----------------------------------------------------------

    def _fenced_row(self, tx: Tx, tid: str, node: str, fence: int):
        row = tx.task_row(task_n(tid))
        if row["fence"] != fence or row["node"] != node or row["state"] not in fsm.ACTIVE:
            raise StaleFence(f"task {tid}: lease {fence} of {node} is no longer current "
                             f"(task is {row['state']}, lease {row['fence']} on {row['node'] or 'no node'})",
                             task=tid, current_fence=row["fence"])
        return row

    def start(self, tid: str, body: dict) -> dict:
        wire.validate(body, wire.START, "start")
        now = self.clock.time()
        with self.store.tx() as tx:
            row = self._fenced_row(tx, tid, body["node"], body["fence"])
            if row["state"] == "leased":
                tx.transition(row["n"], "leased", "running", f"started on {body['node']}", body["node"], now,
                              started_at=now, lease_deadline=now + self.cfg.get("supervisor.lease_ttl"))
        return {"ok": True, "task": tid, "state": "running"}

    def result(self, body: dict) -> dict:
        wire.validate(body, wire.RESULT, "result")
        if body["outcome"] not in wire.OUTCOMES:
            raise BadRequest("result: field 'outcome' must be succeeded or failed", field="outcome")
        ended_by = body.get("ended_by", "exit")
        if ended_by not in wire.ENDED_BY:
            raise BadRequest(f"result: field 'ended_by' must be one of {', '.join(wire.ENDED_BY)}", field="ended_by")
        tid, fence, node = body["task"], body["fence"], body["node"]
        now = self.clock.time()
        n = task_n(tid)
        with self.store.tx() as tx:
            seen = tx.one("SELECT answer FROM results WHERE task=? AND fence=?", (n, fence))
            if seen is not None:
                return dict(json.loads(seen["answer"]), duplicate=True)
            row = self._fenced_row(tx, tid, node, fence)
            to, reason = fsm.after_result(body["outcome"], ended_by, row["attempts"], row["max_attempts"],
                                          bool(row["cancel_requested"]))
            if body.get("error"):
                reason += f": {body['error'][:200]}"
            report = {k: body.get(k) for k in ("outcome", "ended_by", "exit_code", "signal", "result", "error",
                                                "stdout_tail", "stderr_tail", "started_at", "finished_at")}
            report.update(node=node, attempt=row["attempts"], fence=fence)
            updates = {"result": report, "error": body.get("error") if body["outcome"] == "failed" else None}
            if to == "queued":
                delay = backoff.full_jitter(row["attempts"], self.cfg.get("tasks.backoff_base"),
                                            self.cfg.get("tasks.backoff_cap"), self.rand.random())
                updates.update(node=None, lease_deadline=None, not_before=now + delay)
                reason += f" (backoff {delay:.1f} s)"
            tx.transition(n, fsm.ACTIVE, to, reason, node, now, **updates)
            if to in fsm.TERMINAL:
                self._settle_dependents(tx, n, to, now)
            answer = {"ok": True, "task": tid, "state": to, "duplicate": False}
            tx.execute("INSERT INTO results(task, fence, answer, at) VALUES(?,?,?,?)",
                       (n, fence, json.dumps(answer), now))
        self.log.info("task_result", task=tid, node=node, fence=fence, state=to, ended_by=ended_by,
                      trace_id=row["trace_id"])
        self._wake()
        return answer

    def _settle_dependents(self, tx: Tx, n: int, state: str, now: float) -> None:
        """A task ended: release or fail the tasks waiting for it (recursively for failures)."""
        for dep_row in tx.all("SELECT t.n FROM deps d JOIN tasks t ON t.n=d.task WHERE d.dep=? AND t.state='waiting'", (n,)):
            m = dep_row["n"]
            if state == "succeeded":
                pending = tx.one("SELECT COUNT(*) AS c FROM deps d JOIN tasks t ON t.n=d.dep"
                                 " WHERE d.task=? AND t.state!='succeeded'", (m,))["c"]
                if pending == 0:
                    tx.transition(m, "waiting", "queued", "dependencies done", "supervisor", now)
            else:
                tx.transition(m, "waiting", "failed", f"upstream failed: {task_id(n)}", "supervisor", now)
                self._settle_dependents(tx, m, "failed", now)

    # -- cancel -------------------------------------------------------------------

    def cancel(self, tid: str, body: dict, actor: str) -> dict:
        wire.validate(body or {}, wire.CANCEL, "cancel")
        now = self.clock.time()
        n = task_n(tid)
        with self.store.tx() as tx:
            row = tx.task_row(n)
            why = (body or {}).get("reason") or f"cancelled by {actor}"
            if row["state"] in ("waiting", "queued"):
                tx.transition(n, row["state"], "cancelled", why, actor, now)
                self._settle_dependents(tx, n, "cancelled", now)
            elif row["state"] in fsm.ACTIVE:
                if not row["cancel_requested"]:
                    tx.execute("UPDATE tasks SET cancel_requested=1, updated_at=? WHERE n=?", (now, n))
                    tx.note(n, row["state"], f"cancel requested by {actor}", actor, now)
            else:
                raise InvalidTransition(f"task {tid} already ended ({row['state']})", task=tid, state=row["state"])
            task = task_dict(tx.task_row(n))
        self._wake()
        return task

    # -- heartbeats and reaping -----------------------------------------------------

    def heartbeat(self, body: dict) -> dict:
        wire.validate(body, wire.HEARTBEAT, "heartbeat")
        now = self.clock.time()
        node = body["node"]
        info = {k: body.get(k) for k in wire.HEARTBEAT if k != "node"}
        info["slots"] = max(1, int(info.get("slots") or 1))
        info["capabilities"] = sorted(set(info.get("capabilities") or []))
        info["kinds"] = sorted(set(info.get("kinds") or []))
        running = body.get("running") or []
        with self.store.tx() as tx:
            prev = tx.one("SELECT state FROM nodes WHERE name=?", (node,))
            tx.execute("INSERT INTO nodes(name, info, first_seen, last_seen, state) VALUES(?,?,?,?, 'alive')"
                       " ON CONFLICT(name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen,"
                       " state='alive'", (node, json.dumps(info), now, now))
            fenced = []
            for item in running:
                renewed = tx.execute("UPDATE tasks SET lease_deadline=? WHERE n=? AND fence=? AND node=?"
                                     " AND state IN ('leased','running')",
                                     (now + self.cfg.get("supervisor.lease_ttl"), task_n(item["task"]),
                                      item["fence"], node)).rowcount
                if not renewed:
                    fenced.append(item["task"])
            cancel = [task_id(r["n"]) for r in tx.all(
                "SELECT n FROM tasks WHERE node=? AND cancel_requested=1 AND state IN ('leased','running')", (node,))]
        if prev is None or prev["state"] != "alive":
            self.log.info("node_registered" if prev is None else "node_back", node=node)
            self._wake()
        return {"ok": True, "cancel": cancel, "fenced": fenced, "server_time": now}

    def reap(self) -> int:
        """Requeue (or fail) the tasks of expired leases and stale nodes. Returns how many."""
        now = self.clock.time()
        stale_after = self.cfg.get("supervisor.stale_after")
        moved = 0
        with self.store.tx() as tx:
            for node in tx.all("SELECT name, last_seen FROM nodes WHERE state='alive' AND last_seen < ?",
                               (now - stale_after,)):
                tx.execute("UPDATE nodes SET state='stale' WHERE name=?", (node["name"],))
                self.log.warning("node_stale", node=node["name"], silent_for=round(now - node["last_seen"], 1))
            rows = tx.all("SELECT t.n, t.node, t.attempts, t.max_attempts, t.cancel_requested, t.lease_deadline,"
                          " n.state AS node_state, n.last_seen FROM tasks t LEFT JOIN nodes n ON n.name=t.node"
                          " WHERE t.state IN ('leased','running') AND (t.lease_deadline < ? OR n.state='stale')", (now,))
            for r in rows:
                if r["node_state"] == "stale":
                    why = f"node {r['node']} stale (no heartbeat for {now - r['last_seen']:.0f} s)"
                else:
                    why = f"lease on {r['node']} expired"
                to, reason = fsm.after_lost_lease(why, r["attempts"], r["max_attempts"], bool(r["cancel_requested"]))
                updates = {"node": None, "lease_deadline": None} if to == "queued" else {}
                tx.transition(r["n"], fsm.ACTIVE, to, reason, "reaper", now, **updates)
                if to in fsm.TERMINAL:
                    self._settle_dependents(tx, r["n"], to, now)
                self.log.warning("lease_reaped", task=task_id(r["n"]), node=r["node"], state=to, reason=reason)
                moved += 1
        if moved:
            self._wake()
        return moved

