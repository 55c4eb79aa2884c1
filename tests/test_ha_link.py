"""The worker's link during a failover, table-driven (fake clock, no sleeps): a `not_active`
answer (a standby: a failover is under way) does not count against the circuit breaker;
a call that no supervisor answered (network error, 5xx) does."""

import unittest

from meshkit.core.clock import FakeClock
from meshkit.core.errors import ApiError, ClientError
from meshkit.roles.worker.link import BreakerOpen, Link
from meshkit.rules import breaker as br

ANSWERS = {
    "ok": lambda: {"epoch": 1},
    "standby": lambda: ApiError(409, "not_active", "this supervisor is a standby"),
    "down": lambda: ClientError("connection refused"),
    "5xx": lambda: ApiError(503, "unavailable", "shutting down"),
}


class Script:
    """A supervisor client whose next answer the test sets."""

    def __init__(self, url):
        self.url, self.answer, self.calls, self.headers = url, "down", 0, {}

    def call(self, method, path, body=None, timeout=None):
        self.calls += 1
        got = ANSWERS[self.answer]()
        if isinstance(got, Exception):
            raise got
        return got


def outcome(link) -> str:
    try:
        link.call("POST", "/v1/claim", {})
        return "ok"
    except BreakerOpen:
        return "breaker_open"
    except ApiError as e:
        return "unanswered" if e.status >= 500 else e.code
    except ClientError:
        return "unanswered"


# Three calls nobody answered: the breaker opens.
OPENED = [(0, "down", "down", "unanswered", br.CLOSED, 1, (1, 1)),
          (0, "down", "down", "unanswered", br.CLOSED, 2, (1, 1)),
          (0, "down", "down", "unanswered", br.OPEN, 3, (1, 1))]

# Each step: (seconds to advance first, answer of a, answer of b, outcome, breaker state after,
# consecutive failures after, calls made to (a, b) in this step). Breaker: 3 failures, 300 s.
CASES = {
    "standbys only (failover under way): never opens": [
        (0, "standby", "standby", "not_active", br.CLOSED, 0, (1, 1)),
    ] * 6,
    "nobody answers: opens at the third, then sends nothing": [
        (0, "down", "down", "unanswered", br.CLOSED, 1, (1, 1)),
        (0, "down", "5xx", "unanswered", br.CLOSED, 2, (1, 1)),
        (0, "5xx", "down", "unanswered", br.OPEN, 3, (1, 1)),
        (0, "ok", "ok", "breaker_open", br.OPEN, 3, (0, 0)),
        (299, "ok", "ok", "breaker_open", br.OPEN, 3, (0, 0)),
    ],
    "a standby's answer resets the count": [
        (0, "down", "down", "unanswered", br.CLOSED, 1, (1, 1)),
        (0, "down", "down", "unanswered", br.CLOSED, 2, (1, 1)),
        (0, "down", "standby", "not_active", br.CLOSED, 0, (1, 1)),
        (0, "down", "down", "unanswered", br.CLOSED, 1, (1, 1)),
    ],
    "half-open probe answered by a standby closes it": [
        *OPENED,
        (300, "standby", "standby", "not_active", br.CLOSED, 0, (1, 1)),
        (0, "down", "ok", "ok", br.CLOSED, 0, (1, 1)),
    ],
    "half-open probe unanswered opens it again": [
        *OPENED,
        (300, "down", "down", "unanswered", br.OPEN, 3, (1, 1)),
        (1, "ok", "ok", "breaker_open", br.OPEN, 3, (0, 0)),
    ],
    "the promoted one answers: switch to it and stay": [
        (0, "standby", "ok", "ok", br.CLOSED, 0, (1, 1)),
        (0, "standby", "ok", "ok", br.CLOSED, 0, (0, 1)),
    ],
}


class NotActiveBreaker(unittest.TestCase):
    def test_table(self):
        for name, steps in CASES.items():
            with self.subTest(name):
                clock = FakeClock()
                a, b = Script("http://a"), Script("http://b")
                link = Link([a, b], br.Breaker(3, 300), clock)
                for i, (advance, ans_a, ans_b, want, state, failures, calls) in enumerate(steps):
                    clock.advance(advance)
                    a.answer, b.answer = ans_a, ans_b
                    before = (a.calls, b.calls)
                    got = outcome(link)
                    self.assertEqual((got, link.breaker.state, link.breaker.failures,
                                      (a.calls - before[0], b.calls - before[1])),
                                     (want, state, failures, calls), f"step {i}")


if __name__ == "__main__":
    unittest.main()
