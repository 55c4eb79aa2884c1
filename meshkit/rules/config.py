"""Config: one schema, pure parsing and validation, and the text `meshkit init` writes.

Reading files is the caller's job; this module turns TOML text into a Config
or raises ConfigError naming the file, the key, what was expected and what was found.
Relative paths are resolved against the directory of the config file.
"""

import math
import os
import tomllib
import urllib.parse

from meshkit.core.errors import ConfigError
from meshkit.core.record import Frozen

_set = object.__setattr__


class Key(Frozen):
    """One config key of SCHEMA."""
    __slots__ = ("name", "kind", "default", "help", "commented")

    def __init__(self, name: str, kind: str, default, help: str, commented: bool = False):
        _set(self, "name", name)            # dotted: "supervisor.listen"
        _set(self, "kind", kind)            # see CHECKS
        _set(self, "default", default)
        _set(self, "help", help)
        _set(self, "commented", commented)  # written commented-out by `init`


def _hostport(v):
    if not isinstance(v, str) or ":" not in v:
        return False
    host, _, port = v.rpartition(":")
    return bool(host) and port.isdigit() and 0 <= int(port) <= 65535


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _seconds(v):
    return _is_num(v) and math.isfinite(v) and v >= 0


def split_http_url(v):
    """(host, port) of "http://HOST[:PORT][/]" (port None if not given), or None if v is not one."""
    if not isinstance(v, str) or any(c.isspace() for c in v):
        return None
    try:
        u = urllib.parse.urlsplit(v)
        port = u.port
    except ValueError:              # a port out of range or not a number, an unclosed [
        return None
    if u.scheme != "http" or not u.hostname or u.username is not None or u.path not in ("", "/") \
            or u.query or u.fragment or port == 0:
        return None
    return u.hostname, port


URL_EXPECTED = '"http://HOST:PORT" with a port from 1 to 65535'


def is_url(v) -> bool:
    """v is "http://HOST:PORT" (a trailing / allowed)."""
    hp = split_http_url(v)
    return hp is not None and hp[1] is not None


# The server's own limits on a dispatch (roles/supervisor/intake.py prepare()): a default beyond
# them would make every dispatch that relies on it fail with 400.
MAX_TASK_TIMEOUT = 7 * 86400
MAX_ATTEMPTS = 100


CHECKS: dict[str, tuple] = {     # kind -> (what it must be, check(value) -> bool)
    "str": ("a string", lambda v: isinstance(v, str)),
    "path": ("a path (string)", lambda v: isinstance(v, str)),
    "int": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "posint": ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "seconds": ("a number of seconds >= 0", _seconds),
    "interval": ("a number of seconds > 0", lambda v: _seconds(v) and v > 0),
    "task_timeout": (f"a number of seconds > 0 and at most {MAX_TASK_TIMEOUT} (7 days)",
                     lambda v: _seconds(v) and 0 < v <= MAX_TASK_TIMEOUT),
    "attempts": (f"a whole number from 1 to {MAX_ATTEMPTS}",
                 lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_ATTEMPTS),
    "share": ("a number from 0 to 1", lambda v: _is_num(v) and 0 <= v <= 1),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "strlist": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "argv": ("a list of strings (argv)", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "intlist": ("a list of whole numbers", lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)),
    "hostport": ('"HOST:PORT" with a port from 0 to 65535', _hostport),
    "url": (f'"" or {URL_EXPECTED}', lambda v: v == "" or is_url(v)),
    "urls": (f"{URL_EXPECTED}, or a list of them",
             lambda v: is_url(v) or (isinstance(v, list) and all(is_url(x) for x in v))),
    "durability": ('"normal" or "full"', lambda v: v in ("normal", "full")),
    "role": ('"primary" or "standby"', lambda v: v in ("primary", "standby")),
    "replication": ('"async" or "sync"', lambda v: v in ("async", "sync")),
    "failback": ('"auto" or "manual"', lambda v: v in ("auto", "manual")),
    "loglevel": ('"debug", "info", "warning" or "error"', lambda v: v in ("debug", "info", "warning", "error")),
}

