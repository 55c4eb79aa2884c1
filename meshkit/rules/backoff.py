"""Full-jitter exponential backoff: delay = uniform(0, min(cap, base * 2**(attempt-1)))."""


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The largest delay after `attempt` failures (attempt >= 1)."""
    if attempt < 1:
        return 0.0
    return min(cap, base * (2 ** min(attempt - 1, 62)))


def full_jitter(attempt: int, base: float, cap: float, rand: float) -> float:
    """`rand` in [0, 1) is injected so the decision is a pure function."""
    return ceiling(attempt, base, cap) * min(max(rand, 0.0), 1.0)


def wake_in(remaining: float, next_due, now: float, slack: float = 0.01) -> float:
    """How long a claim that found nothing may wait: until its own deadline (`remaining` s),
    or until the earliest backoff among the queued tasks it could take ends (`next_due`,
    wall time like `now`; None: no task is backing off), plus `slack` so that the claim that
    wakes finds the task due. Never negative."""
    remaining = max(0.0, remaining)
    if next_due is None:
        return remaining
    return min(remaining, max(0.0, next_due - now) + slack)
