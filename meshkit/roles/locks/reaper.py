"""`locks list` and `locks reap` for one lock dir, with the alert command from config."""

from meshkit.adapters import lockreap
from meshkit.core.clock import REAL


def list_locks(lock_dir: str, ttl, override_ttl: bool = False, clock=REAL) -> list[dict]:
    return lockreap.inspect(lock_dir, ttl, override_ttl, clock)


def reap_once(lock_dir: str, ttl, *, kill=False, dry_run=False, override_ttl=False,
              alert_argv=(), grace: float = 10, clock=REAL, logger=None) -> list[dict]:
    alert = lockreap.command_alert(list(alert_argv)) if alert_argv else None
    return lockreap.reap(lock_dir, ttl, kill=kill, dry_run=dry_run, clock=clock, logger=logger,
                         alert=alert, grace=grace, override_ttl=override_ttl)


def needs_attention(entries: list[dict]) -> list[dict]:
    """Entries still wrong after the pass: hung or orphaned and not ended."""
    return [e for e in entries
            if e["action"] in ("alert", "kill") and not (e["action"] == "kill" and e["done"])]
