"""The supervisor's HTTP server: one thread owns every connection, reads requests and answers
the short ones itself; requests that may wait (long polls, pages, replication) run on threads.

Why not a thread per connection (socketserver.ThreadingMixIn): Python runs one thread at a
time, and SQLite releases the GIL for every statement, so with eight busy connections the
threads hand the GIL to each other a dozen times per request (a futex wake and a context
switch each). Measured with bench_supervisor (8 workers, 2 cores): the same handlers answered
~1,100 tasks/s on threads and ~2,000 on one loop thread.

Every request still goes through httpserver.Handler (http.server's request handler: limits,
parsing, routing, authentication, JSON errors); only the socket work is here: buffering a
request until it is whole, writing answers without blocking, cutting off clients slower than
`request_timeout`, and lingering after refusing a body that was not read.
"""

import collections
import contextlib
import http.server
import selectors
import socket
import threading
import traceback

from meshkit.adapters.httpconn import Conn, LoopHandler, frame
from meshkit.adapters.httpapp import App
from meshkit.adapters.log import Throttle
from meshkit.core.errors import InternalError, MeshkitError

LINGER_SECONDS = 2.0          # after a refusal of a body that was not read (_start_linger)
LINGER_BYTES = 16 << 20
EXPIRY_CHECK = 0.1            # how often connections are checked against their deadlines (s)
REFUSED_EVERY = 10.0          # at most one round_refused line per error per this many seconds (_refused)
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        b"Connection: close\r\nContent-Length: 72\r\n\r\n"
        b'{"error":{"code":"unavailable","message":"too many connections; retry"}}')


