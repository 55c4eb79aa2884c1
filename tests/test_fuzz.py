"""A stdlib fuzzer against a live supervisor: thousands of generated malformed requests to every
endpoint of its OpenAPI document (and to no endpoint at all), signed so that they reach the
handlers, and unsigned.

Mutations: bad JSON (truncated, random bytes, invalid UTF-8, NaN, trailing garbage, duplicate
keys), deep nesting, huge numbers, wrong types, missing and unknown fields, unicode edge cases
(NUL, lone surrogates, RTL, combining marks) in bodies, paths, queries and headers, oversize and
truncated bodies, lying Content-Length both ways, chunked bodies, bad and missing headers,
broken request lines, wrong methods, bad signatures, timestamps and nonces.

Every answer must be a documented status (of its route, in /v1/openapi.json) with a JSON error
body, never a 5xx, never traceback text; the database holds afterwards exactly what the
requests that were accepted (2xx) created; the supervisor logged no internal error; and it
answers a good request afterwards.

MESHKIT_FUZZ_SEED=N reproduces a run; MESHKIT_FUZZ_COUNT=N changes the number of requests.
"""

import json
import os
import random
import re
import socket
import sqlite3
import sys
import time
import unittest
import urllib.request

from tests.helpers import Fleet, register

from meshkit.rules import auth

COUNT = int(os.environ.get("MESHKIT_FUZZ_COUNT", "5000"))
BUDGET = 40.0          # seconds; the run stops early (and says so) rather than run long
MAX_BODY = 65536

UNICODE = ["\u0000", "\ud800", "\udfff", "\ud83d", "\u202e", "\u200b", "\ufeff", "\uffff", "e\u0301", "\U0001f4a5" * 20,
           "\u00e9", "\u0663", "\u00b2", "../../etc/passwd", "..", "/", "\\", "%00", "%2e%2e%2f", "t1/../t2", " ",
           "\n\r", "\t", "a" * 129, "x" * 70000, "", "null", "<script>", "'; DROP TABLE tasks; --", "\x7f"]
WEIRD_VALUES = [None, True, False, 0, -1, 2 ** 53 + 1, -(2 ** 63), 2 ** 64, 10 ** 30, 1.5, -0.0, 1e308, 5e-324, "",
                "1", [], [[]], {}, {"a": {}}, [None] * 1001, list(range(4)), ["a"] * 1001, {"task": "t1"}] + UNICODE


def deep(n, kind="list"):
    return ("[" * n + "]" * n) if kind == "list" else ('{"a":' * n + "1" + "}" * n)


class Answer:
    def __init__(self, raw: bytes):
        self.raw = raw
        self.status, self.headers, self.body = 0, {}, b""
        while raw:
            head, sep, rest = raw.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
            if not m:
                return
            self.status = int(m.group(1))
            self.headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            if 100 <= self.status < 200:     # 100 Continue: the real answer follows
                raw = rest
                continue
            n = int(self.headers.get("content-length", "0") or 0)
            self.body = rest[:n]
            return


def send(port: int, data: bytes, shut: bool = True, timeout: float = 10.0) -> Answer:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    try:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return Answer(buf)


