"""The worker's line to the supervisor: failover across URLs, a circuit breaker, epochs.

Calls go to the supervisor that last answered; on a network failure, a 5xx or a 409
"not_active" (a standby, or a primary checking whether it was replaced) the next URL in
the list is tried.

Epochs: every request carries the highest epoch seen (X-Meshkit-Epoch). Answers are not
signed, so that number may be a lie (any server at a listed URL can claim one): the
supervisor judges it (it asks its peer and follows a primary that was promoted past it,
or else serves; without a peer it ignores it). An answer is therefore used whenever the
request that got it carried the highest epoch seen, even if it names a lower one; only
an answer to a request sent before a higher epoch was seen, naming a lower one, is
passed over (that supervisor was not told yet). A call that no URL answers counts as one breaker failure (one that a
standby answered does not: a failover is under way); while the breaker is open calls
fail at once with BreakerOpen (nothing is sent: no hammering).
"""

import threading

from meshkit.core.errors import ApiError, ClientError
from meshkit.rules import breaker as br
from meshkit.rules.epochclaim import MAX_DIGITS

MAX_EPOCH = 10 ** MAX_DIGITS    # supervisors read no longer X-Meshkit-Epoch (rules/epochclaim.py)


class BreakerOpen(ClientError):
    code = "breaker_open"

    def __init__(self, retry_in: float):
        super().__init__(f"circuit breaker open: no call to the supervisor for {retry_in:.1f} s")
        self.retry_in = retry_in


def _unanswered(e: Exception) -> bool:
    """True if no usable answer came back (try another URL; counts against the breaker)."""
    if isinstance(e, ApiError):
        return e.status >= 500 or e.code == "not_active"
    return isinstance(e, ClientError)


class Link:
    def __init__(self, clients: list, breaker: br.Breaker, clock, log=None):
        if not clients:
            raise ValueError("no supervisor URL")
        self.clients = list(clients)
        self.current = 0
        self.breaker = breaker
        self.epoch = 0
        self.clock = clock
        self.log = log
        self.on_open = None        # called (any thread, no lock held) when a call opens the breaker
        self.probe_every = None    # how often the heartbeat probes while it is open (the worker sets it)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.clients[self.current].url

    @property
    def healthy(self) -> bool:
        return self.breaker.state == br.CLOSED

    def retry_in(self) -> float:
        with self._lock:
            return br.retry_in(self.breaker, self.clock.monotonic())

    def call(self, method: str, path: str, body=None, timeout: float | None = None, probe: bool = False):
        """probe: go through an open breaker as its half-open try (breaker.probe)."""
        with self._lock:
            ok, self.breaker = br.allow(self.breaker, self.clock.monotonic())
            if not ok and probe:
                ok, self.breaker = True, br.probe(self.breaker)
            if not ok:
                raise BreakerOpen(br.retry_in(self.breaker, self.clock.monotonic()))
            first = self.current
        order = [first] + [i for i in range(len(self.clients)) if i != first]
        last = standby = None
        for i in order:
            client = self.clients[i]
            with self._lock:        # the epoch this request tells the supervisor (its header)
                told = self.epoch if hasattr(client, "headers") else 0
            try:
                answer = client.call(method, path, body, timeout)
            except (ApiError, ClientError) as e:
                if not _unanswered(e):
                    self._answered(i)
                    raise
                last = e
                if isinstance(e, ApiError) and e.code == "not_active":
                    standby = e
                continue
            epoch = answer.get("epoch") if isinstance(answer, dict) else None
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < MAX_EPOCH:
                epoch = None            # not an epoch a supervisor could hold (nor send back as a header)
            with self._lock:
                if epoch is not None and epoch < self.epoch and told < self.epoch:
                    last = ClientError(f"{client.url} answers with epoch {epoch}, older than {self.epoch} "
                                       f"seen since the request left: ignored")
                    continue
                if epoch is not None and epoch > self.epoch:
                    self.epoch = epoch
                    for c in self.clients:      # tell every supervisor: an older primary checks with its peer
                        if hasattr(c, "headers"):
                            c.headers["X-Meshkit-Epoch"] = str(epoch)
            self._answered(i)
            return answer
        if standby is not None:
            # A supervisor answered "not active": it is up and a failover is under way, not an
            # outage. The caller's backoff spaces the retries; counting this against the breaker
            # would hold the worker back for a whole cooldown (300 s) after the promotion.
            with self._lock:
                self.breaker = br.succeeded(self.breaker, self.clock.monotonic())
            raise standby
        with self._lock:
            before = self.breaker.state
            self.breaker = br.failed(self.breaker, self.clock.monotonic())
            opened = before != br.OPEN and self.breaker.state == br.OPEN
        if opened and before == br.CLOSED and self.log:
            # claims and result sends wait the cooldown; the heartbeat still probes every probe_every
            self.log.warning("breaker_open", error=getattr(last, "message", str(last)),
                             claims_retry_in=round(self.breaker.cooldown, 1), probe_every=self.probe_every)
        if opened and self.on_open is not None:
            self.on_open()
        raise last

    def _answered(self, i: int) -> None:
        with self._lock:
            was = self.breaker.state
            self.breaker = br.succeeded(self.breaker, self.clock.monotonic())
            if i != self.current and self.log:
                self.log.info("supervisor_switched", url=self.clients[i].url, previous=self.clients[self.current].url)
            self.current = i
        if was != br.CLOSED and self.log:
            self.log.info("breaker_closed", url=self.clients[i].url)
