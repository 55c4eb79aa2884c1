"""High availability: role and epoch, replication (the standby pulls the primary's
changelog over the signed API), sync/async acknowledgement, and fencing.

Fencing rules, each enforced here:
- only a primary accepts work; a standby answers 409 not_active naming the active one;
- a request carrying a higher epoch than ours (X-Meshkit-Epoch, sent by workers that
  saw a newer primary; signed by nobody) stops us taking work until our peer confirms it
  (we follow) or refutes it (we serve); without a peer it is ignored (claims.py);
- a primary whose peer is primary with a higher epoch becomes its standby;
- a primary that restarts asks its peer first and follows it if the peer was promoted; if
  the peer can't be asked (or the answer does not settle it) it starts fenced and takes
  work only once the peer answers as a standby at an epoch no higher than ours, or the
  watchdog's check of the active node (or its promotion) names it;
- a write that commits after the supervisor stopped accepting work (demoted, handing
  over) is refused: the store asks write_guard under the lock that role changes take;
- a former primary that follows discards what it wrote that its new primary never
  received (the async window) before it pulls (rejoin.py);
- with supervisor.primary_lease > 0, a primary that has heard from neither the watchdog
  nor the standby for that long stops accepting work (the watchdog promotes the standby
  only after interval x failures, which must exceed the lease).
"""

import threading

from meshkit.adapters.client import SignedClient
from meshkit.core.errors import ApiError, BadRequest, ClientError, EpochMismatch, NotActive
from meshkit.roles.supervisor import promotion, pull
from meshkit.roles.supervisor.claims import EpochClaims
from meshkit.roles.supervisor.pull import PULL_WAIT
from meshkit.rules import failover
from meshkit.rules.epochclaim import parse_epoch
from meshkit.rules.auth import pick_key

TASK_ID_GAP = 1_000_000     # task ids skipped at a promotion (storetx.skip_task_ids)


