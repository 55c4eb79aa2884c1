"""The supervisor's task operations: each one transaction through the store, decisions
from meshkit.rules. Long-poll claims wait on a condition that every change which could
make work available notifies.
"""

import collections
import json
import random
import threading

from meshkit.adapters.store import Store
from meshkit.adapters.storetx import Tx, task_id, task_n
from meshkit.core import wire
from meshkit.core.errors import BadRequest, Conflict, StaleFence, UnknownNode
from meshkit.rules import backoff, fsm
from meshkit.rules import dispatch as dispatch_rules
from meshkit.rules.config import Config
from meshkit.rules.policy import Policy, kind_verdict, quarantine_reason
from meshkit.roles.supervisor import cancel, heartbeat, queue

MAX_WAIT = 60.0
CANCEL_NOTE = cancel.CANCEL_NOTE     # cancel.py: cancel_task() writes the note, its end reads it back
# What a result needs of its task's row (and transition() with it): not the payload.
_RESULT_COLUMNS = "n, kind, requires, state, fence, node, attempts, max_attempts, cancel_requested, trace_id"


class StartWindow:
    """Lease times per kind over a sliding 60 s window (seeded from history at start)."""

    def __init__(self, span: float = 60.0):
        self.span = span
        self.times: dict = {}
        self.lock = threading.Lock()

    def add(self, kind: str, at: float) -> None:
        with self.lock:
            self.times.setdefault(kind, collections.deque()).append(at)

    def count(self, kind: str, now: float) -> int:
        with self.lock:
            q = self.times.get(kind)
            while q and q[0] <= now - self.span:
                q.popleft()
            return len(q) if q else 0


