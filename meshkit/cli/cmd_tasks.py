"""Client commands: dispatch, task, tasks, cancel, status."""

import argparse
import json
import sys
import time

from meshkit.cli.common import EXIT_FAILED, EXIT_USAGE, UsageError, fail, load_config, print_json, table
from meshkit.cli.remote import client_parser, make_client
from meshkit.core.clock import REAL
from meshkit.core.errors import ClientError
from meshkit.roles.sync.views import read_statuses
from meshkit.rules import fsm
from meshkit.rules.dispatch import hold_text


def register(sub) -> None:
    p = client_parser(sub, "dispatch", "queue a task; prints its id",
                "python -m meshkit dispatch summarize --payload @job.json --requires gpu --priority 5 --wait")
    p.add_argument("kind")
    p.add_argument("--payload", default=None, help="JSON text, or @FILE to read it from a file")
    p.add_argument("--requires", action="append", default=[], metavar="CAP", help="a capability the worker needs")
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, metavar="S")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N")
    p.add_argument("--key", default=None, metavar="IDEMPOTENCY_KEY", help="the same key twice returns the same task")
    p.add_argument("--after", action="append", default=[], metavar="ID", help="run only after this task succeeded")
    p.add_argument("--expects", default=None, metavar="PATH[:KEY,KEY]",
                   help="a JSON artifact the task must write (with these keys) to succeed")
    p.add_argument("--trace-id", default=None)
    p.add_argument("--wait", action="store_true", help="wait for the end; exit 0 only if it succeeded")
    p.set_defaults(func=dispatch)

    p = client_parser(sub, "task", "show one task with its full history", "python -m meshkit task t12 --json")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=show_task)

    p = client_parser(sub, "tasks", "list tasks", "python -m meshkit tasks --state queued")
    p.add_argument("--state", choices=fsm.STATES)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_tasks)

    p = client_parser(sub, "cancel", "cancel a task (a running one is stopped by its worker)", "python -m meshkit cancel t12")
    p.add_argument("id")
    p.add_argument("--reason", default=None)
    p.set_defaults(func=cancel)

    p = client_parser(sub, "status", "fleet status: nodes and tasks", "python -m meshkit status --watch")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="S",
                   help="redraw in place every S seconds (default 2) until Ctrl-C")
    p.set_defaults(func=status)


def _payload(text):
    if text is None:
        return None
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--payload: cannot read {text[1:]}: {e.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"--payload is not valid JSON: {e}") from None


def _expects(text):
    if text is None:
        return None
    path, _, keys = text.partition(":")
    return {"path": path, "keys": [k for k in keys.split(",") if k]}


def dispatch(args) -> int:
    cfg = load_config(args)
    client = make_client(args, cfg)
    body = {"kind": args.kind}
    payload = _payload(args.payload)
    for name, value in (("payload", payload), ("priority", args.priority), ("timeout", args.timeout),
                        ("max_attempts", args.max_attempts), ("key", args.key), ("trace_id", args.trace_id),
                        ("expects", _expects(args.expects))):
        if value is not None:
            body[name] = value
    if args.requires:
        body["requires"] = args.requires
    if args.after:
        body["after"] = args.after
    task = client.call("POST", "/v1/tasks", body)["task"]
    print(task["id"], flush=True)
    if not args.wait:
        return 0
    return _wait(client, task["id"])


def follow(client, tid: str, seen: int, label: str = "", clock=REAL):
    """The task now, after writing its history rows past `seen` to stderr as state changes;
    None (said on stderr, after a pause) when the supervisor can't answer now."""
    try:
        task = client.call("GET", f"/v1/tasks/{tid}")["task"]
    except ClientError as e:
        sys.stderr.write(f"meshkit: {e.message}; still waiting\n")
        clock.sleep(2)
        return None
    for h in task["history"][seen:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(h["at"]))
        sys.stderr.write(f"{stamp} {tid}{label} {h['from'] or '-'} -> {h['to']}: {h['reason']}\n")
    return task


def _wait(client, tid: str, clock=REAL) -> int:
    seen = 0
    while True:
        task = follow(client, tid, seen, clock=clock)
        if task is None:
            continue
        seen = len(task["history"])
        if task["state"] in fsm.TERMINAL:
            break
        clock.sleep(0.3)
    report = task.get("result") or {}
    if report.get("result") is not None:
        print(json.dumps(report["result"], indent=2, sort_keys=True))
    elif report.get("stdout_tail"):
        tail = report["stdout_tail"]
        sys.stdout.write(tail if tail.endswith("\n") else tail + "\n")
    if task["state"] != "succeeded":
        return fail(f"task {tid} {task['state']}: {task.get('error') or task['history'][-1]['reason']}", EXIT_FAILED)
    return 0


def _age(at, now) -> str:
    s = max(0, now - at)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


def show_task(args) -> int:
    cfg = load_config(args)
    task = make_client(args, cfg, "admin").call("GET", f"/v1/tasks/{args.id}")["task"]
    if args.json:
        print_json(task)
        return 0
    print(f"{task['id']}  {task['kind']}  {task['state']}  attempt {task['attempts']}/{task['max_attempts']}"
          f"  priority {task['priority']}")
    if task.get("node"):
        print(f"node {task['node']}  fence {task['fence']}")
    if task.get("requires"):
        print(f"requires {', '.join(task['requires'])}")
    if task.get("after"):
        print(f"after {', '.join(task['after'])}")
    print(f"trace {task['trace_id']}")
    if task.get("error"):
        print(f"error {task['error']}")
    print("history:")
    for h in task["history"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["at"]))
        print(f"  {stamp}  {(h['from'] or '-'):>9} -> {h['to']:<9} {h['reason']}")
    if task.get("result"):
        print("result:")
        print(json.dumps(task["result"], indent=2, sort_keys=True))
    return 0


