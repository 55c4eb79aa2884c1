"""The supervisor's connection loop (meshkit/adapters/httploop.py): framing rules as a table,
then a real supervisor process: pipelined requests, 100-continue, a long-poll that must not
hold up other connections, a client that stops mid-body."""

import io
import json
import os
import random
import socket
import sys
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.adapters.httphead import HeadError, _parse_lines, parse_fields, read_headers  # noqa: E402
from meshkit.adapters.httpconn import MAX_HEAD, frame  # noqa: E402
from meshkit.rules import auth  # noqa: E402
from tests.helpers import Fleet, register  # noqa: E402

BODY = b'{"a": 1}'
POST = b"POST /x HTTP/1.1\r\nContent-Length: 8\r\n\r\n" + BODY


class Framing(unittest.TestCase):
    def test_table(self):
        cases = [
            # (buffer, max_body, expected request bytes or None, expected rest, head parsed?)
            ("whole POST", POST, 100, POST, b"", True),
            ("POST and the start of the next", POST + b"GET /", 100, POST, b"GET /", True),
            ("two whole requests: the first", POST + POST, 100, POST, POST, True),
            ("body not all here", POST[:-3], 100, None, None, None),
            ("head not all here", b"GET /health HTTP/1.1\r\nHost: x\r\n", 100, None, None, None),
            ("GET without a body", b"GET /health HTTP/1.1\r\n\r\n", 100, b"GET /health HTTP/1.1\r\n\r\n", b"", True),
            ("bare LF line ends", b"GET / HTTP/1.1\nHost: x\n\nrest", 100, b"GET / HTTP/1.1\nHost: x\n\n", b"rest", True),
            ("chunked: the head alone, refused by the handler",
             b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello", 100,
             b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"", False),
            ("an empty Transfer-Encoding, then chunked: the head alone",
             b"POST /x HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nx",
             100, b"POST /x HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
             b"", False),
            ("body over the limit: the head alone (413 before reading)",
             b"POST /x HTTP/1.1\r\nContent-Length: 500\r\n\r\nabc", 100,
             b"POST /x HTTP/1.1\r\nContent-Length: 500\r\n\r\n", b"", False),
            ("two Content-Lengths", b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 100,
             b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b"", False),
            ("Content-Length not a number", b"POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 100,
             b"POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", b"", False),
            ("malformed field", b"GET / HTTP/1.1\r\nBad Field: 1\r\n\r\n", 100,
             b"GET / HTTP/1.1\r\nBad Field: 1\r\n\r\n", b"", False),
        ]
        for name, buf, limit, want, rest, parsed in cases:
            with self.subTest(name):
                got = frame(buf, limit)
                if want is None:
                    self.assertIsNone(got)
                    continue
                self.assertEqual(got[0], want)
                self.assertEqual(got[1], rest)
                self.assertEqual(got[2] is not None, parsed)
        endless = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10)
        self.assertEqual(frame(endless, 100), (endless, b"", None))      # handed over to be refused


class HeaderBlock(unittest.TestCase):
    """parse_fields (one pass over a whole block, used by the loop) answers exactly as
    read_headers (line by line) on every block: fields, or the same refusal."""

    @staticmethod
    def outcome(parse, block):
        try:
            return "ok", parse(block).items()
        except HeadError as e:
            return "refused", e.status

    def test_same_answers_as_the_line_reader(self):
        blocks = [b"Host: x\r\nA: 1\r\n\r\n", b"Host: x\nA:  2 \n\n", b"A: 1\r\nB : 2\r\n\r\n",
                  b" A: 1\r\n\r\n", b"NoColon\r\n\r\n", b"X: " + b"a" * 70000 + b"\r\n\r\n",
                  b"".join(b"H%d: %d\r\n" % (i, i) for i in range(101)) + b"\r\n", b"A: \xff\xfe\r\n\r\n",
                  b"A:\r\nB:x\r\n\r\n", b"A: 1\r\n B: folded\r\n\r\n", b"Content-Length: 5\r\ncontent-length: 6\r\n\r\n"]
        # a bare CR (RFC 9112 2.2, RFC 9110 5.5): refused, also just before the CRLF
        bare_cr = [b"A: 1\r\r\n\r\n", b"A: 1\r\r\nB: 2\r\n\r\n", b"A: 1\r\r\r\n\r\n", b"A: 1\rB: 2\r\n\r\n",
                   b"A\r: 1\r\n\r\n", b"A: 1\r\n\r\r\n", b"A: 1\n\r\r\n"]
        blocks += bare_cr
        nul = [b"A: 1\x00\r\n\r\n", b"A: \x00\r\n\r\n", b"A:\x00 1\r\nB: 2\r\n\r\n", b"A\x00: 1\r\n\r\n"]
        blocks += nul
        r = random.Random(3)
        pieces = [b"A: 1", b"B:2", b"C :3", b"D", b" E: 5", b"F: \t6\t", b"G-h_i.j: 7", b"\xc3\xa9: 8", b"", b"H: a:b",
                  b"X: a\rb", b"Y: 1\r", b"\r", b"Z: \x00"]
        seps = [b"\r\n", b"\r\n", b"\n", b"\r\r\n"]
        blocks += [b"".join(r.choice(pieces) + r.choice(seps) for _ in range(r.randrange(6))) + b"\r\n"
                   for _ in range(3000)]
        for block in blocks:
            self.assertEqual(self.outcome(parse_fields, block),
                             self.outcome(lambda b: read_headers(io.BytesIO(b).readline), block), block[:60])
        for block in bare_cr + nul:       # RFC 9110 5.5: refused (400), by both readers
            self.assertEqual(self.outcome(parse_fields, block), ("refused", 400), block)

    def test_fast_path_same_as_line_by_line(self):
        """parse_fields reads plain blocks with one regex: same fields, lookups, ASCII verdict and
        refusals as its line-by-line reading (which reads every other block)."""
        def lookups(parse, block):
            try:
                h = parse(block)
                return h.items(), h.isascii(), {n: (h.get(n), h.get_all(n)) for n in ("a", "B", "content-length")}
            except HeadError as e:
                return e.status
        r = random.Random(4)
        pieces = [b"A: 1", b"B:2", b"C :3", b"D", b" E: 5", b"F: \t6\t", b"\xc3\xa9: 8", b"", b"H: a:b", b"a: x",
                  b"A:  \t ", b"X: a\rb", b"\r", b"Content-Length: 5", b"content-length: 6", b"x:\x0b\x85 ",
                  b"Y: caf\xe9", b"\tB: 1", b"B: 1 \t x \t", b"K:" + b" " * 10]
        seps = [b"\r\n", b"\n", b"\r\n", b"\r\r\n"]
        blocks = [b"".join(b"H%d: %d\r\n" % (i, i) for i in range(n)) + b"\r\n" for n in (99, 100, 101)]
        blocks += [b"X: " + b"a" * n + b"\r\n\r\n" for n in (65527, 65528, 65536)]
        blocks += [b"".join(r.choice(pieces) + r.choice(seps) for _ in range(r.randrange(7))) +
                   r.choice([b"\r\n", b"\n", b"", b"\nA: 1\n"]) for _ in range(3000)]
        for block in blocks:
            self.assertEqual(lookups(parse_fields, block),
                             lookups(lambda b: _parse_lines(b.decode("iso-8859-1")), block), block[:60])