SCHEMA: list[Key] = [
    # supervisor
    Key("supervisor.listen", "hostport", "127.0.0.1:8765", "address the supervisor listens on; port 0 picks a free port"),
    Key("supervisor.data_dir", "path", "data", "SQLite database, supervisor.url, status files (relative to this file)"),
    Key("supervisor.stale_after", "interval", 600, "a node without a heartbeat this long is unselectable and its tasks are requeued"),
    Key("supervisor.lease_ttl", "interval", 300, "a lease not renewed by a heartbeat for this long is reaped"),
    Key("supervisor.max_body", "posint", 1048576, "largest request body accepted, in bytes"),
    Key("supervisor.max_connections", "posint", 256, "connections served at once; more are refused with 503"),
    Key("supervisor.request_timeout", "interval", 30, "a client that sends nothing for this long is disconnected"),
    Key("supervisor.durability", "durability", "normal", '"normal" survives a killed process; "full" also a power cut (fsync per commit)'),
    Key("supervisor.role", "role", "primary", '"primary", or "standby" (replicates supervisor.peer, refuses work)'),
    Key("supervisor.peer", "url", "", "URL of the other supervisor of an HA pair", commented=True),
    Key("supervisor.replication", "replication", "async", '"async", or "sync": acknowledge dispatches and results once the standby holds them'),
    Key("supervisor.sync_timeout", "interval", 2, "sync replication: wait this long for the standby, then fall back to async (keep it above primary_lease)"),
    Key("supervisor.primary_lease", "seconds", 0, "with HA: stop accepting work after this long without a watchdog check or standby pull (0 = off)"),
    Key("supervisor.cycle", "interval", 2, "how often the supervisor reaps leases and checks its state"),
    Key("supervisor.start_timeout", "interval", 120, "a task leased but not started this long is requeued (heal rule)"),
    Key("supervisor.retain_ended", "seconds", 2592000, "ended tasks are deleted with their history and results this long after they ended (30 days); 0 = keep every task"),
    Key("supervisor.priorities_file", "path", "", "per-kind priorities, limits and retry rules (TOML or JSON); reloaded on change", commented=True),
    # tasks
    Key("tasks.timeout", "task_timeout", 1800, "default task timeout"),
    Key("tasks.max_attempts", "attempts", 5, "default attempts before a task fails for good"),
    Key("tasks.backoff_base", "seconds", 1, "retry backoff base (full jitter, doubles each attempt)"),
    Key("tasks.backoff_cap", "seconds", 60, "retry backoff cap"),
    Key("tasks.quarantine_after", "int", 3, "a kind failing this many times in a row (not transiently) is paused; 0 = never"),
    # auth
    Key("auth.keys_file", "path", "keys", "file of signing keys (id role secret), mode 0600"),
    Key("auth.key_id", "str", "", "key a client signs with; empty = the most capable key in keys_file", commented=True),
    # Commented out by `init`: left unset, the file is used if it exists (init writes it; a test or
    # quickstart fleet has none); set here, it must exist. Either way a bad file stops the supervisor.
    Key("auth.viewer_token_file", "path", "viewer.token", "a file holding a viewer bearer token (for Prometheus and the status page), "
        "mode 0640 or stricter; if set here it must exist; \"\" = none", commented=True),
    Key("auth.max_skew", "interval", 300, "requests whose timestamp is further off than this are refused"),
    # worker
    Key("worker.name", "str", "", "node name; empty = this machine's hostname", commented=True),
    Key("worker.supervisor", "urls", "http://127.0.0.1:8765", "supervisor URL, or a list of URLs (active one is found)"),
    Key("worker.capabilities", "strlist", [], "capabilities this node offers, e.g. [\"gpu\"]"),
    Key("worker.slots", "posint", 1, "tasks run at once"),
    Key("worker.work_dir", "path", "work", "task directories and the result outbox (relative to this file)"),
    Key("worker.heartbeat_interval", "interval", 60, "seconds between heartbeats"),
    Key("worker.poll_wait", "seconds", 25, "how long an idle claim request is held open"),
    Key("worker.grace", "seconds", 10, "after SIGTERM, seconds before SIGKILL of a task's process group"),
    Key("worker.drain_timeout", "seconds", 60, "on SIGTERM, how long running tasks may finish"),
    Key("worker.tail_bytes", "posint", 16384, "bytes of stdout/stderr kept per attempt"),
    Key("worker.keep_dirs", "seconds", 86400, "task directories older than this are removed"),
    Key("worker.poll_interval", "interval", 5, "plain-poll fallback: claim retry delay, and heartbeat period while tasks run (cancel latency)"),
    Key("worker.max_result_bytes", "posint", 262144, "largest result.json attached to a result; a bigger one fails the attempt"),
    Key("worker.retry_base", "seconds", 1, "result resend backoff base (full jitter, doubles each try)"),
    Key("worker.retry_cap", "seconds", 60, "result resend backoff cap"),
    Key("worker.breaker_failures", "posint", 3, "failed calls in a row that open the circuit breaker to the supervisor"),
    Key("worker.breaker_cooldown", "seconds", 300, "seconds the breaker stays open before one half-open try"),
    Key("worker.min_free_mb", "int", 64, "claim no new tasks while the work dir's file system has less free space (MB) than this; 0 = no threshold"),
    # locks
    Key("locks.dir", "path", "locks", "directory of lock files (relative to this file)"),
    Key("locks.ttl", "interval", 7200, "a lock held longer is reported as hung"),
    Key("locks.alert", "argv", [], "command run when `locks reap` finds a hung holder; gets the event as JSON on stdin", commented=True),
    # sync
    Key("sync.ssh_port", "int", 22, "ssh port for remote sources"),
    Key("sync.ssh_key", "path", "", "ssh identity file for remote sources", commented=True),
    Key("sync.include", "strlist", [], "rsync include patterns; empty = every agent's memory/ and MEMORY.md", commented=True),
    Key("sync.exclude", "strlist", [], "rsync exclude patterns", commented=True),
    Key("sync.max_delete_share", "share", 0.5, "refuse a sync that would remove more than this share of files"),
    Key("sync.alert", "argv", [], "command run on failure and on recovery; gets the event as JSON on stdin", commented=True),
    Key("sync.status_dir", "path", "sync", "where sync keeps its status files (relative to this file)"),
    Key("sync.rsync", "str", "rsync", "the rsync program (macOS: Homebrew's, e.g. /opt/homebrew/bin/rsync)"),
    Key("sync.ssh_options", "strlist", [], "extra ssh options for remote sources, e.g. [\"-o\", \"UserKnownHostsFile=/etc/meshkit/known_hosts\"]", commented=True),
    Key("sync.io_timeout", "seconds", 300, "rsync/ssh give up after this many seconds without progress; 0 = never"),
    Key("sync.bwlimit", "int", 0, "rsync bandwidth limit in KiB/s; 0 = unlimited"),
    Key("sync.keep_snapshots", "posint", 3, "sync memory: newest complete snapshots kept (current always kept)"),
    Key("sync.keep_hourly", "int", 24, "sync backup: newest snapshot of each of the last N hours kept"),
    Key("sync.keep_daily", "int", 7, "sync backup: newest snapshot of each of the last N days kept"),
    Key("sync.keep_invalid", "posint", 5, "snapshots that failed validation kept as evidence (newest)"),
    # watchdog (third node)
    Key("watchdog.primary", "url", "", "URL of the primary supervisor", commented=True),
    Key("watchdog.standby", "url", "", "URL of the standby supervisor", commented=True),
    Key("watchdog.interval", "interval", 30, "seconds between checks"),
    Key("watchdog.failures", "posint", 3, "consecutive failed checks of the active supervisor before failover"),
    Key("watchdog.recoveries", "posint", 3, "consecutive good checks of the old primary before failback"),
    Key("watchdog.failback", "failback", "manual", '"auto" hands back to the primary when it is healthy again; "manual": `watchdog failback`'),
    Key("watchdog.fence", "argv", [], "command run before promoting the standby (e.g. ssh that stops the old primary)", commented=True),
    Key("watchdog.alert", "argv", [], "command run on failover/failback; gets the event as JSON on stdin", commented=True),
    Key("watchdog.state_file", "path", "watchdog.json", "the watchdog's view (written atomically)"),
    # logging
    Key("logging.level", "loglevel", "info", "least severe level written"),
    Key("logging.dir", "path", "", "also write the log to daily files DIR/YYYY-MM-DD.jsonl (UTC dates); empty = stderr only", commented=True),
    # limits
    Key("limits.rss_soft_mb", "int", 0, "memory guard: above this resident memory (MB) collect garbage and log; 0 = off"),
    Key("limits.rss_hard_mb", "int", 0, "memory guard: above this (MB) shut down cleanly with exit code 70 (systemd restarts it); 0 = off"),
]

