#!/usr/bin/env python3
"""What sync replication costs per dispatch: the same dispatch loop against a primary
without a standby, with an async standby and with a sync standby (loopback, real processes).

    python3 scripts/bench_replication.py [--dispatches 300]
"""

import argparse
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from meshkit.core.errors import ApiError  # noqa: E402
from tests.helpers import Fleet  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, n: int) -> list:
    pp, ps = free_port(), free_port()
    p_url, s_url = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{ps}"
    extra = {} if mode == "none" else {"supervisor__peer": s_url, "supervisor__replication": mode}
    fleet = Fleet(**extra)
    try:
        fleet.start_supervisor(listen=p_url[7:])
        if mode != "none":
            fleet.start_supervisor(config=fleet.other_config("standby", supervisor__role="standby",
                                                             supervisor__peer=p_url), listen=s_url[7:])
        admin = fleet.client(url=p_url)
        # A primary with a peer starts fenced (409) until that peer answers as its standby.
        deadline = time.monotonic() + 30
        while True:
            try:
                admin.call("POST", "/v1/tasks", {"kind": "warmup"})
                break
            except ApiError as e:
                if e.status != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for _ in range(20):
            admin.call("POST", "/v1/tasks", {"kind": "warmup"})
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            admin.call("POST", "/v1/tasks", {"kind": "bench", "payload": i})
            times.append(time.perf_counter() - t0)
        return times
    finally:
        fleet.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dispatches", type=int, default=300)
    a = ap.parse_args()
    base = None
    for mode in ("none", "async", "sync"):
        t = sorted(measure(mode, a.dispatches))
        p50, p99 = statistics.median(t), t[int(0.99 * (len(t) - 1))]
        base = base or p50
        print(f"{mode:>5}: dispatch p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"
              + (f"  (+{(p50 - base) * 1000:.2f} ms p50 vs no standby)" if mode != "none" else ""))


if __name__ == "__main__":
    main()
