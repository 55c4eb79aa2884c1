"""A client's word that a newer primary exists, as a primary judges it.

Workers send the highest epoch they have seen (X-Meshkit-Epoch). That header is not covered
by the request's signature, and the epoch a worker learns comes from answers nobody signs,
so a primary never demotes itself on it alone:
- without a peer there is nobody it could have been replaced by: the claim is ignored (and
  logged, at most once a NOTE_EVERY);
- with a peer, a claim above our epoch fences us in memory (work gets 409 not_active; not
  stored, gone at a restart) until the peer is asked over the signed check, at most once a
  CHECK_EVERY: a primary at a higher epoch confirms it (we follow, as before); any other
  answer refutes it, and claims up to the refuted value are served without asking again for
  REFUTED_FOR seconds (renewed by every later answer of the peer that still refutes it).
  A peer that can't be asked settles nothing: the fence stays (an old primary cut off from
  its peer takes no work from a client that has seen a newer one).

Pure: the caller passes the time (monotonic) and carries out the action.
"""

import math
from dataclasses import dataclass, replace

MAX_DIGITS = 19         # an epoch as text: a plain decimal that fits in 64 bits
CHECK_EVERY = 2.0       # s between two checks of the peer about a claim
REFUTED_FOR = 60.0      # s claims up to a refuted value are served without asking again
NOTE_EVERY = 60.0       # s between two log lines of a claim that can't be checked (no peer)


@dataclass(frozen=True)
class Claims:
    pending: int = 0                # highest claim above our epoch not judged yet (0: none)
    refuted: int = 0                # claims up to this were refuted by the peer...
    refuted_until: float = -math.inf    # ... until this time
    asked_at: float = -math.inf     # when the peer was last asked
    noted_at: float = -math.inf     # when an unverifiable claim (no peer) was last logged


def parse_epoch(value) -> int | None:
    """An epoch header or parameter as a number: a plain decimal of at most MAX_DIGITS ASCII
    digits, else None (treated as absent: never an error, never a huge int)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_DIGITS or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def claimed(c: Claims, own: int, claim, has_peer: bool, now: float) -> tuple:
    """A request carrying `claim` (parse_epoch's result) reached a primary at epoch `own`.
    (new Claims, action): None (nothing to do), "note" (no peer: serve, and log that a client
    claims a higher epoch), "check" (the claim is pending: refuse, and make sure the peer is
    asked)."""
    if claim is None or claim <= own:
        return c, None
    if not has_peer:
        if now - c.noted_at >= NOTE_EVERY or now < c.noted_at:
            return replace(c, noted_at=now), "note"
        return c, None
    if claim <= c.refuted and now < c.refuted_until:
        return c, None
    return replace(c, pending=max(c.pending, claim)), "check"


def fence(c: Claims, own: int) -> int:
    """The pending claim that keeps a primary at epoch `own` from taking work, or 0."""
    return c.pending if c.pending > own else 0


def ask_in(c: Claims, now: float) -> float:
    """Seconds until the peer may be asked about a claim (0: now)."""
    if now < c.asked_at:        # the clock went back: ask now
        return 0.0
    return max(0.0, c.asked_at + CHECK_EVERY - now)


def asking(c: Claims, now: float) -> tuple:
    """The peer is asked now: (new Claims, the claim its answer judges: the pending one, or 0)."""
    return replace(c, asked_at=now), c.pending


def answered(c: Claims, own: int, asked: int, peer, now: float) -> tuple:
    """The peer's check answer (a dict, or None if it could not be asked), to a question
    asked while `asked` was pending. (new Claims, verdict): "follow" (the peer is primary at
    a higher epoch than ours: a client's claim is true, or no longer matters), "refuted"
    (any other answer with an epoch: pending claims up to `asked` are refuted), None (no
    answer: nothing settled)."""
    if not isinstance(peer, dict) or not isinstance(peer.get("epoch"), int) or isinstance(peer["epoch"], bool):
        return c, None
    if peer.get("role") == "primary" and peer["epoch"] > own:
        return Claims(noted_at=c.noted_at), "follow"
    live = c.refuted if now < c.refuted_until else 0
    refuted = max(live, asked)
    c = replace(c, pending=c.pending if c.pending > asked else 0, refuted=refuted,
                refuted_until=now + REFUTED_FOR if refuted > own else c.refuted_until)
    return c, "refuted"