SCHEMA_BY_NAME = {k.name: k for k in SCHEMA}

# Tables whose keys are chosen by the operator; validated by their own functions.
# worker.kinds.NAME = {argv=[...], timeout=S, env={...}}
# sync.memory.require = {"GLOB" = ["key", ...]}
OPEN_TABLES = ("worker.kinds", "sync.memory.require")


class Kind(Frozen):
    """A task kind a worker runs: [worker.kinds.NAME]."""
    __slots__ = ("name", "argv", "timeout", "env")

    def __init__(self, name: str, argv: tuple, timeout: float | None, env: dict):
        _set(self, "name", name)
        _set(self, "argv", argv)
        _set(self, "timeout", timeout)
        _set(self, "env", env)


class Config:
    """Validated config. get("a.b") returns the value or its default."""

    def __init__(self, values: dict, source: str | None, base_dir: str, kinds: dict, require: dict):
        self._values = values
        self.source = source
        self.base_dir = base_dir
        self.kinds: dict[str, Kind] = kinds
        self.require: dict[str, list] = require

    def get(self, name: str):
        if name in self._values:
            return self._values[name]
        return SCHEMA_BY_NAME[name].default

    def is_set(self, name: str) -> bool:
        return name in self._values

    def path(self, name: str) -> str:
        """A path key, resolved against the config file's directory; '' stays ''."""
        v = self.get(name)
        if not v:
            return ""
        v = os.path.expanduser(v)
        return v if os.path.isabs(v) else os.path.normpath(os.path.join(self.base_dir, v))

    def with_values(self, **overrides) -> "Config":
        """A copy with some keys replaced (dots written as __): with_values(supervisor__listen=...)."""
        vals = dict(self._values)
        for k, v in overrides.items():
            vals[k.replace("__", ".")] = v
        return Config(vals, self.source, self.base_dir, self.kinds, self.require)


