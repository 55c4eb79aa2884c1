"""The OpenAPI 3.0 document of protocol v1, built from the routes (api.py) and the wire schemas.

Nothing here is written by hand twice: every route of Api.routes becomes an operation
(its method, its path with the regex groups as parameters, who may call it), and every
request body comes from meshkit.core.wire, with the extra limits the handlers check
(tasks.py, brain.py) spelled out so that a schema-valid body is one the server accepts
and a schema-invalid one is refused with a 4xx. Served at GET /v1/openapi.json.
"""

import re

from meshkit import __version__
from meshkit.adapters.storerepl import REPLICATED
from meshkit.core import wire
from meshkit.rules import auth, fsm

MAX_INT = wire.MAX_INT

# Which wire schema (a name in meshkit.core.wire) a route's body follows; routes not listed take
# no body. A name wire does not define (yet) is skipped, with its routes' bodies undocumented
# (tests/test_openapi.py fails on that).
BODY_OF = {
    "heartbeat": "HEARTBEAT", "claim": "CLAIM", "start": "START", "results": "RESULT", "dispatch": "DISPATCH",
    "cancel": "CANCEL", "graph": "GRAPH", "mode": "MODE", "lease_acquire": "LEASE_ACQUIRE",
    "lease_renew": "LEASE_RENEW", "lease_release": "LEASE_RELEASE", "promote": "PROMOTE", "demote": "DEMOTE",
    "replicate_rows": "REPLICATE_ROWS",
}
REQUEST_BODIES = {route: (name, getattr(wire, name)) for route, name in BODY_OF.items() if hasattr(wire, name)}
OPTIONAL_BODY = {"cancel", "promote", "demote"}     # handlers that take no body at all as {}

# Limits the handlers check beyond the wire types: (schema, field) -> JSON-schema keywords.
EXTRA = {
    ("DISPATCH", "timeout"): {"exclusiveMinimum": True, "minimum": 0, "maximum": 604800},
    ("DISPATCH", "max_attempts"): {"minimum": 1, "maximum": 100},
    ("DISPATCH", "priority"): {"minimum": -1_000_000, "maximum": 1_000_000},
    ("DISPATCH", "key"): {"minLength": 1, "maxLength": 200},
    ("CLAIM", "max"): {"minimum": 1},
    ("HEARTBEAT", "slots"): {"minimum": 1},
    ("HEARTBEAT", "free_slots"): {"minimum": 0, "description": "at most slots (400 when both are given and it is more)"},
    ("RESULT", "outcome"): {"enum": list(wire.OUTCOMES)},
    ("RESULT", "ended_by"): {"enum": list(wire.ENDED_BY)},
    ("MODE", "mode"): {"enum": ["maintenance", "normal"]},
    ("LEASE_ACQUIRE", "ttl"): {"minimum": 1, "maximum": 86400},
    ("LEASE_RENEW", "ttl"): {"minimum": 1, "maximum": 86400},
}
PARAM_NAMES = {"tasks": "id", "kinds": "kind", "leases": "name"}     # the path segment before a regex group names it
PATH_PARAM = {"id": {"type": "string", "pattern": r"^t[0-9]{1,18}$", "description": "a task id like t12"},
              "kind": {"type": "string", "pattern": wire.NAME_RE.pattern, "description": "a task kind"},
              "name": {"type": "string", "pattern": wire.NAME_RE.pattern, "description": "a lease name"}}
