"""Atomic files: write to a temp file in the same directory, fsync, rename; and mkdir -p with a
clear error."""

import json
import os
import tempfile

from meshkit.core.errors import ConfigError


def write_bytes(path: str, data: bytes, mode: int = 0o644, fsync: bool = True) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: str, text: str, mode: int = 0o644, fsync: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), mode, fsync)


def write_json(path: str, obj, mode: int = 0o644, fsync: bool = True) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode, fsync)


def read_json(path: str, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default


def create_exclusive(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create a new file (fails if it exists) with its final mode from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def make_dir(path: str, file, key: str, what: str = "a directory meshkit can create", mode: int = 0o777) -> None:
    """mkdir -p (`mode` for each directory made now, e.g. 0o700 for a private one and the
    parents it needs, such as ~/.meshkit for ~/.meshkit/data), or a ConfigError naming the
    key (or option) and the path: a file there or on the way, no permission."""
    try:
        missing = []
        d = os.path.abspath(path)
        while not os.path.isdir(d) and os.path.dirname(d) != d:
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            os.makedirs(d, mode=mode, exist_ok=True)
    except OSError as e:
        found = "a file" if isinstance(e, FileExistsError) else e.strerror
        raise ConfigError(file, key, what, f'"{path}" ({found})') from None