def _is_prefix(name: str) -> bool:
    return any(k.startswith(name + ".") for k in list(SCHEMA_BY_NAME) + list(OPEN_TABLES))


def _flatten(table: dict, prefix: str, out: dict, file):
    for k, v in table.items():
        name = f"{prefix}{k}"
        if name in OPEN_TABLES or name in SCHEMA_BY_NAME:
            out[name] = v
        elif isinstance(v, dict) and _is_prefix(name):
            _flatten(v, name + ".", out, file)
        elif _is_prefix(name):
            raise ConfigError(file, name, "a table (section)", describe(v))
        else:
            raise ConfigError(file, name, "a known key (see `meshkit init`)", "an unknown key")


def describe(v) -> str:
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, str):
        return f'"{v}" (a string)'
    if isinstance(v, (int, float)):
        return f"{v} (a number)"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _parse_kinds(table, file) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(file, "worker.kinds", "a table of kinds", describe(table))
    kinds = {}
    for name, spec in table.items():
        where = f"worker.kinds.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(file, where, "a table with argv", describe(spec))
        unknown = set(spec) - {"argv", "timeout", "env"}
        if unknown:
            raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "one of argv, timeout, env", "an unknown key")
        argv = spec.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ConfigError(file, f"{where}.argv", "a non-empty list of strings", describe(argv) if argv is not None else "nothing")
        timeout = spec.get("timeout")
        if timeout is not None and not (_is_num(timeout) and timeout > 0):
            raise ConfigError(file, f"{where}.timeout", "a number of seconds > 0", describe(timeout))
        env = spec.get("env", {})
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise ConfigError(file, f"{where}.env", "a table of strings", describe(env))
        kinds[name] = Kind(name, tuple(argv), float(timeout) if timeout is not None else None, dict(env))
    return kinds


