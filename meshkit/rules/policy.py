"""The priorities file (supervisor.priorities_file, TOML or JSON): per-kind defaults,
priority classes, aging. Pure parsing; the supervisor re-reads it when its mtime changes.

    aging = 60                     # +1 effective priority per 60 s a task has waited (0 = off)
    [classes]                      # the lowest priority of each class; below P2's is P3
    P0 = 30
    P1 = 20
    P2 = 0
    [kinds.summarize]
    priority = 25                  # default priority of this kind's tasks
    max_attempts = 3
    max_running = 2                # at most 2 running across the fleet
    max_per_minute = 10            # at most 10 started in any 60 s
    transient_exit_codes = [75]    # failures that retry without counting toward quarantine
    transient_patterns = ["429", "connection reset"]
    quarantine_after = 5           # failures in a row before the kind is paused (0 = never)
"""

import json
import tomllib
from dataclasses import dataclass, field

from meshkit.core.errors import ConfigError
from meshkit.core.wire import SHUTDOWN

CLASS_NAMES = ("P0", "P1", "P2", "P3")
DEFAULT_CLASSES = {"P0": 30, "P1": 20, "P2": 0}
DEFAULT_TRANSIENT_PATTERNS = ("429", "connection reset", "Connection reset", "temporarily unavailable")
# The error a worker reports for the attempts it ends because it is itself stopping: a second
# SIGTERM/Ctrl-C, or drain_timeout passed (roles/worker/jobs.py). It says so with ended_by
# wire.SHUTDOWN; a worker from before that marker sent ended_by "signal" and this exact text.
WORKER_SHUTDOWN = "the worker is shutting down"


@dataclass(frozen=True)
class KindPolicy:
    priority: int | None = None
    max_attempts: int | None = None
    max_running: int | None = None
    max_per_minute: int | None = None
    transient_exit_codes: tuple = ()
    transient_patterns: tuple = DEFAULT_TRANSIENT_PATTERNS
    quarantine_after: int | None = None       # None: tasks.quarantine_after; 0: never


NO_KIND_POLICY = KindPolicy()       # a kind the file does not name (frozen: shared)


@dataclass(frozen=True)
class Policy:
    aging: float = 60.0
    classes: dict = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    kinds: dict = field(default_factory=dict)

    def kind(self, name: str) -> KindPolicy:
        return self.kinds.get(name) or NO_KIND_POLICY

    def class_of(self, priority: int) -> str:
        for name in ("P0", "P1", "P2"):
            if priority >= self.classes[name]:
                return name
        return "P3"


