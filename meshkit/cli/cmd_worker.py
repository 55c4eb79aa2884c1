"""`meshkit worker`: poll the supervisor and run allowlisted task kinds.

`python -m meshkit worker` re-executes itself as `python -m meshkit.cli.cmd_worker` (same pid,
arguments and environment): that process imports only the worker's modules, not the whole
CLI (supervisor, SQLite, http.server, sync...), which keeps an idle worker's RSS ~3 MB lower.
"""

import argparse
import os
import signal
import socket
import sys

# As the lean worker process (`python -m meshkit.cli.cmd_worker`, below): Ctrl-C while the modules
# below load exits 130 quietly, not with a KeyboardInterrupt traceback (as meshkit/__main__.py does).
_QUIET_START = __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _QUIET_START:
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import meshkit
from meshkit.adapters import keyfile
from meshkit.adapters.atomic import make_dir
from meshkit.adapters.log import Logger
from meshkit.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, add_config_arg, exit_code_for, fail, load_config
from meshkit.cli.memwire import WorkerGuard
from meshkit.core.clock import REAL
from meshkit.cli.sdwire import wire_worker
from meshkit.core.errors import ConfigError, MeshkitError
from meshkit.roles.worker import build, settings_from
from meshkit.roles.worker.refusals import refused_line
from meshkit.rules.auth import pick_key
from meshkit.rules.config import URL_EXPECTED, describe, is_url

EXAMPLE = """examples:
  python3 -m meshkit worker --config /etc/meshkit/meshkit.toml
  python3 -m meshkit worker --name pi-1 --capability gpu --slots 2 \\
      --supervisor http://10.0.0.5:8765 --supervisor http://10.0.0.6:8765

Task kinds come only from the config's allowlist:
  [worker.kinds.summarize]
  argv = ["/usr/local/bin/summarize", "--json"]
  timeout = 600
  env = { LANG = "C.UTF-8" }

Stopping: SIGTERM or Ctrl-C stops claiming, lets running tasks finish (worker.drain_timeout),
delivers results and exits 0; a second one stops the running tasks at once.
Exit 2: bad config (e.g. no [worker.kinds.NAME] at all); 3: the supervisor refuses this
worker's key for good (a key whose role may not claim, an unknown key id, a wrong secret)."""


def register(sub) -> None:
    p = sub.add_parser("worker", help="run a worker (polls the supervisor, runs allowlisted task kinds)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION, epilog=EXAMPLE)
    add_arguments(p)
    p.set_defaults(func=run)


DESCRIPTION = ("Run a worker: register with heartbeats, long-poll for tasks it may run, run each in its own "
               "directory and process group, deliver results through a durable outbox. Flags override the config.")


def add_arguments(p) -> None:
    add_config_arg(p)
    p.add_argument("--name", help="node name (worker.name; default: this machine's hostname)")
    p.add_argument("--capability", action="append", metavar="CAP",
                   help="a capability this node offers; repeat for several (replaces worker.capabilities)")
    p.add_argument("--slots", type=int, metavar="N", help="tasks run at once (worker.slots)")
    p.add_argument("--supervisor", action="append", metavar="URL",
                   help="supervisor URL; repeat for a standby (replaces worker.supervisor)")
    p.add_argument("--work-dir", metavar="DIR", help="task directories and outbox (worker.work_dir)")


def to_argv(args) -> list:
    out = []
    for flag, value in (("--config", args.config), ("--name", args.name), ("--slots", args.slots),
                        ("--work-dir", args.work_dir and os.path.abspath(args.work_dir))):
        if value is not None:
            out += [flag, str(value)]
    for flag, values in (("--capability", args.capability), ("--supervisor", args.supervisor)):
        for v in values or []:
            out += [flag, v]
    return out


def run(args) -> int:
    """From the full CLI: become the lean worker process; if exec is impossible, serve here."""
    if sys.executable:
        root = os.path.dirname(os.path.dirname(os.path.abspath(meshkit.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if args.config:
            args.config = os.path.abspath(os.path.expanduser(args.config))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, "-m", "meshkit.cli.cmd_worker", *to_argv(args)], env)
        except OSError:
            pass
    return serve(args)


def serve(args) -> int:
    cfg = load_config(args)
    overrides = {}
    if args.name is not None:
        overrides["worker__name"] = args.name
    if args.capability is not None:
        overrides["worker__capabilities"] = args.capability
    if args.slots is not None:
        if args.slots < 1:
            return fail("--slots must be at least 1", EXIT_USAGE)
        overrides["worker__slots"] = args.slots
    if args.supervisor:
        for url in args.supervisor:
            if not is_url(url):
                raise ConfigError(None, "--supervisor", URL_EXPECTED, describe(url))
        overrides["worker__supervisor"] = args.supervisor
    if args.work_dir:
        overrides["worker__work_dir"] = os.path.abspath(args.work_dir)
    s = settings_from(cfg.with_values(**overrides), socket.gethostname())
    make_dir(s.work_dir, None if args.work_dir else cfg.source, "--work-dir" if args.work_dir else "worker.work_dir",
             "a directory the worker can create")
    keys_file = cfg.path("auth.keys_file")
    keys = keyfile.load(keys_file)
    kid, _, secret = pick_key(keys, cfg.get("auth.key_id"), "worker", s.name)
    nodes = keys[kid][2]          # a key bound to nodes: the supervisor refuses it for any other name
    if nodes and s.name not in nodes:
        given = args.name is not None
        raise ConfigError(None if given else cfg.source, "--name" if given else "worker.name",
                          f"one of the nodes key {kid} speaks for "
                          f"({', '.join(sorted(nodes))}; its line in {keys_file})",
                          repr(s.name))
    log = Logger("worker", node=s.name, level=cfg.get("logging.level"), log_dir=cfg.path("logging.dir"))
    worker = build(s, kid, secret, log=log)
    wire_worker(worker)        # systemd: READY, WATCHDOG per step, STATUS, STOPPING (no-op without NOTIFY_SOCKET)
    guard = WorkerGuard(worker, cfg.get("limits.rss_soft_mb"), cfg.get("limits.rss_hard_mb"), REAL, log).install()

    def on_signal(signum, frame):
        worker.signals.append(signum)      # no lock here (it may interrupt one): the control loop acts
        worker.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = guard.exit_code(worker.run())
    if worker.refusal is not None:      # the supervisor refuses our key for good: one line, exit 3
        url, message, reason = worker.refusal
        where = f"auth.key_id{f' in {cfg.source}' if cfg.source else ''}, keys file {keys_file}"
        return fail(refused_line(kid, url, message, reason, where), EXIT_UNREACHABLE)
    return code


def main(argv=None) -> int:
    """`python -m meshkit.cli.cmd_worker ARGS`: the lean worker process."""
    p = argparse.ArgumentParser(prog="meshkit worker", description=DESCRIPTION, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return serve(args)
    except MeshkitError as e:
        return fail(e.message, exit_code_for(e))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    if _QUIET_START:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
