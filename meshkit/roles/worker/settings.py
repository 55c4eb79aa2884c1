"""The worker's settings: read once from a Config, checked against what the wire accepts."""

from dataclasses import dataclass

from meshkit.core.errors import ConfigError
from meshkit.core.wire import is_name
from meshkit.rules.config import Config, Kind


@dataclass(frozen=True)
class Settings:
    name: str
    supervisors: tuple
    capabilities: tuple
    slots: int
    work_dir: str
    kinds: dict                      # name -> Kind (the allowlist)
    heartbeat_interval: float = 60
    poll_wait: float = 25
    poll_interval: float = 5
    grace: float = 10
    drain_timeout: float = 60
    tail_bytes: int = 16384
    keep_dirs: float = 86400
    max_result_bytes: int = 262144
    retry_base: float = 1
    retry_cap: float = 60
    breaker_failures: int = 3
    breaker_cooldown: float = 300
    min_free_mb: int = 64            # below this free space in work_dir no claims (holds.py); 0 = off


def _check_name(source, key: str, value: str) -> None:
    if not is_name(value):
        raise ConfigError(source, key, "a name of letters, digits, _ . : @ - (at most 128)", repr(value))


def settings_from(cfg: Config, hostname: str) -> Settings:
    """Settings from a validated Config; `hostname` names the node when worker.name is empty."""
    sups = cfg.get("worker.supervisor")
    sups = (sups,) if isinstance(sups, str) else tuple(sups)
    if not sups:
        raise ConfigError(cfg.source, "worker.supervisor", "at least one URL", "an empty list")
    name = cfg.get("worker.name") or hostname.split(".")[0]
    _check_name(cfg.source, "worker.name", name)
    for cap in cfg.get("worker.capabilities"):
        _check_name(cfg.source, "worker.capabilities", cap)
    for kind in cfg.kinds:
        _check_name(cfg.source, f"worker.kinds.{kind}", kind)
    if not cfg.kinds:      # it would register, claim nothing and idle forever
        raise ConfigError(cfg.source, "worker.kinds", "at least one allowlisted task kind "
                          '([worker.kinds.NAME] with argv = ["/path/to/program", ...])', "none")
    return Settings(
        name=name, supervisors=sups, capabilities=tuple(cfg.get("worker.capabilities")),
        slots=cfg.get("worker.slots"), work_dir=cfg.path("worker.work_dir"), kinds=dict(cfg.kinds),
        **{f: cfg.get(f"worker.{f}") for f in (
            "heartbeat_interval", "poll_wait", "poll_interval", "grace", "drain_timeout", "tail_bytes",
            "keep_dirs", "max_result_bytes", "retry_base", "retry_cap", "breaker_failures", "breaker_cooldown",
            "min_free_mb")})


def effective_timeout(task_timeout, kind: Kind) -> float | None:
    """The smaller of the task's timeout and the kind's local cap (either may be absent)."""
    limits = [t for t in (task_timeout, kind.timeout) if isinstance(t, (int, float)) and t > 0]
    return float(min(limits)) if limits else None