class Tasks:
    def __init__(self, store: Store, cfg: Config, clock, logger, rand=None):
        self.store, self.cfg, self.clock, self.log = store, cfg, clock, logger
        self.rand = rand or random.Random()
        self.cond = threading.Condition(threading.RLock())   # also the API's App.lock (api.py)
        self.generation = 0
        self.draining = False
        self.policy = Policy()       # replaced by the brain when the priorities file changes
        self.mode = "normal"         # set by the brain every cycle
        self.starts = StartWindow()  # leases per kind in the last 60 s (fleet rate limits)
        self.accepting = lambda: True  # HA sets this: primary, not handing over, lease held
        self.seen_written = {}       # node -> when a claim last wrote its last_seen
        for r in store.read("SELECT t.kind, h.at FROM history h JOIN tasks t ON t.n=h.task"
                            " WHERE h.seq > (SELECT COALESCE(MAX(seq), 0) - 100000 FROM history)"
                            " AND h.to_state='leased' AND h.at > ?", (clock.time() - 60,)):
            self.starts.add(r["kind"], r["at"])

    # -- notifications for long-polls -----------------------------------------

    def _wake(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wake_all(self) -> None:
        self._wake()

    # -- dispatch ---------------------------------------------------------------

    # -- claims -----------------------------------------------------------------

    def claim(self, body: dict, connected=lambda: True, may_wait: bool = True, on_pass=None):
        """Lease up to `max` tasks this node can run; hold the request up to `wait` seconds.
        With may_wait False, None instead of waiting (the caller asks again where it may wait).
        on_pass(): called as each pass over the queue begins (the claim latency's start)."""
        wire.validate(body, wire.CLAIM, "claim")
        node = body["node"]
        want = body.get("max", 1)
        wait = min(max(float(body.get("wait", 0)), 0.0), MAX_WAIT)
        if want < 1:
            raise BadRequest("claim: field 'max' must be at least 1", field="max")
        if not may_wait:        # the event loop's pass: the request has just arrived
            leased = self._claim_once(node, want) if self.accepting() else []
            if leased is None:
                return []
            return leased if leased or wait <= 0 or self.draining else None
        deadline = self.clock.monotonic() + wait
        while True:
            if on_pass is not None:
                on_pass()
            with self.cond:
                generation = self.generation
            if not connected() or not self.accepting():   # hung-up worker, or we were fenced meanwhile
                return []
            leased = self._claim_once(node, want)
            remaining = deadline - self.clock.monotonic()
            if leased is None:          # no free slot on this node: nothing to wait for
                return []
            if leased or remaining <= 0 or self.draining:
                return leased
            timeout = self._wait_time(node, remaining)
            with self.cond:
                if self.generation == generation and not self.draining:
                    self.cond.wait(timeout)

    def _wait_time(self, node: str, remaining: float) -> float:
        """How long a claim that found nothing waits for a wake: at most `remaining`, and no
        longer than until the earliest backoff of a queued task of its kinds ends (nothing
        notifies when a `not_before` passes). Only on the path where the claim waits."""
        now = self.clock.time()
        with self.store.tx() as tx:
            due = queue.next_due(tx, self._node_info(tx, node)[0].get("kinds", []), now)
        return backoff.wake_in(remaining, due, now)

    def _claim_once(self, node: str, want: int):
        """The leased tasks (maybe none), or None when the node has no free slot or holds back."""
        now = self.clock.time()
        lease_ttl = self.cfg.get("supervisor.lease_ttl")
        with self.store.tx() as tx:
            if not self.accepting():       # checked under the store lock that role changes also take
                return []
            info, state = self._node_info(tx, node)
            if state != "alive":     # a stale node must heartbeat before it gets work
                return []
            if info.get("hold"):     # its heartbeat says it claims nothing now (memory guard): a claim
                return None          # already waiting when that came ends empty, nothing leased to it
            active = self._active_count(tx, node)
            room = min(want, max(0, int(info.get("slots", 1)) - active))
            if room <= 0:
                return None
            kinds = info.get("kinds", [])
            if not kinds or self.mode == "maintenance":
                return []
            fleet = self.fleet_view(tx, now, with_nodes=False)
            caps = info.get("capabilities", [])
            candidates = queue.candidates(tx, kinds, caps, now)
            picked = []
            node_view = {"kinds": kinds, "capabilities": info.get("capabilities", [])}
            for row in candidates:
                task = {"kind": row["kind"], "requires": json.loads(row["requires"]), "priority": row["priority"],
                        "not_before": row["not_before"]}
                if dispatch_rules.may_claim(task, node_view, fleet) is None:
                    picked.append(row)
                    fleet.running_by_kind[row["kind"]] = fleet.running_by_kind.get(row["kind"], 0) + 1
                    fleet.started_last_minute[row["kind"]] = fleet.started_last_minute.get(row["kind"], 0) + 1
                    if len(picked) >= room:
                        break
            candidates.close()
            out = []
            for row in picked:
                n, attempts = row["n"], row["attempts"] + 1
                fence, deadline = tx.next_fence(), now + lease_ttl
                got = tx.transition(n, "queued", "leased", f"leased to {node} (attempt {attempts})", node, now,
                                    row=row, returning="payload, expects, timeout", node=node, fence=fence,
                                    attempts=attempts, lease_deadline=deadline, started_at=None, hb_missing=0)
                expects = got["expects"]
                out.append({"id": task_id(n), "kind": row["kind"], "payload": json.loads(got["payload"]),
                            "attempt": attempts, "fence": fence, "timeout": got["timeout"],
                            "expects": None if expects is None else json.loads(expects),
                            "trace_id": row["trace_id"], "lease_deadline": deadline})
                self.starts.add(row["kind"], now)
            if out and now - self.seen_written.get(node, 0) >= 1:
                # at most once a second: a busy node's row is not rewritten on every claim
                tx.execute("UPDATE nodes SET last_seen=? WHERE name=?", (now, node))
                self.seen_written[node] = now
        for t in out:
            self.log.info("task_leased", task=t["id"], node=node, fence=t["fence"], attempt=t["attempt"],
                          trace_id=t["trace_id"])
        return out

    def fleet_view(self, tx: Tx, now: float, with_nodes: bool = True) -> dispatch_rules.Fleet:
        """The plain-data view the dispatch predicates decide on."""
        fleet = dispatch_rules.Fleet(now=now, mode=self.mode, policy=self.policy)
        fleet.quarantined.update(self._kinds(tx)[0])
        limited = [k for k, p in self.policy.kinds.items() if p.max_running or p.max_per_minute]
        if limited or with_nodes:
            for r in tx.all("SELECT kind, COUNT(*) AS c FROM tasks WHERE state IN ('leased','running') GROUP BY kind"):
                fleet.running_by_kind[r["kind"]] = r["c"]
        for kind in limited:
            if self.policy.kinds[kind].max_per_minute:
                fleet.started_last_minute[kind] = self.starts.count(kind, now)
        if with_nodes:
            running = {r["node"]: r["c"] for r in tx.all(
                "SELECT node, COUNT(*) AS c FROM tasks WHERE state IN ('leased','running') GROUP BY node")}
            for r in tx.all("SELECT * FROM nodes ORDER BY name"):
                info = json.loads(r["info"])
                fleet.nodes.append({"name": r["name"], "state": r["state"], "last_seen": r["last_seen"],
                                    "capabilities": info.get("capabilities", []), "kinds": info.get("kinds", []),
                                    "slots": info.get("slots", 1), "running": running.get(r["name"], 0),
                                    "hold": info.get("hold")})      # its heartbeat's: why it claims nothing now
        return fleet

    @staticmethod
    def _node_info(tx: Tx, node: str) -> tuple:
        """(info as the node last reported it, state), from the store's row cache (whoever
        writes a node's info or state drops its copy: heartbeat, the brain's reaper)."""
        got = tx.cache.get(tx.cache.node_key(node))
        if got is None:
            row = tx.one("SELECT info, state FROM nodes WHERE name=?", (node,))
            if row is None:
                raise UnknownNode(f"unknown node {node!r}: send a heartbeat first")
            got = tx.cache[tx.cache.node_key(node)] = (json.loads(row["info"]), row["state"])
        return got

    @staticmethod
    def _active_count(tx: Tx, node: str) -> int:
        """Tasks leased to or running on `node`, from the row cache (counted once, then
        transition() follows every lease taken or ended)."""
        key = tx.cache.active_key(node)
        got = tx.cache.get(key)
        if got is None:
            got = tx.cache[key] = tx.one("SELECT COUNT(*) AS c FROM tasks WHERE node=? AND state IN ('leased','running')",
                                         (node,))["c"]
        return got

    @staticmethod
    def _kinds(tx: Tx) -> tuple:
        """({quarantined kind: {"since", "reason"}}, {kinds with failures in a row}), from the
        store's row cache (every write to the kinds table drops it)."""
        got = tx.cache.get("kinds")
        if got is None:
            quarantined, failing = {}, set()
            for r in tx.all("SELECT kind, failures, quarantined, since, reason FROM kinds"
                            " WHERE quarantined=1 OR failures>0"):
                if r["quarantined"]:
                    quarantined[r["kind"]] = {"since": r["since"], "reason": r["reason"]}
                if r["failures"]:
                    failing.add(r["kind"])
            got = tx.cache["kinds"] = (quarantined, failing)
        return got

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
            row = tx.task_row(n, _RESULT_COLUMNS)
            if row["fence"] != fence or row["node"] != node or row["state"] not in fsm.ACTIVE:
                # not the current lease: a result already recorded answers the same again
                seen = tx.one("SELECT answer FROM results WHERE task=? AND fence=?", (n, fence))
                if seen is not None:
                    return dict(json.loads(seen["answer"]), duplicate=True)
                row = self._fenced_row(tx, tid, node, fence)     # raises StaleFence
            to, reason = fsm.after_result(body["outcome"], ended_by, row["attempts"], row["max_attempts"],
                                          bool(row["cancel_requested"]))
            asked = self._cancel_reason(tx, n) if to == "cancelled" and row["cancel_requested"] else None
            if asked:
                reason += f": {asked}"
                if body.get("error") and body["error"] != "cancelled":
                    reason += f" (the attempt ended: {body['error'][:200]})"
            elif body.get("error"):
                reason += f": {body['error'][:200]}"
            report = {k: body.get(k) for k in ("outcome", "ended_by", "exit_code", "signal", "result", "error",
                                                "stdout_tail", "stderr_tail", "started_at", "finished_at")}
            report.update(node=node, attempt=row["attempts"], fence=fence)
            updates = {"result": report, "error": body.get("error") if body["outcome"] == "failed" else None,
                       "lease_deadline": None}
            if to == "queued":
                delay = backoff.full_jitter(row["attempts"], self.cfg.get("tasks.backoff_base"),
                                            self.cfg.get("tasks.backoff_cap"), self.rand.random())
                updates.update(node=None, lease_deadline=None, not_before=now + delay)
                reason += f" (backoff {delay:.1f} s)"
            tx.transition(n, fsm.ACTIVE, to, reason, node, now, row=row, **updates)
            if to in fsm.TERMINAL:
                self._settle_dependents(tx, n, to, now)
            if to != "cancelled":
                output = (body.get("stdout_tail") or "")[-4096:] + (body.get("stderr_tail") or "")[-4096:]
                verdict = kind_verdict(body["outcome"], ended_by, body.get("exit_code"), output, body.get("error"),
                                       self.policy.kind(row["kind"]))
                self._count_kind(tx, row["kind"], verdict, body.get("error"), now)
            answer = {"ok": True, "task": tid, "state": to, "duplicate": False}
            tx.execute("INSERT INTO results(task, fence, answer, at) VALUES(?,?,?,?)",
                       (n, fence, json.dumps(answer), now))
        self._log_result(body, row, to, updates.get("not_before"), now)
        self._wake()
        return answer

    def _log_result(self, body: dict, row, to: str, not_before, now: float) -> None:
        """One line per result: task_retry (info) for a failed attempt that will be retried (claimable
        again from not_before); task_result for the task's end, a warning if it failed for good."""
        error = body.get("error") if body["outcome"] == "failed" else None
        where = dict(task=body["task"], node=body["node"], fence=body["fence"], attempt=row["attempts"],
                     ended_by=body.get("ended_by", "exit"), error=error and error[:200], trace_id=row["trace_id"])
        if to == "queued":
            self.log.info("task_retry", **where, max_attempts=row["max_attempts"], backoff=round(not_before - now, 2),
                          not_before=round(not_before, 3))
        else:
            (self.log.warning if to == "failed" else self.log.info)("task_result", **where, state=to)

    def _count_kind(self, tx: Tx, kind: str, verdict, error, now: float) -> None:
        """Consecutive failures per kind that are the kind's own (policy.kind_verdict: not
        transient, not ended by a worker shutting down); 3 in a row quarantine the kind."""
        if verdict is None:
            return
        if verdict == "reset":
            if kind in self._kinds(tx)[1]:
                tx.execute("UPDATE kinds SET failures=0 WHERE kind=? AND failures>0", (kind,))
                tx.cache.pop("kinds", None)
            return
        tx.cache.pop("kinds", None)
        tx.execute("INSERT OR IGNORE INTO kinds(kind) VALUES(?)", (kind,))
        failures = tx.one("UPDATE kinds SET failures=failures+1 WHERE kind=? RETURNING failures, quarantined",
                          (kind,))
        limit = self.policy.kind(kind).quarantine_after
        limit = self.cfg.get("tasks.quarantine_after") if limit is None else limit
        if limit and failures["failures"] >= limit and not failures["quarantined"]:
            reason = quarantine_reason(failures["failures"], error)
            tx.execute("UPDATE kinds SET quarantined=1, since=?, reason=? WHERE kind=?", (now, reason, kind))
            self.log.warning("kind_quarantined", kind=kind, reason=reason)

    def resume_kind(self, kind: str, actor: str) -> dict:
        with self.store.tx() as tx:
            row = tx.one("SELECT quarantined FROM kinds WHERE kind=?", (kind,))
            if row is None or not row["quarantined"]:     # a conflict with its state (409), not bad input
                raise Conflict(f"kind {kind!r} is not quarantined; there is nothing to resume", kind=kind)
            tx.execute("UPDATE kinds SET quarantined=0, failures=0, since=NULL, reason=NULL WHERE kind=?", (kind,))
            tx.cache.pop("kinds", None)
        self.log.info("kind_resumed", kind=kind, actor=actor)
        self._wake()
        return {"ok": True, "kind": kind, "quarantined": False}

    def _settle_dependents(self, tx: Tx, n: int, state: str, now: float) -> None:
        """A task ended: release or fail the tasks waiting for it (cancel.py), each failed one logged."""
        cancel.log_upstream_failed(self.log, cancel.settle_dependents(tx, n, state, now))

    # -- cancel: cancel.cancel_task(); its reason, read back when the task ends -----

    @staticmethod
    def _cancel_reason(tx: Tx, n: int):
        """The reason given with the cancel request of a running task (its history note
        "cancel requested by ACTOR: REASON"), or None if it was given none. An actor is a key
        id (no spaces), so the first ": " ends it. Read only when such a task ends."""
        got = tx.one("SELECT reason FROM history WHERE task=? AND from_state=to_state AND reason LIKE ?"
                     " ORDER BY seq DESC LIMIT 1", (n, CANCEL_NOTE + "%"))
        if got is None:
            return None
        return got["reason"][len(CANCEL_NOTE):].partition(": ")[2] or None

    # -- heartbeats (heartbeat.py) and reaping -------------------------------------

    def heartbeat(self, body: dict) -> dict:
        return heartbeat.heartbeat(self, body)

    def lose_lease(self, tx: Tx, row, why: str, actor: str, now: float) -> str:
        """A lease is gone (expired, node stale, heal rule): requeue, or end the task."""
        to, reason = fsm.after_lost_lease(why, row["attempts"], row["max_attempts"], bool(row["cancel_requested"]))
        asked = self._cancel_reason(tx, row["n"]) if to == "cancelled" else None
        if asked:
            reason += f": {asked}"
        updates = {"lease_deadline": None, "hb_missing": 0}
        if to == "queued":
            updates["node"] = None
        elif to == "failed":
            updates["error"] = reason          # not the error of an earlier attempt: this one's end
        tx.transition(row["n"], fsm.ACTIVE, to, reason, actor, now, **updates)
        if to in fsm.TERMINAL:
            self._settle_dependents(tx, row["n"], to, now)
        self.log.warning("lease_lost", task=task_id(row["n"]), node=row["node"], state=to, reason=reason,
                         attempt=row["attempts"], trace_id=row["trace_id"])
        return to
