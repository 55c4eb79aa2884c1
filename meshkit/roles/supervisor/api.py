"""Protocol v1: the routes, who may call them, and what they answer."""

import hmac
import threading
import urllib.parse

from meshkit import __version__
from meshkit.adapters.httpapp import App, Raw, Route, WouldWait, encode_json
from meshkit.core import metrics as m
from meshkit.core import wire
from meshkit.core.errors import BadRequest, Forbidden, Unauthorized
from meshkit.roles.supervisor import openapi, page
from meshkit.roles.supervisor import cancel, intake
from meshkit.rules import auth, failover, fsm
from meshkit.rules.epochclaim import parse_epoch


ACTIVE_ONLY = {"heartbeat", "claim", "start", "results", "dispatch", "cancel", "graph", "resume", "mode",
               "lease_acquire", "lease_renew", "lease_release"}
ACKNOWLEDGED = {"dispatch", "results", "graph", "cancel"}     # sync replication waits for these
SERIAL = {"heartbeat", "claim", "start", "results", "dispatch", "cancel"}   # short, store-bound: App.lock
REFUSALS_EVERY = 60.0        # at most one request_refused line per (client, reason) per this many seconds
# Every node state meshkit_nodes shows, 0 when no node is in it (a series that vanished could
# not be alerted on: `meshkit_nodes{state="alive"} < 1`); nodes rows are 'alive' or 'stale'.
NODE_STATES = ("alive", "stale")
ORDERS = ("asc", "desc")     # GET /v1/tasks?order=: oldest first (the default) or newest first
# HA control routes: a request signed before this process started is refused (401
# signed_before_start): the nonces an earlier process accepted are gone, so it may be a replay.
# ha_check only when it names the active epoch (only then does it change anything).
CONTROL = {"promote", "demote", "replicate", "ha_check"}