def _parse_require(table, file) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(file, "sync.memory.require", "a table of glob = [keys]", describe(table))
    for glob, keys in table.items():
        if not CHECKS["strlist"][1](keys):
            raise ConfigError(file, f"sync.memory.require.{glob}", "a list of key names", describe(keys))
    return dict(table)


def parse_config(text: str, source: str | None = None, base_dir: str | None = None) -> Config:
    """Parse and validate TOML text. Raises ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "(file)", "valid TOML", f"a syntax error: {e}") from None
    return config_from_dict(data, source, base_dir)


def config_from_dict(data: dict, source: str | None = None, base_dir: str | None = None) -> Config:
    flat: dict = {}
    _flatten(data, "", flat, source)
    values, kinds, require = {}, {}, {}
    for name, v in flat.items():
        if name == "worker.kinds":
            kinds = _parse_kinds(v, source)
            continue
        if name == "sync.memory.require":
            require = _parse_require(v, source)
            continue
        key = SCHEMA_BY_NAME.get(name)
        if key is None:
            raise ConfigError(source, name, "a known key (see `meshkit init`)", "an unknown key")
        expected, ok = CHECKS[key.kind]
        if not ok(v):
            raise ConfigError(source, name, expected, describe(v))
        values[name] = v
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    return Config(values, source, base_dir, kinds, require)


def default_config(base_dir: str) -> Config:
    """The embedded default: no file, every key at its default, paths under base_dir,
    and one harmless kind, `echo` (runs `cat`: the payload comes back as stdout)."""
    return Config({}, None, base_dir, {"echo": Kind("echo", ("cat",), None, {})}, {})


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def render_default_toml(overrides: dict | None = None) -> str:
    """The text `meshkit init` writes: every key, with its default and a one-line help."""
    overrides = overrides or {}
    lines = ["# meshkit configuration. Every key is shown with its default.",
             "# Relative paths are relative to this file's directory.", ""]
    section = None
    for key in SCHEMA:
        sec, _, name = key.name.rpartition(".")
        if sec != section:
            if section is not None:
                lines.append("")
            lines.append(f"[{sec}]")
            section = sec
        value = overrides.get(key.name, key.default)
        lines.append(f"# {key.help}")
        prefix = "# " if key.commented and key.name not in overrides else ""
        lines.append(f"{prefix}{name} = {_toml_value(value)}")
    lines += [
        "",
        "# Task kinds this worker may run: an allowlist mapping a kind to a local argv.",
        "# The payload arrives as JSON on stdin and in task.json. Nothing else runs.",
        "[worker.kinds.echo]",
        "# copies the payload to stdout",
        'argv = ["cat"]',
        "# timeout = 60          # seconds; default tasks.timeout",
        '# env = { LANG = "C.UTF-8" }',
        "",
        "# Required keys per glob, checked before a synced copy becomes current.",
        "# [sync.memory.require]",
        '# "*/memory/state.json" = ["agent", "updated"]',
        "",
    ]
    return "\n".join(lines)
