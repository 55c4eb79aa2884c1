"""The watchdog's decisions: count failed and good checks, decide failover and failback.

state: {"active": "primary" | "standby", "failures": n, "recoveries": n, "epoch": n,
        "ready_for_failback": bool}. "active" names which configured node is active.
"""

DEFAULT_STATE = {"active": "primary", "failures": 0, "recoveries": 0, "epoch": 0, "ready_for_failback": False}


def other(node: str) -> str:
    return "standby" if node == "primary" else "primary"


def initial_state(answers: dict) -> dict:
    """The watchdog's view when it has none (first start, state file lost or unreadable),
    from each node's check answer (None: it did not answer). It never makes a new acceptor
    of work on a guess:
    - both answer: the one answering as primary at the higher epoch is active (a former
      primary that restarted at an older epoch is not); neither primary: the configured one;
    - one answers as a primary that is serving (not fenced): it is active (it already is);
    - otherwise (one answers fenced or as a standby, or none answers): the silent node, or
      the configured primary, is named active, so promoting the other goes through the
      usual `failures` checks, by which time a cut-off primary's lease has fenced it.
    The epoch is the highest any answer reports."""
    valid = {n: a for n, a in answers.items()
             if isinstance(a, dict) and isinstance(a.get("epoch"), int) and not isinstance(a["epoch"], bool)}
    epoch = max((a["epoch"] for a in valid.values()), default=0)
    primaries = [n for n in ("primary", "standby") if n in valid and valid[n].get("role") == "primary"]
    if len(valid) == 2:
        active = max(primaries, key=lambda n: valid[n]["epoch"]) if primaries else "primary"   # a tie keeps "primary"
    elif len(valid) == 1:
        (only,) = valid
        active = only if only in primaries and not valid[only].get("fenced") else other(only)
    else:
        active = "primary"
    return dict(DEFAULT_STATE, active=active, epoch=epoch)


def after_check(state: dict, active_ok: bool, active_epoch, home_ok: bool, failures: int, recoveries: int,
                failback: str) -> tuple:
    """(new state, action): action is None, "failover", "failback" or "ready_for_failback".

    active_ok: the active node answered a deep check as primary. home_ok: the configured
    primary, while it is not active, answered as a healthy standby that has caught up.
    """
    s = dict(DEFAULT_STATE, **state)
    if active_ok:
        s["failures"] = 0
        if isinstance(active_epoch, int):
            s["epoch"] = max(s["epoch"], active_epoch)
    else:
        s["failures"] += 1
        if s["failures"] >= failures:
            s.update(active=other(s["active"]), failures=0, recoveries=0, ready_for_failback=False)
            return s, "failover"
        return s, None
    if s["active"] == "standby":
        s["recoveries"] = s["recoveries"] + 1 if home_ok else 0
        if s["recoveries"] >= recoveries:
            if failback == "auto":
                s.update(active="primary", recoveries=0, ready_for_failback=False)
                return s, "failback"
            if not s["ready_for_failback"]:
                s["ready_for_failback"] = True
                return s, "ready_for_failback"
    else:
        s.update(recoveries=0, ready_for_failback=False)
    return s, None


def unconfirmed_epoch(remembered: int, answers: list):
    """The watchdog remembers the highest epoch a check answer reported, and answers are
    signed by nobody. When the active node answers as a primary below it, the other node is
    asked too: if both answer and both report a lower epoch, nobody holds the remembered one
    (a forged or mistaken answer put it there): returns the highest they report, to remember
    instead. Else None (keep it: the active node is behind, or it can't be told)."""
    epochs = [a.get("epoch") if isinstance(a, dict) else None for a in answers]
    if not epochs or any(isinstance(e, bool) or not isinstance(e, int) for e in epochs):
        return None
    top = max(epochs)
    return top if top < remembered else None


def peer_verdict(own_epoch: int, peer) -> str:
    """A primary with a configured peer, from the peer's /health answer (None: it could not be
    asked): "follow" (the peer is primary with a higher epoch: it was promoted past us),
    "serve" (the peer is a standby at an epoch no higher than ours: we are the active one),
    "unsure" (unreachable, also primary at an epoch no higher than ours, or a standby at a
    higher one): a supervisor starting up takes no work then until its peer or the watchdog
    settles it."""
    if not isinstance(peer, dict) or not isinstance(peer.get("epoch"), int):
        return "unsure"
    if peer.get("role") == "primary" and peer["epoch"] > own_epoch:
        return "follow"
    if peer.get("role") == "standby" and peer["epoch"] <= own_epoch:
        return "serve"
    return "unsure"


