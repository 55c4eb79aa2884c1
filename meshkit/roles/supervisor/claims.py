"""A primary's handling of clients' epoch claims (X-Meshkit-Epoch above its own): the rule
is rules/epochclaim.py; here the claim is noted on the request (on the loop thread: no
I/O), the peer is asked on a thread of its own (at most one, at most once a CHECK_EVERY),
and its verdict is carried out: follow a peer promoted past us, or serve again."""

import threading

from meshkit.core.errors import NotActive
from meshkit.rules import epochclaim as ec

HEADER = "X-Meshkit-Epoch"


class EpochClaims:
    def __init__(self, ha):
        self.ha = ha
        self.state = ec.Claims()
        self.fenced = 0             # the pending claim keeping us from work (read without the lock)
        self._lock = threading.Lock()
        self._checker = None

    def note(self, req) -> None:
        """A request to a route that needs the active supervisor, on a primary."""
        ha, sup = self.ha, self.ha.sup
        claim = ec.parse_epoch(req.headers.get(HEADER))
        if claim is None or claim <= sup.epoch:
            return
        now = ha.clock.monotonic()
        with self._lock:
            before = self.fenced
            self.state, action = ec.claimed(self.state, sup.epoch, claim, bool(ha.peer), now)
            self.fenced = ec.fence(self.state, sup.epoch)
        if action == "note":
            ha.log.warning("epoch_claim_ignored", claimed=claim, epoch=sup.epoch, client=req.client,
                           reason="a client says it saw a higher epoch, but this supervisor has no peer that could "
                                  "have been promoted past it: ignored (logged at most once a minute)")
        elif action == "check":
            if not before:
                ha.log.warning("epoch_claim_pending", claimed=claim, epoch=sup.epoch, client=req.client, peer=ha.peer,
                               reason="a client says it saw a higher epoch: taking no work until the peer confirms "
                                      "or refutes it")
            self._start()

    def refuse(self) -> None:
        """require_active: raise while a claim is pending."""
        pending = self.fenced
        if pending and pending > self.ha.sup.epoch:
            raise NotActive(f"a client saw epoch {pending}, newer than this supervisor's ({self.ha.sup.epoch}); "
                            f"taking no work until its peer {self.ha.peer} confirms or refutes that; retry on the "
                            f"active supervisor", active=None)

    def reset(self) -> None:
        """Our role or epoch changed (set_identity): claims judged against the old one are moot."""
        with self._lock:
            self.state = ec.Claims(noted_at=self.state.noted_at)
            self.fenced = 0

    def asked(self):
        """The peer is asked now (by the checker or the supervisor's cycle): what it will judge."""
        with self._lock:
            self.state, asked = ec.asking(self.state, self.ha.clock.monotonic())
        return asked

    def judge(self, asked: int, peer) -> str | None:
        """The peer's answer to a question asked by asked(): refute or settle pending claims.
        "follow": the caller makes us its standby."""
        ha = self.ha
        with self._lock:
            was = self.state
            self.state, verdict = ec.answered(self.state, ha.sup.epoch, asked, peer, ha.clock.monotonic())
            self.fenced = ec.fence(self.state, ha.sup.epoch)
        if verdict == "refuted" and asked > max(was.refuted, ha.sup.epoch):
            ha.log.warning("epoch_claim_refuted", claimed=asked, epoch=ha.sup.epoch, peer=ha.peer,
                           peer_role=peer.get("role"), peer_epoch=peer.get("epoch"),
                           reason=f"the peer is not a primary at a higher epoch: serving; claims up to {asked} are "
                                  f"not asked about again for {ec.REFUTED_FOR:.0f} s")
            ha.sup.tasks.wake_all()
        return verdict

    def _start(self) -> None:
        with self._lock:
            if self._checker is None:
                self._checker = threading.Thread(target=self._check_loop, name="epoch-claim", daemon=True)
                self._checker.start()

    def _check_loop(self) -> None:
        ha = self.ha
        while True:
            with self._lock:        # the only way out: a claim noted after this starts another thread
                if ha._stop.is_set() or ha.sup.role != "primary" or not self.fenced:
                    self._checker = None
                    return
                delay = ec.ask_in(self.state, ha.clock.monotonic())
            if delay > 0:
                ha.clock.wait(ha._stop, delay)
                continue
            asked = self.asked()
            peer = ha._peer_health()
            if ha.sup.role == "primary" and self.judge(asked, peer) == "follow":
                ha.set_identity("standby", ha.sup.epoch, ha.peer,
                                f"a client saw epoch {asked}; peer {ha.peer} confirms: it is primary with epoch "
                                f"{peer['epoch']}")
