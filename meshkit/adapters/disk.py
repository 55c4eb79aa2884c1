"""Disk space of the filesystem holding a path."""

import shutil


def used_share(path: str) -> float | None:
    """Share of the filesystem in use (0..1), or None if it can't be read."""
    try:
        u = shutil.disk_usage(path)
    except OSError:
        return None
    return (u.total - u.free) / u.total if u.total else None
