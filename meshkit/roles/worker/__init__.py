"""The worker role: polls the supervisor, runs allowlisted task kinds, delivers results.

build() wires a Worker from Settings and a signing key; Worker.run() is the loop.
"""

import os

from meshkit.adapters.client import SignedClient
from meshkit.adapters.log import Logger
from meshkit.adapters.outbox import Outbox
from meshkit.core.clock import REAL
from meshkit.rules.breaker import Breaker
from meshkit.roles.worker.link import Link
from meshkit.roles.worker.settings import Settings, settings_from
from meshkit.roles.worker.worker import Worker

__all__ = ["Settings", "Worker", "build", "settings_from"]


def build(s: Settings, key_id: str, secret: str, clock=REAL, log: Logger | None = None) -> Worker:
    log = log or Logger("worker", node=s.name, clock=clock)
    clients = [SignedClient(url, key_id, secret, clock) for url in s.supervisors]
    link = Link(clients, Breaker(threshold=s.breaker_failures, cooldown=s.breaker_cooldown), clock, log)
    outbox = Outbox(os.path.join(s.work_dir, "outbox"), on_bad=lambda path, why: log.error(
        "outbox_entry_unreadable", path=path, error=why, reason="set aside, not sent: look at it"))
    return Worker(s, link, outbox, clock, log, key_id=key_id)
