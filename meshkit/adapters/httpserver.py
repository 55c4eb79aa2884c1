"""JSON over HTTP on http.server's request handler: routing, body limits, authentication,
JSON errors for everything, one write per response. The sockets are httploop's; routes,
requests and the App are httpapp's.

Stdlib defaults fixed (here and in httploop): the listen backlog (5) is raised; TCP_NODELAY
is set and each response goes out in a single write, so keep-alive answers don't wait 40 ms
for a delayed ACK; slow or silent clients are cut off after `request_timeout`.
"""

import http.server
import socket
import traceback
import urllib.parse

from meshkit.adapters.httpapp import Raw, Request, Route, WouldWait, body_length, encode_json, query_dict, split_target
from meshkit.adapters.httphead import HeadError, parse_version, read_headers
from meshkit.core.errors import BadRequest, MeshkitError, MethodNotAllowed, StoreError, Unavailable


class _Running:
    """Counted in server.running while a handler runs (shutdown waits for them). (A class:
    a @contextmanager generator costs about a microsecond more per request.)"""

    __slots__ = ("server",)

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        with self.server._count_lock:
            self.server.running += 1

    def __exit__(self, *exc):
        with self.server._count_lock:
            self.server.running -= 1


_STATUS_LINES = {int(status): f"HTTP/1.1 {int(status)} {phrase}\r\n"
                 for status, (phrase, _) in http.server.BaseHTTPRequestHandler.responses.items()}


