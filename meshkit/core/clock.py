"""The one place that reads the time or sleeps.

Everything else receives a clock. Unit tests use FakeClock and never sleep.
"""

import threading
import time


class RealClock:
    """Wall time for timestamps, monotonic time for durations."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for an event or a timeout; True if the event was set."""
        return event.wait(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to. sleep() advances it instantly."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = float(start)
        self.mono = 1000.0
        self.slept = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()


REAL = RealClock()
