"""`meshkit` command line: one argparse subcommand per entry of COMMANDS.

Only the chosen command's module is imported (importlib, at dispatch): `meshkit
sync memory` from cron does not load the supervisor, SQLite, http.server or the
worker. `meshkit --help` lists every command from the summaries below without
importing any command module; tests/test_cli.py checks that the table matches
what each module registers.
"""

import argparse
import importlib
import signal
import sys

from meshkit import __version__
from meshkit.cli.common import EXIT_USAGE, exit_code_for, fail
from meshkit.core.errors import MeshkitError

# command -> (module in meshkit.cli, the one-line summary its register() gives it),
# in the order --help lists them. Each module has register(subparsers), adding its
# commands; each subparser sets func=handler(args) -> exit code.
COMMANDS = {
    "quickstart": ("cmd_quickstart", "a local demo fleet: supervisor, two workers, a task graph"),
    "init": ("cmd_init", "write meshkit.toml, a keys file and viewer.token"),
    "keys": ("cmd_keys", "add a worker key bound to its node; make a new viewer token"),
    "supervisor": ("cmd_supervisor", "run the supervisor (the fleet's state)"),
    "dispatch": ("cmd_tasks", "queue a task; prints its id"),
    "graph": ("cmd_graph", "dispatch a dependency graph from a JSON file"),
    "task": ("cmd_tasks", "show one task: its spec, state, full history and result"),
    "tasks": ("cmd_tasks", "list the newest tasks (the newest last)"),
    "cancel": ("cmd_tasks", "cancel a task (a running one is stopped by its worker)"),
    "status": ("cmd_tasks", "fleet status: nodes and tasks"),
    "explain": ("cmd_brain", "say why a task is or is not running"),
    "kinds": ("cmd_brain", "task kinds with failure counts and quarantine; `kinds resume KIND`"),
    "mode": ("cmd_brain", "show the degradation mode, or hold the fleet for maintenance"),
    "worker": ("cmd_worker", "run a worker (polls the supervisor, runs allowlisted task kinds)"),
    "locks": ("cmd_locks", "list, reap and run under local file locks"),
    "sync": ("cmd_sync", "memory sync and backups: rsync, validated snapshots"),
    "systemd": ("cmd_systemd", "print a systemd unit for a role, with this machine's paths"),
    "watchdog": ("cmd_watchdog", "fail the supervisor over to its standby and back"),
}
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"meshkit: {message}\n")
        sys.exit(EXIT_USAGE)

    def parse_known_args(self, args=None, namespace=None):
        """As argparse's; a (sub)command that is left arguments it does not know marks itself
        (the innermost one), so main() shows that command's usage with the error, not the top's."""
        namespace, extra = super().parse_known_args(args, namespace)
        if extra and getattr(namespace, "_usage_parser", None) is None:
            namespace._usage_parser = self
        return namespace, extra


def command_module(name: str):
    """The module (meshkit.cli.cmd_*) that registers one module name of COMMAND_MODULES."""
    return importlib.import_module(f"meshkit.cli.{name}")


def chosen_command(argv) -> str | None:
    """The command named on the command line: the first argument that is not an
    option (the top level's own options, -h and --version, take no value)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; the module of `command` (all of them
    if command is "*") registers its commands in full, the others are summaries."""
    parser = _Parser(prog="meshkit", description="Run a small fleet of AI-agent machines.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="example:\n  python3 -m meshkit supervisor        # start on 127.0.0.1:8765\n"
                            "  python3 -m meshkit dispatch echo --payload '{\"hi\": 1}' --wait")
    parser.add_argument("--version", action="version", version=f"meshkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    full = COMMAND_MODULES if command == "*" else [COMMANDS[command][0]] if command in COMMANDS else []
    for name, (module, summary) in COMMANDS.items():
        if name in sub.choices:
            continue
        if module in full:
            command_module(module).register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(chosen_command(argv))      # imports the command's module
        args, extra = parser.parse_known_args(argv)
        if extra:
            (getattr(args, "_usage_parser", None) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return int(args.func(args) or 0)
    except MeshkitError as e:
        return fail(e.message, exit_code_for(e))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        return 0
