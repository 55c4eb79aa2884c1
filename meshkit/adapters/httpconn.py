"""One connection of the supervisor's HTTP loop (httploop.py): its state, framing a whole
request out of the bytes read so far, and http.server's handler run over that request in
memory (the answer is collected, the loop writes it).
"""

import io

from meshkit.adapters.httphead import HeadError, parse_fields
from meshkit.adapters.httpapp import body_length, encode_json
from meshkit.adapters.httpserver import Handler
from meshkit.core.errors import MeshkitError

MAX_HEAD = 256 << 10          # request line + header block; past it the handler refuses it (414/431)


class Conn:
    __slots__ = ("sock", "addr", "buf", "out", "deadline", "state", "close_after", "linger", "drained", "eof",
                 "continued", "writing")

    def __init__(self, sock, addr, deadline):
        self.sock, self.addr, self.deadline = sock, addr, deadline
        self.buf, self.out = b"", b""
        self.state = "read"           # read | queued (whole request, this round) | busy (a thread has it) | write | linger
        self.close_after = self.linger = self.eof = self.continued = False
        self.writing = False          # registered for EVENT_WRITE (an answer waits to be sent), not EVENT_READ
        self.drained = 0


class LoopHandler(Handler):
    """http.server's handler over one whole request held in memory; the answer is collected."""

    may_wait = False

    def __init__(self, conn: Conn, data: bytes, server, head=None):
        # BaseRequestHandler.__init__ would run setup/handle/finish on the socket: not here.
        self.request = self.connection = conn.sock
        self.client_address = conn.addr
        self.server = server
        self.rfile = io.BytesIO(data)
        self.wfile = io.BytesIO()
        self.close_connection = True
        self.linger = False
        self.deferred = None
        self.counted = None             # on_response's arguments once answered (Handler._respond)
        self.head = head                # (header fields, where the body starts, method, body length) by frame()
        self.matched = None             # (method, path, app.match's answer) found by inline()

    def _read_head(self):
        if self.head is None:
            return super()._read_head()
        headers, body_at, _, _ = self.head
        self.rfile.seek(body_at)
        return headers

    def _body(self) -> bytes:
        if self.head is not None and self.head[2] == self.command:
            # frame() measured it by the same rule (body_length) and holds all of it
            self.linger = False
            return self.rfile.read(self.head[3])
        return super()._body()

    def inline(self, data: bytes) -> bool:
        """Answered on the loop: a route marked serial (short, store-bound), and every request
        that will be refused before any handler runs. The route found is kept for the handler."""
        words = data[:data.find(b"\n")].split()
        if len(words) != 3:
            return True
        method, path = words[0].decode("latin-1"), words[1].decode("latin-1").split("?")[0]
        try:
            self.matched = (method, path, self.server.app.match(method, path))
        except MeshkitError:
            return True
        return self.matched[2][0].serial

    def _match(self, method: str, path: str):
        if self.matched is not None and self.matched[:2] == (method, path):
            return self.matched[2]
        return super()._match(method, path)

    def handle_expect_100(self) -> bool:
        return True             # the loop sent "100 Continue" before the body came (_continue)

    def refuse(self, error: MeshkitError) -> str:
        """Replace the answer: the batch this request's work was in did not commit. What
        /metrics counts follows (the status sent, not the one its handler wrote); a request
        that was to wait (WouldWait) after its work is counted now; a store error of its own
        is left to the round's log line. Its route's name."""
        route = self.route
        self.failed = None
        if self.counted is not None:
            req, _, _, seconds = self.counted
            self.counted = (req, route, error.status, seconds)
        elif self.deferred is not None:
            self.counted = (self._req, route, error.status, self.server.app.clock.monotonic() - self.deferred)
        self.deferred = None
        self.wfile = io.BytesIO()
        retry = error.details.get("retry_after")
        self._write(encode_json(error.status, error.to_json(), {"Retry-After": str(retry)} if retry else None))
        return route

    @property
    def route(self) -> str:
        return getattr(self, "_route_name", "unmatched")

    def answer(self) -> bytes:
        return self.wfile.getvalue()


def frame(buf: bytes, max_body: int):
    """(request bytes, rest, head) once `buf` holds a whole request; None while it doesn't.
    head: (its header fields, where its body starts, the method as read here, the body's
    length), or None for the handler to read. A head the handler will refuse (bad fields,
    chunked, oversize body) is handed over without its body: the handler answers before
    reading one."""
    end = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n", 0, end if end >= 0 else len(buf))    # (only one before `end` matters)
    if end < 0 or 0 <= lf < end:
        end, sep = lf, 2
    else:
        sep = 4
    if end < 0:
        words = buf[:buf.find(b"\n")].split() if b"\n" in buf else ()
        if words and not words[-1].startswith(b"HTTP/"):    # a whole request line without a version (HTTP/0.9):
            return buf, b"", None                           # the handler refuses it now, not at request_timeout
        return (buf, b"", None) if len(buf) > MAX_HEAD else None
    head = buf[:end + sep]
    first = head.find(b"\n") + 1
    try:
        headers = parse_fields(head[first:])
    except HeadError:
        return head, b"", None
    method = head[:first].split(b" ", 1)[0].decode("latin-1")
    try:
        length = body_length(headers, method, max_body)
    except MeshkitError:
        return head, b"", None
    whole = end + sep + length
    return (buf[:whole], buf[whole:], (headers, end + sep, method, length)) if len(buf) >= whole else None
