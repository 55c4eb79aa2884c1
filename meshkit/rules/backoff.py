"""Full-jitter exponential backoff: delay = uniform(0, min(cap, base * 2**(attempt-1)))."""


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The largest delay after `attempt` failures (attempt >= 1)."""
    if attempt < 1:
        return 0.0
    return min(cap, base * (2 ** min(attempt - 1, 62)))


def full_jitter(attempt: int, base: float, cap: float, rand: float) -> float:
    """`rand` in [0, 1) is injected so the decision is a pure function."""
    return ceiling(attempt, base, cap) * min(max(rand, 0.0), 1.0)
