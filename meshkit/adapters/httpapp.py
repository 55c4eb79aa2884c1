"""What a role hands the supervisor's HTTP server and what its handlers get: routes, the
request (with its JSON body, decoded strictly), answers (JSON or raw), the body-length
rules, and the App (routing, authentication hook, lock and group commit). The request
handler that applies them is httpserver.py; the sockets are httploop's.
"""

import contextlib
import json
import re
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

from meshkit.core.clock import REAL
from meshkit.core.errors import BadRequest, MethodNotAllowed, NotFound, TooLarge


@dataclass
class Route:
    method: str
    pattern: str                 # regex on the path (no query), anchored
    name: str                    # fixed label for metrics and logs
    handler: Callable            # handler(request) -> dict | Raw
    auth: str = "worker"         # "none" | "viewer" | "worker" | "admin"
    serial: bool = False         # run the handler holding App.lock (see App)
    after: Callable = None       # after(request), run once the handler returned, without App.lock
    query: tuple = ()            # the query parameters it takes; any other one is refused (400, query_dict)
    repeatable: tuple = ()       # of those, the ones that may be given more than once (a list each in Request.query)
    bearer: bool = False         # a viewer route that also takes the viewer token as a bearer token
    regex: re.Pattern = field(init=False)

    def __post_init__(self):
        self.regex = re.compile("^" + self.pattern + "$")


@dataclass
class Raw:
    """A non-JSON answer (metrics text, HTML) or a JSON one with a chosen status."""
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


@dataclass
class Request:
    method: str
    raw_path: str
    path: str
    query: dict
    params: tuple
    headers: object
    body: bytes
    client: str
    route: Route = None
    key_id: str = ""
    role: str = ""
    nodes: frozenset = frozenset()   # the nodes the signing key may speak for (a worker key's binding); empty: any
    may_wait: bool = True        # False on the event loop (httploop): a handler that would wait raises WouldWait
    _json: object = None

    def connected(self) -> bool:
        """False once the client has closed its connection (checked without reading)."""
        sock = getattr(self, "sock", None)
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # Readable with nothing to read means the peer closed. (A socket with a timeout
            # waits in recv() even with MSG_DONTWAIT, hence the select first.)
            return not readable or sock.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def json(self):
        if self._json is None:
            if not self.body:
                raise BadRequest("the body must be a JSON object; it is empty")
            try:
                # Decoded strictly first: json.loads(bytes) decodes with "surrogatepass", which lets
                # the UTF-8 form of a lone surrogate (ED A0 80) through as an unstorable string.
                self._json = _decode(self.body.decode("utf-8"))
            except RecursionError:
                raise BadRequest("the body is nested too deeply") from None
            except (ValueError, UnicodeDecodeError) as e:
                raise BadRequest(f"the body is not valid JSON: {str(e)[:120]}") from None
            if _SURROGATE_ESCAPE.search(self.body):
                # An unpaired \uD800-\uDFFF escape decodes to a string no UTF-8 store can hold.
                try:
                    json.dumps(self._json, ensure_ascii=False).encode("utf-8")
                except (UnicodeEncodeError, RecursionError):
                    self._json = None
                    raise BadRequest("the body holds an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF)") from None
        return self._json


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs):
    """An object of a JSON body as a dict; a key given twice is refused, never last-wins.
    (Costs about 0.2 us for a claim body, 1 us for a result body: one dict and a len.)"""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"the body gives the key {key[:64]!r} more than once in an object; give it once",
                                 field=key[:64])
            seen.add(key)
    return obj


# Built once: json.loads and json.dumps called with options build a new decoder or encoder
# (and its scanner) for every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _decode(text: str):
    """json.loads(text, parse_constant=_no_constant), with its decoder built once."""
    if text.startswith("\ufeff"):          # as json.loads refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def encode_json(status: int, obj, extra_headers=None) -> Raw:
    return Raw(status, (_ENCODER.encode(obj) + "\n").encode(), "application/json", extra_headers or {})


