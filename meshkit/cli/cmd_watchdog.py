"""`meshkit watchdog [run|status|failback|drill]`: the third node of an HA pair."""

import argparse
import signal

from meshkit.adapters import keyfile, sdnotify
from meshkit.adapters.log import Logger
from meshkit.adapters.wakeup import PipeEvent
from meshkit.cli.common import add_config_arg, load_config, print_json
from meshkit.core.clock import REAL
from meshkit.core.errors import ConfigError
from meshkit.rules.auth import pick_key
from meshkit.roles.watchdog.watchdog import Watchdog

EXAMPLE = """\
examples:
  python3 -m meshkit watchdog --config /etc/meshkit/watchdog.toml          # run (systemd: meshkit-watchdog.service)
  python3 -m meshkit watchdog status      # the watchdog's view and both supervisors' checks
  python3 -m meshkit watchdog failback    # hand back to the primary now (failback = "manual")
  python3 -m meshkit watchdog drill       # switch over and back, timed, counting tasks

config:
  [watchdog]
  primary = "http://10.0.0.1:8765"
  standby = "http://10.0.0.2:8765"
  interval = 30            # seconds between checks
  failures = 3             # failed checks before failover
  recoveries = 3           # good checks of the old primary before failback
  failback = "manual"      # or "auto"
  fence = ["ssh", "root@10.0.0.1", "systemctl", "stop", "meshkit-supervisor"]
  alert = ["/usr/local/bin/notify"]      # gets the event as JSON on stdin
"""


def register(sub) -> None:
    p = sub.add_parser("watchdog", help="fail the supervisor over to its standby and back",
                       description="Deep-check the active supervisor; fence, promote and alert on failure.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arg(p)
    p.add_argument("action", nargs="?", choices=["run", "status", "failback", "drill"], default="run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def make(args) -> Watchdog:
    cfg = load_config(args)
    kid, _, secret = pick_key(keyfile.load(cfg.path("auth.keys_file")), cfg.get("auth.key_id"), "admin")
    return Watchdog(cfg, (kid, secret), REAL, Logger("watchdog", level=cfg.get("logging.level")))


def run(args) -> int:
    wd = make(args)
    if args.action == "status":
        out = {"state": wd.state(), "primary": wd.check("primary"), "standby": wd.check("standby")}
        if args.json:
            print_json(out)
        else:
            st = out["state"]
            print(f"active: {st['active']} ({wd.urls[st['active']]})  epoch {st['epoch']}  "
                  f"failures {st['failures']}  recoveries {st['recoveries']}"
                  + ("  READY FOR FAILBACK" if st["ready_for_failback"] else ""))
            for node in ("primary", "standby"):
                c = out[node]
                lag = c.get("lag_changes") if c else None
                what = (f"{c['role']} epoch {c['epoch']}" + (f", lag {lag} changes" if lag is not None else "")
                        if c else "no answer")
                print(f"  {node:<8} {wd.urls[node]}: {what}")
        # For monitoring: 1 when the supervisor the watchdog considers active does not answer.
        return 0 if out[out["state"]["active"]] else 1
    if args.action in ("failback", "drill"):
        out = wd.failback() if args.action == "failback" else wd.drill()
        if args.json:
            print_json(out)
        else:
            for k, v in out.items():
                print(f"{k}: {v}")
        return 0 if out.get("lost", 0) == 0 else 1
    problem = wd.writable_problem()
    if problem:
        raise ConfigError(wd.cfg.source, "watchdog.state_file", "a file the watchdog can write",
                          f"{wd.state_path} ({problem})")
    stop = PipeEvent()       # set by signal handlers: takes no lock (adapters/wakeup.py)
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, lambda s, f: stop.set())
    wd.log.info("watchdog_started", primary=wd.urls["primary"], standby=wd.urls["standby"], interval=wd.interval)
    notify = sdnotify.Notifier.from_env()
    notify.ready(f"watching {wd.urls['primary']} and {wd.urls['standby']}")
    while not stop.is_set():
        delay = wd.step()
        notify.watchdog(f"active: {wd.state()['active']}")     # only while the loop turns
        REAL.wait(stop, notify.max_delay(delay))
    notify.stopping()
    return 0
