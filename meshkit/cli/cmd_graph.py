"""`graph FILE`: dispatch a whole dependency graph in one request (POST /v1/graph) from a
JSON file (`-`: standard input); with --wait, follow every task to its end."""

import json
import sys

from meshkit.cli.common import EXIT_FAILED, UsageError, fail, load_config, print_json, table
from meshkit.cli.cmd_tasks import StillWaiting, follow
from meshkit.cli.remote import client_parser, make_client
from meshkit.core.clock import REAL
from meshkit.rules import fsm

EXAMPLE = """python3 -m meshkit graph nightly.json --wait
  where nightly.json is
  {"tasks": [{"name": "fetch", "kind": "fetch", "key": "nightly-2026-11-25-fetch"},
             {"name": "sum", "kind": "summarize", "after": ["fetch"], "key": "nightly-2026-11-25-sum"}]}
  (with a key on every task, running the command again dispatches nothing twice)"""


def register(sub) -> None:
    p = client_parser(sub, "graph", "dispatch a dependency graph from a JSON file", EXAMPLE)
    p.add_argument("file", help="the graph as JSON ({\"tasks\": [...]}, see README), or - for standard input")
    p.add_argument("--json", action="store_true", help="print the supervisor's answer")
    p.add_argument("--wait", action="store_true",
                   help="wait until every task ended, saying why one does not start; exit 0 only if all succeeded")
    p.set_defaults(func=graph)


def read_graph(path: str, stdin=None) -> dict:
    """The request body from a file or `-`; a clear UsageError when it can't be read or is not JSON."""
    where = "standard input" if path == "-" else path
    try:
        if path == "-":
            text = (stdin or sys.stdin).read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"graph: cannot read {where}: {getattr(e, 'strerror', None) or e}") from None
    try:
        body = json.loads(text)
    except ValueError as e:
        raise UsageError(f"graph: {where} is not valid JSON: {e}") from None
    if isinstance(body, list):      # a bare list of tasks is taken as {"tasks": [...]}
        body = {"tasks": body}
    return body


def graph(args) -> int:
    cfg = load_config(args)
    client = make_client(args, cfg)
    answer = client.call("POST", "/v1/graph", read_graph(args.file))
    tasks = answer["tasks"]
    if args.json:
        print_json(answer)
    else:
        if not answer.get("created", True):
            sys.stderr.write("meshkit: this graph was dispatched before (every key is used): nothing new\n")
        for line in table([("NAME", 20, "<"), ("ID", 8, "<"), ("STATE", 0, "<")],
                          [[name, t["id"], t["state"]] for name, t in tasks.items()]):
            print(line)
    sys.stdout.flush()
    if not args.wait:
        return 0
    return wait_all(client, {name: t["id"] for name, t in tasks.items()})


def wait_all(client, ids: dict, clock=REAL) -> int:
    """Follow each task's history (stderr) until all ended, saying why one does not start
    (StillWaiting); a last table of states (stdout)."""
    seen = {tid: 0 for tid in ids.values()}
    still = StillWaiting(client, clock)
    ended = {}
    while len(ended) < len(ids):
        for name, tid in ids.items():
            if name in ended:
                continue
            task = follow(client, tid, seen[tid], f" {name}", clock)
            if task is None:
                break
            seen[tid] = len(task["history"])
            if task["state"] in fsm.TERMINAL:
                ended[name] = task
            else:
                still.check(task, f" {name}")
        else:
            if len(ended) < len(ids):
                clock.sleep(0.3)
    for line in table([("NAME", 20, "<"), ("ID", 8, "<"), ("STATE", 0, "<")],
                      [[name, ids[name], ended[name]["state"]] for name in ids]):
        print(line)
    bad = [name for name in ids if ended[name]["state"] != "succeeded"]
    if bad:
        return fail(f"graph: {len(bad)} of {len(ids)} tasks did not succeed: "
                    + ", ".join(f"{n} ({ids[n]} {ended[n]['state']})" for n in bad), EXIT_FAILED)
    return 0
