"""The circuit breaker, driven with plain numbers."""

import unittest

from meshkit.rules.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, allow, failed, probe, retry_in, succeeded


def play(script, b=None):
    """Run a script of (now, event) and return [(allowed or None, state)] after each step.

    events: "ask" (allow), "probe" (probe), "ok" (succeeded), "fail" (failed)."""
    b = b or Breaker(threshold=3, cooldown=300)
    out = []
    for now, event in script:
        if event == "ask":
            ok, b = allow(b, now)
            out.append((ok, b.state))
        elif event == "probe":
            b = probe(b)
            out.append((None, b.state))
        elif event == "ok":
            b = succeeded(b, now)
            out.append((None, b.state))
        else:
            b = failed(b, now)
            out.append((None, b.state))
    return out, b


class BreakerTable(unittest.TestCase):
    def test_scripts(self):
        cases = [
            ("closed allows", [(0, "ask")], [(True, CLOSED)]),
            ("two failures stay closed", [(0, "fail"), (1, "fail"), (2, "ask")],
             [(None, CLOSED), (None, CLOSED), (True, CLOSED)]),
            ("three failures open", [(0, "fail"), (1, "fail"), (2, "fail"), (3, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (False, OPEN)]),
            ("a success resets the count", [(0, "fail"), (1, "fail"), (2, "ok"), (3, "fail"), (4, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, CLOSED), (None, CLOSED), (True, CLOSED)]),
            ("refused until the cooldown ends", [(0, "fail"), (0, "fail"), (10, "fail"), (309, "ask"), (310, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (False, OPEN), (True, HALF_OPEN)]),
            ("only one half-open try", [(0, "fail"), (0, "fail"), (0, "fail"), (300, "ask"), (300, "ask"), (301, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (True, HALF_OPEN), (False, HALF_OPEN), (False, HALF_OPEN)]),
            ("a probe before the cooldown ends: success closes",
             [(0, "fail"), (0, "fail"), (0, "fail"), (5, "probe"), (5, "ok"), (6, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (None, HALF_OPEN), (None, CLOSED), (True, CLOSED)]),
            ("a probe before the cooldown ends: failure opens it for a full cooldown from then",
             [(0, "fail"), (0, "fail"), (0, "fail"), (5, "probe"), (5, "fail"), (304, "ask"), (305, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (None, HALF_OPEN), (None, OPEN), (False, OPEN),
              (True, HALF_OPEN)]),
            ("a probe of a closed breaker changes nothing", [(0, "probe")], [(None, CLOSED)]),
            ("probe success closes", [(0, "fail"), (0, "fail"), (0, "fail"), (300, "ask"), (301, "ok"), (302, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (True, HALF_OPEN), (None, CLOSED), (True, CLOSED)]),
            ("probe failure reopens for a full cooldown",
             [(0, "fail"), (0, "fail"), (0, "fail"), (300, "ask"), (305, "fail"), (600, "ask"), (605, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (True, HALF_OPEN), (None, OPEN), (False, OPEN), (True, HALF_OPEN)]),
            ("a late failure while open keeps the opening time",
             [(0, "fail"), (0, "fail"), (0, "fail"), (200, "fail"), (300, "ask")],
             [(None, CLOSED), (None, CLOSED), (None, OPEN), (None, OPEN), (True, HALF_OPEN)]),
        ]
        for name, script, expected in cases:
            with self.subTest(name):
                self.assertEqual(play(script)[0], expected)

    def test_retry_in(self):
        _, b = play([(0, "fail"), (0, "fail"), (100, "fail")])
        cases = [(100, 300), (250, 150), (400, 0), (500, 0)]
        for now, expected in cases:
            with self.subTest(now=now):
                self.assertEqual(retry_in(b, now), expected)
        self.assertEqual(retry_in(Breaker(), 5), 0)
        _, half = allow(b, 400)
        self.assertEqual(half.state, HALF_OPEN)
        self.assertEqual(retry_in(half, 400), 1.0)

    def test_threshold_and_cooldown_are_parameters(self):
        out, b = play([(0, "fail"), (1, "ask"), (2, "ask"), (3, "ask")], Breaker(threshold=1, cooldown=2))
        self.assertEqual(out, [(None, OPEN), (False, OPEN), (True, HALF_OPEN), (False, HALF_OPEN)])

    def test_pure(self):
        b = Breaker()
        failed(b, 0)
        allow(b, 0)
        self.assertEqual(b, Breaker())


if __name__ == "__main__":
    unittest.main()
