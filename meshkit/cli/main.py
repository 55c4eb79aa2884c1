"""`meshkit` command line: one argparse subcommand per module in COMMAND_MODULES."""

import argparse
import signal
import sys

from meshkit import __version__
from meshkit.cli import cmd_brain, cmd_init, cmd_locks, cmd_quickstart, cmd_supervisor, cmd_sync, cmd_systemd, cmd_tasks, cmd_watchdog, cmd_worker
from meshkit.cli.common import EXIT_USAGE, exit_code_for, fail
from meshkit.core.errors import MeshkitError

# Each module has register(subparsers); each subparser sets func=handler(args) -> exit code.
COMMAND_MODULES = [cmd_quickstart, cmd_init, cmd_supervisor, cmd_tasks, cmd_brain, cmd_worker, cmd_locks, cmd_sync, cmd_systemd, cmd_watchdog]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"meshkit: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshkit", description="Run a small fleet of AI-agent machines.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="example:\n  python -m meshkit supervisor        # start on 127.0.0.1:8765\n"
                            "  python -m meshkit dispatch echo --payload '{\"hi\": 1}' --wait")
    parser.add_argument("--version", action="version", version=f"meshkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except MeshkitError as e:
        return fail(e.message, exit_code_for(e))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        return 0
