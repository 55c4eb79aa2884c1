"""adapters/wakeup.PipeEvent: Event semantics, and set() from a signal handler that lands
while the main thread is inside set(), wait() or clear() (threading.Event hangs there: this
storm hangs it within a second; run this file with threading.Event to see)."""

import os
import signal
import sys
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.adapters.wakeup import PipeEvent  # noqa: E402


class Semantics(unittest.TestCase):
    def test_table(self):
        cases = [
            # (name, steps, is_set after, wait(0) after)
            ("new", [], False, False),
            ("set", ["set"], True, True),
            ("set twice", ["set", "set"], True, True),
            ("set then clear", ["set", "clear"], False, False),
            ("clear then set", ["clear", "set"], True, True),
            ("set, clear, set", ["set", "clear", "set"], True, True),
        ]
        for name, steps, is_set, waited in cases:
            with self.subTest(name):
                ev = PipeEvent()
                self.addCleanup(ev.close)
                for step in steps:
                    getattr(ev, step)()
                self.assertEqual(ev.is_set(), is_set)
                self.assertEqual(ev.wait(0), waited)

    def test_set_from_another_thread_ends_a_wait(self):
        ev = PipeEvent()
        self.addCleanup(ev.close)
        threading.Timer(0.05, ev.set).start()
        t0 = time.monotonic()
        self.assertTrue(ev.wait(5))
        self.assertLess(time.monotonic() - t0, 2)


@unittest.skipUnless(hasattr(signal, "setitimer"), "needs setitimer")
class SignalStorm(unittest.TestCase):
    def test_handler_sets_while_the_main_thread_sets_waits_and_clears(self):
        ev = PipeEvent()
        self.addCleanup(ev.close)
        fired = []

        def handler(signum, frame):
            fired.append(1)
            ev.set()

        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)     # thousands of handlers, at any bytecode
        try:
            deadline = time.monotonic() + 20
            rounds = 0
            while len(fired) < 3000 and time.monotonic() < deadline:
                ev.set()          # a handler landing inside this set() calls set() again
                ev.clear()
                ev.wait(0)
                rounds += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        self.assertGreaterEqual(len(fired), 3000, f"only {len(fired)} signals in 20 s ({rounds} rounds)")


if __name__ == "__main__":
    unittest.main()
