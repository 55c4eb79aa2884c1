"""Commands that talk to the supervisor: where it is, a signed client, their shared flags.

Apart from common.py so that commands which never call the supervisor (`sync` from
cron) don't load the HTTP client (http.client, ssl) at start-up.
"""

import argparse
import os

from meshkit.adapters import keyfile
from meshkit.adapters.client import SignedClient
from meshkit.cli.common import add_config_arg
from meshkit.rules.auth import pick_key
from meshkit.rules.config import Config


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
    """A signed client for the supervisor, with the most capable key allowed."""
    kid, _, secret = pick_key(keyfile.load(cfg.path("auth.keys_file")), cfg.get("auth.key_id"), at_most)
    return SignedClient(supervisor_url(args, cfg), kid, secret)


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
