"""`meshkit supervisor`: run the supervisor in the foreground."""

import argparse
import signal

from meshkit.adapters.wakeup import PipeEvent
from meshkit.cli.common import add_config_arg, load_config
from meshkit.core.errors import ConfigError
from meshkit.roles.supervisor.service import Supervisor, parse_listen
from meshkit.rules import failover
from meshkit.rules.config import CHECKS, URL_EXPECTED, is_url, split_http_url


def register(sub) -> None:
    p = sub.add_parser("supervisor", help="run the supervisor (the fleet's state)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run the supervisor. With no config it keeps everything in $MESHKIT_HOME "
                                   "(~/.meshkit): data/ and the keys file, created on first start.",
                       epilog="examples:\n  python3 -m meshkit supervisor\n"
                              "  python3 -m meshkit supervisor --config /etc/meshkit/meshkit.toml --listen 0.0.0.0:8765\n"
                              "  python3 -m meshkit supervisor --listen 127.0.0.1:0   # a free port; URL on line 1\n"
                              "  python3 -m meshkit supervisor --standby-of http://10.0.0.1:8765   # HA standby")
    add_config_arg(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="override supervisor.listen (port 0 = any free port)")
    p.add_argument("--standby-of", metavar="URL", help="run as the standby of the primary at URL (replicates it)")
    p.set_defaults(func=run)


def listen_address(args, cfg) -> tuple:
    """(host, port) from --listen, else supervisor.listen; a bad value is refused naming
    where it came from: the option, or the config file and key."""
    if args.listen is None:
        return parse_listen(cfg.get("supervisor.listen"), cfg.source)
    try:
        return parse_listen(args.listen)
    except ConfigError:
        raise ConfigError(None, "--listen", CHECKS["hostport"][0], repr(args.listen)) from None


def check_peer(args, cfg) -> None:
    """--standby-of is a URL, and the peer (it, else supervisor.peer) is not this supervisor."""
    if args.standby_of is not None and not is_url(args.standby_of):
        raise ConfigError(None, "--standby-of", URL_EXPECTED, repr(args.standby_of))
    peer = args.standby_of or cfg.get("supervisor.peer")
    hp = split_http_url(peer) if peer else None
    host, port = listen_address(args, cfg)
    if hp and failover.names_itself(hp[0], hp[1], host, port):     # a port is always given (is_url, the config's check)
        where, key = (None, "--standby-of") if args.standby_of else (cfg.source, "supervisor.peer")
        raise ConfigError(where, key, f"the other supervisor's URL, not this one's ({host}:{port})", repr(peer))


def run(args) -> int:
    cfg = load_config(args)
    check_peer(args, cfg)
    sup = Supervisor(cfg, listen=args.listen, standby_of=args.standby_of)
    stop = PipeEvent()       # set by signal handlers: takes no lock (adapters/wakeup.py)

    def on_signal(signum, frame):
        stop.set()

    # Before the URL is printed: from then on, SIGTERM or Ctrl-C always means a clean shutdown.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = sup.start()
    print(url, flush=True)
    cfg_arg = f" --config {cfg.source}" if cfg.source else ""
    print(f"meshkit supervisor: serving {url} (data in {sup.data_dir}, keys in {sup.keys_path}"
          f"{', created now' if sup.created_keys else ''})")
    print(f"  connect a worker:  python3 -m meshkit worker{cfg_arg} --supervisor {url}")
    print(f"  dispatch a task:   python3 -m meshkit dispatch echo --payload '{{\"hello\": 1}}' --wait{cfg_arg}")
    print(f"  fleet status:      python3 -m meshkit status{cfg_arg}", flush=True)
    sup.ops.ready()                # systemd: READY=1 (no-op without NOTIFY_SOCKET)
    try:
        sup.run(stop)
    finally:
        sup.shutdown()
    return sup.exit_code           # 0, or 70 from the memory guard
