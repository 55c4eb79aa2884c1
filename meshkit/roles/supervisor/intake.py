"""Dispatch intake: validate a task (or a whole graph), apply defaults, insert it
waiting or queued after its dependencies, in one transaction."""

import secrets

from meshkit.adapters.storetx import Tx, task_dict, task_id, task_n
from meshkit.core import wire
from meshkit.core.errors import BadRequest, Conflict
from meshkit.roles.supervisor import cancel
from meshkit.rules import deps as deps_rules
from meshkit.rules.policy import rank


def prepare(tasks, body: dict, what: str = "dispatch") -> dict:
    """Validated task fields with defaults (per-kind from the priorities file, then config)."""
    wire.validate(body, wire.GRAPH_TASK if what != "dispatch" else wire.DISPATCH, what)
    cfg, kp = tasks.cfg, tasks.policy.kind(body["kind"])
    timeout = body.get("timeout", cfg.get("tasks.timeout"))
    max_attempts = body.get("max_attempts", kp.max_attempts or cfg.get("tasks.max_attempts"))
    priority = body.get("priority", kp.priority if kp.priority is not None else 0)
    if not 0 < timeout <= 7 * 86400:
        raise BadRequest(f"{what}: field 'timeout' must be between 0 and 604800 seconds", field="timeout")
    if not 1 <= max_attempts <= 100:
        raise BadRequest(f"{what}: field 'max_attempts' must be from 1 to 100", field="max_attempts")
    if not -1_000_000 <= priority <= 1_000_000:
        raise BadRequest(f"{what}: field 'priority' must be from -1000000 to 1000000", field="priority")
    key = body.get("key")
    if key is not None and not 0 < len(key) <= 200:
        raise BadRequest(f"{what}: field 'key' must be 1-200 characters", field="key")
    return {"kind": body["kind"], "payload": body.get("payload"), "requires": sorted(set(body.get("requires", []))),
            "rank": rank(priority, tasks.clock.time(), tasks.policy.aging),
            "priority": priority, "timeout": float(timeout), "max_attempts": max_attempts,
            "key": key, "trace_id": body.get("trace_id") or secrets.token_hex(8),
            "expects": body.get("expects"), "after": list(dict.fromkeys(body.get("after", [])))}

def insert(tasks, tx: Tx, fields: dict, dep_ns: list, actor: str, now: float, upstream_failed: list) -> int:
    """Insert one task after its dependencies (task numbers), waiting or queued; failed at once
    (its log line added to `upstream_failed`) after one that already failed or was cancelled."""
    deps = [tx.one("SELECT n, state FROM tasks WHERE n=?", (d,)) for d in dep_ns]
    waiting = any(d["state"] != "succeeded" for d in deps)
    after = fields["after"]
    n = tx.insert_task(fields, "waiting" if waiting else "queued",
                       f"dispatched by {actor}" + (f", after {', '.join(after)}" if after else ""), actor, now)
    for d in deps:
        tx.execute("INSERT OR IGNORE INTO deps(task, dep) VALUES(?, ?)", (n, d["n"]))
    failed = [d for d in deps if d["state"] in ("failed", "cancelled")]
    if failed:
        why = f"upstream failed: {task_id(failed[0]['n'])}"      # also its error, as settle_dependents does
        tx.transition(n, "waiting", "failed", why, "supervisor", now, error=why)
        upstream_failed.append(cancel.upstream_line(task_id(n), fields["kind"], task_id(failed[0]["n"]),
                                                    failed[0]["state"], fields["trace_id"]))
    return n

def known_deps(tx: Tx, after: list, what: str) -> list:
    out = []
    for dep in after:
        row = tx.one("SELECT n FROM tasks WHERE n=?", (task_n(dep),))
        if row is None:
            raise BadRequest(f"{what}: unknown dependency {dep}", field="after")
        out.append(row["n"])
    return out

def dispatch(tasks, body: dict, actor: str) -> tuple:
    """(task dict, created?). The same idempotency key returns the same task."""
    fields = prepare(tasks, body)
    now = tasks.clock.time()
    upstream_failed = []
    with tasks.store.tx() as tx:
        if fields["key"] is not None:
            row = tx.one("SELECT * FROM tasks WHERE key=?", (fields["key"],))
            if row is not None:
                return task_dict(row), False
        n = insert(tasks, tx, fields, known_deps(tx, fields["after"], "dispatch"), actor, now, upstream_failed)
        task = task_dict(tx.task_row(n))
    tasks.log.info("task_dispatched", task=task["id"], kind=task["kind"], trace_id=task["trace_id"],
                  state=task["state"], actor=actor)
    cancel.log_upstream_failed(tasks.log, upstream_failed)
    tasks.wake_all()
    return task, True