LIST_QUERY = {
    "state": {"type": "string", "enum": list(fsm.STATES) + [""], "description": "empty = any state"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "after": {"type": "string", "pattern": r"^t[0-9]{1,18}$", "description": "only tasks with a larger id (the next "
                                                                           "page, oldest first)"},
    "before": {"type": "string", "pattern": r"^t[0-9]{1,18}$", "description": "only tasks with a smaller id (with "
                                                                            "order=desc: the previous page)"},
    "order": {"type": "string", "enum": ["asc", "desc"], "default": "asc",
              "description": "asc: oldest first; desc: newest first"},
}
# The schemas of the query parameters a route takes. Which names a route takes is its Route.query
# (api.py; the server refuses any other); a name listed there but not here (the replication and
# watchdog routes' internal ones) is listed under x-meshkit-internal-query, not fuzzed as a parameter.
QUERIES = {"tasks": LIST_QUERY}

SIGNED = {"MeshkitKey": [], "MeshkitTimestamp": [], "MeshkitNonce": [], "MeshkitSignature": []}
SECURITY_SCHEMES = {
    "MeshkitKey": {"type": "apiKey", "in": "header", "name": auth.H_KEY,
                   "description": "key id from the keys file (e.g. admin-1)"},
    "MeshkitTimestamp": {"type": "apiKey", "in": "header", "name": auth.H_TS,
                         "description": "unix seconds; refused if further off than auth.max_skew (300 s)"},
    "MeshkitNonce": {"type": "apiKey", "in": "header", "name": auth.H_NONCE,
                     "description": "16-128 characters of A-Za-z0-9_-, never reused (a replay gets 401)"},
    "MeshkitSignature": {"type": "apiKey", "in": "header", "name": auth.H_SIG,
                         "description": "hex HMAC-SHA256 (key: the secret as text) of "
                                        "METHOD\\nPATH_WITH_QUERY\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(BODY))"},
    "ViewerBearer": {"type": "http", "scheme": "bearer",
                     "description": "the viewer token of auth.viewer_token_file, not a signing secret "
                                    "(GET /metrics and /v1/overview only)"},
}

ERRORS = {
    400: "bad request: malformed JSON, a key given twice in an object, wrong types, unknown or missing fields, out-of-range "
         "values, an unknown query parameter, a query parameter given more than once, bad headers or request line",
    401: "missing, bad, stale or replayed signature; a bearer token on a route that does not take one; an HA "
         "control request signed before this supervisor started",
    403: "the key's role may not call this; or a worker key bound to nodes speaks for another node "
         "(reason node_not_bound)",
    404: "no such endpoint or task",
    405: "method not allowed on this path (see Allow)",
    408: "the client was too slow to send its request",
    409: "conflict with the current state: stale fence, unknown node, task already ended, kind not quarantined, "
         "not the active supervisor, a graph with some of its keys already used (or a task without a key), an HA "
         "control request naming an epoch that does not fit this supervisor's (epoch_mismatch)",
    413: "the body is over supervisor.max_body",
    414: "the request line is too long",
    431: "the headers are too large",
    503: "unavailable: shutting down, too many connections, disk full or database busy (retry; see Retry-After)",
}
NO_AUTH_ERRORS = (400, 404, 405, 408, 413, 414, 431, 503)

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
}
PLAIN_ANSWERS = {"metrics": "text/plain", "page": "text/html"}
# 201 on creation; 200, described here, when sent again with keys already used (a retry).
CREATED = {"dispatch": "the task already dispatched with this key (created: false)",
           "graph": "the tasks already dispatched with these keys, by name (created: false): every task of the "
                    "graph has a key and every key is used, so nothing new is dispatched"}


def type_schema(typ: str) -> dict:
    """A wire type (wire.TYPES) as an OpenAPI 3.0 schema."""
    integer = {"type": "integer", "minimum": -MAX_INT, "maximum": MAX_INT}
    number = {"type": "number", "minimum": -MAX_INT, "maximum": MAX_INT}
    string = {"type": "string", "maxLength": wire.MAX_STR}
    name = {"type": "string", "pattern": wire.NAME_RE.pattern}
    task_id = {"type": "string", "pattern": wire.TASK_ID_RE.pattern}

    def listof(item, n=wire.MAX_LIST):
        return {"type": "array", "maxItems": n, "items": item}

    return {
        "str": string, "int": integer, "num": number, "bool": {"type": "boolean"},
        "trace": {"type": "string", "pattern": wire.TRACE_RE.pattern},
        "name": name, "id": task_id,
        "strlist": listof(string), "namelist": listof(name), "idlist": listof(task_id),
        "num3": listof(number, 3),
        "running": listof({"type": "object", "required": ["task", "fence"], "additionalProperties": False,
                           "properties": {"task": task_id, "fence": integer}}),
        "expects": {"type": "object", "nullable": True, "required": ["path"], "additionalProperties": False,
                    "properties": {"path": dict(string, minLength=1, pattern=wire.EXPECTS_PATH_RE.pattern,
                                                description="relative, inside the task directory: no '..', "
                                                            "not absolute"),
                                   "keys": listof(string)}},
        "any": {"nullable": True},
        "objlist": listof({"type": "object"}),
        "optstr": dict(string, nullable=True), "optint": dict(integer, nullable=True),
        "rowkeys": listof({"type": "object", "required": ["table", "key"], "additionalProperties": False,
                           "properties": {"table": {"type": "string", "enum": list(REPLICATED)},
                                          "key": {"type": "object", "minProperties": 1, "maxProperties": 4,
                                                  "description": "the table's primary-key columns and values"}}}),
        "hold": {"type": "object", "nullable": True, "required": ["reason"], "additionalProperties": False,
                 "description": "why the worker claims no new work now (null or left out: it claims as usual); "
                                "reason memory_guard: its resident memory is over limits.rss_soft_mb",
                 "properties": {"reason": name,
                                **{k: dict(integer, minimum=0) for k in wire.HOLD_FIGURES}}},
    }[typ]


