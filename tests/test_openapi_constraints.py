"""Every constraint the OpenAPI document declares is one the live supervisor enforces.

For each operation's request body, path and query parameters, values are derived from the
document alone (never from the validator) that break exactly one declared constraint: a wrong
type, null where not nullable, a number past minimum / exclusiveMinimum / maximum, a fraction or
a boolean for an integer, a string past maxLength or under minLength, a string the pattern
refuses (read as JSON Schema reads it: ECMA-262, where `$` is the end of the text), a value
outside an enum, an array past maxItems or under minItems or with one bad item, an unknown
property, a missing required one; recursively inside nested objects and array items. Each is
sent signed to a real supervisor and must be refused with a 4xx JSON error (400 for bodies), and
store nothing. This is what schemathesis' negative_data_rejection (ST201) checks at random; issue
#10's one intermittent finding was of this class (a trailing newline after a valid name)."""

import http.client
import json
import os
import sqlite3
import time
import unittest
import urllib.parse

from tests.helpers import Fleet, register
from tests.test_openapi import conforms, resolve, routes

from meshkit.roles.supervisor import openapi
from meshkit.rules import auth

# Strings tried against every pattern: those the pattern refuses are sent as violations.
PROBES = ["n1", "t1", "out.json", "", " ", "a b", "é", "t0", "t01", "x" * 129, "../x", "/etc/passwd",
          "a/../../b", ".", "./", "a\x00", "n1\n", "\nn1", "t1\n", "out.json\n", "n1\r", "n1 ", "t1 "]
WRONG_TYPE = {"string": 5, "integer": "1", "number": "1", "boolean": 1, "array": {}, "object": []}
UNSAFE = {"promote", "demote"}      # sent last: an accepted one would change the supervisor's role


def valid(doc, schema):
    """A small value the schema accepts."""
    s = resolve(doc, schema)
    t = s.get("type")
    if "enum" in s:
        return s["enum"][0]
    if t == "string":
        return next(p for p in PROBES if conforms(doc, s, p))
    if t in ("integer", "number"):
        lo = s.get("minimum", 1)
        v = max(1, lo + 1 if s.get("exclusiveMinimum") else lo)
        return min(v, s.get("maximum", v))
    if t == "boolean":
        return True
    if t == "array":
        return [valid(doc, s["items"])] * s.get("minItems", 0)
    if t == "object":
        return {k: valid(doc, s["properties"][k]) for k in s.get("required", [])}
    return None


def violations(doc, schema) -> list:
    """(what, value) pairs, each breaking one constraint the schema declares."""
    s = resolve(doc, schema)
    t = s.get("type")
    if not t:
        return []
    out = [(f"{WRONG_TYPE[t]!r} for {t}", WRONG_TYPE[t])]
    if not s.get("nullable"):
        out.append(("null", None))
    if t in ("integer", "number"):
        out.append(("true for a number", True))
        if t == "integer":
            out.append(("a fraction", 1.5))
        if "minimum" in s:
            out.append(("at exclusiveMinimum", s["minimum"]) if s.get("exclusiveMinimum")
                       else ("under minimum", s["minimum"] - 1))
        if "maximum" in s:
            out.append(("over maximum", s["maximum"] + 1))
    elif t == "string":
        if "maxLength" in s:
            out.append(("over maxLength", valid(doc, s)[:1] * (s["maxLength"] + 1)))
        if s.get("minLength", 0) > 0:
            out.append(("under minLength", ""))
        if "enum" in s:
            out.append(("outside the enum", "not-a-member"))
        if "pattern" in s:
            out += [(f"pattern refuses {p[:20]!r}", p) for p in PROBES if not conforms(doc, s, p)]
    elif t == "array":
        item = valid(doc, s["items"])
        if "maxItems" in s:
            out.append(("over maxItems", [item] * (s["maxItems"] + 1)))
        if s.get("minItems", 0) > 0:
            out.append(("under minItems", []))
        out += [(f"an item {what}", [v]) for what, v in violations(doc, s["items"])]
    elif t == "object":
        base = valid(doc, s)
        if s.get("additionalProperties") is False:
            out.append(("an unknown property", dict(base, unknown_x=1)))
        for k in s.get("required", []):
            out.append((f"without required {k!r}", {f: v for f, v in base.items() if f != k}))
        for k, sub in s.get("properties", {}).items():
            out += [(f".{k}: {what}", dict(base, **{k: v})) for what, v in violations(doc, sub)]
    return out


