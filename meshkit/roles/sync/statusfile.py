"""A sync job's status file (`<sync.status_dir>/<job>.json`): probed before a run (a run whose
outcome could not be recorded refuses to start, StatusUnwritable), read for the previous
outcome, written atomically at the end (a failure there is returned, not raised: the run's
work stands and says it is unrecorded)."""

import errno
import os
import tempfile

from meshkit.adapters.atomic import read_json, write_json
from meshkit.core.errors import MeshkitError


class StatusUnwritable(MeshkitError):
    """The run's status file cannot be written: the run refused to start (nothing copied)."""
    code = "status_unwritable"
    status = 0

    def __init__(self, path: str, error: str):
        super().__init__(f"the status file {path} cannot be written: {error}", path=path, error=error)
        self.path, self.error = path, error


def probe(status_dir: str, status_path: str) -> None:
    """Make the status dir, write and remove a file in it as the final atomic write will, with
    as many bytes as the status file will take (an empty file fits on a full disk; access()
    checks the real uid and misses a full inode table). Tens of µs. StatusUnwritable if not."""
    d = status_dir or "."
    try:
        os.makedirs(d, exist_ok=True)
        if os.path.isdir(status_path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), status_path)
        fd, path = tempfile.mkstemp(prefix=".tmp-probe-", dir=d)
        try:
            os.write(fd, bytes(_probe_size(status_path)))
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as e:
        raise StatusUnwritable(status_path, _status_error(e)) from None


def previous(path: str) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def write(path: str, status: dict) -> str | None:
    """Write the status atomically: None, or why it could not be written."""
    try:
        write_json(path, status)
        return None
    except OSError as e:
        return _status_error(e)


def _probe_size(path: str) -> int:
    """Bytes the status write needs at most: the file now and room to grow, at least a page."""
    try:
        return max(4096, os.path.getsize(path) + 1024)
    except OSError:
        return 4096


def os_error(e: OSError) -> str:
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return f"{e.strerror or e}{where}"


def _status_error(e: OSError) -> str:
    hint = ": a file, not a directory" if isinstance(e, FileExistsError) else ""    # makedirs
    return os_error(e) + hint