def split_target(target: str) -> tuple:
    """(path, query) of a target that starts with one "/", as urllib.parse.urlsplit reads it
    (the fragment dropped first), without its per-call work."""
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def query_dict(pairs, repeatable=(), takes=None) -> dict:
    """The query parameters (name, value) of a request as {name: value}; a name in `repeatable`
    maps to the list of its values. Any other name given twice, or a name not in `takes` (the
    route's Route.query; None: any), is a BadRequest naming it: never ignored, never last-wins."""
    query = {}
    for name, value in pairs:
        if takes is not None and name not in takes and name not in repeatable:
            raise BadRequest(f"unknown query parameter {name[:40]!r}" +
                             (f"; this endpoint takes {', '.join(takes)}" if takes else "; this endpoint takes none"))
        if name in repeatable:
            query.setdefault(name, []).append(value)
        elif name in query:
            raise BadRequest(f"query parameter {name[:40]!r} is given more than once; give it once")
        else:
            query[name] = value
    return query


def body_length(headers, command: str, max_body: int) -> int:
    """The length of a request's body by its head: a Content-Length, one, a whole number, at
    most max_body (TooLarge); no Transfer-Encoding field at all (whatever its value, empty
    too, however many: a proxy in front may read a later one, e.g. chunked, and frame the
    body otherwise); none needed without a body but for POST, PUT and PATCH. Anything else
    is BadRequest."""
    if headers.get_all("Transfer-Encoding") is not None:
        raise BadRequest("Transfer-Encoding is not accepted; send a Content-Length")
    cl = headers.get_all("Content-Length") or []
    if len(cl) > 1:
        raise BadRequest("more than one Content-Length")
    if not cl:
        if command in ("POST", "PUT", "PATCH"):
            raise BadRequest("a Content-Length header is required")
        return 0
    value = cl[0].strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 12:     # isdigit() alone takes "²"
        raise BadRequest("Content-Length must be a whole number")
    length = int(value)
    if length > max_body:
        raise TooLarge(f"the body is {length} bytes; the limit is {max_body}")
    return length


class WouldWait(Exception):
    """A handler run with `may_wait` False would have to wait (a long-poll with nothing to
    answer yet): the server runs it again on a thread, already authenticated."""


class App:
    """What the server calls: authenticate(request) and hooks; set by the role.

    `serial` routes are the short, store-bound ones httploop answers on its own thread,
    a round of them inside `batch()` (group commit); `lock` (a reentrant lock, or a
    Condition on one) is held while one runs, there or resumed on a thread after a
    WouldWait, so they run one at a time. A handler that waits must release it (a
    Condition built on it does)."""

    def __init__(self, routes, authenticate, max_body=1 << 20, on_response=None,
                 common_headers=None, logger=None, clock=REAL, lock=None, batch=None):
        self.routes = routes
        self.authenticate = authenticate          # (request) -> None; sets key_id/role or raises
        self.max_body = max_body
        self.on_response = on_response or (lambda req, route_name, status, seconds: None)
        self.common_headers = common_headers or (lambda: {})
        self.logger = logger
        self.clock = clock
        self.lock = lock if lock is not None else threading.RLock()
        self.batch = batch or contextlib.nullcontext     # group commit around a round of requests (httploop)
        self._exact = {}
        for route in reversed(routes):                 # the first route listed wins, as in match()
            if all(c.isalnum() or c in "/_-" for c in route.pattern):     # no regex in it
                self._exact[(route.method, route.pattern)] = route

    def match(self, method: str, path: str):
        exact = self._exact.get((method, path))      # most requests: a fixed path, one dict lookup
        if exact is not None:
            return exact, ()
        allowed = []
        for route in self.routes:
            m = route.regex.match(path)
            if m:
                if route.method == method:
                    return route, m.groups()
                allowed.append(route)
        if allowed:
            methods = ", ".join(sorted({r.method for r in allowed}))
            error = MethodNotAllowed(f"{method} is not allowed on {path[:200]}; use {methods}", allow=methods)
            error.route = allowed[0].name       # /metrics counts it under the path's route (the first listed)
            raise error
        raise NotFound(f"no such endpoint: {path[:200]}")