class Gen:
    """One malformed (or occasionally valid) request at a time, from the OpenAPI document."""

    def __init__(self, doc: dict, keys: dict, rand: random.Random):
        self.doc, self.keys, self.r = doc, keys, rand
        self.ops = [(m.upper(), p, op) for p, item in doc["paths"].items() for m, op in item.items()]
        self.n = 0

    def schema(self, ref_or_schema):
        s = ref_or_schema
        while "$ref" in s:
            s = self.doc["components"]["schemas"][s["$ref"].rsplit("/", 1)[1]]
        return s

    def valid(self, schema, depth=0):
        """A (mostly) valid instance of a schema: required fields and some optional ones."""
        s = self.schema(schema)
        t = s.get("type")
        if "enum" in s:
            return self.r.choice(s["enum"])
        if t == "object":
            out = {}
            for k, sub in s.get("properties", {}).items():
                if k in s.get("required", []) or (depth < 2 and self.r.random() < 0.3):
                    out[k] = self.valid(sub, depth + 1)
            return out
        if t == "array":
            return [self.valid(s["items"], depth + 1) for _ in range(self.r.choice((0, 1, 1, 2)) if depth < 2 else 0)]
        if t == "integer":
            lo = s.get("minimum", 0)
            return max(lo, min(self.r.choice((1, 2, 3, 5)), s.get("maximum", 10 ** 6)))
        if t == "number":
            return self.r.choice((1, 2.5, 30))
        if t == "boolean":
            return self.r.random() < 0.5
        if t == "string":
            pat = s.get("pattern", "")
            if "t[" in pat:
                return self.r.choice(("t1", "t2", "t3", "t99999"))
            if pat:
                self.n += 1
                return self.r.choice(("fz", "fuzz-node", "w1")) + ("" if self.r.random() < 0.5 else f"-{self.n}")
            return self.r.choice(("x", "reason", "out.json"))
        return self.r.choice((None, 1, "p", {"k": [1, 2]}))

    def mutate_body(self, body):
        """(JSON bytes or raw bytes, what): one mutation of a valid body."""
        r = self.r
        kind = r.randrange(20)
        if kind < 6 and isinstance(body, dict) and body:
            k = r.choice(list(body))
            body = dict(body)
            body[k] = r.choice(WEIRD_VALUES)
            what = f"field {k} = weird"
        elif kind < 8 and isinstance(body, dict) and body:
            body = dict(body)
            body.pop(r.choice(list(body)))
            what = "missing field"
        elif kind < 10:
            body = dict(body) if isinstance(body, dict) else {}
            body[r.choice(UNICODE[:14] + ["extra", "__proto__", "constructor"])] = r.choice(WEIRD_VALUES[:8])
            what = "unknown field"
        elif kind < 11:
            body = r.choice(([], "s", 123, None, True, [body], 1e999))
            what = "not an object"
        elif kind < 12:
            return deep(r.choice((100, 1000, 5000, 30000)), r.choice(("list", "dict"))).encode(), "deep nesting"
        elif kind < 13:
            data = json.dumps(body).encode()
            return data[:r.randrange(max(1, len(data)))], "truncated JSON"
        elif kind < 14:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 300))), "random bytes"
        elif kind < 15:
            data = json.dumps(body).encode()
            return r.choice((b"\xff\xfe", b"\xef\xbb\xbf", b"\xc0\x80", b"\xed\xa0\x80")) + data, "bad UTF-8/BOM"
        elif kind < 16:
            lit = r.choice(("NaN", "Infinity", "-Infinity", "9" * 5000, "1e999999", "-0", "1" * 4301, "0x10", "01",
                            "1.", ".5", "+1", "true", "nul"))
            key = r.choice(list(body)) if isinstance(body, dict) and body else "x"
            return ('{"%s": %s}' % (key, lit)).encode(), f"number literal {lit[:12]}"
        elif kind < 17:
            data = json.dumps(body).encode()
            return data + r.choice((b"x", b"{}", b"\x00", b" ,", b"\n{}")), "trailing garbage"
        elif kind < 18 and isinstance(body, dict) and body:
            k = r.choice(list(body))
            return (json.dumps(body)[:-1] + (", " if len(body) else "") + json.dumps(k) + ': "dup"}').encode(), "duplicate key"
        elif kind < 19:
            return r.choice((b"", b" ", b"\n", b"{", b"}", b"[]", b"null")), "empty-ish"
        else:
            body = dict(body) if isinstance(body, dict) else {}
            if body:
                k = r.choice(list(body))
                body[k] = r.choice(UNICODE)
            return json.dumps(body, ensure_ascii=r.random() < 0.5).encode("utf-8", "surrogatepass"), "unicode value"
        return json.dumps(body, ensure_ascii=r.random() < 0.7).encode("utf-8", "surrogatepass"), what

    def target(self, path_tmpl: str, op: dict) -> tuple:
        r = self.r
        path, what = path_tmpl, "path ok"
        for name in re.findall(r"\{(\w+)\}", path_tmpl):
            if r.random() < 0.6:
                value = r.choice(("t1", "t2", "t3")) if name == "id" else r.choice(("fz", "gpu", "fz-lease"))
            else:
                value = r.choice(("t0", "t00001", "t" + "9" * 30, "..", "%2e%2e", "..%2f..%2fkeys", "t1%00", "%C2%B2",
                                  "t%C2%B2", "%FF", "\u00b2", "t\u00b2", "%F0%9F%92%A5", "a" * 300, "", "t-1", "T1",
                                  "t1;x", "t1?x", "t1#x", "%", "%zz"))
                what = f"path param {value[:20]!r}"
            path = path.replace("{" + name + "}", value)
        if op and any(p["in"] == "query" for p in op.get("parameters", [])) and r.random() < 0.8:
            q = r.choice(("state=queued", "state=bogus", "limit=5", "limit=0", "limit=1001", "limit=%C2%B2",
                          "limit=99999999999999999999999", "limit=-1", "limit=1e3", "after=t1", "after=t%C2%B2",
                          "after=t", "after=%FF", "state=%00", "x=1", "state=queued&state=failed", "limit=",
                          "&&&", "=", "limit=%FF%FE", "after=t" + "9" * 30, "after=t\u00b2"))
            path += "?" + q
            what += f"; query {q[:30]!r}"
        elif r.random() < 0.05:
            path += "?" + r.choice(("x=1", "%FF", "a=\u00e9", ""))
        return path, what

    def request(self) -> tuple:
        """(bytes to send, description, route op or None, key id or None, body object or None)."""
        r = self.r
        method, tmpl, op = r.choice(self.ops)
        path, what = self.target(tmpl, op)
        body_obj = None
        body = b""
        rb = op.get("requestBody")
        if rb:
            body_obj = self.valid(rb["content"]["application/json"]["schema"])
            if r.random() < 0.85:
                body, bwhat = self.mutate_body(body_obj)
                what += "; " + bwhat
            else:
                body = json.dumps(body_obj).encode()
        elif r.random() < 0.15:
            body, bwhat = self.mutate_body({})
            what += "; body on a bodyless route: " + bwhat
        if r.random() < 0.06:       # wrong method
            method = r.choice(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "get", "TRACE"))
            what += f"; method {method}"
        # who signs: mostly a key that may call the route
        kid = r.choice(("admin-1", "admin-1", "admin-1", "worker-1", "viewer-1", None))
        headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Connection", "close")]
        target = path
        if kid and kid in self.keys:
            secret = self.keys[kid][1]
            headers += list(auth.signed_headers(kid, secret, method, target, body, time.time(),
                                                os.urandom(12).hex()).items())
        cl = str(len(body)).encode()
        raw_cl = [b"Content-Length: " + cl] if (body or method in ("POST", "PUT", "PATCH")) else []
        extra = b""
        kind = r.randrange(40)
        if kind == 0:
            raw_cl = []
            what += "; no Content-Length"
        elif kind == 1:
            raw_cl = raw_cl + [b"Content-Length: " + cl]
            what += "; two Content-Length"
        elif kind == 2:
            v = r.choice((b"-1", b"+5", b"0x10", b" 5 ", b"5 5", b"99999999999999", b"1e3", b"", b"\xb2"))
            raw_cl = [b"Content-Length: " + v]
            what += f"; Content-Length {v!r}"
        elif kind == 3:
            raw_cl = [b"Content-Length: " + str(MAX_BODY + r.randrange(1, 10 ** 6)).encode()]
            what += "; Content-Length over max_body"
        elif kind == 4:
            raw_cl = [b"Content-Length: " + str(len(body) + r.randrange(1, 5000)).encode()]
            what += "; body shorter than its Content-Length"
        elif kind == 5 and body:
            raw_cl = [b"Content-Length: " + str(r.randrange(len(body))).encode()]
            what += "; body longer than its Content-Length"
        elif kind == 6:
            raw_cl = [b"Transfer-Encoding: chunked"]
            body = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
            what += "; chunked"
        elif kind == 7:
            headers = [h for h in headers if h[0] != r.choice((auth.H_KEY, auth.H_TS, auth.H_NONCE, auth.H_SIG))]
            what += "; a signature header missing"
        elif kind == 8:
            name = r.choice((auth.H_KEY, auth.H_TS, auth.H_NONCE, auth.H_SIG))
            value = r.choice(("", "x", "0" * 64, "\u00e9\u00e9", "1" * 13, "-5", "9" * 12, "1.5", "A" * 200, "a b",
                              "abc\u00ff", "admin-1", "nokey", "\u00b2", str(int(time.time()) - 600)))
            headers = [h for h in headers if h[0] != name] + [(name, value)]
            what += f"; header {name} = {value[:20]!r}"
        elif kind == 9:
            headers += [("Authorization", r.choice(("Bearer ", "Bearer x", "Bearer \u00e9", "Basic YTpi",
                                                   "Bearer " + "a" * 5000, "bearer x")))]
            what += "; Authorization"
        elif kind == 10:
            extra = r.choice((b"X-Bad header: 1\r\n", b"NoColon\r\n", b" folded: continuation\r\n",
                              b"X-Long: " + b"a" * 70000 + b"\r\n", b"".join(b"X-H%d: v\r\n" % i for i in range(120)),
                              b"X-Nul: \x00\r\n", b"X-Latin: \xe9\xff\r\n", b": empty-name\r\n",
                              b"Expect: 100-continue\r\n", b"Connection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n"))
            what += f"; raw header {extra[:20]!r}"
        elif kind == 11:
            method = r.choice(("GET", "POST"))
            target = r.choice(("*", "http://127.0.0.1/v1/status", "v1/status", "//v1//status", "/v1/../v1/status",
                               "/" + "a" * 70000, "/v1/tasks/\xb2", "/\xe9", "/v1/status#frag", "/v1/status?\xff",
                               "/%", "/v1/%2e%2e/status", "/v1/tasks/t1/../../status", "", "http://[x", "https://]x[/"))
            what += f"; target {target[:30]!r}"
        line = f"{method} {target} HTTP/1.1".encode("latin-1", "replace")
        if r.random() < 0.02:
            line = r.choice((b"GET / HTTP/2.0", b"GET /", b"GET / HTTP/1.1 extra", b"\x16\x03\x01\x00",
                             b"GET / FOO/1.1", b"", b"GET  / HTTP/1.1", b"GET / http/1.1", b"POST /v1/tasks HTTP/0.9"))
            what += f"; request line {line[:20]!r}"
        head = line + b"\r\n" + b"".join(f"{k}: {v}".encode("latin-1", "replace") + b"\r\n" for k, v in headers)
        data = head + b"".join(c + b"\r\n" for c in raw_cl) + extra + b"\r\n" + body
        return data, f"{method} {target[:60]!r}: {what}", (method, tmpl, op), kid, body_obj, body


