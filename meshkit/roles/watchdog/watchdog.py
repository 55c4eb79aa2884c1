"""The watchdog (third node): deep-checks the active supervisor every interval, fails
over to the other after `failures` bad checks (fence, promote, alert), and hands back
to the configured primary once it has been a healthy, caught-up standby for
`recoveries` checks (auto), or says it is ready (manual: `meshkit watchdog failback`).

Its view lives in a state file written atomically, re-read every step, so a restart
does not flap and `watchdog failback` from the CLI is seen at once."""

import json
import os
import subprocess

from meshkit.adapters.atomic import read_json, write_json
from meshkit.adapters.client import SignedClient
from meshkit.core.errors import ApiError, ClientError, ConfigError, MeshkitError
from meshkit.rules import failover

CATCH_UP_TIMEOUT = 30.0


class Watchdog:
    def __init__(self, cfg, keys: tuple, clock, log):
        self.cfg, self.clock, self.log = cfg, clock, log
        self.urls = {"primary": cfg.get("watchdog.primary").rstrip("/"), "standby": cfg.get("watchdog.standby").rstrip("/")}
        for name, url in self.urls.items():
            if not url.startswith("http://"):
                raise ConfigError(cfg.source, f"watchdog.{name}", "a supervisor URL (http://HOST:PORT)", repr(url))
        if self.urls["primary"] == self.urls["standby"]:
            raise ConfigError(cfg.source, "watchdog.standby", "the other supervisor's URL, not the primary's",
                              repr(self.urls["standby"]))
        self.keys = keys
        self.state_path = cfg.path("watchdog.state_file")
        self._unsaved = None        # the view, when the state file could not be written
        self.interval = float(cfg.get("watchdog.interval"))

    def client(self, node: str, timeout: float | None = None) -> SignedClient:
        # A check slower than the interval is a failed check: the active supervisor's lease
        # is renewed by these checks, so they must come every interval even when the other
        # node hangs (a stopped process accepts connections and never answers).
        return SignedClient(self.urls[node], *self.keys, clock=self.clock,
                            timeout=timeout or max(0.2, min(5.0, self.interval)))

    def state(self) -> dict:
        """The saved view; with none (first start, the file lost or unreadable) a new one from
        both supervisors' answers, so a stale former primary is never named active."""
        if self._unsaved is not None:      # the file is behind: the view in memory is the truth
            return dict(self._unsaved)
        try:
            saved = read_json(self.state_path)
        except (OSError, ValueError) as e:
            self.log.error("state_unreadable", path=self.state_path, error=str(e)[:200])
            saved = None
        if isinstance(saved, dict):
            return dict(failover.DEFAULT_STATE, **saved)
        state = failover.initial_state({node: self.check(node) for node in self.urls})
        self.log.warning("state_rebuilt", path=self.state_path, active=state["active"], epoch=state["epoch"])
        self.save(state)
        return state

    def save(self, state: dict) -> None:
        """Write the view; if the file can't be written (disk full, read-only) keep watching with
        the view in memory, say so, and write it at the next chance."""
        try:
            write_json(self.state_path, state, mode=0o644)
        except OSError as e:
            if self._unsaved is None:
                self.log.error("state_unwritable", path=self.state_path, error=e.strerror or str(e),
                               reason="keeping the view in memory; a restart now would rebuild it")
            self._unsaved = dict(state)
            return
        if self._unsaved is not None:
            self.log.warning("state_written", path=self.state_path)
        self._unsaved = None

    def writable_problem(self) -> str | None:
        """Why the state file could not be written, checked before the loop starts."""
        where = os.path.dirname(self.state_path) or "."
        if not os.path.isdir(where):
            return f"{where} is not a directory"
        if not os.access(where, os.W_OK):
            return f"{where} is not writable by this user (systemd: add it to ReadWritePaths)"
        return None

    def check(self, node: str, timeout: float | None = None, active_epoch: int | None = None):
        """The node's deep check (answers, DB writable, role, epoch), or None. With active_epoch
        the node is told it is the active one: only that check renews its primary_lease or lifts
        the fence it started with (ha.py)."""
        path = "/v1/ha/check" if active_epoch is None else f"/v1/ha/check?active={int(active_epoch)}"
        try:
            return self.client(node, timeout).call("GET", path)
        except (ApiError, ClientError) as e:
            self.log.warning("check_failed", node=node, url=self.urls[node], error=e.message)
            return None

    # -- one step ---------------------------------------------------------------------

    def step(self) -> float:
        """One check; never raises (a watchdog that dies watches nothing). The delay to the
        next one is the interval less the time this one took."""
        t0 = self.clock.monotonic()
        try:
            self._step()
        except Exception as e:
            self.log.error("step_crashed", error=getattr(e, "message", repr(e)))
        return max(0.05, self.interval - (self.clock.monotonic() - t0))

    def _step(self) -> None:
        state = self.state()
        active = state["active"]
        got = self.check(active, active_epoch=state["epoch"])
        if got and got.get("role") == "primary" and isinstance(got.get("epoch"), int) and got["epoch"] < state["epoch"]:
            state = self.confirm_epoch(state, got)
        active_ok = bool(got and got.get("role") == "primary" and got.get("epoch", 0) >= state["epoch"])
        home_ok = False
        if active == "standby":
            home = self.check("primary", timeout=max(0.2, min(2.0, self.interval / 2)))
            home_ok = bool(home and home.get("role") == "standby" and home.get("lag_changes") == 0
                           and got and home.get("replicated", -1) >= 0)
            if active_ok and home and home.get("role") == "primary" and home.get("epoch", 0) < got["epoch"]:
                self.demote_stale("primary", "standby", got["epoch"])
        new, action = failover.after_check(state, active_ok, got.get("epoch") if got else None, home_ok,
                                           self.cfg.get("watchdog.failures"), self.cfg.get("watchdog.recoveries"),
                                           self.cfg.get("watchdog.failback"))
        if action == "failover":
            self.failover(active, new["active"], new)
        elif action == "failback":
            self.handover("standby", "primary", new, why="failback: the primary is healthy again")
        elif action == "ready_for_failback":
            self.alert({"event": "ready_for_failback", "primary": self.urls["primary"],
                        "message": "the primary is healthy again; run `meshkit watchdog failback`"})
        self.save(new)

    def confirm_epoch(self, state: dict, got: dict) -> dict:
        """The active node answers as a primary below the epoch we remember: is anyone at that
        epoch? (It may have come from one forged answer: nothing signs them.) If the other
        node answers below it too, go on with the highest they report."""
        other = failover.other(state["active"])
        answer = self.check(other, timeout=max(0.2, min(2.0, self.interval / 2)))
        epoch = failover.unconfirmed_epoch(state["epoch"], [got, answer])
        if epoch is None:
            return state
        self.log.warning("epoch_unconfirmed", remembered=state["epoch"], epoch=epoch, active=self.urls[state["active"]],
                         reason="neither supervisor is at the epoch this watchdog remembered (it came from an answer "
                                "nobody signs): going on with the highest they report")
        return dict(state, epoch=epoch)

    # -- actions ----------------------------------------------------------------------------

    def _timed(self, step: str, fn):
        t0 = self.clock.monotonic()
        try:
            result = fn()
            self.log.info("step_done", step=step, ms=round((self.clock.monotonic() - t0) * 1000, 1))
            return result
        except Exception as e:
            self.log.error("step_failed", step=step, ms=round((self.clock.monotonic() - t0) * 1000, 1),
                           error=getattr(e, "message", repr(e)))
            raise

    def run_argv(self, argv: list, event: dict) -> None:
        if not argv:
            return
        try:
            subprocess.run(argv, input=json.dumps(event).encode(), timeout=60, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, subprocess.SubprocessError) as e:
            raise MeshkitError(f"{argv[0]} failed: {e}") from None

    def alert(self, event: dict) -> None:
        event.setdefault("time", self.clock.time())
        self.log.warning("alert", alert=event)
        try:
            self._timed("alert", lambda: self.run_argv(self.cfg.get("watchdog.alert"), event))
        except MeshkitError:
            pass

    def naming_epoch(self, node: str, path: str, body: dict):
        """POST a promote or a hold naming the epoch we expect `node` to be past or at. The epoch
        binds it to that node and moment (a copy replayed elsewhere or later is refused: 409
        epoch_mismatch); if the node already knows a later one than our view (rebuilt, or
        behind), it says which: asked again once with it (signed anew, so never a replay)."""
        try:
            return self.client(node).call("POST", path, body)
        except ApiError as e:
            known = e.details.get("epoch")
            if e.code != "epoch_mismatch" or isinstance(known, bool) or not isinstance(known, int) \
                    or known <= body["epoch"]:
                raise
            self.log.warning("epoch_behind", node=node, url=self.urls[node], path=path, epoch=body["epoch"],
                             known=known, reason="the node knows a later epoch than this watchdog's view: asking "
                                                 "again with it")
            return self.client(node).call("POST", path, dict(body, epoch=known))

    def demote_stale(self, node: str, active: str, epoch: int) -> None:
        """`node` answers as a primary with an older epoch than the active one: it restarted
        without reaching its peer. Make it follow the active one (else it takes work)."""
        event = {"event": "stale_primary_demoted", "node": self.urls[node], "active": self.urls[active], "epoch": epoch}
        try:
            self._timed("demote_stale", lambda: self.client(node).call(
                "POST", "/v1/demote", {"peer": self.urls[active], "epoch": epoch}))
        except (ApiError, ClientError) as e:      # tried again at the next check
            event.update(event="stale_primary", error=e.message)
        self.alert(event)

    def failover(self, failed: str, to: str, state: dict) -> dict:
        """Fence the failed node (if configured), promote the other, alert."""
        t0 = self.clock.monotonic()
        event = {"event": "failover", "failed": self.urls[failed], "promoted": self.urls[to]}
        try:
            self._timed("fence", lambda: self.run_argv(self.cfg.get("watchdog.fence"), event))
        except MeshkitError:
            pass   # a failed fence is reported; the old primary's own lease and the epoch still fence it
        try:
            got = self._timed("promote", lambda: self.naming_epoch(to, "/v1/promote", {"epoch": state["epoch"]}))
            state["epoch"] = max(state["epoch"], got.get("epoch", 0))
            event["epoch"] = state["epoch"]
        except (ApiError, ClientError) as e:
            state["active"] = failed      # nobody was promoted: try again next time
            event.update(event="failover_failed", error=e.message)
        event["ms"] = round((self.clock.monotonic() - t0) * 1000, 1)
        self.alert(event)
        return state

    def handover(self, frm: str, to: str, state: dict, why: str) -> dict:
        """Orderly switch: `frm` stops accepting and follows `to`; `to` catches up; `to` is promoted."""
        t0 = self.clock.monotonic()
        steps = {}

        def timed(name, fn):
            s = self.clock.monotonic()
            result = self._timed(name, fn)
            steps[name] = round((self.clock.monotonic() - s) * 1000, 1)
            return result

        # 1. frm takes no more work but keeps feeding its changelog; 2. to catches up to frm's
        # last change; 3. to is promoted past frm's epoch; 4. frm becomes to's standby.
        src = timed("hold", lambda: self.naming_epoch(frm, "/v1/demote", {"peer": self.urls[to], "hold": True,
                                                                           "epoch": state["epoch"]}))
        head = src.get("head", 0)

        def caught_up():
            deadline = self.clock.monotonic() + CATCH_UP_TIMEOUT
            while self.clock.monotonic() < deadline:
                got = self.check(to)
                if got and got.get("role") == "standby" and got.get("replicated", -1) >= head:
                    return got
                self.clock.sleep(0.05)
            raise MeshkitError(f"{self.urls[to]} did not catch up within {CATCH_UP_TIMEOUT:.0f} s")

        try:
            timed("catch_up", caught_up)
            got = timed("promote", lambda: self.naming_epoch(to, "/v1/promote", {"epoch": src.get("epoch", 0)}))
        except (MeshkitError, ApiError, ClientError) as e:
            # Undo: the old active takes work again rather than leave the fleet without one.
            self.client(frm).call("POST", "/v1/promote", {"epoch": src.get("epoch", 0)})
            state["active"] = frm
            self.alert({"event": "handover_failed", "from": self.urls[frm], "to": self.urls[to],
                        "error": getattr(e, "message", repr(e))})
            raise
        try:
            timed("demote", lambda: self.client(frm).call("POST", "/v1/demote", {"peer": self.urls[to],
                                                                                  "epoch": got["epoch"]}))
        except (ApiError, ClientError) as e:   # it follows the newer epoch on its own at its next cycle
            self.log.warning("demote_failed", node=frm, error=e.message)
        state.update(active=to, epoch=got["epoch"], failures=0, recoveries=0, ready_for_failback=False)
        self.alert({"event": "handover", "reason": why, "from": self.urls[frm], "to": self.urls[to],
                    "epoch": got["epoch"], "steps_ms": steps, "ms": round((self.clock.monotonic() - t0) * 1000, 1)})
        return dict(state, steps_ms=steps)

    def failback(self) -> dict:
        """`meshkit watchdog failback`: hand back to the configured primary now."""
        state = self.state()
        if state["active"] == "primary":
            return {"done": False, "reason": "the primary is already active", "state": state}
        out = self.handover("standby", "primary", state, why="manual failback")
        self.save({k: v for k, v in out.items() if k != "steps_ms"})
        return {"done": True, "steps_ms": out["steps_ms"], "state": self.state()}

    def _total_tasks(self, node: str) -> int:
        return sum(self.client(node).call("GET", "/v1/status")["tasks"].values())

    def drill(self) -> dict:
        """`meshkit watchdog drill`: a controlled switchover and switchback, timed, counting tasks."""
        state = self.state()
        if state["active"] != "primary":
            raise MeshkitError("the standby is active; fail back first (`meshkit watchdog failback`)")
        before = self._total_tasks("primary")
        over = self.handover("primary", "standby", state, why="drill: switchover")
        self.save({k: v for k, v in over.items() if k != "steps_ms"})
        middle = self._total_tasks("standby")
        back = self.handover("standby", "primary", self.state(), why="drill: switchback")
        self.save({k: v for k, v in back.items() if k != "steps_ms"})
        after = self._total_tasks("primary")
        return {"switchover_ms": over["steps_ms"], "switchback_ms": back["steps_ms"], "tasks_before": before,
                "tasks_on_standby": middle, "tasks_after": after, "lost": max(0, before - min(middle, after)),
                "epoch": back["epoch"]}
