"""Wire schemas of protocol v1 and a small validator: types, required, unknown fields, sizes.

A schema maps field -> (type, required). Types: "str", "id" (task id tNNN), "name"
(node/kind name), "int", "num", "bool", "strlist", "namelist", "idlist", "any", "obj",
"running", "expects", "num3", "rowkeys", "hold".

The patterns below are also the OpenAPI document's (openapi.py), where they are read as
ECMA-262 regexes: there `$` is the end of the text, while Python's `$` also matches before a
final newline ("node-1\n"). So they are only ever applied with fullmatch (is_name, is_task_id,
is_trace), never with match or search.
"""

import math
import re

from meshkit.core.errors import BadRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
TASK_ID_RE = re.compile(r"^t[1-9][0-9]{0,17}$")
TRACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# expects.path: relative, no ".." component, no NUL, not the task directory itself ("", ".", "./.").
# The worker still resolves it (symlinks) before reading: see adapters/runner.resolve_inside.
EXPECTS_PATH_RE = re.compile(r"^(?!/)(?![\s\S]*(?:^|/)\.\.(?:/|$))(?!\.?(?:/\.?)*$)[^\x00]+$")
MAX_LIST = 1000
MAX_STR = 65536
MAX_INT = 2 ** 53


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool) and -MAX_INT <= v <= MAX_INT


