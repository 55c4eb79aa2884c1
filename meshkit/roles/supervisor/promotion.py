"""Promote and demote (POST /v1/promote, /v1/demote), and what a promotion sets going.

A standby promoted while its former primary may still be up (the watchdog lost sight of
it, or an operator promoted by hand) must not take work while that one still does.
At promotion it holds work back until rules.failover.settle_until (the former primary's
lease, renewed by our own pulls, has run out) and, at once, tells the former primary to
follow it (POST /v1/demote with the new epoch, on a thread: the watchdog's promote call is
not kept waiting). When that one answers as a standby, or its lease ran out (Ha.cycle), or
its signed check shows it follows (Ha.cycle), work is taken.

Neither route trusts that a request was meant for this supervisor: the signature does not
name the target, and a restarted process has forgotten the nonces it accepted. A request
naming an epoch that does not fit ours is refused (rules.failover.promote_refusal,
demote_refusal: 409 epoch_mismatch), and so is a demote telling us to follow ourselves;
one signed before this process started is refused before it gets here (api.py).
"""

import threading

from meshkit.adapters.client import split_url
from meshkit.core.errors import ApiError, BadRequest, ClientError, EpochMismatch
from meshkit.rules import failover

DEMOTE_TIMEOUT = 3.0


def promote(ha, body: dict, actor: str) -> dict:
    """Standby -> primary with an epoch past every one seen."""
    known = max(ha.sup.epoch, int(ha.store.meta("peer_epoch", "0") or 0))
    why = failover.promote_refusal(known, body.get("epoch"))
    if why:
        raise EpochMismatch(f"promote refused: {why} (sent to the wrong supervisor, or replayed?); sign a new one "
                            f"naming the current epoch", epoch=known)
    if ha.sup.role == "primary" and (ha.settling or not ha.fenced):
        if ha.handing_over:
            ha.log.warning("handover_cancelled", to=ha.handing_over, actor=actor)
            ha.handing_over = None
        return ha.view()
    # A standby, or a primary that started fenced: take the role past every epoch seen.
    seen = max(known, int(body.get("epoch") or 0))
    from_standby = ha.sup.role == "standby" and ha.peer      # its former primary may still serve
    settle = (None, None)
    if from_standby:
        now = ha.clock.monotonic()
        until = failover.settle_until(now, ha.lease, ha.pull_in_flight, ha.pull_answered, ha.started)
        if until is not None:
            settle = (f"just promoted: taking work once the former primary {ha.peer} follows or its "
                      f"primary_lease has run out (at most {until - now:.0f} s)", until)
    ha.set_identity("primary", seen + 1, ha.peer, f"promoted by {actor}", settle)
    ha.contact()
    if from_standby:
        start(ha, seen + 1)
    return ha.view()


def demote(ha, body: dict, actor: str) -> dict:
    """Primary -> standby of `peer` (orderly handback, or an operator's command)."""
    peer = (body.get("peer") or ha.peer or "").rstrip("/")
    if not peer.startswith("http://"):
        raise BadRequest("demote needs the URL of the supervisor to follow ('peer')", field="peer")
    why = failover.demote_refusal(ha.sup.role, ha.sup.epoch, body.get("epoch"), bool(body.get("hold")))
    if why is None and names_us(ha, peer):
        why = f"it names this supervisor ({peer}) as the one to follow"
    if why:
        raise EpochMismatch(f"demote refused: {why} (sent to the wrong supervisor, or replayed?)", epoch=ha.sup.epoch)
    if body.get("hold") and ha.sup.role == "primary":
        # Step 1 of an orderly handover: take no more work, keep feeding the successor.
        with ha.store.tx():
            ha.handing_over = peer
        ha.log.warning("handover_started", to=peer, actor=actor, head=ha.store.head_seq())
        ha.sup.tasks.wake_all()
        return ha.view()
    ha.set_identity("standby", max(ha.sup.epoch, int(body.get("epoch") or 0)), peer, f"demoted by {actor}")
    return ha.view()


def names_us(ha, url: str) -> bool:
    """Does `url` name this supervisor: its listening address (as far as the text tells), or
    the URL its peer calls it by (learned from the peer's check answers)?"""
    if url in ha.known_as:
        return True
    server = getattr(ha.sup, "server", None)
    if server is None:
        return False
    try:
        host, port = split_url(url)
    except ClientError:
        return False
    return failover.names_itself(host, port, ha.sup.listen[0], server.server_address[1])


def start(ha, epoch: int) -> None:
    threading.Thread(target=_demote_former, args=(ha, epoch), name="demote-former", daemon=True).start()


def _demote_former(ha, epoch: int) -> None:
    try:
        got = ha.client().call("POST", "/v1/demote", {"epoch": epoch}, timeout=DEMOTE_TIMEOUT)
    except (ApiError, ClientError) as e:
        ha.log.warning("former_primary_not_demoted", peer=ha.peer, epoch=epoch, error=e.message,
                       waiting=ha.settling)
        return
    if isinstance(got, dict) and got.get("role") == "standby":
        ha.settled(epoch, f"the former primary {ha.peer} follows us (epoch {got.get('epoch')})")
