"""What every command shares: finding the config, printing errors, exit codes."""

import argparse
import importlib
import json
import os
import sys

from meshkit.core.errors import ConfigError, MeshkitError
from meshkit.rules.config import Config, default_config, parse_config

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1        # the thing asked for ran and failed (a task failed, a check failed)
EXIT_USAGE = 2         # bad arguments or bad config
EXIT_UNREACHABLE = 3   # the supervisor could not be reached or refused the request
EXIT_LOCK_HELD = 75    # a lock is held by someone else (EX_TEMPFAIL)


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


def fail(message: str, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(f"meshkit: {message}\n")
    return code


def exit_code_for(err: MeshkitError) -> int:
    if isinstance(err, ConfigError):
        return EXIT_USAGE
    if err.code == "lock_held":
        return EXIT_LOCK_HELD
    if err.code in ("client_error", "unauthorized", "forbidden", "not_active", "unavailable"):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def supervisor_url(args, cfg: Config) -> str:
    """--supervisor, else $MESHKIT_SUPERVISOR, else <data_dir>/supervisor.url, else supervisor.listen."""
    url = getattr(args, "supervisor", None)
    if isinstance(url, list):
        url = url[0] if url else None
    url = url or os.environ.get("MESHKIT_SUPERVISOR")
    if url:
        return url
    try:
        with open(os.path.join(cfg.path("supervisor.data_dir"), "supervisor.url")) as f:
            found = f.read().strip()
            if found:
                return found
    except OSError:
        pass
    host, _, port = cfg.get("supervisor.listen").rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def make_client(args, cfg: Config, at_most: str = "admin"):
    """A signed client for the supervisor, with the most capable key allowed.

    The client adapter (http.client, ssl), the keys file reader and the key rule are
    loaded here, on first use, not when this module is: commands that never talk to
    the supervisor (`sync` from cron, `locks`) start ~15 ms sooner without them."""
    keyfile = importlib.import_module("meshkit.adapters.keyfile")
    pick_key = importlib.import_module("meshkit.rules.auth").pick_key
    signed_client = importlib.import_module("meshkit.adapters.client").SignedClient
    kid, _, secret = pick_key(keyfile.load(cfg.path("auth.keys_file")), cfg.get("auth.key_id"), at_most)
    return signed_client(supervisor_url(args, cfg), kid, secret)


def add_client_args(parser) -> None:
    add_config_arg(parser)
    parser.add_argument("--supervisor", metavar="URL",
                        help="supervisor URL (default: $MESHKIT_SUPERVISOR, else from the config)")


def client_parser(sub, name: str, help: str, example: str):
    """A subcommand that talks to the supervisor, with its one-line example in --help."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  " + example)
    add_client_args(p)
    return p
