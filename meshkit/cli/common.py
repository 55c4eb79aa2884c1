"""What every command shares: finding the config, printing errors, exit codes."""

import json
import os
import sys

from meshkit.core.errors import ApiError, ConfigError, MeshkitError
from meshkit.rules.config import Config, default_config, parse_config

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1        # the thing asked for ran and failed (a task failed, a check failed)
EXIT_USAGE = 2         # bad arguments or bad config
EXIT_UNREACHABLE = 3   # the supervisor could not be reached, refused the request, or said "not now" (TRY_LATER)
EXIT_LOCK_HELD = 75    # a lock is held by someone else (EX_TEMPFAIL)

# Answers that mean "not now", whatever their code: shutting down, too many connections, disk full
# or database busy (503), too many requests (429), and a reverse proxy's "the supervisor behind me
# did not answer" (502, 504). Nothing was done; the same command may work later, so cron must be
# able to tell them from a task that ran and failed (1).
TRY_LATER = (429, 502, 503, 504)


def meshkit_home() -> str:
    return os.path.expanduser(os.environ.get("MESHKIT_HOME") or "~/.meshkit")


def config_path(args) -> str | None:
    """--config, else $MESHKIT_CONFIG, else $MESHKIT_HOME/meshkit.toml if present."""
    path = getattr(args, "config", None) or os.environ.get("MESHKIT_CONFIG")
    if path:
        return os.path.abspath(os.path.expanduser(path))
    home = os.path.join(meshkit_home(), "meshkit.toml")
    return home if os.path.exists(home) else None


def load_config(args) -> Config:
    path = config_path(args)
    if path is None:
        return default_config(meshkit_home())
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "a readable config file", "no such file") from None
    except OSError as e:
        raise ConfigError(path, "(file)", "a readable config file", e.strerror) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "UTF-8 text", "undecodable bytes") from None
    return parse_config(text, path)


def add_config_arg(parser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $MESHKIT_CONFIG, else $MESHKIT_HOME/meshkit.toml, else built-in defaults)")


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def table(columns, rows, gap: str = " ") -> list:
    """The lines of a plain-text table, nothing cut. columns: (title, min_width, align) with
    align "<" or ">"; a column is as wide as its widest cell, at least min_width, `gap` between
    two; the last one, two spaces after the others, is never padded or cut, so a long value (a
    node's kinds, a quarantine reason) shows whole."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(title), min_width] + [len(row[i]) for row in rows])
              for i, (title, min_width, _) in enumerate(columns)]

    def line(cells):
        head = gap.join(f"{c:{align}{w}}" for c, w, (_, _, align) in zip(cells[:-1], widths, columns))
        return f"{head}  {cells[-1]}".rstrip()

    return [line([title for title, _, _ in columns])] + [line(row) for row in rows]


def fail(message: str, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(f"meshkit: {message}\n")
    return code


class UsageError(MeshkitError):
    """A bad argument found before anything is sent (e.g. --payload that is not JSON)."""
    code = "usage"
    status = 0


def exit_code_for(err: MeshkitError) -> int:
    # bad_request: the supervisor refused what the arguments said (a bad kind, an unknown
    # --after task, an absolute --expects path): bad arguments, like argparse's own errors.
    # bad_url: a supervisor URL that is not one (--supervisor, $MESHKIT_SUPERVISOR).
    if isinstance(err, (ConfigError, UsageError)) or err.code in ("bad_request", "bad_url"):
        return EXIT_USAGE
    if err.code == "lock_held":
        return EXIT_LOCK_HELD
    if err.code in ("client_error", "unauthorized", "forbidden", "not_active", "unavailable"):
        return EXIT_UNREACHABLE
    if isinstance(err, ApiError) and err.status in TRY_LATER:
        return EXIT_UNREACHABLE
    return EXIT_FAILED