def list_tasks(args) -> int:
    cfg = load_config(args)
    client = make_client(args, cfg, "admin")
    if not 1 <= args.limit <= 1000:
        return fail("--limit must be from 1 to 1000", EXIT_USAGE)
    path = f"/v1/tasks?limit={args.limit}" + (f"&state={args.state}" if args.state else "")
    tasks = client.call("GET", path)["tasks"]
    if args.json:
        print_json(tasks)
        return 0
    now = REAL.time()
    columns = [("ID", 8, "<"), ("KIND", 16, "<"), ("STATE", 10, "<"), ("TRY", 3, ">"), ("NODE", 16, "<"),
               ("AGE", 5, ">"), ("TRACE", 0, "<")]
    for line in table(columns, [[t["id"], t["kind"], t["state"], t["attempts"], t["node"] or "-",
                                 _age(t["created_at"], now), t["trace_id"][:12]] for t in tasks]):
        print(line)
    return 0


def cancel(args) -> int:
    cfg = load_config(args)
    body = {"reason": args.reason} if args.reason else {}
    task = make_client(args, cfg).call("POST", f"/v1/tasks/{args.id}/cancel", body)["task"]
    what = "cancel requested (its worker stops it)" if task["state"] in fsm.ACTIVE else task["state"]
    print(f"{task['id']}: {what}")
    return 0


def _replication_lines(r: dict) -> list:
    """What plain `status` says of HA: only when there is a peer or something is wrong."""
    out = []
    if r.get("peer"):
        lag = r.get("lag_changes")
        out.append(f"replication {r.get('replication', '?')}: peer {r['peer']}, "
                   + (f"lag {lag} changes" if lag is not None else "lag unknown"))
    for key, what in (("fenced", "FENCED"), ("settling", "not taking work yet"),
                      ("handing_over", "handing over to"), ("replication_error", "replication error")):
        if r.get(key):
            out.append(f"{what}: {r[key]}")
    return out


def _node_row(n: dict) -> list:
    """One row of status's nodes table (its kinds whole: the last column is never cut). STATE
    `held`: alive, but it claims nothing now (its heartbeat's hold: a line below says why)."""
    load = f"{n['load'][0]:.1f}" if n.get("load") else "-"
    mem = f"{n['mem_available'] / 2**30:.1f}G" if n.get("mem_available") else "-"
    return [n["name"], "held" if _held(n) else n["state"], _age(0, n["last_seen_age"]), f"{n['running']}/{n['slots']}",
            load, mem, ",".join(n["kinds"])]


def _held(n: dict) -> bool:
    return n["state"] == "alive" and bool(n.get("hold"))


def status(args) -> int:
    watch = getattr(args, "watch", None)
    if watch is not None and not watch > 0:          # (NaN too)
        raise UsageError(f"--watch: expected a number of seconds > 0, found {watch:g}")
    if watch:
        while True:       # Ctrl-C ends it (main turns KeyboardInterrupt into exit 130)
            sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n")
            print(time.strftime("%H:%M:%S") + f"  (every {args.watch:g} s; Ctrl-C to stop)")
            status(argparse.Namespace(**dict(vars(args), watch=None)))
            sys.stdout.flush()
            REAL.sleep(max(0.2, args.watch))
    cfg = load_config(args)
    st = make_client(args, cfg, "admin").call("GET", "/v1/status")
    st["sync"] = st.get("sync") or read_statuses(cfg.path("sync.status_dir"))   # else this machine's jobs
    if args.json:
        print_json(st)
        return 0
    print(f"supervisor {st['url']}  role {st['role']}  epoch {st['epoch']}  mode {st['mode']}"
          + (f" ({st['mode_reason']})" if st.get("mode") != "normal" and st.get("mode_reason") else ""))
    if st.get("priorities_error"):
        print(f"priorities file: {st['priorities_error']}")
    for line in _replication_lines(st.get("replication") or {}):
        print(line)
    for q in st.get("quarantined") or []:
        print(f"quarantined kind {q.get('kind')}: {q.get('reason') or 'failing'} "
              f"(its tasks wait; meshkit kinds resume {q.get('kind')})")
    counts = "  ".join(f"{s} {c}" for s, c in st["tasks"].items() if c)
    print(f"tasks: {counts or 'none'}")
    columns = [("NODE", 18, "<"), ("STATE", 6, "<"), ("SEEN", 5, ">"), ("RUN", 7, ">"), ("LOAD", 5, ">"),
               ("MEM", 6, ">"), ("KINDS", 0, "<")]
    for line in table(columns, [_node_row(n) for n in st["nodes"]]):
        print(line)
    for n in st["nodes"]:
        if _held(n):
            print(hold_text(n["name"], n["hold"]))
    if not st["nodes"]:
        print("(no workers yet: python -m meshkit worker --supervisor " + str(st["url"]) + ")")
    now = REAL.time()
    for job in st["sync"]:
        ok = job.get("last_success")
        print(f"sync {job.get('job', '?')}: {job.get('last_result', '?')}, last success "
              f"{_age(ok, now) + ' ago' if ok else 'never'}, {job.get('consecutive_failures', 0)} failures in a row")
    return 0
