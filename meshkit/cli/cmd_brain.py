"""`explain`, `kinds`, `mode`: why tasks run or don't, quarantined kinds, degradation modes."""

import time
import urllib.parse

from meshkit.cli.common import EXIT_USAGE, fail, load_config, print_json, table
from meshkit.cli.remote import client_parser, make_client
from meshkit.rules.dispatch import headline


def register(sub) -> None:
    p = client_parser(sub, "explain", "say why a task is or is not running", "python3 -m meshkit explain t12")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=explain)

    p = client_parser(sub, "kinds", "task kinds with failure counts and quarantine; `kinds resume KIND`",
                "python3 -m meshkit kinds resume summarize")
    p.add_argument("action", nargs="?", choices=["list", "resume"], default="list")
    p.add_argument("kind", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=kinds)

    p = client_parser(sub, "mode", "show the degradation mode, or hold the fleet for maintenance",
                "python3 -m meshkit mode maintenance --reason 'disk swap'   # ... later: mode normal")
    p.add_argument("mode", nargs="?", choices=["maintenance", "normal"])
    p.add_argument("--reason", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=mode)


def explain(args) -> int:
    cfg = load_config(args)
    d = make_client(args, cfg).call("GET", f"/v1/tasks/{urllib.parse.quote(args.id, safe='')}/explain")
    if args.json:
        print_json(d)
        return 0
    print(headline(d))
    history = d.get("history") or []
    if not history:           # an ended task's reason is its headline; its history follows
        for reason in d["reasons"]:
            print(f"  - {reason}")
    for h in history:
        stamp = time.strftime("%H:%M:%S", time.localtime(h["at"]))
        print(f"  {stamp} {(h['from'] or '-'):>9} -> {h['to']:<9} {h['reason']}")
    return 0


def kinds(args) -> int:
    cfg = load_config(args)
    client = make_client(args, cfg)
    if args.action == "resume":
        if not args.kind:
            return fail("kinds resume needs a KIND", EXIT_USAGE)
        client.call("POST", f"/v1/kinds/{urllib.parse.quote(args.kind, safe='')}/resume", {})
        print(f"kind {args.kind} resumed")
        return 0
    rows = client.call("GET", "/v1/kinds")["kinds"]
    if args.json:
        print_json(rows)
        return 0
    for line in table([("KIND", 20, "<"), ("FAILS", 5, ">"), ("STATE", 0, "<")],
                      [[k["kind"], k["failures_in_a_row"], f"quarantined: {k['reason']}" if k["quarantined"] else "ok"]
                       for k in rows]):
        print(line)
    return 0


def mode(args) -> int:
    cfg = load_config(args)
    client = make_client(args, cfg)
    if args.mode:
        body = {"mode": args.mode, **({"reason": args.reason} if args.reason else {})}
        d = client.call("POST", "/v1/mode", body)
    else:
        st = client.call("GET", "/v1/status")
        d = {"mode": st["mode"], "reason": st.get("mode_reason")}
    if args.json:
        print_json(d)
    else:
        print(f"mode {d['mode']}: {d.get('reason')}")
    return 0