def object_schema(name: str, schema: dict) -> dict:
    props = {}
    for field, (typ, _) in schema.items():
        props[field] = dict(type_schema(typ), **EXTRA.get((name, field), {}))
    out = {"type": "object", "additionalProperties": False, "properties": props}
    required = [f for f, (_, req) in schema.items() if req]
    if required:
        out["required"] = required
    return out


def components() -> dict:
    schemas = {name: object_schema(name, schema) for name, schema in REQUEST_BODIES.values()}
    graph_task = object_schema("DISPATCH", wire.GRAPH_TASK)
    graph_task["properties"]["name"] = {"type": "string", "pattern": wire.NAME_RE.pattern}
    graph_task["properties"]["after"]["description"] = "names of tasks of this graph, or task ids"
    graph_task["required"] = ["name", "kind"]
    schemas["GRAPH_TASK"] = graph_task
    schemas["GRAPH"]["properties"]["tasks"] = {"type": "array", "minItems": 1, "maxItems": 1000,
                                               "items": {"$ref": "#/components/schemas/GRAPH_TASK"}}
    schemas["ERROR"] = ERROR_SCHEMA
    return {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES}


def openapi_path(pattern: str) -> tuple:
    """("/v1/tasks/{id}/start", ["id"]) from "/v1/tasks/([^/]+)/start"."""
    names = []

    def group(m):
        before = pattern[:m.start()].rstrip("/").rsplit("/", 1)[-1]
        names.append(PARAM_NAMES.get(before, "param"))
        return "{" + names[-1] + "}"

    return re.sub(r"\([^()]*\)", group, pattern), names


def query_parameter(name: str, schema: dict, repeatable: bool) -> dict:
    """A query parameter: one value, given at most once (a second one is refused with 400: see
    ERRORS), unless the route lists it as repeatable: then an array (name=a&name=b)."""
    if repeatable:
        return {"name": name, "in": "query", "required": False, "style": "form", "explode": True,
                "schema": {"type": "array", "items": schema}}
    return {"name": name, "in": "query", "required": False, "schema": schema}


def operation(route) -> dict:
    body = REQUEST_BODIES.get(route.name)
    _, params = openapi_path(route.pattern)
    op = {"operationId": route.name, "summary": f"{route.name} ({route.auth if route.auth != 'none' else 'anyone'})",
          "x-meshkit-auth": route.auth, "parameters": [], "responses": {}}
    for p in params:
        op["parameters"].append({"name": p, "in": "path", "required": True, "schema": PATH_PARAM.get(p, {"type": "string"})})
    schemas = QUERIES.get(route.name, {})
    for q in route.query:
        if q in schemas:
            op["parameters"].append(query_parameter(q, schemas[q], q in route.repeatable))
        else:
            op.setdefault("x-meshkit-internal-query", []).append(q)
    if body:
        op["requestBody"] = {"required": route.name not in OPTIONAL_BODY,
                             "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body[0]}"}}}}
    if route.auth == "none":
        op["security"] = []
    elif route.auth == "viewer":
        op["security"] = [dict(SIGNED), {"ViewerBearer": []}] if route.bearer else [dict(SIGNED)]
    else:
        op["security"] = [dict(SIGNED)]
    ok = PLAIN_ANSWERS.get(route.name, "application/json")
    ok_schema = {"type": "string"} if ok != "application/json" else {"type": "object"}
    good = {"description": "done", "content": {ok: {"schema": ok_schema}}}
    if route.name in CREATED:
        op["responses"]["201"] = dict(good, description="created (created: true)")
        op["responses"]["200"] = dict(good, description=CREATED[route.name])
    else:
        op["responses"]["200"] = good
    codes = NO_AUTH_ERRORS if route.auth == "none" else sorted(ERRORS)     # 409 too: not_active on a standby
    for code in codes:
        op["responses"][str(code)] = {"description": ERRORS[code],
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ERROR"}}}}
    return op


def document(routes) -> dict:
    """The whole OpenAPI document for these routes."""
    paths = {}
    for route in routes:
        path, _ = openapi_path(route.pattern)
        paths.setdefault(path, {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "meshkit supervisor, protocol v1", "version": __version__,
                 "description": "JSON over HTTP/1.1. Every answer carries X-Meshkit-Epoch; errors are "
                                '{"error": {"code", "message"}} with a 4xx status, 503 for the server\'s own '
                                "trouble (retry). Requests but /health, / and /v1/openapi.json are signed "
                                "(four X-Meshkit-* headers); GET /metrics and /v1/overview also take the viewer token "
                                "(auth.viewer_token_file) as a bearer token. A route refuses a query parameter it does not list (400)."},
        "paths": paths,
        "components": components(),
    }
