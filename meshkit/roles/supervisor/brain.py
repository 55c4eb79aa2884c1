"""The supervisor's self-healing cycle: reap lost leases, run heal rules, check
invariants, delete ended tasks past their retention (retention.py), pick the degradation
mode, reload the priorities file; and explain.
Decisions come from meshkit.rules; this module only gathers facts and carries them out."""

import json
import os
import traceback

from meshkit.adapters import disk
from meshkit.adapters.storetx import task_dict, task_id, task_n
from meshkit.core.errors import BadRequest, MeshkitError
from meshkit.roles.supervisor.retention import Retention
from meshkit.rules import dispatch as dispatch_rules
from meshkit.rules import heal, modes
from meshkit.rules.auth import refusal_verdict
from meshkit.rules.policy import parse_policy, rank

OPERATOR_MODES = ("maintenance", "normal")
FAILED_LOG_EVERY = 60.0     # s: at most one cycle_failed line per this, carrying how many were not logged


class Brain:
    def __init__(self, tasks, data_dir: str):
        self.tasks = tasks
        self.store, self.cfg, self.clock, self.log = tasks.store, tasks.cfg, tasks.clock, tasks.log
        self.data_dir = data_dir
        self.violations_path = os.path.join(data_dir, "invariant_violations.jsonl")
        self.mode_state = modes.ModeState()
        self.db_errors = 0
        self.failed_logged = None    # (when cycle_failed was last logged, failures left out since): refusal_verdict
        self.policy_mtime = None
        self.policy_error = None
        self.policy_path = self.cfg.path("supervisor.priorities_file")
        self.checked_seq = 0         # history rows up to here were checked (check_invariants)
        self.checked_epoch = None
        self.memory_view = lambda: {"state": "ok"}    # the memory guard (ops.memory_view), set by the supervisor
        self.retention = Retention(self.store, self.cfg, self.clock, self.log)
        self._load_mode()

    # -- the cycle ------------------------------------------------------------------

    def cycle(self) -> None:
        self.reload_policy()
        try:
            self._guarded(self.reap, self.heal, self.check_invariants, self.retention.prune, self.retention.compact)
        finally:
            self.update_mode()

    def standby_cycle(self) -> None:
        """A standby's: its rows are the primary's; only its own changelog is compacted."""
        self._guarded(self.retention.compact)

    def _guarded(self, *steps) -> None:
        """Run the cycle's steps; a failure is logged and counted (the mode reads db_errors), never
        raised: the maintenance loop keeps cycling."""
        try:
            for step in steps:
                step()
            if self.db_errors:
                self.log.info("cycle_ok", after_failed=self.db_errors)
            self.db_errors, self.failed_logged = 0, None
        except MeshkitError as e:
            self.db_errors += 1     # a database locked for minutes: one line a FAILED_LOG_EVERY, with the count
            line, left_out, self.failed_logged = refusal_verdict(self.failed_logged, self.clock.monotonic(),
                                                                 FAILED_LOG_EVERY)
            if line:
                self.log.error("cycle_failed", error=e.message, in_a_row=self.db_errors, not_logged=left_out)
        except Exception as e:   # a bug must not stop the maintenance loop: log it, keep cycling
            self.db_errors += 1
            self.log.error("cycle_crashed", error=repr(e), traceback=traceback.format_exc(limit=6))

    def reap(self) -> int:
        """Nodes silent for stale_after become stale; their tasks and expired leases are requeued."""
        now = self.clock.time()
        stale_after = self.cfg.get("supervisor.stale_after")
        moved = 0
        with self.store.tx() as tx:
            for node in tx.all("SELECT name, last_seen FROM nodes WHERE state='alive' AND last_seen < ?",
                               (now - stale_after,)):
                tx.execute("UPDATE nodes SET state='stale' WHERE name=?", (node["name"],))
                tx.cache.pop(tx.cache.node_key(node["name"]), None)
                self.log.warning("node_stale", node=node["name"], silent_for=round(now - node["last_seen"], 1))
            rows = tx.all("SELECT t.*, n.state AS node_state, n.last_seen FROM tasks t"
                          " LEFT JOIN nodes n ON n.name=t.node"
                          " WHERE t.state IN ('leased','running') AND (t.lease_deadline < ? OR n.state='stale')", (now,))
            for r in rows:
                if r["node_state"] == "stale":
                    why = f"node {r['node']} stale (no heartbeat for {now - r['last_seen']:.0f} s)"
                else:
                    why = f"lease on {r['node']} expired"
                self.tasks.lose_lease(tx, r, why, "reaper", now)
                moved += 1
        if moved:
            self.tasks.wake_all()
        return moved

    def heal(self) -> int:
        now = self.clock.time()
        bounds = {"start_timeout": self.cfg.get("supervisor.start_timeout")}
        with self.store.tx() as tx:
            rows = tx.all("SELECT * FROM tasks WHERE state IN ('leased','running')")
            actions = heal.heal_actions([dict(r) for r in rows], now, bounds)
            by_n = {r["n"]: r for r in rows}
            for n, rule, reason in actions:
                self.tasks.lose_lease(tx, by_n[n], f"heal rule {rule}: {reason}", "heal", now)
        if actions:
            self.tasks.wake_all()
        return len(actions)

    def check_invariants(self) -> list:
        """Record every violation (log at ERROR + invariant_violations.jsonl); repair where a rule covers it.
        Read from a snapshot on the store's second connection (under load thousands of rows
        change per cycle; reading them must not hold the lock every claim and result needs);
        a repair happens only if the violation still holds in the repairing transaction.

        Looked at: every task that holds a lease or is leased/running, and every task with a
        history row after the highest one the last check saw. Every state change writes a
        history row and this process is its database's only writer, so those rows are exactly
        the changes since (a transaction still open at the last check adds rows after it);
        a new epoch (a promotion) starts from the first row again."""
        now = self.clock.time()
        epoch = self.store.meta("epoch")
        if epoch != self.checked_epoch:
            self.checked_epoch, self.checked_seq = epoch, 0
        top = self.checked_seq
        recent, last = {}, {}
        with self.store.snapshot() as view:
            rows = [dict(r) for r in view.all("SELECT * FROM tasks WHERE state IN ('leased','running')"
                                               " OR lease_deadline IS NOT NULL")]
            for r in view.all("SELECT h.seq, h.task, h.to_state, t.state FROM history h JOIN tasks t ON t.n=h.task"
                              " WHERE h.seq > ? ORDER BY h.seq", (self.checked_seq,)):
                last[r["task"]] = r["to_state"]         # the task's last row: any later one is here too
                recent[r["task"]] = r["state"]
                top = r["seq"]
            last.update(self._last_states(view, [r["n"] for r in rows if r["n"] not in last]))
        rows_by_n = {r["n"]: r for r in rows}
        mismatched = [{"n": n, "state": st} for n, st in recent.items() if n not in rows_by_n]
        found = heal.invariant_violations(rows + mismatched, last)
        if any(v["repair"] for v in found):
            with self.store.tx() as tx:
                for v in found:
                    if v["repair"]:
                        v["repaired"] = self._repair(tx, v, now)
        self.checked_seq = top
        for v in found:
            v["at"] = now
            self.log.error("invariant_violation", **{k: v[k] for k in ("invariant", "task", "detail")},
                           repaired=v.get("repaired", False))
            with open(self.violations_path, "a") as f:
                f.write(json.dumps(v, sort_keys=True) + "\n")
        return found

    @staticmethod
    def _last_states(view, ns) -> dict:
        marks = ",".join("?" * len(ns)) or "NULL"
        return {r["task"]: r["to_state"] for r in view.all(
            f"SELECT h.task, h.to_state FROM history h JOIN (SELECT task, MAX(seq) AS s FROM history"
            f" WHERE task IN ({marks}) GROUP BY task) m ON m.task=h.task AND m.s=h.seq", tuple(ns))}

    def _repair(self, tx, v: dict, now: float) -> bool:
        n = task_n(v["task"])
        row = tx.one("SELECT * FROM tasks WHERE n=?", (n,))
        if row is None:
            return False
        still = [w for w in heal.invariant_violations([dict(row)], self._last_states(tx, [n]))
                 if w["invariant"] == v["invariant"]]
        if not still:
            return False                 # changed since the snapshot (a result came in, say)
        if v["repair"] == "requeue" and row["state"] in ("leased", "running"):
            self.tasks.lose_lease(tx, row, f"repaired invariant: {v['invariant']}", "invariants", now)
            return True
        if v["repair"] == "clear_lease":
            tx.execute("UPDATE tasks SET lease_deadline=NULL WHERE n=?", (n,))
            tx.note(n, row["state"], f"repaired invariant: {v['invariant']}", "invariants", now)
            return True
        return False

    # -- modes -----------------------------------------------------------------------

    def _load_mode(self) -> None:
        self.operator_mode = self.store.meta("operator_mode", None)
        self.operator_reason = self.store.meta("operator_reason", "")
        saved = self.store.meta("mode", "normal")
        self.mode_state = modes.ModeState(saved, 0, "restored at start")
        self.tasks.mode = saved

    def update_mode(self) -> str:
        used = disk.used_share(self.data_dir)
        before = self.mode_state.mode
        shed = self.memory_view()["state"] == "shed"
        self.mode_state = modes.next_mode(self.mode_state, modes.wanted_mode(used, self.db_errors, shed),
                                          self.operator_mode, self.operator_reason)
        self.tasks.mode = self.mode_state.mode
        if self.mode_state.mode != before:
            self.log.warning("mode_changed", mode=self.mode_state.mode, previous=before, reason=self.mode_state.reason)
            try:
                with self.store.tx() as tx:
                    tx.set_meta("mode", self.mode_state.mode)
            except MeshkitError:
                pass
            self.tasks.wake_all()
        return self.mode_state.mode

    def set_operator_mode(self, body: dict, actor: str) -> dict:
        mode = body.get("mode")
        if mode not in OPERATOR_MODES:
            raise BadRequest(f"mode must be one of {', '.join(OPERATOR_MODES)}", field="mode")
        reason = str(body.get("reason") or "")[:200]
        with self.store.tx() as tx:
            tx.set_meta("operator_mode", mode)
            tx.set_meta("operator_reason", reason)
        self.operator_mode, self.operator_reason = mode, reason
        self.log.warning("operator_mode", mode=mode, actor=actor, reason=body.get("reason"))
        self.update_mode()
        return self.mode_view()

    def mode_view(self) -> dict:
        return {"mode": self.mode_state.mode, "reason": self.mode_state.reason, "operator": self.operator_mode}

    # -- priorities file ---------------------------------------------------------------

    def reload_policy(self) -> None:
        """Re-read the priorities file when its mtime changes; a bad file keeps the last good one."""
        path = self.policy_path
        if not path:
            return
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError as e:
            mtime = None
            if self.policy_mtime != "missing":
                self.policy_error = f"{path}: {e.strerror}; keeping the last good priorities"
                self.log.error("priorities_unreadable", path=path, error=e.strerror)
                self.policy_mtime = "missing"
            return
        if mtime == self.policy_mtime:
            return
        self.policy_mtime = mtime
        try:
            with open(path, encoding="utf-8") as f:
                policy = parse_policy(f.read(), path)
        except (MeshkitError, OSError, UnicodeDecodeError) as e:
            self.policy_error = f"{getattr(e, 'message', e)}; keeping the last good priorities"
            self.log.error("priorities_rejected", path=path, error=self.policy_error)
            return
        if policy.aging != self.tasks.policy.aging:
            self.rerank(policy.aging)
        self.tasks.policy = policy
        self.policy_error = None
        self.log.info("priorities_loaded", path=path, kinds=sorted(policy.kinds))
        self.tasks.wake_all()

    def rerank(self, aging: float) -> None:
        """The aging setting changed: recompute the stored sort key of unfinished tasks."""
        with self.store.tx() as tx:
            for t in tx.all("SELECT n, priority, created_at FROM tasks WHERE state IN ('waiting','queued')"):
                tx.execute("UPDATE tasks SET rank=? WHERE n=?", (rank(t["priority"], t["created_at"], aging), t["n"]))

    # -- explain ---------------------------------------------------------------------------

    def explain(self, tid: str) -> dict:
        now = self.clock.time()
        with self.store.tx() as tx:
            row = tx.task_row(task_n(tid))
            task = task_dict(row)
            deps = [{"id": task_id(d["n"]), "state": d["state"], "node": d["node"]} for d in tx.all(
                "SELECT t.n, t.state, t.node FROM deps d JOIN tasks t ON t.n=d.dep WHERE d.task=? ORDER BY t.n",
                (row["n"],))]
            fleet = self.tasks.fleet_view(tx, now)
        memory = self.memory_view()
        fleet.memory = memory if memory["state"] == "shed" else None
        history = self.store.history(row["n"]) if task["state"] in ("succeeded", "failed", "cancelled") else None
        decision = dispatch_rules.explain(task, deps, fleet, self.cfg.get("supervisor.stale_after"),
                                          start_timeout=self.cfg.get("supervisor.start_timeout"), history=history)
        decision.update(task=tid, mode=self.mode_state.mode)
        if history is not None:
            decision["history"] = history
        return decision

    def kinds(self) -> list:
        rows = self.store.read("SELECT * FROM kinds ORDER BY kind")
        return [{"kind": r["kind"], "failures_in_a_row": r["failures"], "quarantined": bool(r["quarantined"]),
                 "since": r["since"], "reason": r["reason"]} for r in rows]

