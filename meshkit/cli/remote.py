"""Commands that talk to the supervisor: where it is, a signed client, their shared flags.

Apart from common.py so that commands which never call the supervisor (`sync` from
cron) don't load the HTTP client (http.client, ssl) at start-up.
"""

import argparse
import os

from meshkit.adapters import keyfile
from meshkit.adapters.client import BadUrl, SignedClient
from meshkit.cli.common import add_config_arg
from meshkit.core.errors import ClientError
from meshkit.rules.auth import pick_key
from meshkit.rules.config import Config


def find_supervisor(args, cfg: Config) -> tuple:
    """(URL, where it came from, for errors): --supervisor, else $MESHKIT_SUPERVISOR, else
    <data_dir>/supervisor.url (a running supervisor's; removed at a clean stop), else supervisor.listen
    (a wildcard host such as 0.0.0.0 is asked at 127.0.0.1). supervisor.listen with port 0 and no
    supervisor.url: no supervisor runs on this data dir, ClientError (exit 3, like one not answering)."""
    url = getattr(args, "supervisor", None)
    if isinstance(url, list):
        url = url[0] if url else None
    if url:
        return url, "--supervisor"
    if os.environ.get("MESHKIT_SUPERVISOR"):
        return os.environ["MESHKIT_SUPERVISOR"], "$MESHKIT_SUPERVISOR"
    url_file = os.path.join(cfg.path("supervisor.data_dir"), "supervisor.url")
    try:
        with open(url_file) as f:
            found = f.read().strip()
            if found:
                return found, url_file
    except OSError:
        pass
    listen = cfg.get("supervisor.listen")
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"                   # an IPv6 address: "::1:8765" listens on http://[::1]:8765
    where = f"{cfg.source + ': ' if cfg.source else ''}supervisor.listen {listen!r}"
    if port == "0":
        raise ClientError(f"no supervisor URL: {where} means any free port, and there is none in {url_file} (a running "
                          "supervisor writes its URL there); is the supervisor running? (or pass --supervisor URL)")
    return f"http://{host}:{port}", where


def make_client(args, cfg: Config, at_most: str = "admin", node: str | None = None):
    """A signed client for the supervisor, with the most capable key allowed (one bound to
    `node` first: auth.pick_key). A URL that is not one is refused naming where it came from (exit 2)."""
    kid, _, secret = pick_key(keyfile.load(cfg.path("auth.keys_file")), cfg.get("auth.key_id"), at_most, node)
    url, where = find_supervisor(args, cfg)
    try:
        return SignedClient(url, kid, secret, source=where)
    except BadUrl as e:
        raise BadUrl(f"{e.message} (from {where})") from None


def add_client_args(parser) -> None:
    add_config_arg(parser)
    parser.add_argument("--supervisor", metavar="URL",
                        help="supervisor URL, http://HOST:PORT (default: $MESHKIT_SUPERVISOR, else <data_dir>/supervisor.url "
                             "that a running supervisor writes, else the config's supervisor.listen)")


def client_parser(sub, name: str, help: str, example: str):
    """A subcommand that talks to the supervisor, with its one-line example in --help."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  " + example)
    add_client_args(p)
    return p
