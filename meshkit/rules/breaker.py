"""Circuit breaker: a pure state machine over (state, observation, now).

    closed    --failure x threshold-->  open (opened_at = now)
    open      --now >= opened_at + cooldown, one caller asks-->  half_open (that caller probes)
    half_open --probe succeeds-->  closed;  --probe fails-->  open again (opened_at = now)

While open every caller is refused; while half-open only the one probe is in flight.
Each function returns a new Breaker; nothing here reads a clock or does I/O.
"""

from dataclasses import dataclass, replace

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class Breaker:
    threshold: int = 3          # consecutive failures that open it
    cooldown: float = 300.0     # seconds open before one half-open try
    state: str = CLOSED
    failures: int = 0           # consecutive failures while closed
    opened_at: float = 0.0


def allow(b: Breaker, now: float) -> tuple:
    """(allowed, new breaker). An allowed call from `open` becomes the half-open probe."""
    if b.state == CLOSED:
        return True, b
    if b.state == OPEN and now >= b.opened_at + b.cooldown:
        return True, replace(b, state=HALF_OPEN)
    return False, b


def probe(b: Breaker) -> Breaker:
    """A caller that looks for the other side coming back (a worker's heartbeat, every
    poll_interval) makes its call the half-open probe now, before the cooldown ends; its
    outcome closes the breaker or opens it again."""
    return replace(b, state=HALF_OPEN) if b.state == OPEN else b


def succeeded(b: Breaker, now: float) -> Breaker:
    return replace(b, state=CLOSED, failures=0)


def failed(b: Breaker, now: float) -> Breaker:
    if b.state == HALF_OPEN:
        return replace(b, state=OPEN, opened_at=now, failures=b.threshold)
    failures = b.failures + 1
    if b.state == OPEN or failures >= b.threshold:
        return replace(b, state=OPEN, opened_at=now if b.state == CLOSED else b.opened_at, failures=failures)
    return replace(b, failures=failures)


def retry_in(b: Breaker, now: float) -> float:
    """Seconds until a call may be allowed (0 when closed; the cooldown left when open)."""
    if b.state == CLOSED:
        return 0.0
    if b.state == OPEN:
        return max(0.0, b.opened_at + b.cooldown - now)
    return min(b.cooldown, 1.0)  # a probe is in flight: its outcome decides soon; look again
