"""The keys file: created with mode 0600 and never overwritten by accident."""

import os
import secrets
import stat

from meshkit.adapters.atomic import create_exclusive
from meshkit.core.errors import ConfigError
from meshkit.rules.auth import parse_keys


def new_keys_text(node: str = "fleet") -> str:
    return ("# meshkit signing keys: ID ROLE SECRET (roles: admin > worker > viewer).\n"
            "# Give workers only the worker line; Prometheus/browsers only the viewer line.\n"
            "# Several keys per role may be listed at once (rotation).\n"
            f"admin-1 admin {secrets.token_hex(32)}\n"
            f"worker-1 worker {secrets.token_hex(32)}\n"
            f"viewer-1 viewer {secrets.token_hex(24)}\n")


def create(path: str) -> None:
    """Write a new keys file (fails if one exists)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)    # if made now: private
    create_exclusive(path, new_keys_text().encode(), 0o600)


def ensure(path: str) -> bool:
    """Create the keys file if missing; True if it was created."""
    try:
        create(path)
        return True
    except FileExistsError:
        return False


def load(path: str) -> dict:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(path, "auth.keys_file", "an existing keys file (run `meshkit init`)", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, "auth.keys_file", "a readable UTF-8 keys file", str(e)) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(path, "auth.keys_file", "mode 0600 (readable by its owner only)",
                          f"mode {stat.S_IMODE(st.st_mode):04o}; run chmod 600 {path}")
    keys = parse_keys(text, path)
    _refuse_duplicates(text, path)
    return keys


def _refuse_duplicates(text: str, path: str) -> None:
    """A key id listed twice is a mistake (a rotation half done, a paste): parse_keys would
    keep the last one silently."""
    first = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or parts[0].startswith("#"):
            continue
        if parts[0] in first:
            raise ConfigError(path, f"line {n}", "a key id not used before",
                              f"{parts[0]!r}, already on line {first[parts[0]]}")
        first[parts[0]] = n
