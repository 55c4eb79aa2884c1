"""`meshkit locks list|reap|run`: local file locks that can't get stuck."""

import argparse
import sys

from meshkit.adapters.locks import FileLock, hostname, lock_path
from meshkit.adapters.log import Logger
from meshkit.cli.common import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_config_arg, fail, load_config, print_json,
                                table)
from meshkit.cli.remote import make_client
from meshkit.core.clock import REAL
from meshkit.core.errors import BadRequest
from meshkit.roles.locks import reaper, runner
from meshkit.roles.locks.fleet import FleetLease

LOCKS_HELP = """\
Local locks on fcntl.flock: the kernel frees a lock when its holder dies, and the
lock file records who holds it (host, pid, start time, boot id, since when, TTL,
purpose). Lock files are NAME.lock in the lock dir (config locks.dir).

states: free, held, stale-record (kernel lock free, record left by a dead holder),
hung (held longer than its TTL)

examples:
  python3 -m meshkit locks list
  python3 -m meshkit locks reap --dry-run
  python3 -m meshkit locks run --name memory-sync --wait 0 -- rsync -a src/ dst/
"""

LIST_EXAMPLE = """\
examples:
  python3 -m meshkit locks list
  python3 -m meshkit locks list --dir /var/lib/meshkit/locks --json
"""

REAP_EXAMPLE = """\
Clears stale records (under the kernel lock, never deleting a lock file); reports
hung holders on this host (and runs locks.alert), and with --kill ends them:
SIGTERM, --grace seconds, SIGKILL, the process start time checked before each
signal so a reused pid is never hit. Records from another host are left alone.
Every action is logged as a JSON line on stderr.

exit: 0 nothing left to do, 1 a hung holder or orphaned command remains

examples:
  python3 -m meshkit locks reap --dry-run
  python3 -m meshkit locks reap --ttl 3600 --kill --json
"""

RUN_EXAMPLE = """\
Runs COMMAND while holding the lock NAME (lock dir/NAME.lock). The command does not
inherit the lock; this process holds it, forwards SIGTERM/SIGINT/SIGHUP and
releases it when the command exits. The command sees MESHKIT_LOCK=<lock file>.

exit: the command's exit code; 75 if the lock is still held after --wait (the holder
is named on stderr); 127 if the command cannot be started

examples:
  python3 -m meshkit locks run --name memory-sync -- rsync -a host:mem/ /srv/mem/
  python3 -m meshkit locks run --name gpu --wait 600 --ttl 3600 --purpose "train" -- ./train.sh
"""


