"""An Event a signal handler may set.

Python runs a signal handler in the main thread between two bytecodes, possibly while that
thread is inside threading.Event.set(), .wait() or .clear(), which hold the Event's
(non-reentrant) lock: a handler that calls set() there waits for itself forever. That
happened: a worker sent SIGTERM and then SIGINT hung in its second handler. PipeEvent takes
no lock: set() is one write on a pipe, wait() a select() on it.
"""

import os
import select


class PipeEvent:
    """set / clear / is_set / wait, as threading.Event, safe to set from a signal handler."""

    def __init__(self):
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._flag = False

    def set(self) -> None:
        self._flag = True
        try:
            os.write(self._w, b"x")
        except OSError:          # pipe full: it already wakes every waiter
            pass

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        try:
            while os.read(self._r, 4096):
                pass
        except OSError:          # empty (a set() racing this is still seen: wait() checks the flag first)
            pass

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        select.select([self._r], [], [], timeout)     # a handler's set() ends it (PEP 475 retries EINTR)
        return self._flag

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
