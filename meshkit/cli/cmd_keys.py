"""`meshkit keys`: credentials for an install that exists: a new viewer bearer token."""

import argparse
import os
import sys

from meshkit.adapters import keyfile
from meshkit.cli.common import EXIT_USAGE, add_config_arg, load_config
from meshkit.core.errors import ConfigError

KEYS_HELP = """\
Credentials on the supervisor's machine, read from its config (--config):

  viewer-token   write a new random viewer bearer token to auth.viewer_token_file
                 (mode 0640), for Prometheus and the status page; it is not a
                 signing secret

The supervisor reads keys and token at start: restart it afterwards.
"""
EXAMPLE = """\
example:
  python3 -m meshkit keys viewer-token --config /etc/meshkit/meshkit.toml
"""


def register(sub) -> None:
    p = sub.add_parser("keys", help="make a new viewer token", description=KEYS_HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ks = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: _usage(p))
    q = ks.add_parser("viewer-token", help="write a new random viewer bearer token to auth.viewer_token_file",
                      epilog="example:\n  python3 -m meshkit keys viewer-token --config /etc/meshkit/meshkit.toml",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(q)
    q.set_defaults(func=viewer_token)


def _usage(p) -> int:
    p.print_help(sys.stderr)
    return EXIT_USAGE


def viewer_token(args) -> int:
    cfg = load_config(args)
    path = cfg.path("auth.viewer_token_file")
    if not path:
        raise ConfigError(cfg.source, keyfile.TOKEN_KEY, "a token file to write", '"" (no viewer token)')
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            old = f.read().strip()
    except OSError:
        old = ""
    try:
        keyfile.write_token(path)
    except OSError as e:
        raise ConfigError(cfg.source, keyfile.TOKEN_KEY, "a token file meshkit can write",
                          f"{path} ({e.strerror or e})") from None
    print(f"wrote {path} (mode 0640: a new viewer bearer token, not a signing secret); restart the supervisor, "
          "then give the new token to Prometheus and the status page")
    keys_path = cfg.path("auth.keys_file")
    ids = keyfile.secret_ids(keyfile.load(keys_path), old) if old and os.path.exists(keys_path) else []
    if ids:
        print(f"the old token was the signing secret of key {', '.join(ids)}: whoever read it can sign as that key; "
              f"give it a new secret in {keys_path} (or remove it) and restart the supervisor")
    return 0
