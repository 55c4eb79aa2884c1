"""The sync jobs' status files (`<sync.status_dir>/<job>.json`), read by `meshkit sync
status`, `meshkit status` and the supervisor (which shows its machine's jobs)."""

import os

from meshkit.adapters.atomic import read_json


def read_all(status_dir: str, job: str | None = None) -> list:
    """The status records of every job (or one), sorted by job name; an unreadable file
    becomes a record saying so."""
    try:
        names = sorted(os.listdir(status_dir))
    except OSError:
        names = []
    out = []
    for fn in names:
        if not fn.endswith(".json") or fn.startswith("."):
            continue
        if job and fn != f"{job}.json":
            continue
        try:
            rec = read_json(os.path.join(status_dir, fn))
        except (OSError, ValueError):
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        else:
            out.append({"job": fn[:-5], "last_result": "unreadable", "last_error": f"{fn} is not a status record"})
    return out