class LoopServer(http.server.HTTPServer):
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, app: App, max_connections: int = 256, request_timeout: float = 30.0):
        self.app = app
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.draining = False
        self.active = 0          # open connections
        self.running = 0         # handlers running (Handler counts itself)
        self._partial = 0        # connections holding part of a request (counted by _expire)
        self._count_lock = threading.Lock()
        # Before super().__init__: when bind fails, socketserver calls server_close(), which needs these.
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._back = collections.deque()       # (conn, handler) answered on a thread
        self._conns = set()
        super().__init__(address, LoopHandler)
        self.socket.setblocking(False)
        self._ready = []                       # (conn, request, head) whole, not answered yet
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._next_check = 0.0
        hold = getattr(app.logger, "hold", None)        # a round's log lines are written together
        self._log_held = hold() if hold is not None else contextlib.nullcontext()
        self._log_discard = getattr(self._log_held, "discard", None)
        self._refusals = Throttle(app.logger, "error", "round_refused", REFUSED_EVERY) if app.logger else None

    @property
    def in_flight(self) -> int:
        """Requests being answered or still arriving: shutdown waits for these (bounded)."""
        return self.running + self._partial

    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    # -- the loop --------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        self._sel.register(self.socket, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                try:
                    self._turn(poll_interval)
                except Exception:  # a bug must not stop the loop (_event and _run_ready catch their own)
                    if self.app.logger:
                        self.app.logger.error("internal_error", route="loop", traceback=traceback.format_exc(limit=8))
        finally:
            if self._refusals is not None:
                self._refusals.flush(self.app.clock.monotonic(), final=True)     # refusals not logged yet
            self._stopped.set()

    def _turn(self, poll_interval: float) -> None:
        for key, mask in self._sel.select(min(poll_interval, EXPIRY_CHECK)):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                self._take_back()
            else:
                self._event(key.data, mask)
        while self._ready:
            self._run_ready()
        now = self.app.clock.monotonic()
        if now >= self._next_check:
            self._next_check = now + EXPIRY_CHECK
            self._expire(now)
            if self._refusals is not None:
                self._refusals.flush(now)

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait(10)

    def server_close(self) -> None:
        super().server_close()
        for conn in list(self._conns):
            self._close(conn)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _event(self, conn: Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
                self._process(conn)             # requests that came in behind the answer
            elif conn.state == "linger":
                self._drain(conn)
            elif conn.state == "read":
                self._read(conn)
        except Exception:  # a bug must not stop the loop: drop this connection, log it
            if self.app.logger:
                self.app.logger.error("connection_error", client=str(conn.addr[0]),
                                      traceback=traceback.format_exc(limit=8))
            self._close(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._conns) >= self.max_connections:
                try:
                    sock.setblocking(False)
                    sock.send(BUSY)
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, addr, self.app.clock.monotonic() + self.request_timeout)
            self._conns.add(conn)
            self.active += 1
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if not conn.buf:
                self._close(conn)
                return
            # The client stopped sending mid-request: the handler refuses what arrived (e.g. a
            # body shorter than its Content-Length, 400), then the connection closes.
            conn.eof = True
            data, conn.buf = conn.buf, b""
            self._dispatch(conn, data)
            return
        conn.buf += data
        self._process(conn)

    def _process(self, conn: Conn) -> None:
        """Answer the whole requests in the buffer, one at a time."""
        while conn.state == "read" and conn.buf:
            whole = frame(conn.buf, self.app.max_body)
            if whole is None:
                self._continue(conn)
                return
            data, conn.buf, head = whole
            self._dispatch(conn, data, head)

    def _continue(self, conn: Conn) -> None:
        """A client that sent `Expect: 100-continue` waits for this before it sends the body."""
        end = conn.buf.find(b"\r\n\r\n")
        if conn.continued or end < 0 or b"expect: 100-continue" not in conn.buf[:end].lower():
            return
        conn.continued = True
        try:
            conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        except OSError:
            pass

    def _dispatch(self, conn: Conn, data: bytes, head=None) -> None:
        """Queue a whole request for this round (_run_ready); the connection reads no further
        until it is answered, so pipelined requests are answered in order."""
        conn.continued = False
        conn.state = "queued"
        self._ready.append((conn, data, head))

    def _run_ready(self) -> None:
        """Answer the requests that came in together, with one commit (group commit): the
        inline ones run one after the other inside App.batch(); their answers leave only once
        it committed, and if it did not, each gets the store's error (nothing of it was
        stored), the log lines they wrote are dropped and one line says so (_refused).
        Requests that wait or take long go to threads after that."""
        ready, self._ready = self._ready, []
        answered, later, failed, dropped = [], [], None, 0
        with self._log_held:                    # its log lines: one write (none if it fails)
            try:
                with self.app.lock, self.app.batch():
                    for conn, data, head in ready:
                        handler = LoopHandler(conn, data, self, head)
                        if not handler.inline(data):
                            later.append((conn, handler, handler.handle_one_request, False))
                            continue
                        handler.handle_one_request()
                        if handler.deferred is None:
                            answered.append((conn, handler))
                        else:
                            later.append((conn, handler, handler.resume, True))
            except MeshkitError as e:
                failed = e
            except Exception as e:  # a bug must not stop the loop: this round is refused, logged (kept: an error)
                if self.app.logger:
                    self.app.logger.error("internal_error", route="batch", error=repr(e),
                                          traceback=traceback.format_exc(limit=8))
                failed = InternalError("internal error; see the supervisor's log")
            if failed is not None and self._log_discard is not None:
                dropped = self._log_discard()   # they told of changes the rollback undid
        for conn, handler, work, ran_in_batch in later:
            if failed is not None and ran_in_batch:
                answered.append((conn, handler))            # its handler ran in the lost batch
                continue
            conn.state = "busy"
            self._sel.unregister(conn.sock)
            threading.Thread(target=self._on_thread, args=(conn, handler, work), name="http", daemon=True).start()
        if failed is not None:
            self._refused(failed, [handler.refuse(failed) for _, handler in answered], dropped)
        for conn, handler in answered:
            self._answer(conn, handler)
        for conn, _ in answered:
            self._process(conn)                             # pipelined requests: the next round

    def _refused(self, error: MeshkitError, routes: list, dropped: int, rounds: int = 1) -> None:
        """One line for a refused round (event round_refused): how many requests got which
        error, their routes, how many of their log lines were dropped. While rounds keep
        failing (a full disk, a database locked by another process), at most one line per
        error per REFUSED_EVERY seconds, the next one carrying the sums (log.Throttle).
        A request answered with a store error outside a refused round (on a thread: graph,
        mode, leases, promote...; _answer) is added the same way, with rounds=0."""
        if self._refusals is None or not routes:
            return
        by_route = {}
        for route in routes:
            by_route[route] = by_route.get(route, 0) + 1
        self._refusals.note((error.status, error.code, error.message), self.app.clock.monotonic(),
                            {"status": error.status, "code": error.code, "error": error.message},
                            {"requests": len(routes), "rounds": rounds, "routes": by_route, "dropped_lines": dropped})

    def _on_thread(self, conn: Conn, handler: LoopHandler, work) -> None:
        try:
            work()
        except Exception:
            handler.close_connection = True
            if self.app.logger:
                self.app.logger.error("connection_error", client=str(conn.addr[0]),
                                      traceback=traceback.format_exc(limit=8))
        self._back.append((conn, handler))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass
        while self._back:
            conn, handler = self._back.popleft()
            if conn in self._conns:
                self._sel.register(conn.sock, selectors.EVENT_READ, conn)
                conn.writing = False
                self._answer(conn, handler)
                self._process(conn)

    # -- answers, lingering, deadlines ---------------------------------------------------

    def _answer(self, conn: Conn, handler: LoopHandler) -> None:
        if handler.counted is not None:     # counted before the answer leaves: a scrape next sees it
            self.app.on_response(*handler.counted)
        if handler.failed is not None:      # a store error not in a refused round (refuse() clears it)
            self._refused(handler.failed, [handler.route], 0, rounds=0)
        conn.out = handler.answer()
        conn.close_after = handler.close_connection or conn.eof
        conn.linger = handler.linger and not conn.eof
        conn.state = "write"
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
        except (BlockingIOError, InterruptedError):
            conn.deadline = self.app.clock.monotonic() + self.request_timeout
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            conn.writing = True
            return
        except OSError:
            self._close(conn)
            return
        if conn.writing:                # (most answers leave in one send: no selector change)
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False
        if conn.close_after:
            if conn.linger:
                self._start_linger(conn)
            else:
                self._close(conn)
            return
        conn.state = "read"             # the caller goes on with what is buffered (_process)
        conn.deadline = self.app.clock.monotonic() + self.request_timeout

    def _start_linger(self, conn: Conn) -> None:
        """After refusing a body it did not read: send FIN, then read and drop what the client
        still sends, briefly. Closing with unread data makes the kernel answer RST, which can
        destroy the refusal before the client reads it."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = "linger"
        conn.deadline = self.app.clock.monotonic() + LINGER_SECONDS
        self._drain(conn)

    def _drain(self, conn: Conn) -> None:
        try:
            while conn.drained < LINGER_BYTES:
                data = conn.sock.recv(65536)
                if not data:
                    break
                conn.drained += len(data)
            else:
                self._close(conn)
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(conn)

    def _expire(self, now: float) -> None:
        """Cut off connections past their deadline: a request that takes longer than
        request_timeout to arrive (or an idle keep-alive), an answer not read, a linger."""
        partial = 0
        for conn in list(self._conns):
            if conn.state not in ("busy", "queued") and now >= conn.deadline:
                self._close(conn)
            elif conn.state == "read" and conn.buf:
                partial += 1
        self._partial = partial

    def _close(self, conn: Conn) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        self.active -= 1
        if conn.state != "busy":
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        try:
            conn.sock.close()
        except OSError:
            pass


def start(host: str, port: int, app: App, max_connections=256, request_timeout=30.0) -> LoopServer:
    """Bind (port 0 = a free port) and serve in a background thread."""
    server = LoopServer((host, port), app, max_connections, request_timeout)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True).start()
    return server