def register(sub) -> None:
    p = sub.add_parser("locks", help="list, reap and run under local file locks",
                       description=LOCKS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ls = p.add_subparsers(dest="locks_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: _usage(p))

    q = ls.add_parser("list", help="show each lock: free, held, stale-record or hung",
                      epilog=LIST_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(q)
    q.add_argument("--fleet", action="store_true", help="show the fleet-wide leases held at the supervisor")
    q.add_argument("--supervisor", metavar="URL", help="with --fleet: the supervisor")
    q.set_defaults(func=cmd_list)

    q = ls.add_parser("reap", help="clear stale records, report (or --kill) hung holders",
                      epilog=REAP_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(q)
    q.add_argument("--kill", action="store_true", help="end hung holders on this host (TERM, grace, KILL)")
    q.add_argument("--grace", type=_seconds, default=10, metavar="S",
                   help="seconds between SIGTERM and SIGKILL (default 10)")
    q.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    q.set_defaults(func=cmd_reap)

    q = ls.add_parser("run", help="run a command while holding a lock (like flock(1))",
                      usage="%(prog)s (--name NAME | --fleet NAME) [--wait S] [--ttl S] [--purpose TEXT] [--dir D] -- COMMAND...",
                      epilog=RUN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(q)
    name = q.add_mutually_exclusive_group(required=True)
    name.add_argument("--name", help="local lock name: letters, digits, . _ - (file NAME.lock)")
    name.add_argument("--fleet", metavar="NAME", help="a fleet-wide lease granted by the supervisor instead")
    q.add_argument("--supervisor", metavar="URL", help="with --fleet: the supervisor (default: as for dispatch)")
    q.add_argument("--dir", metavar="D", help="lock directory (default: config locks.dir)")
    q.add_argument("--wait", type=_seconds, default=0, metavar="S",
                   help="seconds to wait for the lock (default 0: try once; 'inf' waits forever)")
    q.add_argument("--ttl", type=_seconds, metavar="S", help="seconds after which the holder counts as hung (default: config locks.ttl)")
    q.add_argument("--purpose", default="", metavar="TEXT", help="why the lock is held (shown to others)")
    q.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command, after --")
    q.set_defaults(func=cmd_run)


def _common(q) -> None:
    add_config_arg(q)
    q.add_argument("--dir", metavar="D", help="lock directory (default: config locks.dir)")
    q.add_argument("--ttl", type=_seconds, metavar="S",
                   help="count any holder older than this as hung (default: each record's own TTL, else config locks.ttl)")
    q.add_argument("--json", action="store_true", help="print JSON")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, found {text!r}")
    return v


def _usage(p) -> int:
    p.print_help(sys.stderr)
    return EXIT_USAGE


def _setup(args):
    cfg = load_config(args)
    lock_dir = args.dir or cfg.path("locks.dir")
    ttl = args.ttl if args.ttl is not None else cfg.get("locks.ttl")
    return cfg, lock_dir, ttl


def cmd_list(args) -> int:
    if args.fleet:
        leases = make_client(args, load_config(args), "worker").call("GET", "/v1/leases")["leases"]
        if args.json:
            print_json({"leases": leases})
        else:
            for lease in leases:
                print(f"{lease['name']}: {lease['explain']}")
            if not leases:
                print("no fleet leases were ever granted")
        return EXIT_OK
    _, lock_dir, ttl = _setup(args)
    views = reaper.list_locks(lock_dir, ttl, override_ttl=args.ttl is not None)
    if args.json:
        print_json({"dir": lock_dir, "host": hostname(), "locks": views})
        return EXIT_OK
    if not views:
        print(f"no locks in {lock_dir}")
        return EXIT_OK
    rows = []
    for v in views:
        rec = v["holder"] if isinstance(v["holder"], dict) else {}
        holder = "" if v["state"] == "free" else f"{rec.get('host', '?')}:{rec.get('pid', '?')}"
        if v["pid_status"] not in ("alive", "unknown") and v["state"] != "free":
            holder += f" ({v['pid_status']})"
        rows.append((v["lock"], v["state"], _age(v["age"]), _age(v["ttl"]), holder, str(v.get("purpose") or "")))
    for line in table([(title, 0, "<") for title in ("LOCK", "STATE", "AGE", "TTL", "HOLDER", "PURPOSE")],
                      rows, gap="  "):
        print(line)
    return EXIT_OK


def cmd_reap(args) -> int:
    cfg, lock_dir, ttl = _setup(args)
    logger = Logger("locks", hostname(), cfg.get("logging.level"))
    entries = reaper.reap_once(lock_dir, ttl, kill=args.kill, dry_run=args.dry_run,
                               override_ttl=args.ttl is not None, alert_argv=cfg.get("locks.alert"),
                               grace=args.grace, logger=logger)
    left = reaper.needs_attention(entries)
    if args.json:
        print_json({"dir": lock_dir, "host": hostname(), "dry_run": args.dry_run, "locks": entries,
                    "needs_attention": [e["lock"] for e in left]})
    else:
        acted = [e for e in entries if e["action"] != "none"]
        for e in acted:
            print(f"{e['lock']}: {e['action']}{'' if e['done'] or args.dry_run else ' (not done)'}: "
                  f"{e['reason']} -> {e['result']}")
        if not acted:
            print(f"nothing to reap in {lock_dir} ({len(entries)} lock(s) looked at)")
    return EXIT_FAILED if left and not args.dry_run else EXIT_OK


def cmd_run(args) -> int:
    cfg = load_config(args)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return fail("locks run: no command given (put it after --)", EXIT_USAGE)
    if args.fleet:
        node = cfg.get("worker.name") or hostname()       # the holder's node part: a bound key's node
        lease = FleetLease(make_client(args, cfg, "worker", node), args.fleet, ttl=args.ttl or 60,
                           purpose=args.purpose or " ".join(command)[:200], node=node)
        try:
            return runner.run_locked(lease, command, wait=args.wait)
        except runner.CannotRun as e:
            return fail(e.message, runner.EXIT_CANNOT_RUN)
    lock_dir = args.dir or cfg.path("locks.dir")
    try:
        path = lock_path(lock_dir, args.name, create_dir=True)
    except BadRequest as e:
        return fail(e.message, EXIT_USAGE)
    ttl = args.ttl if args.ttl is not None else cfg.get("locks.ttl")
    purpose = args.purpose or " ".join(command)[:200]
    lock = FileLock(path, ttl=ttl, purpose=purpose, clock=REAL)
    try:
        return runner.run_locked(lock, command, wait=args.wait)
    except runner.CannotRun as e:
        return fail(e.message, runner.EXIT_CANNOT_RUN)


def _age(v) -> str:
    if v is None:
        return "-"
    v = int(v)
    if v < 120:
        return f"{v}s"
    if v < 7200:
        return f"{v // 60}m{v % 60:02d}s"
    return f"{v // 3600}h{(v % 3600) // 60:02d}m"
