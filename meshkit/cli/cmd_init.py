"""`meshkit init --dir DIR`: a config with every key and a fresh keys file (0600)."""

import argparse
import os

from meshkit.adapters import keyfile
from meshkit.adapters.atomic import make_dir, write_text
from meshkit.cli.common import EXIT_USAGE, fail, meshkit_home
from meshkit.core.errors import ConfigError
from meshkit.rules.config import render_default_toml


def register(sub) -> None:
    p = sub.add_parser("init", help="write meshkit.toml, a keys file and viewer.token",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Write DIR/meshkit.toml (every key with its default), DIR/keys (mode 0600: one "
                                   "signing key per role) and DIR/viewer.token (mode 0640: the viewer bearer token "
                                   "for Prometheus and the status page, a random token of its own: not a "
                                   "signing secret).",
                       epilog="example:\n  python3 -m meshkit init --dir /etc/meshkit\n"
                              "  python3 -m meshkit supervisor --config /etc/meshkit/meshkit.toml")
    p.add_argument("--dir", default=None, help="where to write (default: $MESHKIT_HOME, ~/.meshkit)")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing files (makes new keys and a new viewer.token!)")
    p.set_defaults(func=run)


def run(args) -> int:
    d = os.path.abspath(os.path.expanduser(args.dir or meshkit_home()))
    toml, keys = os.path.join(d, "meshkit.toml"), os.path.join(d, "keys")
    existing = [p for p in (toml, keys) if os.path.exists(p)]   # viewer.token follows keys
    if existing and not args.force:
        return fail(f"{', '.join(existing)} already exists; use --force to overwrite (this replaces the keys)",
                    EXIT_USAGE)
    where = "--dir" if args.dir else "$MESHKIT_HOME"
    make_dir(d, None, where, "a directory init can create")
    token = os.path.join(d, "viewer.token")
    try:
        write_text(toml, render_default_toml())
        if os.path.exists(keys):
            os.unlink(keys)
        keyfile.create(keys)
        keyfile.write_token(token)
    except OSError as e:     # a read-only directory, a full disk, a directory named keys
        raise ConfigError(None, where, "a directory init can write", f'"{d}" ({e.strerror or e})') from None
    print(f"wrote {toml}")
    print(f"wrote {keys} (mode 0600; give workers only its worker line)")
    print(f"wrote {token} (mode 0640: the viewer bearer token for Prometheus and the status page; not a signing "
          "secret)")
    print(f"start the supervisor: python3 -m meshkit supervisor --config {toml}")
    return 0