class Api:
    def __init__(self, sup):
        self.sup = sup
        self.tasks = sup.tasks
        self._nonce_lock = threading.Lock()
        self.nonces = auth.NonceCache(sup.cfg.get("auth.max_skew"))
        self._refusals_lock = threading.Lock()
        self.refusals = auth.RefusalLog(REFUSALS_EVERY)
        self._headers = (None, {})
        reg = self.registry = m.Registry()
        self.requests = reg.add(m.Counter("meshkit_http_requests_total", "HTTP requests by route and status",
                                          ("route", "status")))
        self.errors = reg.add(m.Counter("meshkit_http_errors_total", "HTTP answers >= 400 by route", ("route",)))
        self.duration = reg.add(m.Histogram(
            "meshkit_http_request_duration_seconds",
            "request duration by route, from the request read to the answer sent; a long-poll (claim, replicate) "
            "includes the time it was held waiting (up to its wait), a replicated write the standby's acknowledgement",
            ("route",)))
        self.claim_latency = reg.add(m.Histogram(
            "meshkit_claim_latency_seconds",
            "time to answer a claim that leased work, from the start of the pass that leased it (a long-poll's wait "
            "before it is left out)"))
        self.task_gauge = reg.add(m.Gauge("meshkit_tasks", "tasks by state", ("state",)))
        self.pruned = reg.add(m.Counter("meshkit_tasks_pruned_total", "ended tasks deleted with their history and "
                                        "results (supervisor.retain_ended)"))     # counted by retention.py
        self.pruned.inc(by=0)       # shown from the start, 0
        self.node_gauge = reg.add(m.Gauge("meshkit_nodes", "nodes by state", ("state",)))
        self.kinds_quarantined = reg.add(m.Gauge("meshkit_kinds_quarantined", "task kinds quarantined now"))
        self.kind_quarantined = reg.add(m.Gauge("meshkit_kind_quarantined",
                                                "1 while this task kind is quarantined, 0 when not (kinds that "
                                                "ever failed)", ("kind",)))
        self.oldest = reg.add(m.Gauge("meshkit_oldest_queued_seconds", "age of the oldest queued task"))
        self.epoch_gauge = reg.add(m.Gauge("meshkit_epoch", "the supervisor's epoch"))
        self.repl_lag = reg.add(m.Gauge("meshkit_replication_lag_changes",
                                        "changes the standby does not hold yet (on either side)"))
        self.leases_held = reg.add(m.Gauge("meshkit_fleet_leases_held", "fleet-wide leases currently held"))
        self.sync_failures = reg.add(m.Gauge("meshkit_sync_consecutive_failures",
                                             "failed runs in a row of this machine's sync jobs", ("job",)))
        self.sync_success = reg.add(m.Gauge("meshkit_sync_last_success_timestamp_seconds",
                                            "unix time of the last successful sync run", ("job",)))
        self.routes = [
            Route("GET", "/health", "health", self.health, auth="none"),
            Route("POST", "/v1/heartbeat", "heartbeat", self.heartbeat),
            Route("POST", "/v1/claim", "claim", self.claim),
            Route("POST", "/v1/tasks/([^/]+)/start", "start", self.start),
            Route("POST", "/v1/results", "results", self.results),
            Route("POST", "/v1/tasks", "dispatch", self.dispatch, auth="admin"),
            Route("GET", "/v1/tasks", "tasks", self.list_tasks, auth="viewer",
                  query=("state", "limit", "after", "before", "order")),
            Route("GET", "/v1/tasks/([^/]+)", "task", self.get_task, auth="viewer"),
            Route("POST", "/v1/tasks/([^/]+)/cancel", "cancel", self.cancel, auth="admin"),
            Route("GET", "/v1/tasks/([^/]+)/explain", "explain", self.explain, auth="viewer"),
            Route("POST", "/v1/graph", "graph", self.graph, auth="admin"),
            Route("GET", "/v1/kinds", "kinds", self.kinds, auth="viewer"),
            Route("POST", "/v1/kinds/([^/]+)/resume", "resume", self.resume_kind, auth="admin"),
            Route("POST", "/v1/mode", "mode", self.set_mode, auth="admin"),
            Route("POST", "/v1/leases/([^/]+)/acquire", "lease_acquire", self.lease_acquire),
            Route("POST", "/v1/leases/([^/]+)/renew", "lease_renew", self.lease_renew),
            Route("POST", "/v1/leases/([^/]+)/release", "lease_release", self.lease_release),
            Route("GET", "/v1/leases", "leases", self.list_leases, auth="viewer"),
            Route("GET", "/v1/replicate", "replicate", self.replicate, auth="admin",
                  query=("since", "wait", "limit", "epoch")),
            Route("POST", "/v1/replicate/rows", "replicate_rows", self.replicate_rows, auth="admin"),
            Route("POST", "/v1/promote", "promote", self.promote, auth="admin"),
            Route("POST", "/v1/demote", "demote", self.demote, auth="admin"),
            Route("GET", "/v1/ha/check", "ha_check", self.ha_check, auth="admin", query=("active",)),
            Route("GET", "/v1/leases/([^/]+)", "lease", self.get_lease, auth="viewer"),
            Route("GET", "/v1/status", "status", self.status, auth="viewer"),
            Route("GET", "/metrics", "metrics", self.metrics, auth="viewer", bearer=True),
            Route("GET", "/", "page", page.page, auth="none"),                # status page (page.py)
            Route("GET", "/v1/overview", "overview", lambda req: page.overview(self.sup), auth="viewer", bearer=True),
            Route("GET", "/v1/openapi.json", "openapi", self.openapi, auth="none"),     # openapi.py
        ]

        for route in self.routes:        # work is accepted by the active primary only
            if route.name in ACTIVE_ONLY:
                route.handler = self._active(route.handler)
            if route.name in ACKNOWLEDGED:   # waits for the standby: after the handler, unlocked
                route.after = self._acknowledge
            route.serial = route.name in SERIAL

    def _acknowledge(self, req) -> None:
        if not self.sup.ha.acknowledge(req.may_wait):
            raise WouldWait()       # sync replication: wait for the standby on a thread

    def _active(self, handler):
        def wrapped(req):
            self.sup.ha.require_active(req)
            return handler(req)
        return wrapped

    def app(self) -> App:
        return App(self.routes, self.authenticate, self.sup.cfg.get("supervisor.max_body"),
                   on_response=self.on_response, common_headers=self.headers,
                   logger=self.sup.log, clock=self.sup.clock, lock=self.tasks.cond, batch=self.sup.store.batch)

    # -- auth and bookkeeping -------------------------------------------------------

    def authenticate(self, req) -> None:
        try:
            self._authenticate(req)
        except (Unauthorized, Forbidden) as e:
            self._refused(req, e)
            raise

    def _authenticate(self, req) -> None:
        keys = self.sup.keys
        bearer = req.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and not req.route.bearer and auth.H_KEY not in req.headers:
            raise auth.refused("bearer_not_accepted", "the viewer token is accepted only by /metrics, /v1/overview"
                                                      " and the page /; sign this request")
        if req.route.bearer and bearer.startswith("Bearer "):
            token = bearer[7:].strip().encode()
            if any(hmac.compare_digest(token, t.encode()) for t in self.sup.viewer_tokens):
                req.key_id, req.role = "viewer-token", "viewer"
                return
            raise auth.refused("bad_bearer_token", "bad bearer token")
        with self._nonce_lock:
            req.key_id, req.role = auth.verify(req.headers, req.method, req.raw_path, req.body, keys,
                                               self.nonces, self.sup.clock.time(), self.sup.cfg.get("auth.max_skew"))
        auth.require_role(req.role, req.route.auth)
        if req.route.name in CONTROL and (req.route.name != "ha_check" or "active" in req.query) \
                and failover.signed_before_start(int(req.headers[auth.H_TS]), self.sup.started):
            raise auth.refused("signed_before_start", "an HA control request signed before this supervisor started "
                                                      "may be a replay; sign it again with the current time")
        req.nodes = keys[req.key_id][2]          # a worker key bound to nodes: checked by body() on worker routes

    def body(self, req, field: str = "node"):
        """The request's JSON body; 403 when the key is bound to nodes (its keys-file line names
        them) and the body speaks for another: its `node`, or the node part of a lease `holder`
        (NODE:PID). An unbound key (admin, or a worker key without nodes): only the falsy check."""
        body = req.json()
        if req.nodes and isinstance(body, dict) and isinstance(body.get(field), str):
            node = body[field] if field == "node" else auth.holder_node(body[field])
            if node not in req.nodes:
                e = Forbidden(f"key {req.key_id} speaks only for node{'s' if len(req.nodes) > 1 else ''} "
                              f"{', '.join(sorted(req.nodes))}, not {node[:128]!r} (its line in the supervisor's "
                              "keys file names its nodes)",
                              reason="node_not_bound", key=req.key_id, node=node[:128])
                self._refused(req, e)
                raise e
        return body

    def _refused(self, req, e) -> None:
        """Log a 401/403 (event request_refused), at most one line per (client, reason) per
        REFUSALS_EVERY seconds; the next line carries how many were left out (`suppressed`).
        The key id only if the keys file has it; never the signature or a secret."""
        reason = e.details.get("reason") or ("role_not_allowed" if isinstance(e, Forbidden) else e.code)
        with self._refusals_lock:
            verdict = self.refusals.note((req.client, reason), self.sup.clock.monotonic())
        if verdict is None:
            return
        kid = req.headers.get(auth.H_KEY)
        self.sup.log.warning("request_refused", status=e.status, reason=reason, message=e.message[:200],
                             client=req.client, key=kid if kid in self.sup.keys else None, route=req.route.name,
                             method=req.method, suppressed=verdict[0],
                             other_clients=True if verdict[1][0] == auth.RefusalLog.OTHERS else None)

    def flush_refusals(self, final: bool = False) -> None:
        """Log the refusals left out of windows that ended with no line since (every cycle;
        all of them at shutdown): event request_refused_suppressed."""
        with self._refusals_lock:
            due = self.refusals.due(self.sup.clock.monotonic(), final)
        for (client, reason), count in due:
            self.sup.log.warning("request_refused_suppressed", client=client, reason=reason, suppressed=count,
                                 window=REFUSALS_EVERY)

    def headers(self) -> dict:
        epoch = self.sup.epoch
        if self._headers[0] != epoch:           # built once per epoch, not per answer
            self._headers = (epoch, {"X-Meshkit-Epoch": str(epoch)})
        return self._headers[1]

    def on_response(self, req, route: str, status: int, seconds: float) -> None:
        self.requests.inc(route, str(status))
        if status >= 400:
            self.errors.inc(route)
        self.duration.observe(seconds, route)

    # -- handlers --------------------------------------------------------------------

    def health(self, req):
        return {"ok": True, "role": self.sup.role, "epoch": self.sup.epoch}

    def heartbeat(self, req):
        return dict(self.tasks.heartbeat(self.body(req)), epoch=self.sup.epoch)

    def claim(self, req):
        body = self.body(req)
        if req.may_wait:
            start, leased = self._claim_waiting(req, body)
        else:                       # the event loop's pass: it never waits
            start = self.sup.clock.monotonic()
            leased = self.tasks.claim(body, req.connected, False)
        if leased is None:
            raise WouldWait()       # nothing yet: the server lets it wait on a thread
        if leased:
            self.claim_latency.observe(self.sup.clock.monotonic() - start)
        return {"tasks": leased, "epoch": self.sup.epoch}

    def _claim_waiting(self, req, body) -> tuple:
        """(when the claim's last pass over the queue began, what it leased) for a claim that may
        wait: it tries, waits for a wake, tries again. The time noted as each pass begins starts
        the pass that leased: the claim latency leaves the long-poll's idle wait out (the route's
        duration keeps it)."""
        clock = self.sup.clock
        began = [clock.monotonic()]

        def pass_begins():
            began[0] = clock.monotonic()

        leased = self.tasks.claim(body, req.connected, True, on_pass=pass_begins)
        return began[0], leased

    def start(self, req):
        return dict(self.tasks.start(req.params[0], self.body(req)), epoch=self.sup.epoch)

    def results(self, req):
        return dict(self.tasks.result(self.body(req)), epoch=self.sup.epoch)

    def dispatch(self, req):
        task, created = intake.dispatch(self.tasks, req.json(), req.key_id)
        return encode_json(201 if created else 200, {"task": task, "created": created, "epoch": self.sup.epoch})

    def cancel(self, req):
        body = req.json() if req.body else {}
        return {"task": cancel.cancel_task(self.tasks, req.params[0], body, req.key_id), "epoch": self.sup.epoch}

    def explain(self, req):
        return dict(self.sup.brain.explain(req.params[0]), epoch=self.sup.epoch)

    def graph(self, req):
        tasks, created = intake.dispatch_graph(self.tasks, req.json(), req.key_id)
        return encode_json(201 if created else 200, {"tasks": tasks, "created": created, "epoch": self.sup.epoch})

    def kinds(self, req):
        return {"kinds": self.sup.brain.kinds(), "epoch": self.sup.epoch}

    def resume_kind(self, req):
        kind = urllib.parse.unquote(req.params[0])
        if not wire.is_name(kind):
            raise BadRequest("a kind is a name: letters, digits, _ . : @ - (at most 128)", field="kind")
        return dict(self.tasks.resume_kind(kind, req.key_id), epoch=self.sup.epoch)

    def set_mode(self, req):
        return dict(self.sup.brain.set_operator_mode(wire.validate(req.json(), wire.MODE, "mode"), req.key_id),
                    epoch=self.sup.epoch)

    def lease_acquire(self, req):
        name = urllib.parse.unquote(req.params[0])
        return dict(self.sup.leases.acquire(name, self.body(req, "holder")), epoch=self.sup.epoch)

    def lease_renew(self, req):
        name = urllib.parse.unquote(req.params[0])
        return dict(self.sup.leases.renew(name, self.body(req, "holder")), epoch=self.sup.epoch)

    def lease_release(self, req):
        name = urllib.parse.unquote(req.params[0])
        return dict(self.sup.leases.release(name, self.body(req, "holder")), epoch=self.sup.epoch)

    def list_leases(self, req):
        return {"leases": self.sup.leases.list(), "epoch": self.sup.epoch}

    def get_lease(self, req):
        return dict(self.sup.leases.get(urllib.parse.unquote(req.params[0])), epoch=self.sup.epoch)

    def replicate(self, req):
        q = req.query
        try:
            since, wait, limit = int(q.get("since", "0")), float(q.get("wait", "0")), int(q.get("limit", "2000"))
        except ValueError:
            raise BadRequest("since and limit are whole numbers, wait a number of seconds") from None
        epoch = parse_epoch(q.get("epoch"))
        if epoch is None and "epoch" in q:
            raise BadRequest("epoch is a whole number (the primary's epoch as the standby saw it last)", field="epoch")
        return self.sup.ha.feed(max(0, since), wait, min(max(1, limit), 10000), epoch)

    def replicate_rows(self, req):
        """Rows by key, as they are now: a former primary's rejoin asks for those it drops."""
        return self.sup.ha.rows(wire.validate(req.json(), wire.REPLICATE_ROWS, "replicate rows")["rows"])

    def promote(self, req):
        return self.sup.ha.promote(wire.validate(req.json() if req.body else {}, wire.PROMOTE, "promote"), req.key_id)

    def demote(self, req):
        return self.sup.ha.demote(wire.validate(req.json() if req.body else {}, wire.DEMOTE, "demote"), req.key_id)

    def ha_check(self, req):
        """The watchdog's deep check: answers, DB writable, role and epoch (ha.py: `?active=EPOCH`)."""
        return self.sup.ha.check(req.query)

    def get_task(self, req):
        return {"task": self.sup.store.task(req.params[0]), "epoch": self.sup.epoch}

    def list_tasks(self, req):
        q = req.query        # (other parameters are refused before: Route.query)
        state = q.get("state") or None
        if state is not None and state not in fsm.STATES:
            raise BadRequest(f"state must be one of {', '.join(fsm.STATES)}")
        limit = q.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise BadRequest("limit must be from 1 to 1000")
        order = q.get("order", "asc")
        if order not in ORDERS:
            raise BadRequest("order must be asc (oldest first) or desc (newest first)")
        after, before = task_number(q, "after", "t0"), task_number(q, "before", None)
        tasks = self.sup.store.tasks(state, int(limit), after, before, newest_first=order == "desc")
        return {"tasks": tasks, "epoch": self.sup.epoch}

    def openapi(self, req):
        return openapi.document(self.routes)

    def status(self, req):
        return self.sup.status()

    def metrics(self, req):
        st = self.sup.status()
        self.task_gauge.replace({(s,): c for s, c in st["tasks"].items()})
        nodes = dict.fromkeys(NODE_STATES, 0)
        for node in st["nodes"]:
            nodes[node["state"]] = nodes.get(node["state"], 0) + 1
        self.node_gauge.replace({(state,): count for state, count in nodes.items()})
        kinds = {(k["kind"],): int(k["quarantined"]) for k in self.sup.brain.kinds()}
        self.kind_quarantined.replace(kinds)
        self.kinds_quarantined.set(sum(kinds.values()))
        self.oldest.set(st["oldest_queued_age"] or 0)
        self.epoch_gauge.set(st["epoch"])
        self.repl_lag.set(st["replication"].get("lag_changes") or 0)
        self.leases_held.set(sum(1 for lease in st["leases"] if lease["state"] == "held"))
        self.sync_failures.replace({(j["job"],): j.get("consecutive_failures") or 0 for j in st["sync"] if j.get("job")})
        self.sync_success.replace({(j["job"],): j.get("last_success") or 0 for j in st["sync"] if j.get("job")})
        return Raw(200, self.registry.render().encode(), "text/plain; version=0.0.4; charset=utf-8")


def task_number(query: dict, name: str, default):
    """The number of the task id given as query parameter `name` (t12 -> 12), or `default`'s."""
    value = query.get(name, default)
    if value is None:
        return None
    if not (value[:1] == "t" and value[1:].isascii() and value[1:].isdigit() and len(value) < 20):
        raise BadRequest(f"{name} must be a task id like t12")
    return int(value[1:])


def url_of(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return urllib.parse.urlunsplit(("http", f"{host}:{port}", "", "", ""))


VERSION = __version__