class Ha:
    def __init__(self, sup, peer: str | None):
        self.sup = sup
        self.store, self.cfg, self.clock, self.log = sup.store, sup.cfg, sup.clock, sup.log
        # --standby-of, else the config (an operator who corrects a wrong peer there is obeyed),
        # else the one remembered (a config without a peer: the pair it was joined to).
        self.peer = (peer or self.cfg.get("supervisor.peer") or self.store.meta("peer") or "").rstrip("/") or None
        self.mode = self.cfg.get("supervisor.replication")
        self.lease = float(self.cfg.get("supervisor.primary_lease"))
        self.last_contact = self.clock.monotonic()
        self.standby_acked = 0          # primary: changelog position the standby holds
        self.standby_seen = None        # primary: monotonic time of its last pull
        self.sync_degraded = False      # primary, sync mode: standby too slow, acknowledging async
        self.primary_head = 0           # standby: the primary's changelog head at the last pull
        self.caught_up_at = None        # standby: wall time when it last held everything
        self.pulled_at = None           # standby: monotonic time of the last successful pull
        self.pull_error = None
        self._puller = None
        self.handing_over = None        # primary: URL it is handing over to (takes no work, still feeds)
        self.fenced = None              # primary: why it started fenced (takes no work until settled)
        self.discarded = []             # standby: task numbers dropped at rejoin (logged once caught up)
        self.settling = None            # primary just promoted: why it takes no work yet (promotion.py)
        self.settle_deadline = None     # ... until this monotonic time at the latest
        self.started = self.clock.monotonic()
        self.pull_in_flight = False     # standby: a pull is on its way (it may renew the primary's lease)
        self.pull_answered = None       # standby: monotonic time of the last pull the primary answered
        self._peer_error = None         # why the last signed check of the peer failed
        self.claims = EpochClaims(self)  # primary: clients' word of a higher epoch (claims.py)
        self.known_as = set()           # our URL as our peer names it (from its check answers while it follows us)
        self.promoted_base = (self._meta_int("promoted_from"), self._meta_int("promoted_head"))
        self._stop = threading.Event()
        self._cond = threading.Condition()       # the standby's acknowledged position moved
        self._changes = threading.Condition()    # something was committed
        self.store.commit_hooks.append(self._committed)
        self.store.write_guard = self._write_guard
        kid, _, secret = pick_key(sup.keys, "", "admin")
        self._key = (kid, secret)
        sup.tasks.accepting = self.accepting

    def client(self, url=None) -> SignedClient:
        return SignedClient(url or self.peer, *self._key, clock=self.clock, timeout=PULL_WAIT + 5)

    def _meta_int(self, key: str):
        value = self.store.meta(key)
        return int(value) if value is not None and value.isdigit() else None

    # -- identity ------------------------------------------------------------------

    def set_identity(self, role: str, epoch: int, peer: str | None, why: str, settle=(None, None)) -> None:
        before = (self.sup.role, self.sup.epoch)
        with self.store.tx(replication=True) as tx:
            tx.set_meta("role", role)
            tx.set_meta("epoch", epoch)
            tx.set_meta("peer", peer or "")
            if role == "standby" and before[0] == "primary":
                # What we wrote may not all be on the one we now follow: before the first
                # pull, rejoin() asks it how far it had replicated us (same transaction, so
                # a crash in between still rejoins).
                tx.set_meta("rejoin", 1)
                tx.set_meta("replicated_seq", 0)
            if role == "primary" and (before[0] == "standby" or self.fenced):
                # How far we had replicated our peer, and our own head: the peer rejoins from
                # here. Promoted out of a start-up fence we hold nothing of the peer's: 0.
                have = tx.one("SELECT value FROM meta WHERE key='replicated_seq'")
                self.promoted_base = (int(have["value"]) if have and not self.fenced else 0, self._head(tx))
                tx.set_meta("promoted_from", self.promoted_base[0])
                tx.set_meta("promoted_head", self.promoted_base[1])
                tx.execute("DELETE FROM meta WHERE key='rejoin'")
                tx.fence_floor(epoch)       # never a fencing number the former primary may have used
                tx.skip_task_ids(TASK_ID_GAP)   # nor a task id
            # Changed while holding the store lock: a claim transaction sees the old role
            # and commits before this, or sees the new one; any other write is refused by
            # _write_guard from here on if we stopped being primary.
            self.sup.role, self.sup.epoch, self.peer = role, epoch, peer
            self.fenced = None
            self.settling, self.settle_deadline = settle
            self.claims.reset()
            if role == "standby":
                self.handing_over = None
        self.log.warning("role_changed", supervisor_role=role, epoch=epoch, previous=list(before), peer=peer,
                         reason=why)
        self.sup.tasks.wake_all()
        if role == "standby":
            self._start_puller()

    @staticmethod
    def _head(tx) -> int:
        return tx.one("SELECT COALESCE(MAX(seq), 0) AS s FROM changelog")["s"]

    def start(self, standby_of: str | None) -> None:
        """Decide the role before serving. The persisted role wins over the config (a promoted
        standby stays primary across restarts), except on the very first start. A primary
        with a peer asks it first; if that does not settle who is active, it starts fenced."""
        if standby_of:
            self.set_identity("standby", self.sup.epoch, standby_of.rstrip("/"), "started with --standby-of")
            return
        first_start = self.store.meta("peer") is None
        if first_start and self.cfg.get("supervisor.role") == "standby":
            if not self.peer:
                raise BadRequest('supervisor.role = "standby" needs supervisor.peer')
            self.set_identity("standby", self.sup.epoch, self.peer, "configured as standby")
            return
        if self.sup.role == "standby":
            self._start_puller()
            return
        if self.peer:        # a primary asks its peer before it serves
            peer = self._peer_health()
            verdict = failover.peer_verdict(self.sup.epoch, peer)
            if verdict == "follow":
                self.set_identity("standby", self.sup.epoch, self.peer,
                                  f"peer {self.peer} is primary with epoch {peer['epoch']}: following it")
            elif verdict == "unsure":
                seen = f"answers {peer.get('role')} at epoch {peer.get('epoch')}" if peer else "could not be asked"
                self.fenced = (f"started fenced: peer {self.peer} {seen}; waiting for it to answer as a "
                               f"standby or for the watchdog")
                self.log.warning("fenced_at_start", peer=self.peer, epoch=self.sup.epoch, reason=self.fenced)

    def _unfence(self, why: str) -> None:
        with self.store.tx():           # under the lock a claim or write takes
            was, self.fenced = self.fenced, None
        if was:
            self.log.warning("fence_lifted", epoch=self.sup.epoch, reason=why)
            self.sup.tasks.wake_all()

    def _peer_health(self):
        """The peer's role and epoch from its signed check (not the open /health: a node that
        says "standby" but does not hold our keys, so could never replicate us, settles nothing)."""
        try:
            body, error = self.client().call("GET", "/v1/ha/check", timeout=3), None
        except (ApiError, ClientError) as e:
            body, error = None, e.message
            if isinstance(e, ApiError) and e.status in (401, 403) and error != self._peer_error:
                self.log.warning("peer_refuses_us", peer=self.peer, error=error,
                                 reason="the peer answers but refuses this supervisor's key: not the same keys file?")
        self._peer_error = error
        if isinstance(body, dict) and body.get("role") == "standby" and isinstance(body.get("peer"), str):
            self.known_as.add(body["peer"].rstrip("/"))      # promotion.names_us: a demote to follow ourselves
        return body if isinstance(body, dict) else None

    # -- serving rules ----------------------------------------------------------------

    def require_active(self, req) -> None:
        if self.sup.role == "primary":
            self.claims.note(req)
        if self.sup.role != "primary":
            raise NotActive(f"this supervisor is a standby (epoch {self.sup.epoch}); the active one is "
                            f"{self.peer or 'unknown'}", active=self.peer)
        if self.handing_over:
            raise NotActive(f"this supervisor is handing over to {self.handing_over}; retry there",
                            active=self.handing_over)
        if self.fenced or self.settling:
            raise NotActive(self.fenced or self.settling, active=None)
        self.claims.refuse()
        if self.lease > 0 and self.clock.monotonic() - self.last_contact > self.lease:
            raise NotActive(f"fenced: no word from the watchdog or the standby for more than {self.lease:.0f} s",
                            active=None)

    def accepting(self) -> bool:
        """May work be handed out now? A claim long-poll asks before every try, so a supervisor
        demoted, handing over or past its lease while the claim waits leases nothing."""
        return (self.sup.role == "primary" and not self.handing_over and not self.fenced and not self.settling
                and not self.claims.fenced
                and not (self.lease > 0 and self.clock.monotonic() - self.last_contact > self.lease))

    def _write_guard(self) -> None:
        """Store.write_guard: under the store lock, just before a write commits. The active
        check of a request runs before its transaction; this closes the gap, so a write that
        passed it just before a hold or a demotion is refused, not stored past the head the
        successor catches up to."""
        if self.sup.role != "primary" or self.handing_over:
            raise NotActive(f"this supervisor stopped accepting work before this change was stored "
                            f"({'handing over to ' + self.handing_over if self.handing_over else 'standby'}); "
                            f"nothing was stored, retry on the active one", active=self.handing_over or self.peer)

    def contact(self) -> None:
        self.last_contact = self.clock.monotonic()

    def check(self, query: dict) -> dict:
        """GET /v1/ha/check (the watchdog's deep check). `active=EPOCH`: the watchdog considers
        this node the active one at that epoch; only then does the check renew the primary's
        lease, or lift a start-up fence (a stale former primary can't keep itself alive)."""
        with self.store.tx(replication=True) as tx:
            tx.set_meta("checked_at", self.clock.time())
        active = parse_epoch(query.get("active"))
        if self.sup.role == "primary" and active is not None and self.sup.epoch >= active:
            if self.fenced:
                self._unfence(f"the watchdog's check names this supervisor active (epoch >= {active})")
            self.contact()
        return dict(self.view(), ok=True, db_writable=True)

    def cycle(self) -> None:
        """Primary with a peer: if the peer was promoted past us, follow it; if we started
        fenced and the peer now answers as our standby, serve. Just promoted: serve once the
        former primary follows us or its lease has run out (promotion.py)."""
        if self.sup.role != "primary":
            return
        if self.settling and self.clock.monotonic() >= self.settle_deadline:
            self.settled(self.sup.epoch, "the former primary's primary_lease has run out")
        if not self.peer:
            return
        asked = self.claims.asked()
        peer = self._peer_health()
        verdict = failover.peer_verdict(self.sup.epoch, peer)
        if self.sup.role == "primary":
            self.claims.judge(asked, peer)      # the same answer settles clients' claims of a higher epoch
        if verdict == "follow":
            self.set_identity("standby", self.sup.epoch, self.peer,
                              f"peer {self.peer} is primary with higher epoch {peer['epoch']}")
        elif verdict == "serve" and self.fenced:
            self._unfence(f"peer {self.peer} answers as a standby at epoch {peer['epoch']}")
        elif verdict == "serve" and self.settling:
            self.settled(self.sup.epoch, f"the former primary {self.peer} answers as a standby at epoch {peer['epoch']}")

    def settled(self, epoch: int, why: str) -> None:
        """A promotion is settled: the former primary no longer takes work (promotion.py)."""
        with self.store.tx():           # under the lock a claim or write takes
            was = self.settling if self.sup.epoch == epoch else None
            if was:
                self.settling = self.settle_deadline = None
        if was:
            self.log.warning("promotion_settled", epoch=epoch, reason=why)
            self.sup.tasks.wake_all()

    # -- primary side: the changelog feed --------------------------------------------------

    def _committed(self) -> None:
        with self._changes:
            self._changes.notify_all()

    def feed(self, since: int, wait: float, limit: int, epoch: int | None = None) -> dict:
        if self.sup.role != "primary":
            raise NotActive(f"this supervisor is a standby; replicate from {self.peer or 'the primary'}",
                            active=self.peer)
        why = failover.feed_refusal(self.sup.epoch, epoch)
        if why:     # a pull meant for another primary (a replay?): it renews no lease, acknowledges nothing
            raise EpochMismatch(f"replicate refused: {why}; pull again without epoch", epoch=self.sup.epoch)
        self.contact()
        self.standby_acked = max(self.standby_acked, since)
        if self.sync_degraded and since >= self.store.head_seq():
            self.sync_degraded = False
            self.log.info("replication_restored", mode="sync", reason="the standby caught up")
        self.standby_seen = self.clock.monotonic()
        with self._cond:
            self._cond.notify_all()
        deadline = self.clock.monotonic() + min(max(wait, 0.0), 30.0)
        while True:
            with self._changes:     # read under the condition so no commit slips between read and wait
                changes, last = self.store.changes_since(since, limit)
                remaining = deadline - self.clock.monotonic()
                if changes or last > since or remaining <= 0 or self.sup.role != "primary":
                    break
                self._changes.wait(min(remaining, 1.0))
        return {"changes": changes, "last": last, "head": self.store.head_seq(), "role": self.sup.role,
                "epoch": self.sup.epoch, "time": self.clock.time(), "promoted_from": self.promoted_base[0],
                "promoted_head": self.promoted_base[1], "floor": self.store.changelog_floor()}

    def rows(self, keys: list) -> dict:
        """Rows by key as they are now (a former primary's rejoin asks for those it drops)."""
        if self.sup.role != "primary":
            raise NotActive(f"this supervisor is a standby; ask {self.peer or 'the primary'}", active=self.peer)
        try:
            rows = self.store.rows_by_key(keys)
        except ValueError as e:
            raise BadRequest(f"replicate rows: {e}", field="rows") from None
        return {"rows": rows, "head": self.store.head_seq(), "epoch": self.sup.epoch}

    def acknowledge(self, may_wait: bool = True) -> bool:
        """Sync mode: return once the standby holds everything committed so far (bounded).
        False, at once, when that means waiting and `may_wait` is False."""
        if self.mode != "sync" or self.sup.role != "primary":
            return True
        target = self.store.head_seq()
        if not may_wait and self.standby_acked < target and not self.sync_degraded:
            return False
        deadline = self.clock.monotonic() + float(self.cfg.get("supervisor.sync_timeout"))
        with self._cond:
            while self.standby_acked < target:
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0 or (self.sync_degraded and self.standby_acked < target):
                    if not self.accepting():
                        # Cut off from the standby AND past our lease: we may no longer be the
                        # primary, so this write is not acknowledged (the client retries there).
                        raise NotActive("the standby did not confirm this change and this supervisor is "
                                        "fenced (primary_lease expired, or a client's newer epoch is being "
                                        "checked); retry on the active supervisor",
                                        active=self.peer)
                    if not self.sync_degraded:
                        self.sync_degraded = True
                        self.log.warning("replication_degraded", mode="async",
                                         reason="the standby did not confirm in time")
                    return True
                self._cond.wait(remaining)
        return True

    # -- standby side: pulling --------------------------------------------------------------

    def _start_puller(self) -> None:
        if self._puller and self._puller.is_alive():
            return
        self._puller = threading.Thread(target=pull.pull_loop, args=(self,), name="replicate", daemon=True)
        self._puller.start()

    def promote(self, body: dict, actor: str) -> dict:
        return promotion.promote(self, body, actor)

    def demote(self, body: dict, actor: str) -> dict:
        return promotion.demote(self, body, actor)

    def view(self) -> dict:
        now = self.clock.time()
        out = {"role": self.sup.role, "epoch": self.sup.epoch, "peer": self.peer, "replication": self.mode,
               "head": self.store.head_seq(), "handing_over": self.handing_over, "fenced": self.fenced,
               "settling": self.settling, "epoch_claim": self.claims.fenced or None}
        if self.sup.role == "standby":
            have = int(self.store.meta("replicated_seq", "0"))
            lag = max(0, self.primary_head - have)
            fresh = self.pulled_at is not None and self.clock.monotonic() - self.pulled_at < PULL_WAIT + 2
            seconds = 0.0 if lag == 0 and fresh else (round(now - self.caught_up_at, 1) if self.caught_up_at else None)
            if self.store.meta("rejoin") is not None:        # not yet settled with the primary: not caught up
                lag = seconds = None
            out.update(replicated=have, lag_changes=lag, lag_seconds=seconds, replication_error=self.pull_error)
        else:
            out.update(standby_acked=self.standby_acked,
                       lag_changes=max(0, out["head"] - self.standby_acked) if self.standby_seen else None,
                       sync_degraded=self.sync_degraded)
        return out

    def stop(self) -> None:
        self._stop.set()


def is_not_active(e: Exception) -> bool:
    return isinstance(e, ApiError) and e.code == "not_active"