class Fuzz(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet(supervisor__max_body=MAX_BODY, supervisor__request_timeout=5,
                          supervisor__max_connections=64)
        cls.url = cls.fleet.start_supervisor()
        cls.port = int(cls.url.rsplit(":", 1)[1])
        cls.db = os.path.join(cls.fleet.dir, "data", "meshkit.db")
        with urllib.request.urlopen(cls.url + "/v1/openapi.json", timeout=10) as resp:
            cls.doc = json.loads(resp.read())
        admin, worker = cls.fleet.client("admin"), cls.fleet.client("worker")
        # Something real for the fuzzed ids to hit: t1 leased to w1, t2 queued, t3 cancelled.
        register(worker, "w1", kinds=["fz"], slots=4)
        for _ in range(3):
            admin.call("POST", "/v1/tasks", {"kind": "fz"})
        worker.call("POST", "/v1/claim", {"node": "w1", "max": 1})
        admin.call("POST", "/v1/tasks/t3/cancel", {})
        register(worker, "w1", kinds=["other"], slots=4)

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def rows(self, sql):
        db = sqlite3.connect(self.db, timeout=10)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def snapshot(self) -> dict:
        return {"tasks": {r[0]: r[1:] for r in self.rows("SELECT n, state, fence, attempts, payload, key FROM tasks")},
                "nodes": {r[0] for r in self.rows("SELECT name FROM nodes")},
                "leases": {r[0] for r in self.rows("SELECT name FROM leases")} if self.rows(
                    "SELECT name FROM sqlite_master WHERE name='leases'") else set(),
                "history": self.rows("SELECT COUNT(*) FROM history")[0][0]}

    def documented(self, route, status: int) -> bool:
        method, tmpl, op = route
        return str(status) in op["responses"]

    def test_thousands_of_malformed_requests(self):
        seed = int(os.environ.get("MESHKIT_FUZZ_SEED", str(int(time.time() * 1000) % 10 ** 6)))
        rand = random.Random(seed)
        gen = Gen(self.doc, self.fleet.keys, rand)
        matchers = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(p)) + "$"), m.upper(), op)
                    for p, item in self.doc["paths"].items() for m, op in item.items()]
        all_codes = {int(c) for _, _, op in matchers for c in op["responses"]}
        before = self.snapshot()
        created_tasks, nodes, leases, touched = set(), set(), set(), set()
        statuses, failures = {}, []
        t0 = time.monotonic()
        sent = 0
        for i in range(COUNT):
            if time.monotonic() - t0 > BUDGET:
                break
            data, what, route, kid, body_obj, body = gen.request()
            ans = send(self.port, data)
            sent += 1
            statuses[ans.status] = statuses.get(ans.status, 0) + 1
            problem = None
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            path = parts[1].split("?")[0] if len(parts) > 1 else ""
            matched = [(m, op) for rx, m, op in matchers if rx.match(path)]
            route_op = next((op for m, op in matched if m == parts[0]), None)
            if ans.status == 0 and data.startswith(b"\r\n"):
                pass    # an empty request line is closed silently (http.server): a stray CRLF after a
                        # body must never be answered, or a keep-alive client takes it for its next answer
            elif ans.status == 0:
                problem = "no answer"
            elif ans.status >= 500:
                problem = f"server error {ans.status}"
            elif ans.status not in all_codes:
                problem = f"undocumented status {ans.status}"
            elif route_op is not None and ans.status >= 400 and str(ans.status) not in route_op["responses"]:
                problem = f"status {ans.status} not documented for {route_op['operationId']}"
            elif b"Traceback" in ans.body or b'File "' in ans.body:
                problem = "traceback text in the answer"
            elif ans.status >= 400 and parts[0] != "HEAD":
                try:
                    err = json.loads(ans.body)["error"]
                    if not (isinstance(err["code"], str) and isinstance(err["message"], str)):
                        problem = "error without code and message"
                except (ValueError, KeyError, TypeError):
                    problem = f"error answer is not JSON: {ans.body[:80]!r}"
                if not ans.headers.get("content-type", "").startswith("application/json"):
                    problem = problem or f"error answer content type {ans.headers.get('content-type')}"
            if problem:
                failures.append(f"{problem}: {what} -> {ans.status} {ans.body[:160]!r}")
                continue
            if 200 <= ans.status < 300 and route_op is not None:
                name = route_op["operationId"]
                answer = json.loads(ans.body) if name in ("dispatch", "graph", "lease_acquire") else {}
                if name == "dispatch":
                    created_tasks.add(int(answer["task"]["id"][1:]))
                elif name == "graph":
                    created_tasks |= {int(t["id"][1:]) for t in answer["tasks"].values()}
                elif name == "heartbeat":
                    nodes.add(json.loads(body)["node"])
                elif name == "lease_acquire":
                    leases.add(answer["name"])
                m = re.match(r"^/v1/tasks/(t\d+)/", path)
                if m:
                    touched.add(int(m.group(1)[1:]))
                if name == "results":
                    touched.add(int(json.loads(body)["task"][1:]))
        wall = time.monotonic() - t0
        self.assertFalse(failures, f"seed {seed}: {len(failures)} bad answers, e.g.:\n" + "\n".join(failures[:15]))
        self.assertGreaterEqual(sent, min(COUNT, 1000), f"only {sent} requests in {BUDGET} s")

        # nothing stored but what accepted requests created
        after = self.snapshot()
        self.assertEqual(set(after["tasks"]), set(before["tasks"]) | created_tasks, f"seed {seed}: tasks")
        for n, row in before["tasks"].items():
            if n not in touched:
                self.assertEqual(after["tasks"][n], row, f"seed {seed}: t{n} changed by a refused request")
        self.assertEqual(after["nodes"], before["nodes"] | nodes, f"seed {seed}: nodes")
        self.assertEqual(after["leases"], before["leases"] | leases, f"seed {seed}: leases")
        if not (created_tasks or touched):
            self.assertEqual(after["history"], before["history"])
        integrity = self.rows("PRAGMA integrity_check")[0][0]
        self.assertEqual(integrity, "ok")

        # no internal error logged; a good request is served
        with open(os.path.join(self.fleet.dir, "supervisor-0.log")) as f:
            log = f.read()
        self.assertNotIn("internal_error", log, f"seed {seed}")
        with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
            self.assertEqual(resp.status, 200)
        tid = self.fleet.client("admin").call("POST", "/v1/tasks", {"kind": "after-fuzz"})["task"]["id"]
        self.assertEqual(self.fleet.client("viewer").call("GET", f"/v1/tasks/{tid}")["task"]["state"], "queued")
        refused = sum(c for s, c in statuses.items() if s >= 400)
        print(f"\n  fuzz: {sent} requests in {wall:.1f} s (seed {seed}), {refused} refused with a documented 4xx, "
              f"{sent - refused} accepted, 0 5xx; statuses {dict(sorted(statuses.items()))}; "
              f"{len(created_tasks)} tasks and {len(nodes - before['nodes'])} nodes created, all by valid requests",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