def prepare_graph(tasks, body: dict) -> tuple:
    """(validated fields by name, local edges) of a graph, checked before any store access."""
    wire.validate(body, wire.GRAPH, "graph")
    specs = body["tasks"]
    if not 1 <= len(specs) <= 1000:
        raise BadRequest("graph: 'tasks' must hold 1 to 1000 tasks", field="tasks")
    names = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not wire.TYPES["name"][1](spec["name"]):
            raise BadRequest(f"graph: tasks[{i}] needs a 'name' (letters, digits, _ . : @ -)", field="name")
        if spec["name"] in names:
            raise BadRequest(f"graph: name {spec['name']!r} is used twice", field="name")
        names[spec["name"]] = spec
    prepared = {}      # validated first: the edges below read "after" (a dict in it was a 500)
    for name, spec in names.items():
        fields = prepare(tasks, {k: v for k, v in spec.items() if k != "name"}, f"graph task {name!r}")
        bad = next((a for a in fields["after"] if a not in names and not wire.TYPES["id"][1](a)), None)
        if bad is not None:     # here, not in the transaction: a replayed graph is checked the same
            raise BadRequest(f"graph: task {name!r} is after {bad!r}, which is neither a name here nor a task id",
                             field="after")
        prepared[name] = fields
    keys = [f["key"] for f in prepared.values() if f["key"] is not None]
    if len(keys) != len(set(keys)):
        raise BadRequest("graph: two tasks have the same 'key'", field="key")
    edges = {name: [a for a in fields["after"] if a in names] for name, fields in prepared.items()}
    cycle = deps_rules.find_cycle(edges)
    if cycle:
        raise BadRequest(f"graph: dependency cycle {' -> '.join(cycle)}", field="after")
    return prepared, edges

def replayed(tx: Tx, prepared: dict):
    """{name: task dict} when every task's key is already used: the graph was sent before (a retry
    after a timeout), answered like a dispatch with a known key. None when no key is used; Conflict
    when only some are, as a retry cannot tell which of its tasks are the stored ones."""
    rows = {name: tx.one("SELECT * FROM tasks WHERE key=?", (f["key"],))
            for name, f in prepared.items() if f["key"] is not None}
    used = {name: row for name, row in rows.items() if row is not None}
    if not used:
        return None
    if len(used) == len(prepared):
        return {name: task_dict(row) for name, row in used.items()}
    fresh = [n for n in rows if n not in used]
    if fresh:
        name, tid = next(iter(used)), task_id(next(iter(used.values()))["n"])
        raise Conflict(f"graph: task {name!r} has key {prepared[name]['key'][:80]!r}, already used by {tid}, but "
                       f"the key of task {fresh[0]!r} is new: not a retry of one graph; nothing was dispatched", task=tid)
    unkeyed = next(n for n in prepared if n not in rows)
    raise Conflict(f"graph: every key is already used (the graph looks already dispatched), but task {unkeyed!r} "
                   "has no key and cannot be matched: give every task of a graph a key to make a retry safe; "
                   "nothing was dispatched")

def insert_graph(tasks, tx: Tx, prepared: dict, edges: dict, actor: str, upstream_failed: list) -> dict:
    """Insert a new graph's tasks, each after its dependencies: {name: task dict}."""
    now = tasks.clock.time()
    created = {}
    for name in deps_rules.topological(edges):
        fields = prepared[name]
        local = [created[a] for a in fields["after"] if a in prepared]
        ids = [a for a in fields["after"] if a not in prepared]
        fields["after"] = [task_id(m) for m in local] + ids
        created[name] = insert(tasks, tx, fields, local + known_deps(tx, ids, "graph"), actor, now, upstream_failed)
    return {name: task_dict(tx.task_row(n)) for name, n in created.items()}

def dispatch_graph(tasks, body: dict, actor: str) -> tuple:
    """(tasks by name, created?). A whole graph in one transaction: {"tasks": [{"name", ...dispatch
    fields, "after": [name|id]}]}. Sent again (every task keyed, every key used) it returns the
    tasks stored the first time and dispatches nothing, so a client may retry after a timeout."""
    prepared, edges = prepare_graph(tasks, body)
    upstream_failed = []
    with tasks.store.tx() as tx:
        out = replayed(tx, prepared)
        created = out is None
        if created:
            out = insert_graph(tasks, tx, prepared, edges, actor, upstream_failed)
    ids = {k: v["id"] for k, v in out.items()}
    if not created:         # nothing changed: no claim to wake
        tasks.log.info("graph_replayed", tasks=ids, actor=actor)
        return out, False
    tasks.log.info("graph_dispatched", tasks=ids, actor=actor)
    cancel.log_upstream_failed(tasks.log, upstream_failed)
    tasks.wake_all()
    return out, True