class DeclaredConstraintsAreEnforced(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fleet = Fleet()
        cls.url = cls.fleet.start_supervisor()
        cls.admin = cls.fleet.client("admin")
        cls.doc = openapi.document(routes())
        register(cls.admin, "n1", kinds=["k"])
        cls.task = cls.admin.call("POST", "/v1/tasks", {"kind": "k"})["task"]["id"]
        cls.db = os.path.join(cls.fleet.dir, "data", "meshkit.db")

    @classmethod
    def tearDownClass(cls):
        cls.fleet.close()

    def counts(self) -> tuple:
        db = sqlite3.connect(self.db, timeout=10)
        try:
            return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                         for t in ("tasks", "history", "nodes", "leases", "kinds"))
        finally:
            db.close()

    def operations(self):
        ops = [(path, method, op) for path, item in self.doc["paths"].items() for method, op in item.items()
               if op["operationId"] not in ("page",)]
        return sorted(ops, key=lambda o: o[2]["operationId"] in UNSAFE)

    def path_of(self, path, op, override=None) -> str:
        for p in op["parameters"]:
            if p["in"] == "path":
                value = (override or {}).get(p["name"], self.task if p["name"] == "id" else valid(self.doc, p["schema"]))
                path = path.replace("{" + p["name"] + "}", urllib.parse.quote(value, safe=""))
        return path

    def send(self, method, path, body) -> tuple:
        """(status, parsed answer); the body is always sent as JSON, `null` included."""
        data = json.dumps(body).encode() if body is not None or method != "get" else b""
        kid, secret = self.admin.key_id, self.admin.secret
        headers = auth.signed_headers(kid, secret, method.upper(), path, data, time.time(), os.urandom(16).hex())
        conn = http.client.HTTPConnection(self.url[7:], timeout=30)
        try:
            conn.request(method.upper(), path, body=data, headers=dict(headers, **{"Content-Type": "application/json"}))
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def refused(self, method, path, body, why, statuses=(400,)):
        before = self.counts()
        status, answer = self.send(method, path, body)
        self.assertIn(status, statuses, f"{method.upper()} {path} {why}: {json.dumps(body)[:200]} -> {status} {answer}")
        self.assertIn("message", answer["error"], why)
        self.assertEqual(self.counts(), before, f"{method.upper()} {path} {why}: something was stored")
        return 1

    def test_a_body_breaking_any_declared_constraint_is_refused(self):
        sent = 0
        for path, method, op in self.operations():
            if "requestBody" not in op:
                continue
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            url = self.path_of(path, op)
            for what, body in violations(self.doc, schema):
                with self.subTest(op=op["operationId"], violation=what):
                    sent += self.refused(method, url, body, what)
        self.assertGreater(sent, 200)

    def test_path_and_query_parameters_breaking_their_schema_are_refused(self):
        sent = 0
        for path, method, op in self.operations():
            body = valid(self.doc, op["requestBody"]["content"]["application/json"]["schema"]) \
                if "requestBody" in op else None
            for p in op["parameters"]:
                numeric = p["schema"].get("type") in ("integer", "number")
                for what, value in violations(self.doc, p["schema"]):
                    if not isinstance(value, str) or value == "" or (numeric and value.lstrip("-").isdigit()):
                        continue        # a path or a query carries text only ("1" is the integer 1); "" is no segment
                    with self.subTest(op=op["operationId"], param=p["name"], violation=what):
                        if p["in"] == "path":
                            url = self.path_of(path, op, {p["name"]: value})
                            sent += self.refused(method, url, body, f"path {p['name']} {what}", (400, 404))
                        else:
                            url = path + "?" + urllib.parse.urlencode({p["name"]: value})
                            sent += self.refused(method, url, body, f"query {p['name']} {what}")
        self.assertGreater(sent, 40)

    def test_issue_10_a_valid_name_and_a_final_newline_is_refused(self):
        # schemathesis' one ST201 finding: a negative body whose name was a valid name and "\n".
        # Python's `$` matched before the newline, so the server stored node "0\n"; JSON Schema's
        # `$` (ECMA-262) does not, so the document said it was invalid.
        cases = [("POST", "/v1/heartbeat", {"node": "0\n"}, "node"),
                 ("POST", "/v1/tasks", {"kind": "k\n"}, "kind"),
                 ("POST", "/v1/tasks", {"kind": "k", "trace_id": "tr\n"}, "trace_id"),
                 ("POST", "/v1/tasks", {"kind": "k", "after": [self.task + "\n"]}, "after"),
                 ("POST", "/v1/leases/gpu/acquire", {"holder": "h\n"}, "holder"),
                 ("POST", "/v1/leases/gpu%0A/acquire", {"holder": "h"}, None),
                 ("POST", "/v1/kinds/k%0A/resume", None, "kind")]
        for method, path, body, field in cases:
            with self.subTest(path=path, body=body):
                before = self.counts()
                status, answer = self.send(method, path, body) if body is not None else self.admin.request(method, path)
                self.assertEqual(status, 400, answer)
                self.assertEqual(answer["error"].get("field"), field, answer)
                self.assertEqual(self.counts(), before)

    def test_the_valid_values_used_as_bases_are_accepted(self):
        # The violations above differ from these in one place only; these must pass.
        base = valid(self.doc, {"$ref": "#/components/schemas/DISPATCH"})
        self.assertEqual(self.admin.request("POST", "/v1/tasks", base)[0], 201)
        self.assertEqual(self.admin.request("POST", "/v1/heartbeat", valid(self.doc, {"$ref": "#/components/schemas/HEARTBEAT"}))[0], 200)
        graph = valid(self.doc, {"$ref": "#/components/schemas/GRAPH"})
        self.assertEqual(self.admin.request("POST", "/v1/graph", graph)[0], 201, graph)
        lease = self.path_of("/v1/leases/{name}/acquire", {"parameters": [{"in": "path", "name": "name",
                                                                            "schema": openapi.PATH_PARAM["name"]}]})
        self.assertEqual(self.admin.request("POST", lease, valid(self.doc, {"$ref": "#/components/schemas/LEASE_ACQUIRE"}))[0], 200)
        expects = {"kind": "k", "expects": {"path": "sub/./out.json", "keys": ["a"]}}
        self.assertEqual(self.admin.request("POST", "/v1/tasks", expects)[0], 201)


if __name__ == "__main__":
    unittest.main()