def signed_request(fleet, kid, method, path, body: bytes, extra="") -> bytes:
    secret = fleet.keys[kid][1]
    headers = auth.signed_headers(kid, secret, method, path, body, time.time(), os.urandom(12).hex())
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + extra + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_answers(sock, n: int, timeout=10.0) -> list:
    """n HTTP answers (status, body) from a socket."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1")
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            if len(buf) >= end + 4 + length:
                out.append((int(head.split()[1]), buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return out


class Loop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__request_timeout=3)
        cls.url = cls.fleet.start_supervisor()
        cls.port = int(cls.url.rsplit(":", 1)[1])
        cls.admin, cls.worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        register(cls.worker, "lw", kinds=["loop"])

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(s.close)
        return s

    def test_pipelined_requests_are_answered_in_order(self):
        s = self.connect()
        bodies = [json.dumps({"kind": "loop", "key": f"pipe-{i}-{time.time()}"}).encode() for i in range(3)]
        data = b"".join(signed_request(self.fleet, "admin-1", "POST", "/v1/tasks", b) for b in bodies)
        data += b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(data)                                   # one write: four requests
        answers = read_answers(s, 4)
        self.assertEqual([a[0] for a in answers], [201, 201, 201, 200])
        ids = [json.loads(a[1])["task"]["id"] for a in answers[:3]]
        self.assertEqual(ids, sorted(ids, key=lambda t: int(t[1:])))   # stored in the order sent
        self.assertTrue(json.loads(answers[3][1])["ok"])

    def test_expect_100_continue(self):
        s = self.connect()
        body = json.dumps({"kind": "loop", "key": f"expect-{time.time()}"}).encode()
        req = signed_request(self.fleet, "admin-1", "POST", "/v1/tasks", body, extra="Expect: 100-continue\r\n")
        head, _ = req.split(b"\r\n\r\n", 1)
        s.sendall(head + b"\r\n\r\n")                     # the head only: the body waits for the 100
        s.settimeout(5)
        first = s.recv(65536)
        self.assertTrue(first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first)
        s.sendall(body)
        answers = read_answers(s, 1)
        self.assertEqual(answers[0][0], 201)

    def test_a_long_poll_does_not_hold_up_other_connections(self):
        result = {}

        def poll():
            t0 = time.monotonic()
            result["tasks"] = self.fleet.client("worker").call(
                "POST", "/v1/claim", {"node": "lw", "max": 1, "wait": 8})["tasks"]
            result["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)                                   # the claim is waiting on a thread now
        t0 = time.monotonic()
        for _ in range(20):
            self.admin.call("GET", "/v1/status")
            self.worker.call("POST", "/v1/heartbeat", {"node": "other", "kinds": ["nothing"]})
        self.assertLess(time.monotonic() - t0, 3.0, "40 requests waited behind a long-poll")
        task = self.admin.call("POST", "/v1/tasks", {"kind": "loop"})["task"]["id"]
        t.join(10)
        self.assertEqual([x["id"] for x in result["tasks"]], [task])     # woken by the dispatch
        self.assertLess(result["seconds"], 3.0)

    def test_client_that_stops_mid_body_gets_400_and_nothing_is_stored(self):
        before = self.admin.call("GET", "/v1/tasks?limit=1000")["tasks"]
        s = self.connect()
        body = json.dumps({"kind": "loop", "key": f"half-{time.time()}"}).encode()
        req = signed_request(self.fleet, "admin-1", "POST", "/v1/tasks", body)
        s.sendall(req[:-5])
        s.shutdown(socket.SHUT_WR)
        answers = read_answers(s, 1)
        self.assertEqual(answers[0][0], 400)
        self.assertIn(b"shorter than its Content-Length", answers[0][1])
        after = self.admin.call("GET", "/v1/tasks?limit=1000")["tasks"]
        self.assertEqual(len(after), len(before))


if __name__ == "__main__":
    unittest.main()