class Handler(http.server.BaseHTTPRequestHandler):
    may_wait = True                     # the loop's handler (httploop) says False
    failed = None                       # the StoreError answered, if any (httploop logs it: _refused)
    protocol_version = "HTTP/1.1"
    server_version = "meshkit"
    sys_version = ""
    error_content_type = "application/json"

    def parse_request(self) -> bool:
        """http.server's request-line rules (no HTTP/0.9), headers read by httphead instead
        of the email package. False once an error answer is sent."""
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if not words:
            return False
        if len(words) != 3:
            self.send_error(400, f"bad request line {line[:100]!r} (METHOD TARGET HTTP/1.1)")
            return False
        version = parse_version(words[2])
        if version is None:
            self.send_error(400, f"bad HTTP version {words[2][:40]!r}")
            return False
        if version >= (2, 0):
            self.send_error(505, f"HTTP version {words[2][5:40]} is not supported")
            return False
        self.request_version = words[2]
        self.close_connection = version < (1, 1)
        self.command, self.path = words[0], words[1]
        if self.path.startswith("//"):          # never read as a scheme-relative URL
            self.path = "/" + self.path.lstrip("/")
        try:
            self.headers = self._read_head()
        except HeadError as e:
            self.send_error(e.status, str(e))
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if self.headers.get("Expect", "").lower() == "100-continue" and version >= (1, 1):
            return self.handle_expect_100()
        return True

    def _read_head(self):
        return read_headers(self.rfile.readline)

    def log_message(self, format, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        """Errors found by http.server itself (bad request line, headers too long): JSON too."""
        codes = {400: "bad_request", 408: "timeout", 414: "uri_too_long", 431: "headers_too_large",
                 501: "method_not_allowed", 505: "http_version"}
        body = {"error": {"code": codes.get(code, "bad_request"), "message": (message or "bad request")[:300]}}
        self.close_connection = True
        try:
            # Never a 5xx for a client's mistake: unknown methods are 405, the rest 400.
            self._write(encode_json(405 if code == 501 else code if code < 500 else 400, body))
        except OSError:
            pass

    def _write(self, raw: Raw) -> None:
        headers = {"Content-Type": raw.content_type, "Content-Length": str(len(raw.body)),
                   "Cache-Control": "no-store"}
        headers.update(self.server.app.common_headers())
        if raw.headers:
            headers.update(raw.headers)
        if self.close_connection:
            headers["Connection"] = "close"
        head = _STATUS_LINES.get(raw.status) or f"HTTP/1.1 {raw.status} \r\n"
        head += "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n"
        self.wfile.write(head.encode("latin-1") + (raw.body if self.command != "HEAD" else b""))
        self.wfile.flush()

    def _body(self) -> bytes:
        self.linger = True          # until the body is read
        try:
            length = body_length(self.headers, self.command, self.server.app.max_body)
        except MeshkitError:
            self.close_connection = True
            raise
        data = self.rfile.read(length)
        self.linger = False
        if len(data) != length:
            self.close_connection = True
            raise BadRequest("the body is shorter than its Content-Length")
        return data

    def _handle(self):
        with _Running(self.server):
            self._handle_request()

    def _handle_request(self):
        self.deferred = self._done = None
        self._route_name, self._req = "unmatched", None
        self.linger = True              # a refusal before the body is read lingers (httploop lingers)
        start = self.server.app.clock.monotonic()
        try:
            raw = self._outcome(self._parse_and_call)
        except WouldWait:
            self.deferred = start       # httploop calls resume() on a thread
            return
        self._respond(raw, start)

    def resume(self) -> None:
        """Answer a request that raised WouldWait, on a thread where its handler may wait."""
        start, self.deferred = self.deferred, None
        with _Running(self.server):
            self._req.may_wait = True
            self._respond(self._outcome(lambda: self._invoke(self._req.route, self._req, False)), start)

    def _parse_and_call(self):
        if not self.path.startswith("/"):       # absolute-form ("http://[x" too), "*", or junk: a 400
            self.close_connection = True
            raise BadRequest("the request target must be a path")
        # Non-ASCII text reaches no handler: not in the target (percent-encode it), not in a
        # decoded query, not in a header (handlers compare and parse these as ASCII).
        if not self.path.isascii():
            self.close_connection = True
            raise BadRequest("the request target must be ASCII (percent-encode other characters)")
        if not self.headers.isascii():
            self.close_connection = True
            raise BadRequest("header names and values must be ASCII")
        body = self._body()
        path, query = split_target(self.path)
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, encoding="ascii",
                                           errors="strict") if query else ()
        except UnicodeDecodeError:
            raise BadRequest("query parameters must be ASCII once percent-decoded") from None
        try:
            route, params = self._match(self.command, path)
        except MethodNotAllowed as e:       # the path has a route, the method is wrong: counted under it
            self._route_name = getattr(e, "route", self._route_name)
            raise
        self._route_name = route.name
        query = query_dict(pairs, route.repeatable, route.query) if pairs else {}
        req = self._req = Request(self.command, self.path, path, query, params, self.headers, body,
                                  self.client_address[0], route, may_wait=self.may_wait)
        req.sock = self.connection
        return self._invoke(route, req, True)

    def _match(self, method: str, path: str):
        return self.server.app.match(method, path)

    def _outcome(self, work):
        """The answer to send: work()'s result, or its error as JSON; None when the client is gone."""
        app = self.server.app
        try:
            result = work()
            return result if isinstance(result, Raw) else encode_json(200, result)
        except MeshkitError as e:
            if isinstance(e, StoreError):
                self.failed = e
            extra = {}
            if isinstance(e, MethodNotAllowed):
                extra["Allow"] = e.details.get("allow", "")
            if e.details.get("retry_after"):
                extra["Retry-After"] = str(e.details["retry_after"])
            return encode_json(e.status if 400 <= e.status < 600 else 500, e.to_json(), extra)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
            return None
        except WouldWait:
            raise
        except Exception as e:  # a bug: answer 500 with no internals, log the traceback
            if app.logger:
                app.logger.error("internal_error", route=self._route_name, error=repr(e),
                                 traceback=traceback.format_exc(limit=8))
            return encode_json(500, {"error": {"code": "internal", "message": "internal error; see the supervisor's log"}})

    def _respond(self, raw, start: float) -> None:
        if raw is None:
            return
        # Counted (app.on_response) by the server as it hands the answer to the socket
        # (httploop._answer), not here: an answer written in a round whose commit then fails
        # is replaced by the 503 sent (httpconn.LoopHandler.refuse), and that is what counts.
        self.counted = (self._req, self._route_name, raw.status, self.server.app.clock.monotonic() - start)
        try:
            self._write(raw)
        except OSError:
            self.close_connection = True

    def _invoke(self, route: Route, req: Request, authenticate: bool):
        if self._done is None:          # (resume() after a WouldWait from `after` skips it)
            if route.serial:
                with self.server.app.lock:
                    self._done = (self._call(route, req, authenticate),)
            else:
                self._done = (self._call(route, req, authenticate),)
        if route.after is not None:
            route.after(req)            # may raise WouldWait too
        return self._done[0]

    def _call(self, route: Route, req: Request, authenticate: bool):
        if authenticate and route.auth != "none":
            self.server.app.authenticate(req)
        if self.server.draining and route.auth != "none" and route.method != "GET":
            raise Unavailable("the supervisor is shutting down; retry shortly", retry_after=2)
        return route.handler(req)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle
