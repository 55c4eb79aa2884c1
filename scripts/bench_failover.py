#!/usr/bin/env python3
"""Failover time: from kill -9 of the primary to the first task completed through the standby.

    python3 scripts/bench_failover.py [--runs 5] [--interval 1] [--failures 2]
                                      [--worker default|fast] [--breaker-cooldown S] [--timeout 60]

Each run starts, on loopback, a primary, its standby, a watchdog (`interval`, `failures`)
and one worker given both URLs; runs a task through the primary; kills the primary with
SIGKILL and at once dispatches a task to the standby, retrying every 50 ms while it answers
not_active. Times from the kill:

  promoted  the standby's role_changed to primary (its log)
  accepted  the standby acknowledged the dispatch
  claimed   the worker claimed the task (its log)
  done      the task's `succeeded` history row on the standby   <- the figure

Worker timings: `default` = meshkit's defaults (poll_wait 25 s, heartbeat 60 s, circuit breaker
3 failures / 300 s cooldown); `fast` = the test suite's (poll_wait 1 s, breaker cooldown 1 s).
--breaker-cooldown overrides worker.breaker_cooldown in either. Prints one line per run, then
the median and max of `done`; exits 1 if the median is above 5 s (the goal), 2 on a setup error.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.core.errors import ApiError, ClientError  # noqa: E402
from tests.helpers import Fleet, env  # noqa: E402
from tests.netns_net import read_events  # noqa: E402
from tests.test_worker_harness import FAST, TASK_SCRIPT, WorkerProc, close_fleet  # noqa: E402

GOAL = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(a) -> dict:
    pp, ps = free_port(), free_port()
    p_url, s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
    worker = {k: v for k, v in FAST.items() if k.startswith("worker__")} if a.worker == "fast" else {}
    if a.breaker_cooldown is not None:
        worker["worker__breaker_cooldown"] = a.breaker_cooldown
    fleet = Fleet(supervisor__peer=s_url, tasks__quarantine_after=0, **worker)
    fleet.workers = []
    wd = None
    try:
        script = os.path.join(fleet.dir, "task.py")
        with open(script, "w") as f:
            f.write(TASK_SCRIPT)
        with open(fleet.config, "a") as f:
            f.write(f'\n[worker.kinds.ok]\nargv = {json.dumps([sys.executable, script, "ok"])}\n')
        s_config = fleet.other_config("standby", supervisor__role="standby", supervisor__peer=p_url)
        wd_config = fleet.other_config("watchdog", watchdog__primary=p_url, watchdog__standby=s_url,
                                       watchdog__interval=a.interval, watchdog__failures=a.failures,
                                       watchdog__failback="manual", watchdog__state_file="watchdog.json")
        fleet.start_supervisor(listen=p_url[7:])
        primary = fleet.supervisor
        fleet.start_supervisor(config=s_config, listen=s_url[7:])
        s_log = os.path.join(fleet.dir, "supervisor-1.log")
        with open(os.path.join(fleet.dir, "watchdog.log"), "wb") as log:
            wd = subprocess.Popen([sys.executable, "-m", "meshkit", "watchdog", "--config", wd_config], cwd=ROOT,
                                  env=env(), stdout=subprocess.DEVNULL, stderr=log)
        w = WorkerProc(fleet, "w1", "--supervisor", s_url, url=p_url).start()
        admin_p, admin_s = fleet.client(url=p_url), fleet.client(url=s_url)
        admin_p.timeout = admin_s.timeout = 5
        deadline = time.monotonic() + 30
        while True:         # the standby attached (the primary, up first, serves once it saw it), a task ran
            rep = admin_p.call("GET", "/v1/status")["replication"]
            if rep.get("lag_changes") == 0 and rep.get("fenced") is None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the standby did not attach")
            time.sleep(0.05)
        warm = admin_p.call("POST", "/v1/tasks", {"kind": "ok", "payload": {"warm": 1}})["task"]["id"]
        while admin_p.call("GET", f"/v1/tasks/{warm}")["task"]["state"] != "succeeded":
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up task did not run")
            time.sleep(0.05)
        time.sleep(a.settle)                         # the worker sits in its claim long-poll

        t_kill = time.time()
        primary.send_signal(signal.SIGKILL)
        primary.wait(5)
        end = time.monotonic() + a.timeout
        tid = t_accepted = None
        while tid is None and time.monotonic() < end:
            try:
                tid = admin_s.call("POST", "/v1/tasks", {"kind": "ok", "payload": {"after_kill": 1},
                                                          "key": f"bench-{t_kill}"})["task"]["id"]
                t_accepted = time.time()
            except (ApiError, ClientError):
                time.sleep(0.05)
        t_done = None
        while tid and t_done is None and time.monotonic() < end:
            task = admin_s.call("GET", f"/v1/tasks/{tid}")["task"]
            if task["state"] == "succeeded":
                t_done = next(h["at"] for h in task["history"] if h["to"] == "succeeded")
            else:
                time.sleep(0.02)
        promoted = [e["time"] for e in read_events(s_log)
                    if e["event"] == "role_changed" and e.get("supervisor_role") == "primary"]
        claimed = [e["time"] for e in w.events("task_claimed") if e.get("task") == tid]
        rel = lambda t: round(t - t_kill, 2) if t else None  # noqa: E731
        return {"promoted": rel(promoted[0] if promoted else None), "accepted": rel(t_accepted),
                "claimed": rel(claimed[0] if claimed else None), "done": rel(t_done),
                "breaker_opened": bool(w.events("breaker_open"))}
    finally:
        if wd is not None and wd.poll() is None:
            wd.kill()
            wd.wait(5)
        close_fleet(fleet)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=float, default=1.0, help="watchdog.interval (default 1)")
    ap.add_argument("--failures", type=int, default=2, help="watchdog.failures (default 2)")
    ap.add_argument("--worker", choices=["default", "fast"], default="default",
                    help="worker timings: meshkit's defaults, or the test suite's fast ones")
    ap.add_argument("--breaker-cooldown", type=float, help="worker.breaker_cooldown in seconds")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds idle before the kill (default 0.5)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a run after this long (default 60)")
    a = ap.parse_args()
    print(f"watchdog interval {a.interval:g} s, failures {a.failures}; worker {a.worker}"
          + (f", breaker cooldown {a.breaker_cooldown:g} s" if a.breaker_cooldown is not None else ""))
    done = []
    for i in range(1, a.runs + 1):
        try:
            r = one_run(a)
        except (RuntimeError, OSError, ApiError, ClientError) as e:
            print(f"run {i}: setup failed: {getattr(e, 'message', e)}", file=sys.stderr)
            return 2
        shown = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731
        print(f"run {i}: done {shown(r['done']):>8}   (promoted {shown(r['promoted'])}, accepted "
              f"{shown(r['accepted'])}, claimed {shown(r['claimed'])}"
              + (", worker breaker opened" if r["breaker_opened"] else "") + ")", flush=True)
        done.append(r["done"] if r["done"] is not None else float("inf"))
    med, worst = statistics.median(done), max(done)
    print(f"kill -9 -> first task done through the standby: median {med:.2f} s, max {worst:.2f} s "
          f"over {len(done)} runs (goal: median <= {GOAL:g} s)")
    return 0 if med <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