def _num(v):
    return (_int(v) or isinstance(v, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_INT


def _str(v):
    return isinstance(v, str) and len(v) <= MAX_STR


def _list_of(check):
    return lambda v: isinstance(v, list) and len(v) <= MAX_LIST and all(check(x) for x in v)


def is_name(v) -> bool:
    return isinstance(v, str) and NAME_RE.fullmatch(v) is not None


def is_task_id(v) -> bool:
    return isinstance(v, str) and TASK_ID_RE.fullmatch(v) is not None


def is_trace(v) -> bool:
    return isinstance(v, str) and TRACE_RE.fullmatch(v) is not None


def is_inside_path(v) -> bool:
    """A relative path that cannot leave the directory it is read from but by a symlink."""
    if not isinstance(v, str) or not v or v.startswith("/") or "\0" in v:
        return False
    parts = v.split("/")
    return ".." not in parts and any(p not in ("", ".") for p in parts)


_name, _id = is_name, is_task_id


def _running(v):
    return (isinstance(v, list) and len(v) <= MAX_LIST and
            all(isinstance(x, dict) and set(x) == {"task", "fence"} and _id(x["task"]) and _int(x["fence"]) for x in v))


def _expects(v):
    if v is None:
        return True
    return (isinstance(v, dict) and set(v) <= {"path", "keys"} and _str(v.get("path")) and
            is_inside_path(v.get("path")) and _list_of(_str)(v.get("keys", [])))


HOLD_FIGURES = ("rss_bytes", "soft_bytes")


def _hold(v):
    """A heartbeat's "hold": null (claiming as usual), or why the worker claims no new work now:
    {"reason": a name (e.g. "memory_guard"), "rss_bytes": n, "soft_bytes": n}, figures optional, >= 0."""
    if v is None:
        return True
    return (isinstance(v, dict) and "reason" in v and set(v) <= {"reason", *HOLD_FIGURES} and _name(v["reason"])
            and all(_int(v[k]) and v[k] >= 0 for k in HOLD_FIGURES if k in v))


def _row_key(v):
    return (isinstance(v, dict) and set(v) == {"table", "key"} and _name(v["table"]) and isinstance(v["key"], dict)
            and 0 < len(v["key"]) <= 4 and all(_name(c) and (_int(x) or _str(x)) for c, x in v["key"].items()))


TYPES = {
    "str": ("a string", _str),
    "trace": ("1-128 characters of A-Z a-z 0-9 _ . : -", is_trace),
    "name": ("a name (letters, digits, _ . : @ -; at most 128)", _name),
    "id": ("a task id like t12", _id),
    "int": ("a whole number", _int),
    "num": ("a finite number", _num),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "strlist": ("a list of strings", _list_of(_str)),
    "namelist": ("a list of names", _list_of(_name)),
    "idlist": ("a list of task ids", _list_of(_id)),
    "num3": ("a list of numbers", lambda v: isinstance(v, list) and len(v) <= 3 and all(_num(x) for x in v)),
    "running": ('a list of {"task": id, "fence": n}', _running),
    "expects": ('null or {"path": a relative path inside the task directory (no "..", not absolute), "keys": [str]}',
                _expects),
    "any": ("any JSON value", lambda v: True),
    "objlist": ("a list of objects", lambda v: isinstance(v, list) and len(v) <= MAX_LIST and all(isinstance(x, dict) for x in v)),
    "optstr": ("a string or null", lambda v: v is None or _str(v)),
    "optint": ("a whole number or null", lambda v: v is None or _int(v)),
    "rowkeys": ('a list of {"table": name, "key": {column: number or string}}', _list_of(_row_key)),
    "hold": ('null or {"reason": name, "rss_bytes": n >= 0, "soft_bytes": n >= 0} (figures optional)', _hold),
}

HEARTBEAT = {
    "node": ("name", True), "capabilities": ("namelist", False), "kinds": ("namelist", False),
    "slots": ("int", False), "free_slots": ("int", False), "running": ("running", False),
    "load": ("num3", False), "mem_available": ("int", False), "disk_free": ("int", False),
    "version": ("str", False), "hold": ("hold", False),
}
CLAIM = {"node": ("name", True), "max": ("int", False), "wait": ("num", False)}
START = {"node": ("name", True), "fence": ("int", True)}
RESULT = {
    "task": ("id", True), "fence": ("int", True), "node": ("name", True),
    "outcome": ("str", True), "ended_by": ("str", False), "exit_code": ("optint", False),
    "signal": ("optint", False), "result": ("any", False), "error": ("optstr", False),
    "stdout_tail": ("str", False), "stderr_tail": ("str", False),
    "started_at": ("num", False), "finished_at": ("num", False),
}
DISPATCH = {
    "kind": ("name", True), "payload": ("any", False), "requires": ("namelist", False),
    "priority": ("int", False), "timeout": ("num", False), "max_attempts": ("int", False),
    "key": ("str", False), "after": ("idlist", False), "expects": ("expects", False),
    "trace_id": ("trace", False),
}
CANCEL = {"reason": ("str", False)}
GRAPH_TASK = dict(DISPATCH, after=("strlist", False))   # "after" may name tasks of the same graph
GRAPH = {"tasks": ("objlist", True)}
MODE = {"mode": ("str", True), "reason": ("str", False)}
PROMOTE = {"epoch": ("int", False)}
REPLICATE_ROWS = {"rows": ("rowkeys", True)}
DEMOTE = {"peer": ("str", False), "epoch": ("int", False), "hold": ("bool", False)}
LEASE_ACQUIRE = {"holder": ("name", True), "ttl": ("num", False), "purpose": ("str", False)}
LEASE_RENEW = {"holder": ("name", True), "token": ("int", True), "ttl": ("num", False)}
LEASE_RELEASE = {"holder": ("name", True), "token": ("int", True)}

OUTCOMES = ("succeeded", "failed")
# ended_by SHUTDOWN: the worker ended the attempt because it is itself stopping (a second
# SIGTERM/Ctrl-C, or drain_timeout passed), nothing the task did. Workers before it sent
# "signal" with the error text policy.WORKER_SHUTDOWN; the supervisor accepts both.
SHUTDOWN = "shutdown"
ENDED_BY = ("exit", "timeout", "cancel", "signal", "error", SHUTDOWN)


def validate(body, schema: dict, what: str) -> dict:
    """The body if it is a JSON object matching the schema; else BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: the body must be a JSON object")
    for field in body:
        if field not in schema:
            raise BadRequest(f"{what}: unknown field {field[:64]!r}", field=field[:64])
    for field, (typ, required) in schema.items():
        if field not in body:
            if required:
                raise BadRequest(f"{what}: missing field {field!r}", field=field)
            continue
        expected, ok = TYPES[typ]
        if not ok(body[field]):
            raise BadRequest(f"{what}: field {field!r} must be {expected}", field=field)
    return body
