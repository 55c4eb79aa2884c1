"""Client commands: dispatch, task, tasks, cancel, status."""

import argparse
import json
import sys
import time

from meshkit.cli.common import EXIT_FAILED, EXIT_USAGE, UsageError, fail, load_config, print_json, table
from meshkit.cli.remote import client_parser, make_client
from meshkit.core.clock import REAL
from meshkit.core.errors import ApiError, ClientError, MeshkitError
from meshkit.roles.sync.views import read_statuses
from meshkit.rules import fsm
from meshkit.rules.dispatch import hold_text


def register(sub) -> None:
    p = client_parser(sub, "dispatch", "queue a task; prints its id",
                "python3 -m meshkit dispatch summarize --payload @job.json --requires gpu --priority 5 --wait")
    p.add_argument("kind")
    p.add_argument("--payload", default=None, help="JSON text, or @FILE to read it from a file")
    p.add_argument("--requires", action="append", default=[], metavar="CAP",
                   help="a capability the worker needs (repeat for several: --requires gpu --requires cuda)")
    p.add_argument("--priority", type=int, default=None, metavar="N",
                   help="higher is taken first (waiting raises it: aging); it also sets the class P0-P3 that a "
                        "degraded or emergency mode may hold back (default: the kind's, from "
                        "supervisor.priorities_file, else 0)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds an attempt may run before it is stopped (default: tasks.timeout, 1800)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="attempts before it fails for good (default: its kind's, else tasks.max_attempts, 5)")
    p.add_argument("--key", default=None, metavar="IDEMPOTENCY_KEY", help="the same key twice returns the same task")
    p.add_argument("--after", action="append", default=[], metavar="ID",
                   help="run only after this task succeeded (repeat for several)")
    p.add_argument("--expects", default=None, metavar="PATH[:KEY,KEY]",
                   help="a JSON artifact the task must write (with these keys) to succeed")
    p.add_argument("--trace-id", default=None, metavar="ID",
                   help="an id to follow the task by in logs and history (default: a new one)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the end, saying why if it does not start; exit 0 only if it succeeded")
    p.set_defaults(func=dispatch)

    p = client_parser(sub, "task", "show one task: its spec, state, full history and result",
                      "python3 -m meshkit task t12 --json")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=show_task)

    p = client_parser(sub, "tasks", "list the newest tasks (the newest last)",
                      "python3 -m meshkit tasks --state queued --limit 20")
    p.add_argument("--state", choices=fsm.STATES)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--limit", type=int, default=None, metavar="N", help="the newest N (1 to 1000; default 100)")
    which.add_argument("--all", action="store_true", help="every task, in pages of 1000")
    p.add_argument("--json", action="store_true", help="a JSON list, in the order printed (the oldest first)")
    p.set_defaults(func=list_tasks)

    p = client_parser(sub, "cancel", "cancel a task (a running one is stopped by its worker)",
                      "python3 -m meshkit cancel t12 --reason 'wrong input'")
    p.add_argument("id")
    p.add_argument("--reason", default=None, metavar="TEXT", help="why, kept in the task's history")
    p.set_defaults(func=cancel)

    p = client_parser(sub, "status", "fleet status: nodes and tasks", "python3 -m meshkit status --watch")
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


STILL_FIRST = 5.0      # --wait: a task still waiting or queued this long after it got there is explained once,
STILL_EVERY = 60.0     # then asked about again this often, and explained again only when the reason changed


class StillWaiting:
    """What `--wait` (dispatch, graph) says of a task nothing runs: once it has been waiting or
    queued for STILL_FIRST s, its explain reason on stderr (`t119 still queued: kind `bad`
    quarantined since ...`); every STILL_EVERY s after, the reason again if it changed. The
    wait goes on (the operator may resume the kind, start a worker); an explain that fails is
    skipped (the wait's own polling says when the supervisor can't be reached)."""

    def __init__(self, client, clock=REAL):
        self.client, self.clock = client, clock
        self.due = {}          # task id -> monotonic time of its next explain
        self.said = {}         # task id -> the reason last said

    def check(self, task: dict, label: str = "") -> None:
        tid, state = task["id"], task["state"]
        if state not in ("waiting", "queued"):
            self.due.pop(tid, None)       # back in the queue later (a retry): said again, anew
            self.said.pop(tid, None)
            return
        now = self.clock.monotonic()
        if now < self.due.setdefault(tid, now + STILL_FIRST):
            return
        self.due[tid] = now + STILL_EVERY
        try:
            reason = self.client.call("GET", f"/v1/tasks/{tid}/explain")["reason"]
        except (ClientError, ApiError):
            return
        if reason != self.said.get(tid):
            self.said[tid] = reason
            sys.stderr.write(f"{tid}{label} still {state}: {reason}\n")
            sys.stderr.flush()


def _wait(client, tid: str, clock=REAL) -> int:
    seen = 0
    still = StillWaiting(client, clock)
    while True:
        task = follow(client, tid, seen, clock=clock)
        if task is None:
            continue
        seen = len(task["history"])
        if task["state"] in fsm.TERMINAL:
            break
        still.check(task)
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


PAYLOAD_SHOWN = 300      # characters of a payload `task` prints (--json: all of it)


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _payload_text(payload) -> str:
    """The payload as one line of JSON, cut at PAYLOAD_SHOWN characters saying how long it is."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    if len(text) <= PAYLOAD_SHOWN:
        return text
    return f"{text[:PAYLOAD_SHOWN]}... ({len(text)} characters; --json shows it whole)"


def task_lines(task: dict, now: float) -> list:
    """`task ID` as text, but its history and result: the spec, then where it is now."""
    lines = [f"{task['id']}  {task['kind']}  {task['state']}  attempt {task['attempts']}/{task['max_attempts']}"
             f"  priority {task['priority']}"]

    def row(label, value):
        lines.append(f"{label:<9} {value}")
    row("payload", _payload_text(task.get("payload")))
    row("requires", ", ".join(task.get("requires") or []) or "-")
    row("timeout", f"{task['timeout']:g} s per attempt, at most {task['max_attempts']} attempts")
    if task.get("key"):
        row("key", task["key"])
    if task.get("expects"):
        keys = task["expects"].get("keys") or []
        row("expects", task["expects"]["path"] + (f" with keys {', '.join(keys)}" if keys else ""))
    if task.get("after"):
        row("after", ", ".join(task["after"]))
    row("created", _when(task["created_at"]))
    if task.get("node"):
        row("node", f"{task['node']}  fence {task['fence']}"
            + (f"  started {_when(task['started_at'])}" if task.get("started_at") else ""))
    if task.get("lease_deadline") is not None:
        row("lease", f"until {_when(task['lease_deadline'])}")
    if task["state"] == "queued" and (task.get("not_before") or 0) > now:
        row("backoff", f"until {_when(task['not_before'])}")
    if task.get("cancel_requested") and task["state"] in fsm.ACTIVE:
        row("cancel", "requested (its worker stops it)")
    row("trace", task["trace_id"])
    if task.get("error"):
        row("error", task["error"])
    return lines


def show_task(args) -> int:
    cfg = load_config(args)
    task = make_client(args, cfg, "admin").call("GET", f"/v1/tasks/{args.id}")["task"]
    if args.json:
        print_json(task)
        return 0
    for line in task_lines(task, REAL.time()):
        print(line)
    print("history:")
    for h in task["history"]:
        print(f"  {_when(h['at'])}  {(h['from'] or '-'):>9} -> {h['to']:<9} {h['reason']}")
    if task.get("result"):
        print("result:")
        print(json.dumps(task["result"], indent=2, sort_keys=True))
    return 0


PAGE = 1000      # the most GET /v1/tasks answers at once


def newest_tasks(client, state, want):
    """(up to `want` tasks, the newest first; whether there are more): GET /v1/tasks?order=desc,
    paging down with before=ID. want None: every task."""
    tasks = []
    while True:
        ask = PAGE if want is None else min(PAGE, want + 1 - len(tasks))     # one more: are there more?
        path = f"/v1/tasks?order=desc&limit={ask}" + (f"&state={state}" if state else "")
        if tasks:
            path += f"&before={tasks[-1]['id']}"
        page = client.call("GET", path)["tasks"]
        if tasks and page and int(page[0]["id"][1:]) >= int(tasks[-1]["id"][1:]):    # else: pages forever
            raise MeshkitError(f"the supervisor answered tasks from {page[0]['id']} down when asked for those before "
                               f"{tasks[-1]['id']}: it does not page with before= (an older version?)")
        tasks += page
        if len(page) < ask or (want is not None and len(tasks) > want):
            break
    more = want is not None and len(tasks) > want
    return tasks[:want], more


def list_tasks(args) -> int:
    limit = 100 if args.limit is None else args.limit
    if not 1 <= limit <= 1000:
        return fail("--limit must be from 1 to 1000", EXIT_USAGE)
    cfg = load_config(args)
    client = make_client(args, cfg, "admin")
    tasks, more = newest_tasks(client, args.state, None if args.all else limit)
    tasks.reverse()           # the newest at the bottom, as logs read
    if args.json:
        print_json(tasks)
    else:
        now = REAL.time()
        columns = [("ID", 8, "<"), ("KIND", 16, "<"), ("STATE", 10, "<"), ("TRY", 3, ">"), ("NODE", 16, "<"),
                   ("AGE", 5, ">"), ("TRACE", 0, "<")]
        for line in table(columns, [[t["id"], t["kind"], t["state"], t["attempts"], t["node"] or "-",
                                     _age(t["created_at"], now), t["trace_id"][:12]] for t in tasks]):
            print(line)
    if more:
        sys.stdout.flush()
        sys.stderr.write(f"(the latest {limit} {args.state + ' ' if args.state else ''}tasks of more;"
                         " --limit N or --all)\n")
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
                      ("handing_over", "handing over to"), ("replication_error", "replication error"),
                      ("epoch_claim", "not taking work until the peer confirms or refutes a client's epoch")):
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
              f"(its tasks wait; python3 -m meshkit kinds resume {q.get('kind')})")
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
        print("(no workers yet: python3 -m meshkit worker --supervisor " + str(st["url"]) + ")")
    now = REAL.time()
    for job in st["sync"]:
        ok = job.get("last_success")
        print(f"sync {job.get('job', '?')}: {job.get('last_result', '?')}, last success "
              f"{_age(ok, now) + ' ago' if ok else 'never'}, {job.get('consecutive_failures', 0)} failures in a row")
    return 0
