"""The keys file: created with mode 0600 and never overwritten by accident; and the viewer
token file (auth.viewer_token_file): a random bearer token of its own, never a key's signing
secret, checked as strictly."""

import fcntl
import os
import secrets
import stat

from meshkit.adapters.atomic import create_exclusive, write_text
from meshkit.core.errors import ConfigError
from meshkit.rules.auth import parse_keys

TOKEN_KEY = "auth.viewer_token_file"
TOKEN_MIN = 16                  # characters: a shorter bearer token is guessable


def new_keys_text(node: str = "fleet") -> str:
    return ("# meshkit signing keys: ID ROLE SECRET (roles: admin > worker > viewer).\n"
            "# A worker key may add NODE[,NODE...]: it then speaks only for those nodes (meshkit keys add-worker).\n"
            "# Give workers only the worker line. Prometheus and the status page use viewer.token, not a key.\n"
            "# Several keys per role may be listed at once (rotation).\n"
            f"admin-1 admin {secrets.token_hex(32)}\n"
            f"worker-1 worker {secrets.token_hex(32)}\n"
            f"viewer-1 viewer {secrets.token_hex(24)}\n")


def new_token() -> str:
    """A viewer bearer token: random, unrelated to any key's secret (whoever reads the token,
    which Prometheus sends in clear, cannot sign with it)."""
    return secrets.token_hex(32)


def write_token(path: str) -> str:
    """Write a new viewer token to `path` (atomically, mode 0640); returns the token."""
    token = new_token()
    _replace(path, token + "\n", 0o640)
    return token


def _replace(path: str, text: str, mode: int) -> None:
    """Write `text` to `path` atomically with `mode`, keeping the owner and group of the file it
    replaces where this user may (root editing the keys of a supervisor that runs as another user)."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        before = None
    write_text(path, text, mode=mode)
    if before is not None:
        try:
            os.chown(path, before.st_uid, before.st_gid)
        except PermissionError:
            pass


def add_worker(path: str, kid: str, nodes: list) -> str:
    """Append the worker key `kid`, bound to `nodes`, to the keys file at `path` (checked as
    load() does; rewritten atomically, mode 0600); returns its line. A used id is refused.
    Two at once take turns (an flock on the file's directory: the file itself is replaced,
    so a lock on it would be on the old copy), so neither loses the other's line."""
    lock = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = load(path)
        if kid in keys:
            raise ConfigError(path, "key id", "an id the keys file does not have yet (--id ID)",
                              f"{kid!r}, already there")
        line = f"{kid} worker {secrets.token_hex(32)} {','.join(nodes)}"
        parse_keys(line, "the new key")             # refuses a bad id or node before anything is written
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _replace(path, text + ("" if text.endswith("\n") or not text else "\n") + line + "\n", 0o600)
        return line
    finally:
        os.close(lock)              # (releases the lock)


def secret_ids(keys: dict, token: str) -> list:
    """The ids of the keys whose signing secret is `token` (an install from before the token was
    made apart from the keys: its viewer.token is viewer-1's secret)."""
    return sorted(kid for kid, (_, secret, _) in keys.items() if secret == token)


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
        if len(parts) not in (3, 4) or parts[0].startswith("#"):
            continue
        if parts[0] in first:
            raise ConfigError(path, f"line {n}", "a key id not used before",
                              f"{parts[0]!r}, already on line {first[parts[0]]}")
        first[parts[0]] = n


def load_token(path: str, config_file, required: bool) -> str | None:
    """The viewer bearer token in `path` (auth.viewer_token_file), or None when the file does
    not exist and is not required (the key left at its default). Anything else wrong is refused
    with one line naming the config file, the key and the token file: missing when required,
    not a readable file, readable or writable by others (its group may read it: `init` writes
    it 0640 so that Prometheus's group can), or a token under TOKEN_MIN characters."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not required:
            return None
        raise ConfigError(config_file, TOKEN_KEY, 'a file holding the viewer bearer token (`meshkit init` writes '
                          'one; "" = no viewer token)', f"no file {path}") from None
    except OSError as e:
        raise ConfigError(config_file, TOKEN_KEY, "a readable file holding the viewer bearer token",
                          f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(config_file, TOKEN_KEY, "a file holding the viewer bearer token", f"{path}, not a file")
    if st.st_mode & (stat.S_IWGRP | stat.S_IRWXO):
        raise ConfigError(config_file, TOKEN_KEY, "a token file others can neither read nor write (mode 0640 "
                          "or stricter)", f"{path} with mode {stat.S_IMODE(st.st_mode):04o}; run chmod 640 {path}")
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(config_file, TOKEN_KEY, "a readable file holding the viewer bearer token",
                          f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(config_file, TOKEN_KEY, "a viewer bearer token (UTF-8 text)",
                          f"undecodable bytes in {path}") from None
    if len(token) < TOKEN_MIN:
        found = f"{len(token)} characters in {path}" if token else f"an empty file {path}"
        raise ConfigError(config_file, TOKEN_KEY, f"a viewer bearer token of at least {TOKEN_MIN} characters", found)
    return token
