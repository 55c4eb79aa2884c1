#!/usr/bin/env python3
"""Worker footprint benchmark (issue 4, point 11).

Starts a real supervisor and a real worker (`python -m meshkit ...`, default worker settings:
long-poll 25 s, heartbeat 60 s), then measures:
  1. idle: the worker's RSS and CPU share over --seconds (default 60) of long-polling and heartbeats;
  2. dispatch-to-start: for --tasks tasks (default 200) dispatched one at a time, the time from
     just before the dispatch request to the task's process start (the worker's started_at,
     taken right after fork/exec); p50 / p99 / max.
Prints the figures next to the goals (RSS <= 25 MB, idle CPU <= 0.5 %, p50 <= 20 ms, p99 <= 100 ms).

    python3 scripts/bench_worker.py [--seconds 60] [--tasks 200] [--keep]
"""

import argparse
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.adapters import keyfile  # noqa: E402
from meshkit.adapters.client import SignedClient  # noqa: E402
from meshkit.adapters.sysinfo import process_cpu_seconds, process_rss  # noqa: E402
from meshkit.rules.auth import pick_key  # noqa: E402


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    for k in ("MESHKIT_CONFIG", "MESHKIT_SUPERVISOR", "MESHKIT_HOME"):
        e.pop(k, None)
    return e


def first_line(proc, timeout=15.0) -> str:
    deadline, buf = time.monotonic() + timeout, b""
    while time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], 0.1)[0]:
            continue
        ch = os.read(proc.stdout.fileno(), 1)
        if not ch or ch == b"\n":
            break
        buf += ch
    return buf.decode()


def wait_for(pred, timeout: float, what: str, every=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise SystemExit(f"bench: timed out waiting for {what}")


def pct(values, q) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="idle measurement (default 60)")
    ap.add_argument("--tasks", type=int, default=200, help="tasks for dispatch-to-start (default 200)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args(argv)

    d = tempfile.mkdtemp(prefix="meshkit-bench-worker-")
    procs = []
    try:
        subprocess.run([sys.executable, "-m", "meshkit", "init", "--dir", d], cwd=ROOT, env=env(), check=True,
                       capture_output=True)
        config = os.path.join(d, "meshkit.toml")
        with open(config, "a") as f:
            f.write('\n[worker.kinds.bench]\nargv = ["true"]\n')
        sup = subprocess.Popen([sys.executable, "-m", "meshkit", "supervisor", "--config", config,
                                "--listen", "127.0.0.1:0"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                               stderr=open(os.path.join(d, "supervisor.log"), "wb"))
        procs.append(sup)
        url = first_line(sup)
        if not url.startswith("http://"):
            raise SystemExit(f"bench: supervisor did not start ({url!r})")
        kid, _, secret = pick_key(keyfile.load(os.path.join(d, "keys")), "", "admin")
        admin = SignedClient(url, kid, secret, timeout=30)
        worker = subprocess.Popen([sys.executable, "-m", "meshkit", "worker", "--config", config,
                                   "--supervisor", url, "--name", "bench"], cwd=ROOT, env=env(),
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "worker.log"), "wb"))
        procs.append(worker)
        wait_for(lambda: any(n["name"] == "bench" for n in admin.call("GET", "/v1/status")["nodes"]), 15,
                 "the worker to register", every=0.05)
        time.sleep(1.0)      # let start-up settle (imports, first claim)

        # 1. idle footprint
        cpu0, t0 = process_cpu_seconds(worker.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = process_cpu_seconds(worker.pid), time.monotonic()
        rss = process_rss(worker.pid)
        idle_cpu = (cpu1 - cpu0) / (t1 - t0) * 100 if cpu0 is not None else float("nan")

        # 2. dispatch-to-start
        lat = []
        for i in range(args.tasks):
            sent = time.time()
            tid = admin.call("POST", "/v1/tasks", {"kind": "bench", "payload": {"i": i}})["task"]["id"]
            task = wait_for(lambda: (lambda t: t if t["state"] in ("succeeded", "failed", "cancelled") else None)(
                admin.call("GET", f"/v1/tasks/{tid}")["task"]), 30, f"task {tid}")
            if task["state"] != "succeeded":
                raise SystemExit(f"bench: task {tid} {task['state']}: {task.get('error')}")
            lat.append((task["result"]["started_at"] - sent) * 1000)
        busy_rss = process_rss(worker.pid)

        mb = 1024 * 1024
        print(f"worker idle RSS:        {rss / mb:.1f} MB   (goal <= 25 MB)" if rss else "worker idle RSS: n/a (no /proc)")
        if cpu1 is not None and cpu1 == cpu0:     # not one clock tick used
            tick = 1 / os.sysconf("SC_CLK_TCK")
            print(f"worker idle CPU:        < {tick / (t1 - t0) * 100:.3f} %  (no CPU tick used in {t1 - t0:.0f} s; "
                  f"goal <= 0.5 %)")
        else:
            print(f"worker idle CPU:        {idle_cpu:.3f} %  over {t1 - t0:.0f} s of long-polling (goal <= 0.5 %)")
        print(f"dispatch-to-start p50:  {statistics.median(lat):.1f} ms  (goal <= 20 ms)")
        print(f"dispatch-to-start p99:  {pct(lat, 99):.1f} ms  (goal <= 100 ms)")
        print(f"dispatch-to-start max:  {max(lat):.1f} ms  over {len(lat)} tasks")
        if busy_rss:
            print(f"worker RSS after tasks: {busy_rss / mb:.1f} MB")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        if args.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