def rejoin_plan(own_head: int, promoted_from, promoted_head) -> dict:
    """How a former primary starts following the peer promoted past it.

    own_head: our changelog head. promoted_from: how far into our changelog the peer had
    replicated when it was promoted; promoted_head: its own changelog head then (None: the
    peer was never promoted, or does not say). Returns {"discard_after": position or None,
    "since": where to start pulling the peer's changelog, "refetch": whether to ask the peer
    for its version of each discarded row first}:
    - it held all we wrote (own_head == promoted_from): keep everything, pull what it wrote
      since its promotion;
    - we wrote more (the async window, or work in flight when we died): discard what we
      changed after promoted_from, fetch the peer's version of those rows by key (it had
      them as of promoted_from, or changed them since), and pull what it wrote since its
      promotion. Without that fetch (a peer that can't answer it) the pull starts at 0;
    - unknown: discard every row we ever changed and copy everything.
    """
    if isinstance(promoted_from, int) and isinstance(promoted_head, int) and 0 <= promoted_from <= own_head:
        if promoted_from == own_head:
            return {"discard_after": None, "since": promoted_head, "refetch": False}
        return {"discard_after": promoted_from, "since": promoted_head, "refetch": True}
    return {"discard_after": 0, "since": 0, "refetch": False}


SETTLE_MARGIN = 1.0     # s past the former primary's lease (clock rates, the answer's way back)


def settle_until(now: float, lease: float, pull_in_flight: bool, last_answer, started: float):
    """A standby just promoted while its former primary may still be serving: until when it
    must take no work, unless the former primary confirms it follows (monotonic time; None:
    no wait). The former primary's lease (primary_lease) is renewed by each of our pulls
    that reaches it, so it runs out `lease` after the last one: a pull still in flight may
    arrive now; a pull that was answered arrived before its answer (last_answer); before our
    first answer, a pull of our previous run arrived before we started. Without a lease
    (0) nothing bounds the former primary: no wait (it stops when it hears the new epoch)."""
    if lease <= 0:
        return None
    renewed = now if pull_in_flight else (last_answer if last_answer is not None else started)
    until = renewed + lease + SETTLE_MARGIN
    return until if until > now else None


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def names_itself(peer_host: str, peer_port: int, listen_host: str, listen_port: int) -> bool:
    """Does a peer URL's host:port name this supervisor's own listening address? (A standby
    told to replicate itself waits forever.) Only what can be told from the text: the same
    host, or loopback while listening on loopback or on every address; never for port 0."""
    if listen_port == 0 or peer_port != listen_port:
        return False
    if peer_host == listen_host:
        return True
    return peer_host in _LOOPBACK and listen_host in _LOOPBACK + ("0.0.0.0", "::", "")


# -- HA control requests that cannot be meant for this supervisor ----------------------------
# The signature does not name the supervisor a request is for, and each process remembers
# the nonces it accepted only while it lives: a demote sent to one supervisor could be
# replayed to the other, or after a restart. The epoch a control request names tells
# whom it was meant for; one that does not fit is refused (409 epoch_mismatch). A request
# that names no epoch (an operator's, by hand) is judged as before.

def demote_refusal(role: str, own: int, epoch, hold: bool) -> str | None:
    """Why a demote naming `epoch` (None: none) can't be meant for a supervisor in `role` at
    epoch `own`, or None. A demote names the epoch of the primary to follow (a hold: the
    epoch the sender expects the primary it holds to be at)."""
    if epoch is None:
        return None
    if role == "primary" and hold:
        if epoch < own:
            return f"a hold for a primary at epoch {epoch}, but this one is at {own}"
        return None
    if role == "primary" and epoch <= own:
        return (f"this supervisor is the primary at epoch {own}: a demote to follow epoch {epoch} was meant for "
                f"an older one")
    if role != "primary" and epoch < own:
        return f"this standby is already at epoch {own}: a demote to follow epoch {epoch} is older"
    return None


def promote_refusal(known: int, epoch) -> str | None:
    """Why a promote naming `epoch` (the epoch the sender expects to move past; None: none)
    can't be meant for a supervisor that knows epoch `known` (its own, or its primary's),
    or None: the pair has moved past the epoch the sender expected."""
    if epoch is not None and epoch < known:
        return f"a promote past epoch {epoch}, but this supervisor knows epoch {known} already"
    return None


def feed_refusal(own: int, epoch) -> str | None:
    """Why a replication pull naming `epoch` (the epoch of the primary the standby pulled from
    last; None: none) can't be meant for a primary at epoch `own`, or None."""
    if epoch is not None and epoch != own:
        return f"a pull from a standby that follows epoch {epoch}, but this primary is at epoch {own}"
    return None


def signed_before_start(timestamp: int, started: float) -> bool:
    """A control request signed before this process started: may be a replay of one an
    earlier process of ours accepted (its nonces are gone); the sender signs again."""
    return timestamp < int(started)
