"""`meshkit keys`: credentials for an install that exists: a worker key bound to its node, a
new viewer bearer token."""

import argparse
import os
import sys

from meshkit.adapters import keyfile
from meshkit.cli.common import EXIT_USAGE, UsageError, add_config_arg, load_config
from meshkit.core import wire
from meshkit.core.errors import ConfigError
from meshkit.rules.auth import KEY_ID_RE

KEYS_HELP = """\
Credentials on the supervisor's machine, read from its config (--config):

  add-worker     add a worker key that speaks only for NODE to auth.keys_file
                 (`worker-NODE worker SECRET NODE`) and print that line, for the
                 worker's own keys file: the supervisor refuses (403) its
                 requests for any other node
  viewer-token   write a new random viewer bearer token to auth.viewer_token_file
                 (mode 0640), for Prometheus and the status page; it is not a
                 signing secret

The supervisor reads keys and token at start: restart it afterwards.
"""
EXAMPLE = """\
example:
  python3 -m meshkit keys add-worker gpu-1 --config /etc/meshkit/meshkit.toml \\
    | ssh gpu-1 'umask 077; mkdir -p ~/.meshkit && cat > ~/.meshkit/keys'
  python3 -m meshkit keys viewer-token --config /etc/meshkit/meshkit.toml
"""


def register(sub) -> None:
    p = sub.add_parser("keys", help="add a worker key bound to its node; make a new viewer token",
                       description=KEYS_HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ks = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: _usage(p))
    q = ks.add_parser("add-worker", help="add a worker key bound to NODE to the keys file and print its line",
                      epilog="example:\n  python3 -m meshkit keys add-worker gpu-1 --config /etc/meshkit/meshkit.toml",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(q)
    q.add_argument("nodes", nargs="+", metavar="NODE", help="a node the key speaks for (that worker's worker.name)")
    q.add_argument("--id", help="the key id (default: worker-NODE, the first NODE)")
    q.set_defaults(func=add_worker)
    q = ks.add_parser("viewer-token", help="write a new random viewer bearer token to auth.viewer_token_file",
                      epilog="example:\n  python3 -m meshkit keys viewer-token --config /etc/meshkit/meshkit.toml",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(q)
    q.set_defaults(func=viewer_token)


def _usage(p) -> int:
    p.print_help(sys.stderr)
    return EXIT_USAGE


def add_worker(args) -> int:
    cfg = load_config(args)
    bad = next((node for node in args.nodes if not wire.is_name(node)), None)
    if bad is not None:
        raise UsageError(f"keys add-worker: a node is a name of letters, digits, _ . : @ - (at most 128), not {bad!r}")
    kid = args.id or f"worker-{args.nodes[0]}"
    if not KEY_ID_RE.match(kid):
        raise UsageError(f"keys add-worker: a key id is letters, digits, . _ - (at most 64), not {kid!r}"
                         + ("" if args.id else "; give one with --id ID"))
    path = cfg.path("auth.keys_file")
    line = keyfile.add_worker(path, kid, list(dict.fromkeys(args.nodes)))
    print(line)
    peer = cfg.get("supervisor.peer")
    sys.stderr.write(f"meshkit: added key {kid} to {path}; restart the supervisor (it reads its keys at start), "
                     "and put the line above, alone, in that worker's keys file (mode 0600)"
                     + (f"; with HA add the same line to the keys file of the peer ({peer}) too and restart it, "
                        "or the worker is refused for good after a failover" if peer else
                        "; with an HA pair, add it to the other supervisor's keys file too") + "\n")
    return 0


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