def _int(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


KIND_KEYS = {
    "priority": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "max_attempts": ("a whole number >= 1", lambda v: _int(v, 1)),
    "max_running": ("a whole number >= 1", lambda v: _int(v, 1)),
    "max_per_minute": ("a whole number >= 1", lambda v: _int(v, 1)),
    "quarantine_after": ("a whole number >= 0 (0 = never)", lambda v: _int(v, 0)),
    "transient_exit_codes": ("a list of whole numbers", lambda v: isinstance(v, list) and all(_int(x) for x in v)),
    "transient_patterns": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def parse_policy(text: str, source: str) -> Policy:
    """Parse a priorities file; JSON if it ends in .json, else TOML. Raises ConfigError."""
    try:
        data = json.loads(text) if source.endswith(".json") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(source, "(file)", "valid " + ("JSON" if source.endswith(".json") else "TOML"),
                          f"a syntax error: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(source, "(file)", "a table", type(data).__name__)
    unknown = set(data) - {"aging", "classes", "kinds"}
    if unknown:
        raise ConfigError(source, sorted(unknown)[0], "aging, classes or kinds", "an unknown key")
    aging = data.get("aging", 60)
    if not (isinstance(aging, (int, float)) and not isinstance(aging, bool) and aging >= 0):
        raise ConfigError(source, "aging", "a number of seconds >= 0", repr(aging))
    classes = dict(DEFAULT_CLASSES)
    for name, v in (data.get("classes") or {}).items():
        if name not in DEFAULT_CLASSES:
            raise ConfigError(source, f"classes.{name}", "P0, P1 or P2 (P3 is everything below P2)", "an unknown class")
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(source, f"classes.{name}", "a whole number", repr(v))
        classes[name] = v
    if not classes["P0"] > classes["P1"] > classes["P2"]:
        raise ConfigError(source, "classes", "P0 > P1 > P2", f"{classes}")
    kinds = {}
    for kind, spec in (data.get("kinds") or {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(source, f"kinds.{kind}", "a table", repr(spec))
        for key, v in spec.items():
            if key not in KIND_KEYS:
                raise ConfigError(source, f"kinds.{kind}.{key}", ", ".join(KIND_KEYS), "an unknown key")
            expected, ok = KIND_KEYS[key]
            if not ok(v):
                raise ConfigError(source, f"kinds.{kind}.{key}", expected, repr(v))
        spec = dict(spec)
        for key in ("transient_exit_codes", "transient_patterns"):
            if key in spec:
                spec[key] = tuple(spec[key])
        kinds[kind] = KindPolicy(**spec)
    return Policy(float(aging), classes, kinds)


def effective_priority(priority: int, waited: float, aging: float) -> float:
    """Aging: +1 per `aging` seconds waited, so nothing is starved forever. Classes use
    the base priority (aging never lets a held-back class through a degraded mode)."""
    return priority + (max(0.0, waited) / aging if aging > 0 else 0.0)


def rank(priority: int, created_at: float, aging: float) -> float:
    """A stored sort key with the same order as effective_priority at any one moment:
    priority + (now - created)/aging ranks like priority*aging - created (now is common
    to all candidates). With aging off: priority first, then the oldest."""
    if aging > 0:
        return priority * aging - created_at
    return priority * 1e10 - created_at


def is_transient(ended_by: str, exit_code, output: str, error, kind: KindPolicy) -> bool:
    """Transient failures (timeouts, configured exit codes or output patterns) retry
    without counting toward quarantine."""
    if ended_by == "timeout":
        return True
    if exit_code is not None and exit_code in kind.transient_exit_codes:
        return True
    text = (output or "") + "\n" + (error or "")
    return any(p and p in text for p in kind.transient_patterns)


def stopped_by_worker(ended_by: str, error) -> bool:
    """The attempt was ended by its own worker shutting down: nothing the kind did. Said by
    ended_by "shutdown" (wire.SHUTDOWN), or by an older worker's "signal" + WORKER_SHUTDOWN."""
    return ended_by == SHUTDOWN or (ended_by == "signal" and error == WORKER_SHUTDOWN)


def kind_verdict(outcome: str, ended_by: str, exit_code, output: str, error, kind: KindPolicy):
    """What an attempt's end does to its kind's count of failures in a row (quarantine):
    "reset" (it succeeded), "count" (a failure that is the kind's), or None: a transient
    failure, or one its worker caused by shutting down, neither counts nor resets."""
    if outcome == "succeeded":
        return "reset"
    if stopped_by_worker(ended_by, error) or is_transient(ended_by, exit_code, output, error, kind):
        return None
    return "count"


QUARANTINE_LAST = ", last: "      # in a quarantine reason: what follows is the last failure's error
QUARANTINE_ERROR_CHARS = 120


def quarantine_reason(failures: int, error) -> str:
    """Why a kind was quarantined, as the kinds table keeps it (explain and `kinds` show it):
    "3 failures in a row, last: exit code 3"."""
    return f"{failures} failures in a row" + (f"{QUARANTINE_LAST}{error[:QUARANTINE_ERROR_CHARS]}" if error else "")


def quarantine_last_error(reason) -> str | None:
    """The last failure's error in a reason made by quarantine_reason(), or None (no error given)."""
    _, sep, error = (reason or "").partition(QUARANTINE_LAST)
    return error if sep else None
